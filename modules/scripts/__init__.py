"""Scripts: A1111's built-in scripts (X/Y/Z plot, prompt matrix, prompts from file, SD upscale, loopback,
outpainting) and the ones extensions add, as typed objects over the generation requests (see :mod:`.base`)."""
