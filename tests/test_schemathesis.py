"""Property-based requests to every /sdapi operation of the live server's OpenAPI schema: none answers 5xx.

Valid and invalid bodies, queries and paths come from schemathesis; the server's limits are lowered to one 64x64
image of at most 2 steps, so whatever valid generation it draws stays cheap on a CPU.
"""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402

from modules.requests import Limits  # noqa: E402

pytestmark = pytest.mark.usefixtures("frozen_gc")  # full GC passes scan only what this module makes

EXAMPLES = 25  # per operation and generation mode


@pytest.fixture
def tiny_server(live_server):
    server = live_server()
    server.app.limits = lambda: Limits(max_size=64, max_steps=2, max_batch_size=1, max_n_iter=1)
    return server


CHEAP = {"width": 64, "height": 64, "steps": 1, "batch_size": 1, "n_iter": 1, "enable_hr": False}


def _cheap(case):
    """A valid generation body made small enough to run: the sizes and counts pinned, the rest as drawn, and
    the fields that only a few values suit (names of samplers, scripts, models) left out half of the time."""
    if isinstance(case.body, dict):
        case.body.update(CHEAP)
        if len(case.body) % 2 == 0:
            for name in ("sampler_name", "sampler_index", "scheduler", "script_name", "alwayson_scripts",
                         "override_settings", "cfg_scale", "seed", "subseed", "infotext", "styles"):
                case.body.pop(name, None)
    return case


def _deliberate(path: str, status: int) -> bool:
    """A 501 the API gives on purpose: hypernetworks cannot be created or trained here (A1111's routes say so)."""
    return status == 501 and path in ("/sdapi/v1/create/hypernetwork", "/sdapi/v1/train/hypernetwork")


def _failures(operation, mode: GenerationMode, base_url: str, statuses: list[int]) -> list[str]:
    """The 5xx answers to up to ``EXAMPLES`` generated cases of ``operation``."""
    seen: list[str] = []

    strategy = operation.as_strategy(generation_mode=mode)
    if mode is GenerationMode.POSITIVE and operation.path.endswith(("/txt2img", "/img2img")):
        strategy = strategy.map(_cheap)

    @given(case=strategy)
    @settings(max_examples=EXAMPLES, deadline=None, database=None, phases=[Phase.generate], derandomize=True,
              suppress_health_check=list(HealthCheck))
    def run(case) -> None:
        response = case.call(base_url=base_url, timeout=60)
        statuses.append(response.status_code)
        if response.status_code >= 500 and not _deliberate(case.formatted_path, response.status_code):
            seen.append(f"{case.method} {case.formatted_path} {mode.value}: {response.status_code} "
                        f"{response.text[:300]} <- body {str(getattr(case, 'body', None))[:300]}")

    try:
        run()
    except Unsatisfiable:  # nothing to make invalid (an operation without parameters or body)
        assert mode is GenerationMode.NEGATIVE
    return seen


def _run_schema(server, path_regex: str) -> tuple[int, list[int], list[str]]:
    """(operations, statuses, 5xx failures) for the operations whose path matches ``path_regex``."""
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json").include(path_regex=path_regex)
    failures: list[str] = []
    statuses: list[int] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            failures += _failures(operation, mode, server.url, statuses)
    return operations, statuses, failures


def test_no_5xx_for_generated_requests(tiny_server):
    operations, statuses, failures = _run_schema(tiny_server, "^/sdapi/")
    assert operations >= 20
    assert statuses.count(200) >= 10 and statuses.count(202) >= 10 and statuses.count(422) >= 100
    assert not failures, "\n".join(failures[:20])
    assert tiny_server.app.queue.wait_idle(60)
