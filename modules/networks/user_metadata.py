"""What the extra-networks panel knows about a network file, kept as A1111 keeps it, and what its card inserts.

- user metadata: ``<file without extension>.json`` beside the network file, as A1111's "Edit metadata" dialog writes
  it: ``description`` and ``notes``, and for LoRA ``sd version``, ``activation text``, ``preferred weight`` and
  ``negative text``. Keys this product does not edit (A1111's checkpoint ``vae``, an extension's own) are kept when
  saving. A missing or unreadable file reads as ``{}``: a broken side file must never hide the network.
- description: the metadata's ``description``, else ``name.txt`` or ``name.description.txt`` beside the file.
- preview: ``name.EXT`` or ``name.preview.EXT`` beside the file (EXT: png, jpg, jpeg, webp, gif, tried in that order),
  only when it resolves inside the network's folder; a LoRA may also carry one in its ``ssmd_cover_images`` metadata.
  Previews reach the page as small data-URI thumbnails, so no route ever serves a file from a model folder.
- prompt text: LoRA ``<lora:ALIAS:W>`` then `` activation text``; hypernetworks ``<hypernet:NAME:W>``; embeddings
  their name. W is the preferred weight when set (not 0), else the default multiplier (A1111's setting, 1). A card
  whose text is already in the prompt takes it out again instead (A1111's ``tryToRemoveExtraNetworkFromPrompt``).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import math
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from modules.fileio import atomic_write_text, load_json_object
from modules.paths import is_inside

if TYPE_CHECKING:
    from modules.app import App
    from modules.networks.lora_files import LoraInfo

log = logging.getLogger(__name__)

DESCRIPTION = "description"
NOTES = "notes"
SD_VERSION = "sd version"
ACTIVATION_TEXT = "activation text"
PREFERRED_WEIGHT = "preferred weight"
NEGATIVE_TEXT = "negative text"
SD_VERSIONS = ("SD1", "SD2", "SDXL", "Unknown")
PREVIEW_EXTENSIONS = ("png", "jpg", "jpeg", "webp", "gif")
SEPARATOR = " "  # A1111's extra_networks_add_text_separator
DEFAULT_MULTIPLIER = 1.0  # A1111's extra_networks_default_multiplier
MAX_SIDE_FILE_BYTES = 1024 * 1024  # a description or metadata file larger than this is not read
MAX_PREVIEW_BYTES = 64 * 1024 * 1024
MAX_PREVIEW_PIXELS = 64 * 1024 * 1024  # larger pictures would take gigabytes to decode for a 256-pixel thumbnail
THUMBNAIL_SIZE = 256
THUMBNAIL_LIMIT = 4096  # thumbnails a panel keeps

# A1111's extraNetworks.js patterns: a tag with its weight (and the text added after it), a weighted negative text
_TAG = re.compile(r"<([^:^>]+:[^:]+):[\d.]+>(.*)")
_TAGS = re.compile(r"<([^:^>]+:[^:]+):[\d.]+>")
_NEGATIVE = re.compile(r"\(([^:^>]+:[\d.]+)\)")


# --- the files beside a network --------------------------------------------------------------------------------------


def _base(path: Path) -> str:
    """The file's path without its extension, as A1111's ``os.path.splitext(filename)[0]``."""
    return os.path.splitext(str(path))[0]


def metadata_file(path: Path) -> Path:
    return Path(_base(path) + ".json")


def _small_text(path: Path) -> str | None:
    """A side file's text, or None when it is missing, too large or unreadable."""
    try:
        if not path.is_file() or path.stat().st_size > MAX_SIDE_FILE_BYTES:
            return None
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def read_user_metadata(path: Path) -> dict[str, Any]:
    """The user metadata of the network file ``path``; {} when there is none or it cannot be read as an object."""
    target = metadata_file(path)
    try:
        if not target.is_file() or target.stat().st_size > MAX_SIDE_FILE_BYTES:
            return {}
        return load_json_object(target)
    except (OSError, ValueError) as exc:
        log.warning("extra network user metadata %s not read: %s", target, exc)
        return {}


def write_user_metadata(path: Path, changes: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``changes`` into the file's user metadata (other keys kept) and replace the file atomically, written as
    A1111 writes it (4-space indent, non-ASCII kept); the metadata as saved."""
    merged = {**read_user_metadata(path), **changes}
    atomic_write_text(metadata_file(path), json.dumps(merged, indent=4, ensure_ascii=False))
    return merged


def read_description(path: Path, user: Mapping[str, Any]) -> str:
    """What a card shows under its name: the user metadata's description, else the first description file."""
    given = user.get(DESCRIPTION)
    if given is not None:
        return str(given)
    base = _base(path)
    for candidate in (f"{base}.txt", f"{base}.description.txt"):
        text = _small_text(Path(candidate))
        if text is not None:
            return text
    return ""


def find_preview(path: Path, root: Path) -> Path | None:
    """The preview image beside the network file ``path``; only one that resolves inside ``root`` (its folder)."""
    base = _base(path)
    for ext in PREVIEW_EXTENSIONS:
        for candidate in (Path(f"{base}.{ext}"), Path(f"{base}.preview.{ext}")):
            if candidate.is_file() and is_inside(candidate, root):
                return candidate
    return None


def cover_image(metadata: Mapping[str, Any]) -> bytes | None:
    """The first image of a LoRA's ``ssmd_cover_images`` metadata (a JSON list of base64 images), decoded."""
    covers: Any = metadata.get("ssmd_cover_images")
    if isinstance(covers, str):
        try:
            covers = json.loads(covers)
        except ValueError:
            return None
    for item in covers if isinstance(covers, list) else ():
        if isinstance(item, str) and item and len(item) <= MAX_PREVIEW_BYTES * 4 // 3:
            try:
                return base64.b64decode(item, validate=False)
            except (binascii.Error, ValueError):
                return None
    return None


# --- thumbnails ------------------------------------------------------------------------------------------------------


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)


def thumbnail_uri(source: Path | bytes, size: int = THUMBNAIL_SIZE) -> str | None:
    """A small WebP of the image as a ``data:`` URI; None for anything that is not a readable image."""
    try:
        if isinstance(source, Path) and source.stat().st_size > MAX_PREVIEW_BYTES:
            return None
        with Image.open(source if isinstance(source, Path) else io.BytesIO(source)) as image:
            if image.width * image.height > MAX_PREVIEW_PIXELS:
                return None
            image.draft("RGB", (size, size))  # a JPEG is decoded at a reduced scale
            image.thumbnail((size, size))
            small = image.convert("RGBA" if _has_alpha(image) else "RGB")
        out = io.BytesIO()
        small.save(out, "WEBP", quality=80)
    except Exception as exc:  # noqa: BLE001 - a damaged preview (any decoder error) only loses its thumbnail
        log.debug("no thumbnail for %s: %s", source if isinstance(source, Path) else "cover image", exc)
        return None
    return "data:image/webp;base64," + base64.b64encode(out.getvalue()).decode("ascii")


class Thumbnails:
    """Thumbnails made once per file version (path, size, modification time); the oldest go past ``limit``."""

    def __init__(self, size: int = THUMBNAIL_SIZE, limit: int = THUMBNAIL_LIMIT) -> None:
        self.size = size
        self.limit = limit
        self._lock = threading.Lock()
        self._made: OrderedDict[tuple[str, int, int, str], str | None] = OrderedDict()

    def _cached(self, path: Path, kind: str, make: Callable[[], str | None]) -> str | None:
        try:
            st = path.stat()
        except OSError:
            return None
        key = (str(path), st.st_size, st.st_mtime_ns, kind)
        with self._lock:
            if key in self._made:
                return self._made[key]
        made = make()
        with self._lock:
            self._made[key] = made
            while len(self._made) > self.limit:
                self._made.popitem(last=False)
        return made

    def preview(self, path: Path) -> str | None:
        return self._cached(path, "file", lambda: thumbnail_uri(path, self.size))

    def cover(self, network: Path, metadata: Mapping[str, Any]) -> str | None:
        """The thumbnail of a LoRA's embedded cover image (kept per version of the LoRA file)."""
        if "ssmd_cover_images" not in metadata:
            return None

        def make() -> str | None:
            data = cover_image(metadata)
            return thumbnail_uri(data, self.size) if data else None

        return self._cached(network, "cover", make)


# --- what a card inserts ---------------------------------------------------------------------------------------------


def js_number(value: float) -> str:
    """A number as JavaScript writes it (1.0 -> "1", 0.5 -> "0.5"): A1111 adds the default weight in the browser."""
    if math.isfinite(value) and value == int(value) and abs(value) < 1e21:
        return str(int(value))
    return repr(float(value))


def weight_text(user: Mapping[str, Any], default: float = DEFAULT_MULTIPLIER) -> str:
    """The weight a LoRA card writes: the preferred weight as Python writes it (0.8, 1.0) when it is a non-zero
    number, else the default multiplier as the browser writes it (1)."""
    weight = user.get(PREFERRED_WEIGHT)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or not weight:
        return js_number(default)
    return str(weight)


def lora_texts(alias: str, user: Mapping[str, Any], default: float = DEFAULT_MULTIPLIER) -> tuple[str, str]:
    """(prompt text, negative prompt text) of a LoRA card: ``<lora:ALIAS:W>`` and the activation text after a
    space; the negative text as ``(TEXT:1)``, or "" when there is none."""
    text = f"<lora:{alias}:{weight_text(user, default)}>"
    activation = user.get(ACTIVATION_TEXT)
    if activation:
        text += " " + str(activation)
    negative = user.get(NEGATIVE_TEXT)
    return text, (f"({negative}:1)" if negative else "")


def hypernetwork_text(name: str, default: float = DEFAULT_MULTIPLIER) -> str:
    return f"<hypernet:{name}:{js_number(default)}>"


def toggle_network_text(prompt: str, text: str, separator: str = SEPARATOR, negative: bool = False) -> str:
    """The prompt after a card click: ``text`` taken out when it is there (a tag of the same network whatever its
    weight, with the text that followed it and the separator before it), else added after the separator."""
    if not text:
        return prompt
    removed = _remove_network_text(prompt, text, separator, negative)
    return removed if removed is not None else prompt + separator + text


def _remove_network_text(prompt: str, text: str, separator: str, negative: bool) -> str | None:
    """A1111's ``tryToRemoveExtraNetworkFromPrompt``: the prompt without ``text``, or None when it is not there.
    (A1111 reads a plain text as a regular expression; here it is matched literally.)"""
    single = _NEGATIVE if negative else _TAG
    match = single.search(text)
    if match is None:
        pattern = re.compile(f"(?:{re.escape(separator)})?{re.escape(text)}")
        result = pattern.sub("", prompt)
        return result if result != prompt else None
    part, after = match.group(1), ("" if negative else match.group(2))
    found_at: list[int] = []

    def drop(found: re.Match[str]) -> str:
        inner = single.search(found.group(0))
        if inner is not None and inner.group(1) == part:
            found_at.append(found.start())  # A1111 keeps the last position, in the original prompt
            return ""
        return found.group(0)

    result = (_NEGATIVE if negative else _TAGS).sub(drop, prompt)
    if not found_at:
        return None
    at = found_at[-1]
    if after and result[at:at + len(after)] == after:
        result = result[:at] + result[at + len(after):]
    if separator and at >= len(separator) and result[at - len(separator):at] == separator:
        result = result[:at - len(separator)] + result[at:]
    return result


def lora_version(metadata: Mapping[str, Any], user: Mapping[str, Any]) -> str:
    """SD1, SD2, SDXL or Unknown: the user's choice, else A1111's guess from the training metadata."""
    chosen = user.get(SD_VERSION)
    if chosen in SD_VERSIONS:
        return str(chosen)
    if str(metadata.get("ss_base_model_version", "")).startswith("sdxl_"):
        return "SDXL"
    if str(metadata.get("ss_v2", "")) == "True":
        return "SD2"
    return "SD1" if metadata else "Unknown"


# --- the cards -------------------------------------------------------------------------------------------------------

PAGES = ("textual_inversion", "hypernetworks", "checkpoints", "lora")  # A1111's tab order
FORBIDDEN_ALIASES = ("none", "Addams")  # A1111 compares a lowered alias with these (so only "none" ever matches)


@dataclass(frozen=True)
class Card:
    """One network as its panel page shows it. ``key`` names it in the page (its path below its folder; for a
    checkpoint its title); ``insert`` is what a click uses (LoRA alias or file name, embedding or hypernetwork name,
    checkpoint title)."""

    page: str
    key: str
    name: str
    path: Path
    root: Path
    index: int
    insert: str
    hash: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict, compare=False)
    user: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def relative(self) -> str:
        return _key(self.path, self.root)

    @property
    def search_terms(self) -> str:
        """A1111's: the path from the folder's parent (``Lora/sub/name.safetensors``) and the hash when known."""
        return " ".join(t for t in (f"{self.root.name}/{self.relative}", self.hash) if t)

    @property
    def search_only(self) -> bool:
        """In a hidden folder (``.name``): shown only when a search of four characters or more finds it."""
        return "/." in "/" + self.relative

    @property
    def description(self) -> str:
        return read_description(self.path, self.user)

    def times(self) -> tuple[float, float]:
        """(date created, date modified) for sorting; ctime stands in for the creation time."""
        try:
            st = self.path.stat()
        except OSError:
            return 0.0, 0.0
        return st.st_ctime, st.st_mtime


def _key(path: Path, root: Path) -> str:
    """A file's key in its page: its path below the folder it was found in."""
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name


def _root_of(path: Path, roots: list[Path]) -> Path:
    return next((r for r in roots if path.is_relative_to(r)), path.parent)


def _setting(app: App, key: str, default: Any) -> Any:
    """An A1111 option this product may not have yet: its value when the settings know it, else A1111's default."""
    return app.settings.snapshot().get(key, default)


def _model_version(app: App) -> str | None:
    parts = app.models.current
    return None if parts is None else {"sd1": "SD1", "sd2": "SD2", "sdxl": "SDXL"}.get(parts.family.base)


def _lora_aliases(infos: list[LoraInfo], by_filename: bool) -> dict[str, str]:
    """File name -> the name its tag uses: the alias, unless the setting says file names, or the alias is "none" or
    another file already took it as a name or alias (A1111's ``forbidden_network_aliases``)."""
    forbidden, seen = set(FORBIDDEN_ALIASES), set[str]()
    for info in infos:
        if info.alias in seen:
            forbidden.add(info.alias.lower())
        seen.update((info.name, info.alias))
    return {i.name: i.name if by_filename or i.alias.lower() in forbidden else i.alias for i in infos}


def _lora_cards(app: App, filtered: bool) -> list[Card]:
    """One card per LoRA name (a later file of the same name replaces an earlier one, as A1111's dictionary); cards
    of another SD version than the loaded model's are left out unless ``lora_show_all`` (as A1111)."""
    registry = app.networks.loras.registry
    infos = registry.files
    inserts = _lora_aliases(infos, _setting(app, "lora_preferred_name", "Alias from file") == "Filename")
    by_name = {info.name: info for info in infos}
    model = _model_version(app) if filtered and not _setting(app, "lora_show_all", False) else None
    hide_unknown = _setting(app, "lora_hide_unknown_for_versions", [])
    cards = []
    for index, info in enumerate(by_name.values()):
        user = read_user_metadata(info.path)
        version = lora_version(info.metadata, user)
        if model is not None and (model in hide_unknown if version == "Unknown" else version != model):
            continue
        root = _root_of(info.path, registry.dirs)
        given = info.metadata.get("sshs_model_hash")
        cards.append(Card("lora", _key(info.path, root), info.name, info.path, root, index, inserts[info.name],
                          given if isinstance(given, str) else "", info.metadata, user))
    return cards


def _file_card(page: str, path: Path, roots: list[Path], index: int, name: str, hash_: str = "") -> Card:
    root = _root_of(path, roots)
    return Card(page, _key(path, root), name, path, root, index, name, hash_, {}, read_user_metadata(path))


def _embedding_cards(app: App) -> list[Card]:
    """The embeddings the loaded model uses (A1111 lists those); every readable one while no model is loaded."""
    database = app.networks.embeddings
    parts = app.models.current
    found = database.for_model(parts).registered if parts is not None else database.embeddings
    by_name = {emb.name: emb for emb in found}
    return [_file_card("textual_inversion", emb.path, database.dirs, i, emb.name, emb.shorthash)
            for i, emb in enumerate(by_name.values())]


def hypernetwork_dir(app: App) -> Path:
    """The hypernetworks folder: the paths' own when they name one, else ``models/hypernetworks`` (A1111's)."""
    return Path(getattr(app.paths, "hypernetwork_dir", app.paths.models_dir / "hypernetworks"))


def _hypernetwork_cards(app: App) -> list[Card]:
    """``*.pt`` below the hypernetworks folder, sorted case-insensitively; "None" is never a name (as A1111)."""
    folder = hypernetwork_dir(app)
    files = sorted(folder.rglob("*.pt"), key=lambda p: str(p).lower()) if folder.is_dir() else []
    by_name = {p.stem: p for p in files if p.stem != "None" and p.is_file()}
    return [_file_card("hypernetworks", path, [folder], i, name) for i, (name, path) in enumerate(by_name.items())]


def _checkpoint_cards(app: App) -> list[Card]:
    """A checkpoint card shows the file name without extension and selects the checkpoint by its title."""
    cards = []
    for index, info in enumerate(app.registry.list()):
        root = _root_of(info.path, app.paths.ckpt_dirs)
        name = info.path.name if info.kind == "diffusers" else os.path.splitext(info.path.name)[0]
        cards.append(Card("checkpoints", info.title, name, info.path, root, index, info.title, info.sha256 or "",
                          {}, read_user_metadata(info.path)))
    return cards


def list_cards(app: App, page: str, filtered: bool = True) -> list[Card]:
    """The cards of ``page`` (one of :data:`PAGES`) in A1111's default order; ``filtered=False`` keeps the LoRA
    cards of other SD versions (to find a card by its key)."""
    if page == "lora":
        return _lora_cards(app, filtered)
    if page == "textual_inversion":
        return _embedding_cards(app)
    if page == "hypernetworks":
        return _hypernetwork_cards(app)
    if page == "checkpoints":
        return _checkpoint_cards(app)
    raise ValueError(f"unknown extra networks page: {page!r}")


def find_card(app: App, page: str, key: str) -> Card | None:
    """The card ``key`` names among those listed now: a key from the page never reaches the file system itself."""
    if page not in PAGES:
        return None
    return next((c for c in list_cards(app, page, filtered=False) if c.key == key), None)
