"""Generation metadata of images written by any Stable Diffusion tool, read as A1111 parameters.

``read_metadata(data) -> ImageMetadata``: containers (PNG text/``eXIf`` chunks wherever they stand, JPEG/WebP EXIF
and XMP, JPEG comments, A1111 "stealth" pixel bits) and formats (A1111 and forks, ComfyUI graphs and its save nodes'
A1111 text or EXIF graphs, NovelAI, InvokeAI, Fooocus, Ruined Fooocus, SwarmUI, Easy Diffusion, Draw Things).
Engine side: no web framework imports.
"""

from modules.metadata.model import ImageMetadata
from modules.metadata.reader import read_metadata, text_to_infotext

__all__ = ["ImageMetadata", "read_metadata", "text_to_infotext"]
