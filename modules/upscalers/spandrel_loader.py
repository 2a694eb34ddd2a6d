"""spandrel, imported without torchvision.

spandrel's package imports every architecture it knows when it is imported, and two of them (LaMa's rotation
wrapper, RestoreFormer's normalisation) import names from ``torchvision.transforms.functional``, which cannot be
installed beside this torch. While spandrel is imported, and only then, a stand-in module provides those names
(``normalize``, ``InterpolationMode``, and a ``rotate`` that refuses); afterwards it is removed again, so other
libraries that probe for torchvision still see it missing. A real, working torchvision is used when present.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import sys
import types
from collections.abc import Iterator
from typing import Any

import torch

_SHIM_MODULES = ("torchvision.transforms.functional", "torchvision.transforms", "torchvision")


class SpandrelMissing(RuntimeError):
    """spandrel is not installed."""


def _torchvision_works() -> bool:
    try:
        import torchvision.transforms.functional  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken torchvision raises RuntimeError, not ImportError
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
        return False
    return True


def _normalize(tensor: torch.Tensor, mean: Any, std: Any, inplace: bool = False) -> torch.Tensor:
    m = torch.as_tensor(mean, dtype=tensor.dtype, device=tensor.device).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=tensor.dtype, device=tensor.device).view(-1, 1, 1)
    return tensor.sub_(m).div_(s) if inplace else (tensor - m) / s


def _rotate(*_args: Any, **_kwargs: Any) -> Any:
    raise NotImplementedError("rotation needs torchvision, which is not installed")


class _InterpolationMode(enum.Enum):
    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"


@contextlib.contextmanager
def _torchvision_stand_in() -> Iterator[None]:
    if _torchvision_works():
        yield
        return
    functional = types.ModuleType("torchvision.transforms.functional")
    functional.normalize = _normalize  # type: ignore[attr-defined]
    functional.rotate = _rotate  # type: ignore[attr-defined]
    functional.InterpolationMode = _InterpolationMode  # type: ignore[attr-defined]
    transforms = types.ModuleType("torchvision.transforms")
    transforms.functional = functional  # type: ignore[attr-defined]
    transforms.InterpolationMode = _InterpolationMode  # type: ignore[attr-defined]
    package = types.ModuleType("torchvision")
    package.transforms = transforms  # type: ignore[attr-defined]
    sys.modules.update(zip(_SHIM_MODULES, (functional, transforms, package), strict=True))
    try:
        yield
    finally:
        for name in _SHIM_MODULES:
            sys.modules.pop(name, None)


@functools.cache
def spandrel() -> Any:
    """The spandrel module, with the architectures of spandrel-extra-arches added when that is installed."""
    try:
        with _torchvision_stand_in():
            import spandrel as module

            try:
                import spandrel_extra_arches
            except ImportError:
                spandrel_extra_arches = None
    except ImportError as exc:
        raise SpandrelMissing(f"model upscalers need spandrel ({exc}); run scripts/setup.sh") from None
    if spandrel_extra_arches is not None:
        spandrel_extra_arches.install(ignore_duplicates=True)
    return module
