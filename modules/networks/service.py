"""The extra networks of one application: the LoRA folders (and their files, read once), the textual-inversion
embeddings and the hypernetworks, built at start-up."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from modules.hashing import HashCache
from modules.infotext import parse_infotext
from modules.networks.embeddings import EmbeddingDatabase
from modules.networks.hypernetworks import HypernetworkRegistry, Hypernetworks
from modules.networks.lora import LoraNetworks
from modules.networks.lora_files import LoraRegistry


class ExtraNetworks:
    """What a job needs to find and apply the networks its prompt names."""

    def __init__(self, lora_dirs: Sequence[Path], embedding_dirs: Sequence[Path] = (),
                 hashes: HashCache | None = None, hypernetwork_dirs: Sequence[Path] = ()) -> None:
        self.loras = LoraNetworks(LoraRegistry(list(lora_dirs), hashes))
        self.embeddings = EmbeddingDatabase(list(embedding_dirs), hashes)
        self.hypernetworks = Hypernetworks(HypernetworkRegistry(hypernetwork_dirs))

    def refresh(self) -> None:
        self.loras.registry.refresh()
        self.embeddings.refresh()
        self.hypernetworks.registry.refresh()

    def pasted(self, values: dict[str, object], infotext_text: str) -> dict[str, object]:
        """Request values read from a pasted infotext, with its network tags renamed to the files here that have
        the hashes it records (``Lora hashes``)."""
        hashes = parse_infotext(infotext_text).get("Lora hashes")
        if not hashes:
            return values
        out = dict(values)
        for key in ("prompt", "hr_prompt"):
            value = out.get(key)
            if isinstance(value, str):
                out[key] = self.loras.names_from_hashes(value, hashes)
        return out
