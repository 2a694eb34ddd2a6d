"""A1111's built-in scripts, in the order A1111 lists them (img2img: loopback, outpainting mk2, poor man's
outpainting, prompt matrix, prompts from file or textbox, sd upscale, x/y/z plot; txt2img: the ones of those it
has, in the same order)."""

from __future__ import annotations

from typing import Any

from modules.scripts.base import Script
from modules.scripts.loopback import Loopback
from modules.scripts.outpainting import PoorMansOutpainting
from modules.scripts.outpainting_mk2 import OutpaintingMk2
from modules.scripts.prompt_matrix import PromptMatrix
from modules.scripts.prompts_from_file import PromptsFromFile
from modules.scripts.sd_upscale import SDUpscale
from modules.scripts.xyz import XYZPlot


def builtin_scripts(app: Any = None) -> list[Script]:
    """The built-ins; ``app`` gives them the installed upscalers, checkpoints, VAEs and styles to offer."""
    upscalers = app.upscalers.names if app is not None else None
    return [Loopback(), OutpaintingMk2(), PoorMansOutpainting(), PromptMatrix(app), PromptsFromFile(),
            SDUpscale(upscalers), XYZPlot(app)]
