"""A1111's "X/Y/Z plot" script: a grid of generations, one per combination of up to three axes' values (steps,
CFG scale, sampler, checkpoint, prompt search and replace, ...), with legends, optional sub-grids per Z value and
the single images.

Its 18 arguments, in A1111's order: X type (an axis index, as A1111's ``type="index"`` dropdown sends it, or the
axis name), X values (text), X values (the dropdown's list, used for axes with choices when text inputs are off),
the same for Y and Z, Draw legend, Include Sub Images, Include Sub Grids, Keep -1 for seeds, Vary seeds for X, Y
and Z, Grid margins (px), Use text inputs instead of dropdowns. The axes are listed in :mod:`.xyz_axes`, the value
syntax in :mod:`.xyz_values`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from modules.requests import GenerationRequest
from modules.scripts.base import Control, RunContext, Script, ScriptOutput, arg_error
from modules.scripts.xyz_axes import Catalog, axes_for
from modules.scripts.xyz_plan import AXIS_NAMES, Plan, PlanError, read_plan
from modules.scripts.xyz_run import TITLE, run_plan


class XYZPlot(Script):
    """``app``: the application, whose checkpoints, VAEs, styles and upscalers the axis values are checked against
    before a job is queued (without it they are checked when the job runs)."""

    title = TITLE

    def __init__(self, app: Any = None) -> None:
        self.app = app

    def controls(self, kind: str) -> list[Control]:
        labels = [axis.label for axis in axes_for(kind)]
        axes: list[Control] = []
        for n, name in enumerate(AXIS_NAMES):
            axes += [
                Control(f"{name} type", "dropdown", labels[1 if n == 0 else 0], choices=labels, index=True,
                        elem_id=f"script_{kind}_xyz_plot_{name.lower()}_type"),
                Control(f"{name} values", "textbox", "", elem_id=f"script_{kind}_xyz_plot_{name.lower()}_values"),
                Control(f"{name} values", "dropdown", None, choices=[], multiselect=True, visible=False),
            ]
        return [
            *axes,
            Control("Draw legend", "checkbox", True, elem_id=f"script_{kind}_xyz_plot_draw_legend"),
            Control("Include Sub Images", "checkbox", False, elem_id=f"script_{kind}_xyz_plot_include_lone_images"),
            Control("Include Sub Grids", "checkbox", False, elem_id=f"script_{kind}_xyz_plot_include_sub_grids"),
            Control("Keep -1 for seeds", "checkbox", False, elem_id=f"script_{kind}_xyz_plot_no_fixed_seeds"),
            *[Control(f"Vary seeds for {name}", "checkbox", False,
                      elem_id=f"script_{kind}_xyz_plot_vary_seeds_{name.lower()}") for name in AXIS_NAMES],
            Control("Grid margins (px)", "slider", 0, minimum=0, maximum=500, step=2,
                    elem_id=f"script_{kind}_xyz_plot_margin_size"),
            Control("Use text inputs instead of dropdowns", "checkbox", False,
                    elem_id=f"script_{kind}_xyz_plot_csv_mode"),
        ]

    def linked_choices(self, kind: str) -> list[tuple[int, int, int]]:
        """Each axis's values dropdown follows its type, as A1111's (the text box when the axis has no choices)."""
        return [(3 * n, 3 * n + 1, 3 * n + 2) for n in range(len(AXIS_NAMES))]

    def choices_for(self, kind: str, source: int, value: Any) -> list[Any] | None:
        axes = axes_for(kind)
        try:
            axis = axes[int(value)] if not isinstance(value, str) else next(a for a in axes if a.label == value)
        except (ValueError, TypeError, IndexError, StopIteration):
            return None
        if axis.choices is None or axis.missing:
            return None
        return list(axis.choices(Catalog(self.app)))

    def plan(self, req: GenerationRequest, args: Sequence[Any], kind: str, app: Any = None) -> Plan:
        """The plan of ``args`` (missing ones take the controls' defaults); a ValidationError naming
        ``script_args`` for a bad one."""
        try:
            return read_plan(req, self.args_with_defaults(args, kind), kind, Catalog(app or self.app))
        except PlanError as exc:
            raise arg_error(self, str(exc)) from None

    def check(self, req: GenerationRequest, args: Sequence[Any], kind: str) -> None:
        self.plan(req, args, kind)

    def run(self, ctx: RunContext, req: GenerationRequest, args: Sequence[Any]) -> ScriptOutput:
        if not ctx.return_grid:  # no grid of a cell's images is shown: a cell is one image, as in A1111
            req = req.replace(batch_size=1)
        return run_plan(ctx, self.plan(req, args, ctx.kind, ctx.services))
