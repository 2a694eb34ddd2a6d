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
import codecs
import os
import sys
import time
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
        check_model_file(path)
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


LOG_INTERVAL = 5.0  # seconds between progress lines when stderr is a log, not a terminal
_TEXT_CONTROLS = set(range(32)) - {9, 10, 12, 13}


def not_a_model_file(path: Path) -> str | None:
    """What ``path`` is when it is a file but clearly no model ("a PNG image", "a text file", ...), else None.

    Only the first 4 KiB are read, and only of a regular file (never a FIFO or a device). A text file named
    ``.safetensors`` is left to the loader, whose message for a damaged safetensors file says more.
    """
    from modules.models.checkpoint_file import _MAGIC

    try:
        if not path.is_file():
            return None
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return None  # reported by the load itself
    if not head:
        return "an empty file"
    if head[8:9] == b"{" or head.startswith(b"PK") or head[:1] == b"\x80":  # safetensors, torch zip, pickle
        return None
    for magic, what in _MAGIC:
        if head.startswith(magic):
            return what
    if path.suffix.lower() != ".safetensors" and _is_text(head):
        return "a text file"
    return None


def _is_text(head: bytes) -> bool:
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return False
    return not _TEXT_CONTROLS.intersection(head)


def check_model_file(path: Path) -> None:
    """Raise ``ModelLoadError`` with the loader's one-line message when ``path`` is clearly not a model file."""
    from modules.errors import ModelLoadError

    kind = not_a_model_file(path)
    if kind:
        raise ModelLoadError(f"{path.name} is not a model file ({kind})")


class ConsoleBar:
    """A tqdm progress bar on stderr for a command line.

    On a terminal it shows at once (``phase`` redraws it with the new description) and refreshes ten times a
    second. When stderr is a log (not a terminal) it prints at most every ``LOG_INTERVAL`` seconds and nothing in
    the first interval, then its final state at the end of a successful run, so a run that fails early leaves only
    its error. A failed run's bar is cleared from a terminal: the error is the last line either way.
    ``enabled=False`` (``--disable-console-progressbars``, ``--quiet``) or ``TQDM_DISABLE=1`` prints nothing.
    """

    def __init__(self, desc: str, total: int | None = None, enabled: bool = True, unit: str = "it") -> None:
        from tqdm import tqdm  # type: ignore[import-untyped]  # tqdm ships no type information

        self.desc, self.total, self.n = desc, total, 0
        self.tty = sys.stderr.isatty()
        interval = 0.1 if self.tty else LOG_INTERVAL
        sized = self.tty and _columns() > 0  # a terminal that reports no width (a bare pty) gets 80x24
        self.bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, mininterval=interval,
                        delay=0 if self.tty else interval, dynamic_ncols=sized,
                        **({"ncols": 80, "nrows": 24} if self.tty and not sized else {}),
                        **({} if enabled else {"disable": True}))
        self.shown = not self.bar.disable  # a disabled tqdm (also by TQDM_DISABLE=1) has none of its state

    def phase(self, desc: str) -> None:
        if desc != self.desc:
            self.desc = desc
            if self.shown:
                self.bar.set_description_str(desc, refresh=self.tty)

    def set_total(self, total: int) -> None:
        if total != self.total:
            self.total = total
            if self.shown:
                self.bar.total = total
                if self.tty:
                    self.bar.refresh()

    def restart(self) -> None:
        """Start the clock (elapsed time, rate) again: the work it measures starts after a slow preparation
        (loading a model, hashing the inputs). Redraws on a terminal; prints nothing in a log."""
        self.n = 0
        if not self.shown:
            return
        if self.tty:
            self.bar.reset()
            return
        self.bar.n = self.bar.last_print_n = 0
        self.bar.start_t = self.bar.last_print_t = time.time()  # tqdm's clock

    def to(self, n: int) -> None:
        if n > self.n:
            if self.shown:
                self.bar.update(n - self.n)
            self.n = n

    def close(self, ok: bool) -> None:
        if self.shown:
            if ok:
                self.bar.delay = 0  # a log gets the final state even of a run shorter than the first interval
            elif self.tty:
                self.bar.leave = False
        self.bar.close()

    def __enter__(self) -> ConsoleBar:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self.close(exc_type is None)


def _columns() -> int:
    """The width of the terminal on stderr; 0 when it reports none (a bare pseudo-terminal)."""
    try:
        return os.get_terminal_size(sys.stderr.fileno()).columns
    except (OSError, ValueError):
        return 0


def human_size(n: int) -> str:
    """``512 bytes``, ``22.5 MiB``, ``2.0 GiB``."""
    if n < 1024:
        return f"{n} bytes"
    size, unit = n / 1024, "KiB"
    for bigger in ("MiB", "GiB", "TiB"):
        if size < 1024:
            break
        size, unit = size / 1024, bigger
    return f"{size:.1f} {unit}"


class _Progress:
    """The merger's ``progress(done, total, text)`` on a :class:`ConsoleBar` over the tensors written."""

    def __init__(self, bar: ConsoleBar) -> None:
        self.bar = bar
        self.hashing = False

    def __call__(self, done: int, total: int, text: str) -> None:
        self.bar.set_total(total)
        if text.startswith("hashing"):
            self.hashing = True
            self.bar.phase(text)
            return
        if self.hashing:  # the rate is of the tensors merged, not of the inputs hashed before
            self.hashing = False
            self.bar.restart()
        self.bar.to(done)
        if text == "saved":
            self.bar.phase("saved")
        elif done >= total:
            self.bar.phase("writing")  # a .ckpt is written after the last tensor is merged
        else:
            self.bar.phase("merging")


def run(args: argparse.Namespace) -> int:
    from modules.merge import Merge, MergeOptions

    started = time.monotonic()
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
    b = refs[1] if len(refs) > 1 else None
    c = refs[2] if len(refs) > 2 else None
    with (Merge(refs[0], b, c, options, output_dir=folder, output=output) as merge,
          ConsoleBar("merging", len(merge.plan.keys), enabled=not args.quiet, unit="tensor") as bar):
        result = merge.run(_Progress(bar))
    print(f"Checkpoint saved to {result.path}")
    print(f"sha256: {result.sha256} (hash {result.sha256[:10]}), {result.tensors} tensors, "
          f"{result.bytes / 2**20:.1f} MiB, {result.seconds:.1f} s")
    if result.config is not None:
        print(f"config copied to {result.config}")
    print(f"webui merge: wrote {result.path} ({human_size(result.bytes)}, {result.tensors} tensors) in "
          f"{time.monotonic() - started:.1f} s")
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
