"""The X/Y/Z plot's arguments read into a plan: each axis with its values, legends and the text its values were
given as, the options, and the base request with its seeds fixed. Reading the plan checks every value, so a bad one
is refused before the job is queued."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import product
from typing import Any

from modules.errors import ValidationError
from modules.generation.batches import resolve_seeds
from modules.generation.noise import MAX_RANDOM_SEED
from modules.requests import GenerationRequest, validate_any
from modules.scripts.xyz_axes import Axis, Catalog, Value, axes_for
from modules.scripts.xyz_values import csv_text, csv_values, float_values, int_values, orderings, shown

AXIS_NAMES = ("X", "Y", "Z")
SEED_AXES = ("Seed", "Var. seed")
MAX_GRID_MEGAPIXELS = 200


class PlanError(ValueError):
    """A bad argument; the message names it (``X values: ...``)."""


@dataclass(frozen=True)
class AxisPlan:
    name: str  # X, Y or Z
    axis: Axis
    values: list[Value]
    text: str  # the values as given (a dropdown's as one CSV row): the infotext's "X Values"

    @property
    def labels(self) -> list[str]:
        return [self.axis.format(v) for v in self.values]

    @property
    def plotted(self) -> bool:
        return self.axis.label != "Nothing"


@dataclass(frozen=True)
class Options:
    legend: bool = True
    lone_images: bool = False
    sub_grids: bool = False
    keep_random_seeds: bool = False
    vary_seeds: tuple[bool, bool, bool] = (False, False, False)
    margin: int = 0


@dataclass(frozen=True)
class Plan:
    base: GenerationRequest
    axes: tuple[AxisPlan, AxisPlan, AxisPlan]
    options: Options
    catalog: Catalog

    @property
    def shape(self) -> tuple[int, int, int]:
        x, y, z = self.axes
        return len(x.values), len(y.values), len(z.values)

    def index(self, ix: int, iy: int, iz: int) -> int:
        nx, ny, _ = self.shape
        return ix + iy * nx + iz * nx * ny

    def request(self, ix: int, iy: int, iz: int) -> GenerationRequest:
        """The cell's request: each axis's value applied in X, Y, Z order, then the seed varied where asked."""
        req = self.base
        for axis, i in zip(self.axes, (ix, iy, iz), strict=True):
            req = axis.axis.apply(req, axis.values[i], axis.values, self.catalog)
        nx, ny, _ = self.shape
        vary_x, vary_y, vary_z = self.options.vary_seeds
        xdim, ydim = (nx if vary_x else 1), (ny if vary_y else 1)
        offset = (ix if vary_x else 0) + (iy * xdim if vary_y else 0) + (iz * xdim * ydim if vary_z else 0)
        return req.replace(seed=req.seed + offset) if offset and req.seed != -1 else req

    def order(self) -> list[tuple[int, int, int]]:
        """The cells in the order they run: the costliest axis to switch (checkpoints) in the outer loop."""
        outer, middle = loop_order(*(a.axis.cost for a in self.axes))
        inner = 3 - outer - middle
        ranges = [range(n) for n in self.shape]
        cells = []
        for a, b, c in product(ranges[outer], ranges[middle], ranges[inner]):
            at = [0, 0, 0]
            at[outer], at[middle], at[inner] = a, b, c
            cells.append((at[0], at[1], at[2]))
        return cells


def loop_order(x: float, y: float, z: float) -> tuple[int, int]:
    """(outer, middle) axis numbers for the nested loops, as A1111 picks them (Z, Y, X when no axis costs more)."""
    if x > y and x > z:
        return 0, (1 if y > z else 2)
    if y > x and y > z:
        return 1, (0 if x > z else 2)
    if z > x and z > y:
        return 2, (0 if x > y else 1)
    return 2, 1


# -- arguments -------------------------------------------------------------------------------------------------------
def axis_index(value: Any, axes: Sequence[Axis], name: str) -> int:
    """An axis type given as its index (A1111's API) or its label; None or empty means Nothing."""
    if value is None or value == "":
        return 0
    if isinstance(value, bool):
        raise PlanError(f"{name} type: {value!r} is not an axis")
    if isinstance(value, (int, float)) or (isinstance(value, str) and value.strip().lstrip("-").isdigit()):
        try:
            index = int(value)
        except (ValueError, OverflowError):
            index = -1
        if not 0 <= index < len(axes) or (isinstance(value, float) and index != value):
            raise PlanError(f"{name} type: {shown(value)} is not an axis index (0 to {len(axes) - 1})")
        return index
    for i, axis in enumerate(axes):
        if isinstance(value, str) and axis.label.lower() == value.strip().lower():
            return i
    raise PlanError(f"{name} type: unknown axis {shown(value)}; the axes are: {', '.join(a.label for a in axes)}")



def flag(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes", "on")
    return bool(value)


def margin_of(value: Any) -> int:
    try:
        margin = int(float(value or 0))
    except (TypeError, ValueError, OverflowError):
        raise PlanError(f"Grid margins (px): {shown(value)} is not a number") from None
    if not 0 <= margin <= 500:
        raise PlanError(f"Grid margins (px): must be between 0 and 500 (got {margin})")
    return margin


def _dropdown(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return csv_values(value)
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    raise PlanError(f"values (dropdown): {shown(value)} is not a list")


def _typed(axis: Axis, items: list[str]) -> list[Value]:
    if axis.type == "int":
        return list(int_values(items))
    if axis.type == "float":
        return list(float_values(items))
    if axis.type == "permutations":
        return list(orderings(items))
    return list(items)


def read_axis(name: str, axis: Axis, text: Any, dropdown: Any, csv_mode: bool) -> AxisPlan:
    """One axis's values, from its dropdown (an axis with choices, text inputs off, a dropdown given) or its text."""
    if axis.label == "Nothing":
        return AxisPlan(name, axis, [0], str(text or ""))
    chosen = _dropdown(dropdown) if axis.choices is not None and not csv_mode else []
    raw = csv_text(chosen) if chosen else str(text or "")
    try:
        values = _typed(axis, chosen or csv_values(raw))
    except ValueError as exc:
        raise PlanError(f"{name} values: {axis.label}: {exc}") from None
    if not values:
        raise PlanError(f"{name} values: no values for {axis.label}")
    return AxisPlan(name, axis, values, raw)


def fixed_seeds(plan: AxisPlan) -> AxisPlan:
    """A seed axis with its -1 values drawn at random once, so every cell of that column or row shares one."""
    if plan.axis.label not in SEED_AXES:
        return plan
    values = [int(random.randrange(MAX_RANDOM_SEED)) if v == -1 else v for v in plan.values]
    return AxisPlan(plan.name, plan.axis, values, plan.text)


def read_plan(req: GenerationRequest, args: Sequence[Any], kind: str, catalog: Catalog) -> Plan:
    """The plan of ``args`` (18 values, in the controls' order); raises :class:`PlanError`."""
    axes = axes_for(kind)
    csv_mode = flag(args[17])
    options = Options(flag(args[9]), flag(args[10]), flag(args[11]), flag(args[12]),
                      (flag(args[13]), flag(args[14]), flag(args[15])), margin_of(args[16]))
    read = []
    for n, name in enumerate(AXIS_NAMES):
        axis = axes[axis_index(args[n * 3], axes, name)]
        if axis.missing is not None:
            raise PlanError(f"{name} type: {axis.label} cannot be plotted: {axis.missing}")
        one = read_axis(name, axis, args[n * 3 + 1], args[n * 3 + 2], csv_mode)
        read.append(one if options.keep_random_seeds else fixed_seeds(one))
    base = req if options.keep_random_seeds else resolve_seeds(req)
    plan = Plan(base, (read[0], read[1], read[2]), options, catalog)
    check_plan(plan)
    return plan


# -- checks ----------------------------------------------------------------------------------------------------------
def _validated(req: GenerationRequest, catalog: Catalog) -> None:
    validate_any(req, catalog.limits())


def check_plan(plan: Plan) -> None:
    """Each axis's values confirmed (known names) and each applied alone to the base request validated; the whole
    grid kept under A1111's size limit."""
    nx, ny, nz = plan.shape
    megapixels = round(nx * ny * nz * plan.base.width * plan.base.height / 1_000_000)
    if megapixels >= MAX_GRID_MEGAPIXELS:
        raise PlanError(f"the grid would be too large ({megapixels} megapixels; at most {MAX_GRID_MEGAPIXELS})")
    for axis in plan.axes:
        if not axis.plotted:
            continue
        try:
            if axis.axis.confirm is not None:
                axis.axis.confirm(axis.values, plan.catalog, plan.base)
        except ValueError as exc:
            raise PlanError(f"{axis.name} values: {exc}") from None
        for value, label in zip(axis.values, axis.labels, strict=True):
            try:
                _validated(axis.axis.apply(plan.base, value, axis.values, plan.catalog), plan.catalog)
            except (ValidationError, ValueError) as exc:
                raise PlanError(f"{axis.name} values: {label or value}: {exc}") from None
