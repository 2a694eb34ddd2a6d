"""A1111's sampling in sigma space (the k-diffusion formulation): sigma tables and schedule types, samplers as small
pure functions over a denoiser, and A1111's noise generators. Being built; generation does not use it yet."""
