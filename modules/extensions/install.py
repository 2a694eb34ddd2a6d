"""Installing an extension: from a git URL (``git clone``, when the user asks), a folder or a ``.zip`` file.

An install is staged first: the files are put in a hidden folder beside the installed extensions and their
``extension.toml`` is read, so the user sees what the extension declares (its requirements included) before
installing it. Nothing of the extension runs: nothing is imported and no install script is started. Zip archives are
checked whole before anything is written: no absolute paths, no ``..``, no links, and bounded sizes.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import stat
import subprocess
import threading
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from modules.errors import ValidationError
from modules.extensions.manifest import Manifest, ManifestError, looks_like_a1111, name_problem, read_manifest

MAX_TOTAL_BYTES = 256 * 2**20  # an extension's files, unpacked
MAX_FILES = 20000
GIT_TIMEOUT_S = 600
STAGE_PREFIX = ".staging-"
STAGED_LIFETIME_S = 3600
_GIT_URL = re.compile(r"(?:https?|ssh|git|file)://[^\s]+|[A-Za-z0-9_.-]+@[A-Za-z0-9_.-]+:[^\s:]+")
_BRANCH = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_./-]{0,199}")
_COPY_IGNORED = shutil.ignore_patterns("__pycache__")


class InstallError(ValidationError):
    """An extension cannot be installed from this source (the message says why; nothing was installed)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, field="source")


@dataclass(frozen=True)
class Staged:
    """An extension fetched and read, waiting to be installed (``folder`` holds its files)."""

    token: str
    root: Path  # the staging folder, removed once installed or discarded
    folder: Path
    source: str
    manifest: Manifest
    created: float


def source_kind(source: str) -> str:
    """``git``, ``zip`` or ``folder``: how ``source`` (a URL or a path on this machine) is installed."""
    if _GIT_URL.fullmatch(source):
        return "git"
    path = Path(source).expanduser()
    if path.is_file() and path.suffix.lower() == ".zip":
        return "zip"
    if path.is_dir():
        return "git" if is_bare_repository(path) else "folder"
    raise InstallError("source: not a git URL (https://, ssh://, git://, file://, user@host:path), nor a folder or a "
                       ".zip file on this machine")


def is_bare_repository(path: Path) -> bool:
    return (path / "HEAD").is_file() and (path / "objects").is_dir() and (path / "refs").is_dir()


def member_problem(name: str) -> str | None:
    """Why a zip member named ``name`` may not be extracted (it would land outside the target folder)."""
    if "\0" in name:
        return "contains a NUL character"
    if name.startswith(("/", "\\")) or PureWindowsPath(name).drive:
        return "is an absolute path"
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        return "contains '..'"
    return None


def _is_link(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def extract_zip(archive: Path, target: Path) -> None:
    """Extract ``archive`` into the new folder ``target``, refusing the whole archive when one member is unsafe."""
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            if len(infos) > MAX_FILES:
                raise InstallError(f"the archive has more than {MAX_FILES} entries")
            for info in infos:
                problem = member_problem(info.filename) or ("is a link" if _is_link(info) else None)
                if problem:
                    raise InstallError(f"the archive entry {info.filename[:200]!r} {problem}; nothing was installed")
            if sum(i.file_size for i in infos) > MAX_TOTAL_BYTES:
                raise InstallError(f"the archive unpacks to more than {MAX_TOTAL_BYTES // 2**20} MiB")
            target.mkdir(parents=True)
            written = 0
            for info in infos:
                written = _extract_member(zf, info, target, written)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError):
        raise InstallError("the file is not a readable zip archive") from None
    except (RuntimeError, NotImplementedError) as exc:  # encrypted members, unknown compression
        raise InstallError(f"the archive cannot be unpacked: {exc}") from None


def _extract_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, written: int) -> int:
    dest = target.joinpath(*PurePosixPath(info.filename.replace("\\", "/")).parts)
    if not dest.resolve().is_relative_to(target.resolve()):
        raise InstallError(f"the archive entry {info.filename[:200]!r} leaves the folder; nothing was installed")
    if info.is_dir():
        dest.mkdir(parents=True, exist_ok=True)
        return written
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with zf.open(info) as src, open(dest, "xb") as out:
            while chunk := src.read(1 << 20):
                written += len(chunk)
                if written > MAX_TOTAL_BYTES:  # the sizes in the archive's directory may lie
                    raise InstallError(f"the archive unpacks to more than {MAX_TOTAL_BYTES // 2**20} MiB")
                out.write(chunk)
    except FileExistsError:
        raise InstallError(f"the archive holds {info.filename[:200]!r} twice") from None
    return written


def _check_folder_size(folder: Path) -> None:
    count = size = 0
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in files:
            count += 1
            try:
                size += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                continue
        if count > MAX_FILES or size > MAX_TOTAL_BYTES:
            raise InstallError(f"the folder holds more than {MAX_FILES} files or {MAX_TOTAL_BYTES // 2**20} MiB")


def git_clone(url: str, target: Path, branch: str | None = None, timeout: float = GIT_TIMEOUT_S) -> None:
    """``git clone`` of ``url`` into ``target`` (no shell; the ``ext`` transport and prompts are off)."""
    if branch is not None and not _BRANCH.fullmatch(branch):
        raise InstallError("branch: not a branch name")
    if not _GIT_URL.fullmatch(url):
        url = str(Path(url).expanduser().resolve())  # a local repository
    command = ["git", "-c", "protocol.ext.allow=never", "clone", "--quiet", "--no-recurse-submodules",
               *(["--branch", branch] if branch else []), "--", url, str(target)]
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "", "SSH_ASKPASS": ""}
    env.setdefault("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")  # never a password or host-key question
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, check=False,
                              stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise InstallError("git is not installed on this machine") from None
    except subprocess.TimeoutExpired:
        raise InstallError(f"git clone did not finish within {timeout:.0f} s") from None
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        raise InstallError(f"git clone failed: {(lines[-1] if lines else 'exit code ' + str(done.returncode))[:300]}")


def _only_child(folder: Path) -> Path:
    """The folder holding the extension: ``folder``, or its single sub-folder (archives of a repository)."""
    children = [p for p in folder.iterdir() if p.name != "__MACOSX"]
    if not (folder / "extension.toml").exists() and len(children) == 1 and children[0].is_dir():
        return children[0]
    return folder


class Installer:
    """Stages and installs extensions into ``target`` (the data folder's ``extensions``)."""

    def __init__(self, target: Path) -> None:
        self.target = target
        self._lock = threading.Lock()
        self._staged: dict[str, Staged] = {}

    def stage(self, source: str, branch: str | None = None) -> Staged:
        """Fetch ``source`` (a git URL, a folder or a .zip on this machine) into a staging folder and read it."""
        source = source.strip()
        kind = source_kind(source)
        if branch and kind != "git":
            raise InstallError("branch: only a git source has branches")
        if kind == "folder":
            self._check_source_folder(Path(source).expanduser())
        root = self._new_stage()
        try:
            if kind == "git":
                git_clone(source, root / "repository", branch or None)
            elif kind == "zip":
                extract_zip(Path(source).expanduser(), root / "files")
            else:
                shutil.copytree(Path(source).expanduser(), root / "files", symlinks=True, ignore=_COPY_IGNORED)
            return self._remember(root, source)
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise

    def _check_source_folder(self, folder: Path) -> None:
        """A folder is read before anything is copied: it must hold an extension of this program."""
        if looks_like_a1111(folder):
            raise InstallError("this is an A1111 extension: it changes A1111's own code and cannot run here")
        try:
            read_manifest(folder)
        except ManifestError as exc:
            raise InstallError(f"not an extension of this program: {exc}") from None
        _check_folder_size(folder)

    def _new_stage(self) -> Path:
        self.cleanup()
        root = self.target / f"{STAGE_PREFIX}{secrets.token_hex(8)}"
        root.mkdir(parents=True)
        return root

    def _remember(self, root: Path, source: str) -> Staged:
        folder = _only_child(next(p for p in root.iterdir()))
        if looks_like_a1111(folder):
            raise InstallError("this is an A1111 extension: it changes A1111's own code and cannot run here")
        try:
            manifest = read_manifest(folder)
        except ManifestError as exc:
            raise InstallError(f"not an extension of this program: {exc}") from None
        staged = Staged(root.name[len(STAGE_PREFIX):], root, folder, source, manifest, time.time())
        with self._lock:
            self._staged[staged.token] = staged
        return staged

    def get(self, token: str) -> Staged:
        with self._lock:
            staged = self._staged.get(token)
        if staged is None or not staged.folder.is_dir():
            raise InstallError("nothing is waiting to be installed (check the source again)")
        return staged

    def commit(self, token: str, name: str | None, taken: set[str]) -> Path:
        """Move the staged extension into place as ``name`` (default: its manifest's name); ``taken``: the names
        already installed."""
        staged = self.get(token)
        name = (name or "").strip() or staged.manifest.name
        problem = name_problem(name)
        if problem:
            raise InstallError(f"name: {name!r} {problem}")
        dest = self.target / name
        if name in taken or dest.exists():
            raise InstallError(f"an extension named {name!r} is already installed")
        with self._lock:
            self._staged.pop(token, None)
        os.replace(staged.folder, dest)
        shutil.rmtree(staged.root, ignore_errors=True)
        return dest

    def discard(self, token: str) -> None:
        with self._lock:
            staged = self._staged.pop(token, None)
        if staged is not None:
            shutil.rmtree(staged.root, ignore_errors=True)

    def cleanup(self, now: float | None = None) -> None:
        """Remove stages older than an hour, and staging folders left by an earlier run."""
        now = time.time() if now is None else now
        with self._lock:
            old = [t for t, s in self._staged.items() if now - s.created > STAGED_LIFETIME_S]
            known = {s.root for s in self._staged.values()}
        for token in old:
            self.discard(token)
        try:
            leftovers = [p for p in self.target.glob(f"{STAGE_PREFIX}*") if p not in known]
        except OSError:
            return
        for path in leftovers:
            try:
                if now - path.stat().st_mtime > STAGED_LIFETIME_S:
                    shutil.rmtree(path, ignore_errors=True)
            except OSError:
                continue
