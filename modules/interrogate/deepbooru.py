"""DeepDanbooru interrogation: booru tags for an image, as A1111's "Interrogate DeepBooru" writes them.

The model is ``models/deepbooru/model-resnet_custom_v3.pt``, the torch port of DeepDanbooru's ``resnet_custom_v3``
whose state dict also carries the ``tags`` list. It is read only with ``torch.load(weights_only=True)``, loaded on
first use, kept until :meth:`DeepBooru.unload`, and never downloaded. Turning probabilities into the prompt string is
the pure function :func:`format_tags`, with A1111's options (threshold, order, spaces, escaping, filter, ranks).
"""

from __future__ import annotations

import pickle
import re
import threading
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from modules.generation.image_prep import resize_image
from modules.interrogate.deepbooru_net import STEM_WIDTH, DeepDanbooruNet
from modules.interrogate.errors import InterrogateUnavailable

MODEL_FILE = "model-resnet_custom_v3.pt"
IMAGE_SIZE = 512
RESIZE_AND_FILL = 2
_SPECIAL = re.compile(r"([\\()])")
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_READ_ERRORS = (EOFError, zipfile.BadZipFile, RuntimeError, OSError, ValueError, TypeError, KeyError)


# --- probabilities -> prompt text ---------------------------------------------------------------------------------

def format_tags(
    probabilities: Iterable[tuple[str, float]],
    *,
    threshold: float = 0.5,
    sort_alpha: bool = True,
    use_spaces: bool = True,
    escape: bool = True,
    filter_tags: str = "",
    return_ranks: bool = False,
) -> str:
    """A1111's tag string for ``(tag, probability)`` pairs in model order.

    Tags under ``threshold`` and ``rating:`` tags are dropped; the rest are sorted by name or by falling probability
    (ties keep model order), the comma-separated ``filter_tags`` (spaces or underscores) are removed, then each tag
    gets spaces for underscores, backslashes before ``\\ ( )`` and ``(tag:0.123)`` ranks as asked.
    """
    selected = _select(probabilities, threshold)
    hidden = {name.strip().replace(" ", "_") for name in filter_tags.split(",")}
    texts = [_tag_text(tag, selected[tag], use_spaces, escape, return_ranks)
             for tag in _ordered(selected, sort_alpha) if tag not in hidden]
    return ", ".join(texts)


def _select(probabilities: Iterable[tuple[str, float]], threshold: float) -> dict[str, float]:
    """Tags at or over ``threshold``, rating tags left out; a repeated tag keeps its first place and last value."""
    selected: dict[str, float] = {}
    for tag, probability in probabilities:
        # compared in double precision, as A1111's numpy 1.x compares a float32 score with a Python float
        if float(probability) < threshold or tag.startswith("rating:"):
            continue
        selected[tag] = float(probability)
    return selected


def _ordered(selected: dict[str, float], sort_alpha: bool) -> list[str]:
    if sort_alpha:
        return sorted(selected)
    return [tag for tag, _ in sorted(selected.items(), key=lambda item: -item[1])]


def _tag_text(tag: str, probability: float, use_spaces: bool, escape: bool, return_ranks: bool) -> str:
    text = tag.replace("_", " ") if use_spaces else tag
    if escape:
        text = _SPECIAL.sub(r"\\\1", text)
    return f"({text}:{probability:.3f})" if return_ranks else text


# --- image -> network input -----------------------------------------------------------------------------------------

def image_array(image: Image.Image) -> np.ndarray:
    """The network's input for ``image``: RGB, resized to 512x512 with "resize and fill", float32 in [0, 1],
    shape (1, 512, 512, 3)."""
    fitted = resize_image(RESIZE_AND_FILL, image.convert("RGB"), IMAGE_SIZE, IMAGE_SIZE)
    return np.expand_dims(np.asarray(fitted, dtype=np.float32), 0) / 255


# --- the model file -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Tagger:
    """The loaded network and its tag names, one per output."""

    net: DeepDanbooruNet
    tags: tuple[str, ...]


def read_tagger(path: Path) -> Tagger:
    """The network and tags stored in ``path``; :class:`InterrogateUnavailable` for anything unusable."""
    state = _load_state(path)
    tags = state.pop("tags", None)
    tensors = _tensors(path, state)
    stem, head = tensors.get("n_Conv_0.weight"), tensors.get("n_Conv_178.weight")
    if stem is None or head is None or stem.dim() != 4 or head.dim() != 4 or not stem.shape[0] \
            or STEM_WIDTH % stem.shape[0]:
        raise InterrogateUnavailable(f"{path.name} is not a DeepDanbooru resnet_custom_v3 model")
    if not isinstance(tags, (list, tuple)) or len(tags) != head.shape[0] or not all(isinstance(t, str) for t in tags):
        raise InterrogateUnavailable(f"{path.name} has no list of {head.shape[0]} tag names")
    with torch.device("meta"):
        net = DeepDanbooruNet(STEM_WIDTH // stem.shape[0], head.shape[0])
    try:
        net.load_state_dict(tensors, strict=True, assign=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:300]
        raise InterrogateUnavailable(f"{path.name} does not fit the DeepDanbooru network ({detail})") from None
    net.eval().requires_grad_(False)
    return Tagger(net, tuple(tags))


def _load_state(path: Path) -> dict[object, object]:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise InterrogateUnavailable(missing_message(path)) from None
    except pickle.UnpicklingError as exc:
        found = _GLOBAL.search(str(exc))
        detail = f" ({found.group(1)})" if found else ""
        raise InterrogateUnavailable(
            f"{path.name} was refused: the file asks to load code or objects a model does not need{detail}. "
            "Use the file of A1111's TorchDeepDanbooru release."
        ) from None
    except _READ_ERRORS as exc:
        raise InterrogateUnavailable(f"{path.name} is not a readable model ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise InterrogateUnavailable(f"{path.name} does not contain a state dict")
    return data


def _tensors(path: Path, state: dict[object, object]) -> dict[str, Tensor]:
    tensors = {key: value for key, value in state.items() if isinstance(key, str) and isinstance(value, Tensor)}
    if len(tensors) != len(state):
        raise InterrogateUnavailable(f"{path.name} holds entries that are not weights")
    return tensors


def missing_message(path: Path) -> str:
    """What to do when the model file is absent, naming it as ``models/deepbooru/<file>``."""
    shown = "/".join(path.parts[-3:]) if len(path.parts) >= 3 else str(path)
    return (f"DeepDanbooru model not found: place {path.name} (A1111's TorchDeepDanbooru release) at {shown}. "
            "Nothing is downloaded automatically.")


# --- the service ----------------------------------------------------------------------------------------------------

class DeepBooru:
    """DeepDanbooru tagging over the file in ``models_dir``, loaded on first use onto ``device_fn()``."""

    def __init__(self, models_dir: Path, device_fn: Callable[[], torch.device], *,
                 dtype: torch.dtype = torch.float32) -> None:
        self.models_dir = models_dir
        self._device_fn = device_fn
        self._dtype = dtype
        self._tagger: Tagger | None = None
        self._lock = threading.Lock()

    @property
    def path(self) -> Path:
        return self.models_dir / MODEL_FILE

    def available(self) -> bool:
        """Whether the model file is in place (it is not opened)."""
        return self.path.is_file()

    def missing_message(self) -> str:
        return missing_message(self.path)

    @property
    def loaded(self) -> bool:
        return self._tagger is not None

    def load(self) -> None:
        """Read the model now, rather than on the first image; :class:`InterrogateUnavailable` if it cannot be."""
        with self._lock:
            self._ready()

    def unload(self) -> None:
        """Forget the model; the next image reads it again."""
        with self._lock:
            self._tagger = None

    def probabilities(self, image: Image.Image) -> list[tuple[str, float]]:
        """Every tag with its probability for ``image``, in model order."""
        batch = torch.from_numpy(image_array(image))
        with self._lock:
            tagger = self._ready()
            weight = tagger.net.conv(0).weight
            with torch.inference_mode():
                scores = tagger.net(batch.to(weight.device, weight.dtype))[0].float().cpu().tolist()
        return list(zip(tagger.tags, scores, strict=True))

    def tags(self, image: Image.Image, *, threshold: float = 0.5, sort_alpha: bool = True, use_spaces: bool = True,
             escape: bool = True, filter_tags: str = "", return_ranks: bool = False) -> str:
        """A1111's DeepBooru prompt for ``image`` (see :func:`format_tags` for the options)."""
        return format_tags(self.probabilities(image), threshold=threshold, sort_alpha=sort_alpha,
                           use_spaces=use_spaces, escape=escape, filter_tags=filter_tags, return_ranks=return_ranks)

    def _ready(self) -> Tagger:
        if self._tagger is None:
            if not self.available():
                raise InterrogateUnavailable(self.missing_message())
            self._tagger = read_tagger(self.path)
        self._tagger.net.to(self._device_fn(), self._dtype)
        return self._tagger
