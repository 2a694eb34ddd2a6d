"""Pixel upscalers: the built-in resamplers and model upscalers (ESRGAN, Real-ESRGAN, SwinIR, DAT, HAT, SCUNet...)
loaded with spandrel, tiled, in one registry that hires fix and Extras use by name."""
