"""Per-image prompt texts of a job: as written in infotext, and as given to the text encoder."""

from __future__ import annotations

from dataclasses import dataclass, field

from modules.prompts import parser as prompt_parser
from modules.requests import GenerationRequest


@dataclass
class PreparedPrompts:
    original_positive: list[str]  # what the infotext records (comments removed, network tags kept)
    original_negative: list[str]
    positive: list[str]  # what is encoded (network tags removed)
    negative: list[str]
    hr_positive: list[str]
    hr_negative: list[str]
    networks: list[tuple[str, list[str]]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def slice(self, sl: slice) -> PreparedPrompts:
        return PreparedPrompts(self.original_positive[sl], self.original_negative[sl], self.positive[sl],
                               self.negative[sl], self.hr_positive[sl], self.hr_negative[sl], self.networks,
                               self.warnings)


def _clean(text: str) -> tuple[str, list[tuple[str, list[str]]]]:
    return prompt_parser.extract_extra_networks(text)


def check_prompt(text: str, steps: int, what: str, field: str) -> None:
    """Refuse, quickly and with a message naming ``field``, a prompt too deeply nested or with too many variants.

    Runs the same parsers generation runs (each linear in the prompt's length), so nothing slower is left for later.
    """
    for part, _ in prompt_parser.split_and(text):
        for _, variant in prompt_parser.get_learned_conditioning_prompt_schedules([part], steps, what=what,
                                                                                   field=field)[0]:
            prompt_parser.parse_prompt_attention(variant, what, field)


def prepare_prompts(req: GenerationRequest, count: int) -> PreparedPrompts:
    prompt = prompt_parser.strip_comments(req.prompt)
    negative = prompt_parser.strip_comments(req.negative_prompt)
    # A1111 takes network tags out of the prompts only: a tag in a negative prompt is text to the encoder there
    positive_clean, networks = _clean(prompt)
    negative_clean = negative
    hr_prompt = prompt_parser.strip_comments(req.hr_prompt) if req.hr_prompt else prompt
    hr_negative = prompt_parser.strip_comments(req.hr_negative_prompt) if req.hr_negative_prompt else negative
    check_prompt(positive_clean, req.steps, "prompt", "prompt")
    check_prompt(negative_clean, req.steps, "negative prompt", "negative_prompt")
    warnings: list[str] = []
    return PreparedPrompts(
        original_positive=[prompt] * count,
        original_negative=[negative] * count,
        positive=[positive_clean] * count,
        negative=[negative_clean] * count,
        hr_positive=[_clean(hr_prompt)[0]] * count,
        hr_negative=[hr_negative] * count,
        networks=networks,
        warnings=warnings,
    )
