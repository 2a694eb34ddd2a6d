"""Extra networks: LoRA and LyCORIS, textual-inversion embeddings; found, hashed, applied per job, removed."""
