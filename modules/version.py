"""The product's version, as written in every image's infotext (``Version: ...``)."""

__version__ = "0.1.0"
VERSION = f"sdwebui {__version__}"
