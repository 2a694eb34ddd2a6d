"""Running a merge: open the inputs, plan, then stream the result into a temporary file renamed when complete.

Only ``.safetensors`` output is streamed (a few tensors, or rows of one, in memory at a time). ``.ckpt`` output is a
pickle written by ``torch.save``, which needs the whole state dict in memory, as A1111 does.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from modules.errors import Interrupted, ValidationError
from modules.hashing import legacy_hash, sha256_of_files
from modules.merge.pipeline import BackgroundWriter, MergeError, atomic_output, compute_threads, disk_full, prefetch
from modules.merge.plan import METHODS, KeyPlan, Plan, Scratch, build_plan, compile_discard, compute
from modules.merge.safetensors_io import StreamingWriter, itemsize
from modules.merge.sources import TensorSource, open_checkpoint, open_vae
from modules.models.families import config_beside, yaml_beside

ProgressFn = Callable[[int, int, str], None]
CONFIG_SOURCES = ("A, B or C", "B", "C", "Don't")
FORMATS = ("safetensors", "ckpt")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".msgpack", ".onnx", ".h5", ".pb")


@dataclass
class ModelRef:
    """An input model: where it is, A1111's names for it, and its hashes (computed when first needed)."""

    path: Path
    name: str  # A1111's checkpoint name (relative path with extension)
    model_name: str  # used in default output names
    hash_fn: Callable[[], str] | None = None
    _sha256: str | None = field(default=None, repr=False)

    @classmethod
    def from_path(cls, path: Path | str) -> ModelRef:
        path = Path(path)
        return cls(path, path.name, path.name if path.is_dir() else path.stem)

    def weight_files(self) -> list[Path]:
        if not self.path.is_dir():
            return [self.path]
        return sorted(p for sub in sorted(self.path.iterdir()) if sub.is_dir()
                      for p in sub.iterdir() if p.is_file() and p.suffix in (".safetensors", ".bin"))

    def sha256(self) -> str:
        if self._sha256 is None:
            self._sha256 = self.hash_fn() if self.hash_fn else sha256_of_files(self.weight_files())
        return self._sha256

    def legacy_hash(self) -> str:
        files = self.weight_files()
        return legacy_hash(files[0]) if files else "NOFILE"


@dataclass
class MergeOptions:
    method: str = "weighted_sum"  # none, weighted_sum, add_difference (see plan.METHODS)
    multiplier: float = 0.3
    save_as_half: bool = False
    checkpoint_format: str = "safetensors"
    custom_name: str = ""
    config_source: int = 0  # index of CONFIG_SOURCES
    vae: Path | None = None
    vae_name: str = "None"
    discard_weights: str = ""
    save_metadata: bool = True
    add_merge_recipe: bool = True
    copy_metadata_fields: bool = True
    metadata_json: str = "{}"
    overwrite: bool = False
    chunk_bytes: int = 2 * 1024 * 1024  # rows of a tensor read and merged at a time


@dataclass
class MergeResult:
    path: Path
    sha256: str
    config: Path | None
    is_inpainting: bool
    is_instruct_pix2pix: bool
    tensors: int
    bytes: int
    seconds: float


def default_name(method: str, multiplier: float, a: ModelRef, b: ModelRef | None, c: ModelRef | None) -> str:
    """A1111's file name (without extension): ``0.7(a) + 0.3(b)``, ``a + 0.3(b - c)`` or ``a``."""
    if method == "weighted_sum" and b is not None:
        return f"{round(1 - multiplier, 2)}({a.model_name}) + {round(multiplier, 2)}({b.model_name})"
    if method == "add_difference" and b is not None and c is not None:
        return f"{a.model_name} + {round(multiplier, 2)}({b.model_name} - {c.model_name})"
    return a.model_name


def check_custom_name(name: str) -> str:
    name = (name or "").strip()
    for ext in FORMATS:
        name = name.removesuffix(f".{ext}")
    if not name:
        return ""
    if any(ch in name for ch in "/\\\0:") or name.startswith(".") or len(name.encode()) > 200:
        raise ValidationError(f"invalid custom name {name!r}: a file name without folders, not starting with "
                              "a dot, at most 200 bytes", field="custom_name")
    return name


def config_of(ref: ModelRef | None) -> Path | None:
    """The config to copy for a model: a diffusers folder itself, ``<name>.yaml``, or a ``<name>/`` config folder."""
    if ref is None:
        return None
    if ref.path.is_dir():
        return ref.path
    return yaml_beside(ref.path) or config_beside(ref.path)


def config_target(config: Path, output: Path) -> Path:
    return output.with_suffix(".yaml") if config.is_file() else output.with_suffix("")


def _by_role(rows: dict[str, torch.Tensor]) -> Callable[[str, str], torch.Tensor]:
    """A ``read(role, key)`` over rows already read for one key."""
    return lambda role, _key: rows[role]


def _parsed(value: str | None) -> Any:
    if not isinstance(value, str) or not value.startswith("{"):
        return None
    try:
        return json.loads(value)
    except (ValueError, RecursionError):
        return None


def parse_metadata_json(text: str | None) -> Any:
    """The user's extra metadata JSON; invalid or too deeply nested JSON is a ValidationError, never a crash."""
    try:
        return json.loads(text or "{}")
    except ValueError as exc:
        raise ValidationError(f"metadata JSON is invalid: {exc}", field="metadata_json") from None
    except RecursionError:
        raise ValidationError("metadata JSON is invalid: nested too deeply", field="metadata_json") from None


class Merge:
    """A prepared merge: inputs opened and checked, the output planned. ``run()`` writes it; ``close()`` always."""

    def __init__(self, a: ModelRef, b: ModelRef | None, c: ModelRef | None, options: MergeOptions,
                 output_dir: Path | None = None, output: Path | None = None) -> None:
        self.options = o = options
        if o.method not in METHODS:
            raise ValidationError(f"unknown interpolation method {o.method!r}", field="interp_method")
        if not 0.0 <= float(o.multiplier) <= 1.0:
            raise ValidationError("multiplier must be between 0 and 1", field="multiplier")
        if o.checkpoint_format not in FORMATS:
            raise ValidationError(f"checkpoint format must be one of {', '.join(FORMATS)}", field="checkpoint_format")
        if not 0 <= int(o.config_source) < len(CONFIG_SOURCES):
            raise ValidationError("config_source must be 0-3 (A, B or C / B / C / Don't)", field="config_source")
        if o.method != "none" and b is None:
            raise ValidationError("Merging requires a secondary model.", field="secondary_model_name")
        if o.method == "add_difference" and c is None:
            raise ValidationError("Interpolation method (Add difference) requires a tertiary model.",
                                  field="tertiary_model_name")
        self.a = a
        self.b = b if o.method != "none" else None
        self.c = c if o.method == "add_difference" else None
        discard = compile_discard(o.discard_weights)
        custom = check_custom_name(o.custom_name)
        self.sources: dict[str, TensorSource] = {}
        try:
            for role, ref in (("A", self.a), ("B", self.b), ("C", self.c)):
                if ref is not None:
                    self.sources[role] = open_checkpoint(ref.path)
            if o.vae is not None:
                self.sources["VAE"] = open_vae(o.vae)
            s = self.sources
            self.plan: Plan = build_plan(o.method, o.multiplier, s["A"], s.get("B"), s.get("C"), s.get("VAE"),
                                         o.save_as_half, discard)
            self.output = self._output_path(custom, output_dir, output)
            self.config = self._config_source()
        except BaseException:
            self.close()
            raise

    def _output_path(self, custom: str, output_dir: Path | None, output: Path | None) -> Path:
        o = self.options
        if output is None:
            if output_dir is None:
                raise ValueError("give output_dir or output")
            name = custom or default_name(o.method, o.multiplier, self.a, self.b, self.c)
            name += ".inpainting" if self.plan.is_inpainting else ""
            name += ".instruct-pix2pix" if self.plan.is_instruct_pix2pix else ""
            output = Path(output_dir) / f"{name}.{o.checkpoint_format}"
        output = Path(output)
        resolved = output.resolve()
        for role, ref in (("A", self.a), ("B", self.b), ("C", self.c)):
            if ref is not None and ref.path.resolve() == resolved:
                raise ValidationError(f"the output {output.name} would replace model {role}; choose another name",
                                      field="custom_name")
        if output.is_dir():
            raise ValidationError(f"{output} is a folder", field="custom_name")
        if output.exists() and not o.overwrite:
            raise ValidationError(f"{output} already exists; choose another name or allow overwriting",
                                  field="custom_name")
        return output

    def _config_source(self) -> Path | None:
        index = int(self.options.config_source)
        candidates = {0: [self.a, self.b, self.c], 1: [self.b], 2: [self.c]}.get(index, [])
        config = next((cfg for cfg in map(config_of, candidates) if cfg is not None), None)
        if config is not None and config_target(config, self.output).exists() and not self.options.overwrite:
            raise ValidationError(f"{config_target(config, self.output)} already exists; choose another name or "
                                  "allow overwriting", field="config_source")
        return config

    # -- running
    def run(self, progress: ProgressFn | None = None, should_stop: Callable[[], bool] | None = None) -> MergeResult:
        started = time.monotonic()
        report = progress or (lambda done, total, text: None)
        stop = should_stop or (lambda: False)
        metadata = self.metadata(report) if self.options.checkpoint_format == "safetensors" else {}
        needed = self.plan.total_bytes + 1024 * 1024
        free = shutil.disk_usage(self.output.parent if self.output.parent.exists() else Path.cwd()).free
        if free < needed:
            raise disk_full(self.output.parent, needed)
        if self.options.checkpoint_format == "safetensors":
            with compute_threads(2):
                sha = self._write_safetensors(metadata, report, stop)
        else:
            sha = self._write_ckpt(report, stop)
        config = self._copy_config()
        report(len(self.plan.keys), len(self.plan.keys), "saved")
        return MergeResult(self.output, sha, config, self.plan.is_inpainting, self.plan.is_instruct_pix2pix,
                           len(self.plan.keys), self.output.stat().st_size, time.monotonic() - started)

    def metadata(self, report: ProgressFn | None = None) -> dict[str, str]:
        """The safetensors ``__metadata__`` A1111 writes: copied fields, JSON fields, ``format``, the recipe."""
        o = self.options
        if not o.save_metadata:
            return {}
        refs = [r for r in (self.a, self.b, self.c) if r is not None]
        roles = [role for role in ("A", "B", "C") if role in self.sources]
        meta: dict[str, str] = {}
        if o.copy_metadata_fields:
            for role in roles:
                meta.update(self.sources[role].metadata)
        extra = parse_metadata_json(o.metadata_json)
        if isinstance(extra, dict):
            meta.update({str(k): v if isinstance(v, str) else json.dumps(v) for k, v in extra.items()})
        meta["format"] = "pt"
        if not o.add_merge_recipe:
            return meta
        for i, ref in enumerate(refs):
            if report:
                report(0, len(self.plan.keys), f"hashing {ref.name} ({i + 1}/{len(refs)})")
            ref.sha256()
        recipe = {
            "type": "webui",
            "primary_model_hash": self.a.sha256(),
            "secondary_model_hash": self.b.sha256() if self.b else None,
            "tertiary_model_hash": self.c.sha256() if self.c else None,
            "interp_method": METHODS[o.method],
            "multiplier": o.multiplier,
            "save_as_half": o.save_as_half,
            "custom_name": o.custom_name,
            "config_source": int(o.config_source),
            "bake_in_vae": o.vae_name if o.vae is not None else "None",
            "discard_weights": o.discard_weights,
            "is_inpainting": self.plan.is_inpainting,
            "is_instruct_pix2pix": self.plan.is_instruct_pix2pix,
        }
        models: dict[str, Any] = {}
        for role, ref in zip(roles, refs, strict=True):
            src_meta = self.sources[role].metadata
            models[ref.sha256()] = {"name": ref.name, "legacy_hash": ref.legacy_hash(),
                                    "sd_merge_recipe": _parsed(src_meta.get("sd_merge_recipe"))}
            models.update(_parsed(src_meta.get("sd_merge_models")) or {})
        meta["sd_merge_recipe"] = json.dumps(recipe)
        meta["sd_merge_models"] = json.dumps(models)
        return meta

    @staticmethod
    def _roles(entry: KeyPlan) -> list[str]:
        return {"vae": ["VAE"], "copy": ["A"]}.get(entry.op, ["A", "B", "C"] if entry.in_c else ["A", "B"])

    def _row_ranges(self, entry: KeyPlan) -> list[tuple[int | None, int | None]]:
        sources = [self.sources[r] for r in self._roles(entry)]
        if not entry.shape or not all(s.can_read_rows(entry.key) for s in sources) \
                or any(s.shapes[entry.key][:1] != entry.shape[:1] for s in sources) \
                or (entry.op == "vae" and sources[0].shapes[entry.key] != entry.shape):
            return [(None, None)]
        row = max(max(1, torch.Size(shape[1:]).numel()) * itemsize(dtype)
                  for shape, dtype in [(s.shapes[entry.key], s.dtypes[entry.key]) for s in sources]
                  + [(entry.shape, entry.dtype)])
        rows = entry.shape[0]
        step = max(1, self.options.chunk_bytes // row)
        return [(i, min(i + step, rows)) for i in range(0, rows, step)] or [(0, 0)]

    def _reads(self) -> Iterator[tuple[int, KeyPlan, dict[str, torch.Tensor], bool]]:
        """(key index, key, the inputs' rows by role, last rows of the key?) in output order."""
        for i, entry in enumerate(self.plan.keys):
            ranges = self._row_ranges(entry)
            for n, (start, end) in enumerate(ranges):
                rows = {role: self.sources[role].read(entry.key, start, end) for role in self._roles(entry)}
                yield i, entry, rows, n == len(ranges) - 1

    def _write_safetensors(self, metadata: dict[str, str], report: ProgressFn, stop: Callable[[], bool]) -> str:
        keys = self.plan.keys
        layout = [(k.key, k.shape, k.dtype) for k in keys]
        scratch = Scratch(self.options.chunk_bytes)
        chunks = prefetch(self._reads())
        try:
            with atomic_output(self.output, self.options.overwrite, self.plan.total_bytes) as f:
                writer = StreamingWriter(f, layout, metadata or None)
                with BackgroundWriter(writer) as background:
                    for i, entry, rows, last in chunks:
                        if stop():
                            raise Interrupted("merge interrupted; nothing was written")
                        out = compute(self.plan, entry, _by_role(rows), self.options.save_as_half, scratch)
                        background.write(entry.key, out)
                        del out, rows
                        if last:
                            report(i + 1, len(keys), entry.key)
                return writer.finish()
        finally:
            chunks.close()

    def _write_ckpt(self, report: ProgressFn, stop: Callable[[], bool]) -> str:
        state: dict[str, torch.Tensor] = {}
        keys = self.plan.keys
        for i, entry in enumerate(keys):
            if stop():
                raise Interrupted("merge interrupted; nothing was written")
            out = compute(self.plan, entry, lambda role, key: self.sources[role].read(key),
                          self.options.save_as_half)
            state[entry.key] = out.contiguous().clone()
            report(i + 1, len(keys), entry.key)
        with atomic_output(self.output, self.options.overwrite, self.plan.total_bytes) as f:
            torch.save(state, f)
        del state
        return sha256_of_files([self.output])

    def _copy_config(self) -> Path | None:
        if self.config is None:
            return None
        target = config_target(self.config, self.output)
        try:
            if self.config.is_file():
                with atomic_output(target, overwrite=True) as f, open(self.config, "rb") as src:
                    shutil.copyfileobj(src, f)
                return target
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(self.config, target, ignore=lambda d, names: [
                n for n in names if n.lower().endswith(_WEIGHT_SUFFIXES) or n.startswith(".")])
            return target
        except OSError as exc:  # the checkpoint is complete; a missing config only loses the override
            raise MergeError(f"the merged model was saved to {self.output}, but copying its config from "
                             f"{self.config} failed: {exc}") from None

    def close(self) -> None:
        for source in self.sources.values():
            source.close()
        self.sources = {}

    def __enter__(self) -> Merge:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
