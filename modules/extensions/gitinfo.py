"""The git facts of an extension folder (remote, branch, commit, commit date), read from ``.git`` directly.

No ``git`` command runs: ``HEAD``, the refs (loose and packed), ``config`` and the commit object (a loose object or
an undeltified entry of a version-2 pack) are read as files. Anything unexpected gives an empty field.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from pathlib import Path

_SECTION = re.compile(r'\s*\[\s*([A-Za-z0-9.-]+)(?:\s+"((?:[^"\\]|\\.)*)")?\s*\]')
_HEX = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_COMMITTER = re.compile(rb"^committer .* (\d+) [+-]\d{4}$", re.MULTILINE)
MAX_IDX_BYTES = 256 * 2**20
COMMIT_TYPE = 1


@dataclass(frozen=True)
class GitInfo:
    remote: str = ""
    branch: str = ""
    commit_hash: str = ""
    commit_date: int | None = None  # committer time, seconds since the epoch (A1111's ``committed_date``)


def git_dir(folder: Path) -> Path | None:
    """``folder/.git``, or the folder a ``.git`` file points to (``gitdir: ...``, as submodules have)."""
    dot = folder / ".git"
    try:
        if dot.is_dir():
            return dot
        if dot.is_file():
            text = dot.read_text(encoding="utf-8", errors="replace")[:4096].strip()
            if text.startswith("gitdir:"):
                target = Path(text[len("gitdir:"):].strip())
                target = target if target.is_absolute() else folder / target
                return target if target.is_dir() else None
    except OSError:
        return None
    return None


def _read(path: Path, limit: int = 1 << 20) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read(limit)
    except OSError:
        return ""


def resolve_ref(git: Path, ref: str) -> str:
    """The commit ``ref`` (``refs/heads/main``) names, from its loose file or ``packed-refs``; "" if unknown."""
    if ".." in ref.split("/"):
        return ""
    loose = _read(git / ref, 4096).strip()
    if _HEX.fullmatch(loose):
        return loose
    for line in _read(git / "packed-refs", 64 << 20).splitlines():
        sha, _, name = line.partition(" ")
        if name.strip() == ref and _HEX.fullmatch(sha):
            return sha
    return ""


def remote_url(git: Path) -> str:
    """The URL of the ``origin`` remote (else of the first remote) in ``.git/config``."""
    urls: dict[str, str] = {}
    section: tuple[str, str] | None = None
    for line in _read(git / "config").splitlines():
        head = _SECTION.match(line)
        if head:
            section = (head.group(1).lower(), head.group(2) or "")
            continue
        key, sep, value = line.partition("=")
        if sep and section is not None and section[0] == "remote" and key.strip().lower() == "url":
            urls.setdefault(section[1], value.strip().strip('"'))
    return urls.get("origin") or next(iter(urls.values()), "")


def _commit_time(body: bytes) -> int | None:
    match = _COMMITTER.search(body.split(b"\n\n", 1)[0])
    return int(match.group(1)) if match else None


def _loose_object(git: Path, sha: str) -> bytes | None:
    path = git / "objects" / sha[:2] / sha[2:]
    try:
        data = zlib.decompressobj().decompress(path.read_bytes(), 1 << 20)
    except (OSError, zlib.error):
        return None
    header, _, body = data.partition(b"\0")
    return body if header.startswith(b"commit ") else None


def _pack_offset(idx: bytes, sha: bytes) -> int | None:
    """The offset of ``sha`` in the pack of a version-2 ``.idx`` file's bytes."""
    if idx[:8] != b"\xfftOc\x00\x00\x00\x02":
        return None
    width = len(sha)
    fanout = [int.from_bytes(idx[8 + 4 * i:12 + 4 * i], "big") for i in range(256)]
    count = fanout[255]
    names = 8 + 1024
    lo, hi = (fanout[sha[0] - 1] if sha[0] else 0), fanout[sha[0]]
    while lo < hi:  # binary search among the sorted names
        mid = (lo + hi) // 2
        name = idx[names + mid * width:names + (mid + 1) * width]
        if name == sha:
            offsets = names + count * width + count * 4
            offset = int.from_bytes(idx[offsets + mid * 4:offsets + mid * 4 + 4], "big")
            if offset & 0x80000000:  # an index into the 8-byte offsets that follow
                large = offsets + count * 4 + (offset & 0x7FFFFFFF) * 8
                offset = int.from_bytes(idx[large:large + 8], "big")
            return offset
        lo, hi = (mid + 1, hi) if name < sha else (lo, mid)
    return None


def _packed_object(git: Path, sha: str) -> bytes | None:
    """The commit ``sha`` from a pack, when it is stored whole (a deltified commit gives None)."""
    want = bytes.fromhex(sha)
    for idx_path in sorted((git / "objects" / "pack").glob("pack-*.idx")):
        try:
            if idx_path.stat().st_size > MAX_IDX_BYTES:
                continue
            offset = _pack_offset(idx_path.read_bytes(), want)
            if offset is None:
                continue
            with open(idx_path.with_suffix(".pack"), "rb") as pack:
                pack.seek(offset)
                chunk = pack.read(1 << 16)
        except OSError:
            continue
        kind, pos = (chunk[0] >> 4) & 7, 1
        while chunk[pos - 1] & 0x80 and pos < len(chunk):  # the size's continuation bytes
            pos += 1
        if kind != COMMIT_TYPE:
            return None
        try:
            return zlib.decompressobj().decompress(chunk[pos:], 1 << 20)
        except zlib.error:
            return None
    return None


def commit_date(git: Path, sha: str) -> int | None:
    body = _loose_object(git, sha) or _packed_object(git, sha)
    return _commit_time(body) if body else None


def read_git_info(folder: Path) -> GitInfo | None:
    """The git facts of ``folder``, or None when it is not a git work tree."""
    git = git_dir(folder)
    if git is None:
        return None
    head = _read(git / "HEAD", 4096).strip()
    if head.startswith("ref:"):
        ref = head[4:].strip()
        branch = ref.removeprefix("refs/heads/")
        sha = resolve_ref(git, ref)
    else:
        branch, sha = "", head if _HEX.fullmatch(head) else ""
    return GitInfo(remote=remote_url(git), branch=branch, commit_hash=sha,
                   commit_date=commit_date(git, sha) if sha else None)
