"""Checkpoint merging (A1111's Checkpoint Merger), streamed tensor by tensor so memory stays flat.

    with Merge(ModelRef.from_path(a), ModelRef.from_path(b), None, MergeOptions(multiplier=0.3), output_dir=d) as m:
        result = m.run(progress=lambda done, total, text: ...)

Inputs: single-file ``.safetensors`` (read by row ranges with plain reads), ``.ckpt`` (``weights_only=True``) and
diffusers folders (converted to the single-file layout on the fly). Output: ``.safetensors`` streamed into a
temporary file in the target folder and renamed when complete; ``.ckpt`` needs the whole state dict (``torch.save``).
"""

from modules.merge.merger import (
    CONFIG_SOURCES,
    FORMATS,
    Merge,
    MergeOptions,
    MergeResult,
    ModelRef,
    default_name,
)
from modules.merge.pipeline import MergeError
from modules.merge.plan import METHODS, method_id

__all__ = ["CONFIG_SOURCES", "FORMATS", "METHODS", "Merge", "MergeError", "MergeOptions", "MergeResult", "ModelRef",
           "default_name", "method_id"]
