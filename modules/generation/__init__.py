"""txt2img, img2img and inpainting as short named steps."""
