"""Interrogate: a prompt from an image, as A1111's img2img buttons and ``/sdapi/v1/interrogate`` give it. ``clip``: a
BLIP caption plus CLIP-ranked categories; ``deepdanbooru``: tags from the DeepDanbooru network."""
