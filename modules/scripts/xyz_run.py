"""Running an X/Y/Z plan: one generation per cell (stopping between cells when the job is interrupted), then a grid
per Z value with the X and Y legends, and the main grid of those side by side with the Z legends.

A cell is the generation's image, or the grid of its images when it makes several (batch size or count above 1).
A cell that made nothing (interrupted, or failed with a warning) is black. The grids' infotexts are their first
cell's plus ``Script``, ``X Type``, ``X Values`` (and Y; Z on the main grid), as A1111 writes them.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from modules import infotext
from modules.engine import JobOutput
from modules.errors import WebUIError
from modules.scripts.base import RunContext, ScriptOutput
from modules.scripts.grids import GridAnnotation, draw_grid_annotations, image_grid
from modules.scripts.xyz_plan import SEED_AXES, AxisPlan, Plan

TITLE = "X/Y/Z plot"


@dataclass
class Cell:
    image: Image.Image
    job: JobOutput

    @property
    def infotext(self) -> str:
        return self.job.result.infotexts[0] if self.job.result.infotexts else ""


def run_plan(ctx: RunContext, plan: Plan) -> ScriptOutput:
    """The cells, then the grids (main first, then the sub-grids when asked) and the cells' images when asked."""
    nx, ny, nz = plan.shape
    total = nx * ny * nz
    cells: list[Cell | None] = [None] * total
    out = ScriptOutput()
    for done, (ix, iy, iz) in enumerate(plan.order()):
        if ctx.control.interrupted:
            break
        ctx.control.update(phase=f"{TITLE}: {done + 1} out of {total}")
        cells[plan.index(ix, iy, iz)] = _cell(ctx, plan, ix, iy, iz, out)
    if not any(cells):
        return out
    images = _filled(cells)
    subgrids = [_subgrid(plan, images[iz * nx * ny:(iz + 1) * nx * ny]) for iz in range(nz)]
    main = _main_grid(plan, subgrids)
    _add_grid(ctx, out, main, _grid_cell(cells, plan, 0), _grid_extra(plan, with_z=True))
    if plan.options.sub_grids:
        for iz, grid in enumerate(subgrids):
            first = _grid_cell(cells, plan, iz)
            _add_grid(ctx, out, grid, first, _grid_extra(plan, with_z=False), save=nz > 1)
    if plan.options.lone_images:
        for cell in cells:
            if cell is not None:
                _add_cell(out, cell)
    out.last = next(c.job for c in cells if c is not None)
    out.index_of_first_image = 1  # as A1111 reports it, whatever the sub-grids
    return out


def _cell(ctx: RunContext, plan: Plan, ix: int, iy: int, iz: int, out: ScriptOutput) -> Cell | None:
    try:
        job = ctx.process(plan.request(ix, iy, iz))
    except WebUIError as exc:
        labels = ", ".join(a.labels[i] for a, i in zip(plan.axes, (ix, iy, iz), strict=True) if a.plotted)
        ctx.control.warn(f"{TITLE}: the cell {labels} was not made: {exc}")
        return None
    out.warnings += [w for w in job.result.warnings if w not in out.warnings]
    images = job.result.images
    if not images:
        return None
    return Cell(images[0] if len(images) == 1 else image_grid(images), job)


def _filled(cells: list[Cell | None]) -> list[Image.Image]:
    """The cells' images, a black image in place of each missing one."""
    first = next(c.image for c in cells if c is not None)
    return [c.image if c is not None else Image.new("RGB", first.size) for c in cells]


def _legend(axis: AxisPlan) -> list[list[GridAnnotation]]:
    return [[GridAnnotation(label)] for label in axis.labels]


def _subgrid(plan: Plan, images: list[Image.Image]) -> Image.Image:
    x, y, _ = plan.axes
    grid = image_grid(images, rows=len(y.values))
    if not plan.options.legend:
        return grid
    width, height = max(im.width for im in images), max(im.height for im in images)
    return draw_grid_annotations(grid, width, height, _legend(x), _legend(y), plan.options.margin)


def _main_grid(plan: Plan, subgrids: list[Image.Image]) -> Image.Image:
    grid = image_grid(subgrids, rows=1)
    if not plan.options.legend:
        return grid
    width, height = max(im.width for im in subgrids), max(im.height for im in subgrids)
    return draw_grid_annotations(grid, width, height, _legend(plan.axes[2]), [[GridAnnotation()]])


def _grid_cell(cells: list[Cell | None], plan: Plan, iz: int) -> Cell | None:
    """The cell whose parameters a grid's infotext gives: the first of its Z value (else any that was made)."""
    nx, ny, _ = plan.shape
    own = cells[iz * nx * ny:(iz + 1) * nx * ny]
    return next((c for c in own if c is not None), None) or next((c for c in cells if c is not None), None)


def _axis_keys(axis: AxisPlan, plan: Plan) -> dict[str, str]:
    if not axis.plotted:
        return {}
    keys = {f"{axis.name} Type": axis.axis.label, f"{axis.name} Values": axis.text}
    if axis.axis.label in SEED_AXES and not plan.options.keep_random_seeds:
        keys[f"Fixed {axis.name} Values"] = ", ".join(str(v) for v in axis.values)
    return keys


def _grid_extra(plan: Plan, with_z: bool) -> dict[str, str]:
    x, y, z = plan.axes
    extra = {"Script": TITLE, **_axis_keys(x, plan), **_axis_keys(y, plan)}
    return {**extra, **_axis_keys(z, plan)} if with_z else extra


def with_params(text: str, extra: dict[str, str]) -> str:
    """``text`` (an infotext) with ``extra`` keys added to its parameters line, before ``Version``."""
    added = ", ".join(f"{key}: {infotext.quote(value)}" for key, value in extra.items())
    head, _, last = text.rpartition("\n")
    at = last.find("Version: ")
    while at > 0 and not last[:at].endswith(", "):
        at = last.find("Version: ", at + 1)
    if at < 0:
        line = f"{last}, {added}" if last else added
    else:
        line = f"{last[:at]}{added}, {last[at:]}"
    return f"{head}\n{line}" if head else line


def _add_grid(ctx: RunContext, out: ScriptOutput, grid: Image.Image, first: Cell | None, extra: dict[str, str],
              save: bool = True) -> None:
    info = with_params(first.infotext, extra) if first is not None else ""
    path = ctx.save_grid(grid, info, first.job.result.request, "xyz_grid") if save and first is not None else None
    if first is None:
        out.add(grid, info, grid=True, path=path)
        return
    r = first.job.result
    out.add(grid, info, r.all_seeds[0], r.all_subseeds[0], r.all_prompts[0], r.all_negative_prompts[0], path,
            grid=True)


def _add_cell(out: ScriptOutput, cell: Cell) -> None:
    r = cell.job.result
    path = cell.job.paths.get(0) if len(r.images) == 1 else None
    out.add(cell.image, cell.infotext, r.all_seeds[0], r.all_subseeds[0], r.all_prompts[0],
            r.all_negative_prompts[0], path)
