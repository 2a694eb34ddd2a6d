"""The example extension: one of each part of the extension API.

- a script, "Example seed sweep": the request once per seed, counting up (``script_name`` in the API);
- a setting, ``example_prompt_suffix``, in the "Example" section of the Settings tab;
- hooks: before every generation the suffix is added to the prompt; after it, the images are counted;
- a tab, "Example", and a route, ``GET /sdapi/v1/example/stats``, showing those counts.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Sequence
from typing import Any

from modules.extensions import (
    Control,
    ExtensionAPI,
    GenerationRequest,
    JobOutput,
    Option,
    RunContext,
    Script,
    ScriptOutput,
    ValidationError,
)

SUFFIX = "example_prompt_suffix"
MAX_IMAGES = 8


class Tally:
    """What the hooks have seen since the server started."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.generations = 0
        self.images = 0
        self.last_prompt = ""
        self.last_seeds: list[int] = []

    def record(self, req: GenerationRequest, output: JobOutput) -> None:
        with self._lock:
            self.generations += 1
            self.images += len(output.result.images)
            self.last_prompt = req.prompt
            self.last_seeds = list(output.result.all_seeds)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"generations": self.generations, "images": self.images, "last_prompt": self.last_prompt,
                    "last_seeds": list(self.last_seeds)}


class SeedSweep(Script):
    """A selectable script: one image per seed, from the request's seed counting up."""

    title = "Example seed sweep"

    def controls(self, kind: str) -> list[Control]:
        return [Control("Images", "slider", 2, minimum=1, maximum=MAX_IMAGES, step=1)]

    def check(self, req: GenerationRequest, args: Sequence[Any], kind: str) -> None:
        count = args[0] if args else None
        if isinstance(count, bool) or not isinstance(count, (int, float)) or count != int(count) or not (
                1 <= count <= MAX_IMAGES):
            raise ValidationError(f"script_args: {self.title}: Images must be a whole number from 1 to {MAX_IMAGES}"
                                  f" (got {count!r})", field="script_args")

    def run(self, ctx: RunContext, req: GenerationRequest, args: Sequence[Any]) -> ScriptOutput:
        seed = req.seed if req.seed >= 0 else random.randrange(2**32 - 1)
        out = ScriptOutput()
        for k in range(int(args[0])):
            if ctx.control.should_stop():
                break
            out.add_job(ctx.process(req.replace(seed=seed + k, batch_size=1, n_iter=1)))
        return out


def build_tab(tally: Tally) -> None:
    """The "Example" tab: the counts of the hooks, refreshed by a button."""
    import gradio as gr

    gr.Markdown("What the example extension's hooks have counted since the server started.")
    counts = gr.JSON(value=tally.snapshot, label="Counts", elem_id="example_counts")
    refresh = gr.Button("Refresh", elem_id="example_refresh")
    refresh.click(tally.snapshot, outputs=[counts], api_visibility="private")


def setup(api: ExtensionAPI) -> None:
    from fastapi import APIRouter

    tally = Tally()
    api.add_script(SeedSweep())
    api.add_option(Option(SUFFIX, "", "Text added to the end of every prompt (empty: none)", "", "str"))

    def before(req: GenerationRequest) -> GenerationRequest:
        suffix = api.setting(SUFFIX)
        return req.replace(prompt=req.prompt + suffix) if suffix else req

    api.on_before_generation(before)
    api.on_after_generation(tally.record)
    api.add_tab("Example", lambda: build_tab(tally))

    router = APIRouter()

    @router.get("/stats")
    def stats() -> dict[str, Any]:
        return tally.snapshot()

    api.add_router(router)
    api.log.info("example extension set up")
