"""safetensors read and written a piece at a time, with plain file reads and writes (no memory map).

Reading through ``safe_open`` maps the file, and every page touched stays in the process's resident set until the
file is closed, so reading a whole checkpoint that way makes the peak RSS grow with the model. Here tensor data is
read with ``preadv`` into a fresh buffer, rows at a time, and freed when the caller drops it. The header is still
validated by the safetensors library first.

The writer lays out the header from the known output shapes and dtypes, then takes tensor data in order, chunk by
chunk, hashing the bytes as they go (so the sha256 of the result costs nothing extra).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

import torch
from safetensors import SafetensorError, safe_open

from modules.errors import ModelLoadError

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
    **{name: getattr(torch, attr) for name, attr in (("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2"))
       if hasattr(torch, attr)},
}
DTYPE_NAMES: dict[torch.dtype, str] = {v: k for k, v in DTYPES.items()}
MAX_HEADER = 100 * 1024 * 1024


def itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def nbytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    return math.prod(shape) * itemsize(dtype)


class SafetensorsReader:
    """Shapes, dtypes and metadata of a ``.safetensors`` file, and its tensors read by row ranges."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelLoadError(f"checkpoint not found: {self.path}")
        try:  # the library validates offsets, coverage and sizes; a bad file never gets further
            with safe_open(str(self.path), framework="pt", device="cpu") as f:
                self.metadata: dict[str, str] = dict(f.metadata() or {})
        except (SafetensorError, OSError, ValueError) as exc:
            raise ModelLoadError(f"{self.path.name} is corrupt or not a safetensors file ({exc})") from None
        self._fd = os.open(self.path, os.O_RDONLY)
        try:
            self._read_header()
        except BaseException:
            os.close(self._fd)
            raise

    def _read_header(self) -> None:
        size = os.fstat(self._fd).st_size
        head = os.pread(self._fd, 8, 0)
        (length,) = struct.unpack("<Q", head)
        if length > MAX_HEADER or 8 + length > size:
            raise ModelLoadError(f"{self.path.name} has an invalid safetensors header")
        try:
            header = json.loads(os.pread(self._fd, length, 8))
        except ValueError as exc:
            raise ModelLoadError(f"{self.path.name} has an unreadable safetensors header ({exc})") from None
        except RecursionError:
            raise ModelLoadError(f"{self.path.name} has an unreadable safetensors header (nested too deeply)") from None
        self._data_start = 8 + length
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.dtypes: dict[str, torch.dtype] = {}
        self._offsets: dict[str, tuple[int, int]] = {}
        entries = sorted(((k, v) for k, v in header.items() if k != "__metadata__"),
                         key=lambda kv: kv[1]["data_offsets"][0])
        for key, entry in entries:
            dtype = DTYPES.get(entry.get("dtype"))
            if dtype is None:
                raise ModelLoadError(f"{self.path.name}: unsupported dtype {entry.get('dtype')!r} for {key}")
            shape = tuple(int(d) for d in entry["shape"])
            begin, end = (int(x) for x in entry["data_offsets"])
            if end - begin != nbytes(shape, dtype) or self._data_start + end > size:
                raise ModelLoadError(f"{self.path.name}: tensor {key} lies outside the file")
            self.shapes[key], self.dtypes[key], self._offsets[key] = shape, dtype, (begin, end)

    def read(self, key: str, start: int | None = None, stop: int | None = None) -> torch.Tensor:
        """Rows ``start:stop`` (dim 0) of tensor ``key``, or all of it; a fresh tensor owning its memory."""
        shape, dtype = self.shapes[key], self.dtypes[key]
        begin, end = self._offsets[key]
        if start is not None and shape:
            stop = shape[0] if stop is None else min(stop, shape[0])
            row = math.prod(shape[1:]) * itemsize(dtype)
            begin, end = begin + start * row, begin + stop * row
            shape = (stop - start, *shape[1:])
        out = torch.empty(end - begin, dtype=torch.uint8)
        if end > begin:
            view = out.numpy().data
            done = 0
            while done < len(view):
                got = os.preadv(self._fd, [view[done:]], self._data_start + begin + done)
                if got <= 0:
                    raise ModelLoadError(f"{self.path.name} is truncated (while reading {key})")
                done += got
        return out.view(dtype).reshape(shape)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        try:
            self.close()
        except (OSError, AttributeError):
            pass


class StreamingWriter:
    """Writes a safetensors file whose layout is fixed in advance: header first, then each tensor's bytes in order."""

    def __init__(self, f: BinaryIO, layout: list[tuple[str, tuple[int, ...], torch.dtype]],
                 metadata: Mapping[str, str] | None = None) -> None:
        self._f = f
        self.sha256 = hashlib.sha256()
        header: dict[str, object] = {}
        if metadata:
            header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
        self._sizes: list[tuple[str, int]] = []
        offset = 0
        for key, shape, dtype in layout:
            size = nbytes(shape, dtype)
            header[key] = {"dtype": DTYPE_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
            self._sizes.append((key, size))
            offset += size
        raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        raw += b" " * (-len(raw) % 8)
        self._head = struct.pack("<Q", len(raw)) + raw
        self.total_bytes = len(self._head) + offset
        self._pos = 0
        self._left = self._sizes[0][1] if self._sizes else 0
        self._put(self._head)

    def _put(self, data: bytes | memoryview) -> None:
        self._f.write(data)
        self.sha256.update(data)

    def write(self, key: str, tensor: torch.Tensor) -> None:
        """Append ``tensor`` (all of ``key`` or its next rows); keys come in layout order, empty ones written too."""
        expected = self._sizes[self._pos][0] if self._pos < len(self._sizes) else None
        if key != expected:
            raise RuntimeError(f"tensor {key} written out of order (expected {expected})")
        data = tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy()
        if data.nbytes > self._left:
            raise RuntimeError(f"too many bytes for tensor {key}")
        self._put(data.data)
        self._left -= data.nbytes
        if self._left == 0:
            self._pos += 1
            self._left = self._sizes[self._pos][1] if self._pos < len(self._sizes) else 0

    def finish(self) -> str:
        """Check that every byte was written; the file's sha256."""
        if self._pos < len(self._sizes):
            raise RuntimeError("the merged file is incomplete")
        return self.sha256.hexdigest()

