"""Static checks of the package: no code-execution features, pickle only through weights_only, layering kept."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(p for d in ("modules", "webui", "scripts") for p in (ROOT / d).rglob("*.py"))


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node


def _name(func: ast.expr) -> str:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return f"{_name(func.value)}.{func.attr}"
    return ""


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_dangerous_calls(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for call in _calls(tree):
        name = _name(call.func)
        kwargs = {k.arg: k.value for k in call.keywords}
        assert name not in ("eval", "exec", "pickle.loads", "pickle.load", "marshal.loads"), f"{name} at {call.lineno}"
        if name.endswith("torch.load") or name == "load" and isinstance(call.func, ast.Attribute):
            if name.endswith("torch.load"):
                value = kwargs.get("weights_only")
                assert isinstance(value, ast.Constant) and value.value is True, f"torch.load at line {call.lineno}"
        if name in ("yaml.load", "yaml.load_all"):
            raise AssertionError(f"{name} at line {call.lineno}: use yaml.safe_load")
        if "shell" in kwargs:
            value = kwargs["shell"]
            assert isinstance(value, ast.Constant) and value.value is False, f"shell=True at line {call.lineno}"
        if "trust_remote_code" in kwargs:
            value = kwargs["trust_remote_code"]
            assert isinstance(value, ast.Constant) and value.value is False, f"trust_remote_code at {call.lineno}"


def test_engine_never_imports_the_web_stack():
    for path in (ROOT / "modules").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in ("gradio", "fastapi", "starlette", "uvicorn", "webui"), \
                    f"{path.relative_to(ROOT)} imports {name}"


def test_no_module_level_global_statements():
    for path in SOURCES:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        assert not any(isinstance(n, ast.Global) for n in ast.walk(tree)), path
