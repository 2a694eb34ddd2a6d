"""What a script is: a title, the tabs it is offered in, its controls (in A1111's order, which is the order of an
API request's ``script_args``), and a run over a generation request.

A selectable script (the "Script" dropdown, ``script_name``) replaces the job's one generation with its own
:meth:`Script.run`, which makes as many generations as it needs through :class:`RunContext` and returns a
:class:`ScriptOutput` (grids first, then images). An always-on script (``alwayson_scripts``) changes the request
before the job runs (:meth:`Script.before`) and sees the result after (:meth:`Script.after`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from PIL import Image

from modules.errors import ValidationError

if TYPE_CHECKING:
    from modules.engine import JobOutput
    from modules.generation.control import JobControl
    from modules.requests import GenerationRequest

TXT2IMG, IMG2IMG = "txt2img", "img2img"
BOTH = frozenset({TXT2IMG, IMG2IMG})
Choices = Sequence[Any] | Callable[[], Sequence[Any]] | None
SaveImage = Callable[[Image.Image, str, "GenerationRequest", int], Path | None]


@dataclass(frozen=True)
class Control:
    """One control of a script's UI. ``kind``: checkbox, slider, number, textbox, dropdown, radio, checkboxgroup,
    html (text only; it still takes a place in ``script_args``, as in A1111) or state (no widget). A dropdown with
    ``index`` gives the chosen entry's position, as A1111's ``type="index"`` dropdowns do."""

    label: str
    kind: str
    value: Any = None
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    choices: Choices = None
    index: bool = False
    multiselect: bool = False
    lines: int = 1
    elem_id: str | None = None
    visible: bool = True

    def choice_list(self) -> list[Any] | None:
        if self.choices is None:
            return None
        return list(self.choices() if callable(self.choices) else self.choices)

    def api_info(self) -> dict[str, Any]:
        """A1111's ``ScriptArg`` entry of ``/sdapi/v1/script-info``."""
        return {"label": self.label, "value": self.value, "minimum": self.minimum, "maximum": self.maximum,
                "step": self.step, "choices": self.choice_list()}


@dataclass
class ScriptOutput:
    """What a script made: grids first (``grids`` of them), then the images, each with its infotext."""

    images: list[Image.Image] = field(default_factory=list)
    infotexts: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    subseeds: list[int] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)
    negative_prompts: list[str] = field(default_factory=list)
    paths: list[Path | None] = field(default_factory=list)
    grids: int = 0
    index_of_first_image: int | None = None  # what A1111 reports (XYZ and prompt matrix: 1; default: grids)
    warnings: list[str] = field(default_factory=list)
    last: JobOutput | None = None  # the last generation (model names, hashes, extra parameters for the response)

    def add(self, image: Image.Image, infotext: str, seed: int = -1, subseed: int = -1, prompt: str = "",
            negative: str = "", path: Path | None = None, grid: bool = False) -> None:
        at = self.grids if grid else len(self.images)
        self.images.insert(at, image)
        self.infotexts.insert(at, infotext)
        self.seeds.insert(at, seed)
        self.subseeds.insert(at, subseed)
        self.prompts.insert(at, prompt)
        self.negative_prompts.insert(at, negative)
        self.paths.insert(at, path)
        if grid:
            self.grids += 1

    def add_job(self, job: JobOutput) -> None:
        """Every image of one generation, in order."""
        r = job.result
        for i, image in enumerate(r.images):
            self.add(image, r.infotexts[i], r.all_seeds[i], r.all_subseeds[i], r.all_prompts[i],
                     r.all_negative_prompts[i], job.paths.get(i))
        self.warnings += [w for w in r.warnings if w not in self.warnings]
        self.last = job


class RunContext:
    """What a script's run may use: generations through the engine (saved as the job's own would be), grids,
    the job's progress and interrupt, and the application's services."""

    def __init__(self, kind: str, process: Callable[[GenerationRequest, bool], JobOutput], control: JobControl,
                 save_grid: Callable[[Image.Image, str, GenerationRequest, str], Path | None],
                 services: Any = None, save_image: SaveImage | None = None, return_grid: bool = True) -> None:
        self.kind = kind
        self._process = process
        self.control = control
        self._save_grid = save_grid
        self._save_image = save_image
        self.services = services  # the application (upscalers, checkpoints, styles) when run by the server
        self.return_grid = return_grid  # whether the job's result shows grids (A1111's return_grid setting)

    def process(self, req: GenerationRequest, save: bool = True) -> JobOutput:
        """One generation of ``req`` (validated first); ``save``: its images are saved as the job's outputs are
        (False for intermediate images such as tiles, which a script assembles and saves with :meth:`save_image`)."""
        return self._process(req, save)

    def save_grid(self, image: Image.Image, infotext: str, req: GenerationRequest, basename: str = "grid"
                  ) -> Path | None:
        """Save a grid as the job's grids are saved, named ``<basename>-NNNN`` (A1111: ``xyz_grid``,
        ``prompt_matrix``, ``grid``); None when the job saves no grids."""
        return self._save_grid(image, infotext, req, basename)

    def save_image(self, image: Image.Image, infotext: str, req: GenerationRequest, seed: int) -> Path | None:
        """Save a finished image the script made as the job's samples are saved (None when the job saves
        nothing)."""
        return self._save_image(image, infotext, req, seed) if self._save_image is not None else None


class Script:
    """Base of every script. Subclasses set ``title`` (``script_name`` is its lower case) and ``tabs``, and give
    :meth:`controls` and :meth:`run` (selectable) or :meth:`before` / :meth:`after` (``alwayson``)."""

    title: ClassVar[str] = ""
    tabs: ClassVar[frozenset[str]] = BOTH
    alwayson: ClassVar[bool] = False

    @property
    def name(self) -> str:
        return self.title.lower()

    def controls(self, kind: str) -> list[Control]:
        return []

    def run(self, ctx: RunContext, req: GenerationRequest, args: Sequence[Any]) -> ScriptOutput:
        raise ValidationError(f"script {self.title!r} cannot be run on its own", field="script_name")

    def check(self, req: GenerationRequest, args: Sequence[Any], kind: str) -> None:
        """Refuse bad arguments before the job is queued (a ValidationError naming ``script_args``)."""

    def before(self, req: GenerationRequest, args: Sequence[Any]) -> GenerationRequest:
        return req

    def after(self, req: GenerationRequest, output: JobOutput, args: Sequence[Any]) -> None:
        return None

    def linked_choices(self, kind: str) -> list[tuple[int, int, int]]:
        """Controls whose choices follow another's value, as (source, text box, dropdown) indices: while the source's
        value offers choices (:meth:`choices_for`) the dropdown shows them instead of the text box."""
        return []

    def choices_for(self, kind: str, source: int, value: Any) -> list[Any] | None:
        """The dropdown's choices for the source control's ``value`` (None: no choices; the text box is shown)."""
        return None

    def defaults(self, kind: str) -> list[Any]:
        return [c.value for c in self.controls(kind)]

    def args_with_defaults(self, args: Sequence[Any] | None, kind: str) -> list[Any]:
        """``args`` completed with the controls' defaults (a shorter list fills from the left, as A1111's API)."""
        values = self.defaults(kind)
        for i, value in enumerate(list(args or [])[:len(values)]):
            values[i] = value
        return values

    def api_info(self, kind: str) -> dict[str, Any]:
        return {"name": self.name, "is_alwayson": self.alwayson, "is_img2img": kind == IMG2IMG,
                "args": [c.api_info() for c in self.controls(kind)]}


def arg_error(script: Script, message: str) -> ValidationError:
    return ValidationError(f"script_args: {script.title}: {message}", field="script_args")
