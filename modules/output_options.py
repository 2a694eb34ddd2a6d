"""Where and how a job's images are saved: a snapshot of the settings taken when the job is submitted."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class OutputOptions:
    samples_dir: Path = Path("outputs/txt2img-images")
    grids_dir: Path = Path("outputs/txt2img-grids")
    save_samples: bool = True
    save_grid: bool = True
    samples_format: str = "png"
    grid_format: str = "png"
    filename_pattern: str = "[seed]"
    save_to_dirs: bool = True
    grid_save_to_dirs: bool = True
    directories_pattern: str = "[date]"  # the subdirectory's name pattern (A1111's directories_filename_pattern)
    max_prompt_words: int = 8  # words of [prompt_words] in either pattern (A1111's directories_max_prompt_words)
    save_txt: bool = False  # a .txt file with the infotext next to each image
    enable_pnginfo: bool = True
    grid_only_if_multiple: bool = True
    jpeg_quality: int = 80

    @classmethod
    def under(cls, root: Path, kind: str = "txt2img", **changes: Any) -> OutputOptions:
        """A1111's default layout below ``root``: ``<kind>-images`` and ``<kind>-grids``."""
        return cls(samples_dir=Path(root) / f"{kind}-images", grids_dir=Path(root) / f"{kind}-grids", **changes)
