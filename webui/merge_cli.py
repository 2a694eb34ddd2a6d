"""``python -m webui merge A [B] [C] --out PATH``: A1111's Checkpoint Merger on the command line.

    python -m webui merge a.safetensors b.safetensors --method weighted_sum --multiplier 0.3 --out merged.safetensors
    python -m webui merge a.safetensors b.safetensors c.safetensors --method add_difference --multiplier 1 --out m/
    python -m webui merge my-diffusers-folder --method none --fp16 --out converted.safetensors

Inputs are paths (``.safetensors``, ``.ckpt``, diffusers folders) or names of checkpoints in the model folders. The
result is streamed into a temporary file beside the output and renamed when complete: an error or Ctrl+C leaves no
partial file. On error it prints one line and exits non-zero.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from modules.errors import Interrupted, WebUIError

if TYPE_CHECKING:
    from modules.merge import ModelRef

_METHODS = ("none", "weighted_sum", "add_difference")
_CONFIG = {"any": 0, "B": 1, "C": 2, "none": 3}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="webui merge", description="Merge Stable Diffusion checkpoints (A1111's "
                                "Checkpoint Merger), streamed tensor by tensor.")
    p.add_argument("models", nargs="+", metavar="MODEL", help="A, then B and C as the method needs")
    p.add_argument("--method", choices=_METHODS, default=None,
                   help="none (A only), weighted_sum ((1-M)*A + M*B), add_difference (A + M*(B-C)); "
                        "default from the number of models")
    p.add_argument("--multiplier", "-m", type=float, default=0.3, help="M, from 0 to 1 (default 0.3)")
    p.add_argument("--out", "-o", required=True, help="output file, or a folder for A1111's default name")
    p.add_argument("--format", choices=("safetensors", "ckpt"), default=None,
                   help="output format (default: from --out's extension, else safetensors)")
    p.add_argument("--fp16", action="store_true", help="save float32 weights as float16")
    p.add_argument("--vae", default=None, help="bake in this VAE (a file, or a name in models/VAE)")
    p.add_argument("--discard", default="", metavar="REGEX", help="leave out weights whose name matches")
    p.add_argument("--config-source", choices=tuple(_CONFIG), default="any",
                   help="copy the config (.yaml or config folder) beside A, B or C (any), only B, only C, or none")
    p.add_argument("--no-metadata", action="store_true", help="write no safetensors metadata (and no recipe)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    return p


def _model(arg: str) -> ModelRef:
    from modules.merge import ModelRef

    path = Path(arg).expanduser()
    if path.exists():
        return ModelRef.from_path(path)
    from modules.hashing import HashCache
    from modules.models.registry import CheckpointRegistry
    from modules.paths import Paths

    info = CheckpointRegistry(Paths.create().ckpt_dirs, HashCache(None)).find(arg)
    if info is None:
        raise WebUIError(f"checkpoint not found: {arg}")
    return ModelRef(info.path, info.name, info.model_name)


def _vae(arg: str | None) -> Path | None:
    if not arg or arg == "None":
        return None
    path = Path(arg).expanduser()
    if path.is_file():
        return path
    from modules.models.vae import list_vaes
    from modules.paths import Paths

    for vae in list_vaes(Paths.create().vae_dir):
        if arg in (vae.name, vae.path.stem):
            return vae.path
    raise WebUIError(f"VAE not found: {arg}")


def _output(out: str, fmt: str | None) -> tuple[Path | None, Path | None, str]:
    """(output file or None, output folder or None, format)."""
    path = Path(out).expanduser()
    if path.is_dir() or out.endswith(("/", "\\")):
        return None, path, fmt or "safetensors"
    suffix = path.suffix.lower().lstrip(".")
    if suffix in ("safetensors", "ckpt"):
        if fmt and fmt != suffix:
            raise WebUIError(f"--format {fmt} does not match the output file {path.name}")
        return path, None, suffix
    fmt = fmt or "safetensors"
    return path.with_name(f"{path.name}.{fmt}"), None, fmt


class _Progress:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.last = -1

    def __call__(self, done: int, total: int, text: str) -> None:
        if not self.enabled:
            return
        pct = int(100 * done / max(total, 1))
        if pct != self.last or text.startswith("hashing"):
            self.last = pct
            label = text if text.startswith("hashing") else f"{done}/{total} tensors"
            sys.stderr.write(f"\r\x1b[Kmerging: {pct:3d}% {label}")
            sys.stderr.flush()

    def end(self) -> None:
        if self.enabled and self.last >= 0:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


def run(args: argparse.Namespace) -> int:
    from modules.merge import Merge, MergeOptions

    refs = [_model(m) for m in args.models]
    method = args.method or _METHODS[min(len(refs), 3) - 1]
    needed = {"none": 1, "weighted_sum": 2, "add_difference": 3}[method]
    if len(refs) != needed:
        raise WebUIError(f"--method {method} takes {needed} model{'s' if needed > 1 else ''}, got {len(refs)}")
    output, folder, fmt = _output(args.out, args.format)
    vae = _vae(args.vae)
    options = MergeOptions(
        method=method, multiplier=args.multiplier, save_as_half=args.fp16, checkpoint_format=fmt,
        config_source=_CONFIG[args.config_source], vae=vae, vae_name=vae.name if vae else "None",
        discard_weights=args.discard, save_metadata=not args.no_metadata, overwrite=args.overwrite)
    progress = _Progress(not args.quiet and sys.stderr.isatty())
    b = refs[1] if len(refs) > 1 else None
    c = refs[2] if len(refs) > 2 else None
    with Merge(refs[0], b, c, options, output_dir=folder, output=output) as merge:
        try:
            result = merge.run(progress)
        finally:
            progress.end()
    print(f"Checkpoint saved to {result.path}")
    print(f"sha256: {result.sha256} (hash {result.sha256[:10]}), {result.tensors} tensors, "
          f"{result.bytes / 2**20:.1f} MiB, {result.seconds:.1f} s")
    if result.config is not None:
        print(f"config copied to {result.config}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except KeyboardInterrupt:
        print("webui merge: interrupted; nothing was written", file=sys.stderr)
        return 130
    except Interrupted as exc:
        print(f"webui merge: {exc}", file=sys.stderr)
        return 130
    except WebUIError as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"webui merge: error: {message}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"webui merge: error: {exc.strerror or exc} ({exc.filename or ''})", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
