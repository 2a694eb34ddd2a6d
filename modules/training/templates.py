"""Prompt templates for training (A1111's ``textual_inversion_templates``): one prompt per line, where ``[name]``
is the embedding's name and ``[filewords]`` the image's caption.

The built-in files keep A1111's names (``none.txt``, ``style.txt``, ``style_filewords.txt``, ``subject.txt``,
``subject_filewords.txt``, ``hypernetwork.txt``) plus ``filewords.txt`` (the caption alone, the LoRA default). A
user's own files go in ``textual_inversion_templates/`` of the data folder, sub-folders included, and replace a
built-in file of the same name.
"""

from __future__ import annotations

from pathlib import Path

from modules.errors import ValidationError

BUILTIN_DIR = Path(__file__).resolve().parent / "templates"
USER_DIR_NAME = "textual_inversion_templates"
MAX_TEMPLATE_BYTES = 1024 * 1024


def template_files(data_dir: Path | None) -> dict[str, Path]:
    """``{name: path}``: the built-in templates, then the user's (which win), sorted by name."""
    found = {p.name: p for p in BUILTIN_DIR.glob("*.txt")}
    if data_dir is not None:
        user = data_dir / USER_DIR_NAME
        if user.is_dir():
            for path in user.rglob("*.txt"):
                if path.is_file():
                    found[path.relative_to(user).as_posix()] = path
    return dict(sorted(found.items(), key=lambda item: item[0].lower()))


def list_templates(data_dir: Path | None) -> list[str]:
    return list(template_files(data_dir))


def read_template(name: str, data_dir: Path | None) -> list[str]:
    """The template's non-empty lines; a clear error for an unknown or empty one."""
    files = template_files(data_dir)
    path = files.get(name)
    if path is None:
        raise ValidationError(f"template_filename: prompt template file {name!r} not found (choose one of "
                              f"{', '.join(files)})", field="template_filename")
    if path.stat().st_size > MAX_TEMPLATE_BYTES:
        raise ValidationError(f"template_filename: {name} is larger than 1 MiB", field="template_filename")
    lines = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise ValidationError(f"template_filename: {name} has no prompt lines", field="template_filename")
    return lines
