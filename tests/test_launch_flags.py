"""Every A1111 v1.10 launch flag is accepted; COMMANDLINE_ARGS never stops the server; bad values still do."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from webui.launch import _log_level, parse_launch_args, start_options, warning_line
from webui.launch_options import (
    LaunchError,
    attention_from_flags,
    device_from_flags,
    precision_from_flags,
    redacted_flags,
    server_config,
)

ORACLE_SRC = Path(__file__).resolve().parents[1].parent / "shared" / "a1111-oracle" / "src"
_CALL = re.compile(r"""add_argument\(\s*(["'])(-[\w-]+)\1(.*)$""")
# A value each valued flag accepts (A1111's --precision has choices, --use-cpu names modules).
_VALUES = {"--precision": "full", "--use-cpu": "all"}


def parse(*words: str, env: str = ""):
    return parse_launch_args(list(words), {"COMMANDLINE_ARGS": env})


def a1111_flags() -> list[tuple[str, bool]]:
    """(name, is_switch) for every add_argument of A1111's cmd_args.py and its built-in extensions' preloads."""
    texts = [p.read_text(encoding="utf-8") for p in ORACLE_SRC.glob("**/modules/cmd_args.py")]
    texts += [p.read_text(encoding="utf-8") for p in ORACLE_SRC.glob("**/extensions-builtin/*/preload.py")]
    archive = ORACLE_SRC / "a1111-v1.10.1.tar.gz"
    if not texts and archive.is_file():
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                if member.name.endswith(("/modules/cmd_args.py", "/preload.py")):
                    texts.append(tar.extractfile(member).read().decode("utf-8"))  # type: ignore[union-attr]
    found = [(m.group(2), "store_" in m.group(3)) for text in texts for line in text.splitlines()
             if (m := _CALL.search(line))]
    if not found:
        pytest.skip("A1111's source is not at ../shared/a1111-oracle/src")
    return found


def _words(name: str, switch: bool) -> list[str]:
    return [name] if switch else [name, _VALUES.get(name, "3")]


def _key(name: str) -> str:
    return name.lstrip("-").replace("-", "_")


def test_every_a1111_flag_is_accepted_alone():
    flags = a1111_flags()
    assert len(flags) > 120 and ("--medvram", True) in flags and ("--lora-dir", False) in flags
    defaults, _ = parse()
    for name, switch in flags:
        args, unknown = parse(*_words(name, switch))
        assert unknown == [], name
        if name != "--gradio-queue":  # a switch whose default is already on, in A1111 too
            assert getattr(args, _key(name)) != getattr(defaults, _key(name)), name


def test_all_a1111_flags_at_once_in_commandline_args(tmp_path):
    auth_file = tmp_path / "auth.txt"
    auth_file.write_text("g2:pw-secret-6\n")
    values = {"--api-auth": "u:pw-secret-4", "--gradio-auth": "g:pw-secret-5", "--gradio-auth-path": str(auth_file),
              "--ngrok": "tok-secret-1", "--ngrok-options": '{"basic_auth": "u:pw-secret-2"}',
              "--tls-keyfile": "/keys/secret-3.pem"}
    words = []
    for name, switch in a1111_flags():
        words += [name] if switch else [name, values.get(name, _VALUES.get(name, "3"))]
    args, unknown = parse(env=" ".join(f"'{w}'" for w in words))
    assert unknown == []
    config = server_config(args)
    assert config.check_api("u", "pw-secret-4") and config.check_ui("g2", "pw-secret-6")
    shown = redacted_flags(SimpleNamespace(launch_flags=config.flags))
    assert {_key(name) for name, _ in a1111_flags()} <= set(shown)
    assert "secret" not in json.dumps(shown)
    line = warning_line(args, unknown)
    assert line is not None and "\n" not in line and "--theme" in line
    for honoured in ("--xformers", "--listen", "--port", "--api-auth", "--no-half", "--skip-torch-cuda-test",
                     "--medvram", "--lowvram", "--medvram-sdxl", "--no-half-vae", "--upcast-sampling",
                     "--opt-split-attention", "--opt-channelslast", "--lowram"):
        assert f"{honoured}," not in line and not line.endswith(honoured)


def test_a_real_a1111_command_line():
    args, unknown = parse(*"--xformers --medvram --api --listen --port 7861 --theme dark "
                          "--enable-insecure-extension-access --api-auth u:p".split())
    config = server_config(args)
    assert unknown == [] and config.port == 7861 and config.exposed and attention_from_flags(args) == "xformers"
    assert config.flags["medvram"] is True and config.flags["theme"] == "dark"
    assert warning_line(args, unknown) == "ignored launch flags (no effect here): --theme"


def test_flags_with_a_meaning_raise_no_warning():
    args, unknown = parse(*"--api --nowebui --no-half --use-cpu all --skip-torch-cuda-test --opt-sdp-attention "
                          "--skip-load-model-at-start --precision full --do-not-download-clip".split())
    assert warning_line(args, unknown) is None
    assert device_from_flags(args) == "cpu" and precision_from_flags(args) == "fp32"
    assert attention_from_flags(args) == "sdp"


def test_start_options_follow_the_flags():
    args, _ = parse("--ui-debug-mode", "--use-cpu", "all", "--no-half", "--ckpt", "m.safetensors", "--ckpt-dir", "b",
                    env="--ckpt-dir a --data-dir /d --models-dir /m")
    options = start_options(args, exposed=False)
    assert options.skip_load_model and options.device == "cpu" and options.precision == "fp32"
    assert options.ckpt_dirs == ("a", "b") and options.ckpt == "m.safetensors"
    assert (options.data_dir, options.models_dir) == ("/d", "/m")
    plain = start_options(parse()[0], exposed=True)
    assert not plain.skip_load_model and plain.device is None and plain.precision is None and plain.exposed
    assert attention_from_flags(parse("--force-enable-xformers")[0]) == "xformers"
    assert parse()[0].timeout_keep_alive == 30 and parse("--timeout-keep-alive", "5")[0].timeout_keep_alive == 5


@pytest.mark.parametrize(("name", "level"), [(None, 20), ("debug", 10), ("WARNING", 30), ("nonsense", 20)])
def test_loglevel_names_as_a1111(name, level):
    assert _log_level(name) == level  # an unknown name falls back to INFO, as in A1111


@pytest.mark.parametrize(("words", "device"), [(["--use-cpu"], "cpu"), (["--use-cpu", "SD"], "cpu"),
                                               (["--use-cpu", "interrogate"], None), ([], None)])
def test_use_cpu_follows_a1111_module_names(words, device):
    assert device_from_flags(parse(*words)[0]) == device


def test_commandline_args_join_the_command_line_which_wins():
    env = "--port 1 --medvram --ckpt-dir a --controlnet-dir '/my models' --sd-webui-token=abc123 --lyco-dir /ly"
    args, unknown = parse("--port", "7861", "--ckpt-dir", "b", env=env)
    assert args.port == 7861 and args.medvram and args.ckpt_dir == ["a", "b"]
    assert args.lyco_dir_backcompat == "/ly"
    assert unknown == ["--controlnet-dir", "/my models", "--sd-webui-token=abc123"]
    line = warning_line(args, unknown)
    assert line == ("ignored launch flags (no effect here): --lyco-dir-backcompat; unknown launch "
                    "arguments ignored: --controlnet-dir, --sd-webui-token (and 1 other word)")
    assert "abc123" not in line and "my models" not in line


def test_unknown_words_on_the_command_line_are_ignored_too():
    args, unknown = parse("--not-a-flag", "-foo", "stray", "--port", "7862", "--xyz=1")
    assert args.port == 7862 and unknown == ["-foo", "--not-a-flag", "stray", "--xyz=1"]
    assert warning_line(args, unknown) == \
        "unknown launch arguments ignored: -foo, --not-a-flag, --xyz (and 1 other word)"


def test_abbreviations_are_not_guessed():
    args, unknown = parse("--opt-sdp", "--medv")
    assert unknown == ["--opt-sdp", "--medv"] and not args.opt_sdp_attention and not args.medvram


@pytest.mark.parametrize("words", [["--port", "abc"], ["--precision", "double"], ["--listen=yes"],
                                   ["--timeout-keep-alive", "soon"], ["--ngrok-options", "{basic_auth: pw"],
                                   ["--port"]])
def test_a_bad_value_for_a_known_flag_is_an_error(words):
    with pytest.raises(LaunchError) as cli_err:
        parse(*words)
    with pytest.raises(LaunchError) as env_err:
        parse(env=" ".join(words))
    assert str(env_err.value) == f"COMMANDLINE_ARGS: {cli_err.value}"
    assert "\n" not in str(cli_err.value) and words[0].split("=")[0] in str(cli_err.value)
    assert "basic_auth" not in str(cli_err.value)


def test_unbalanced_quotes_in_commandline_args_are_an_error():
    with pytest.raises(LaunchError, match="COMMANDLINE_ARGS: No closing quotation"):
        parse(env="--theme 'dark")


@pytest.mark.parametrize(("argv", "env"), [(["--port", "abc"], ""), ([], "--medvram --port abc")])
def test_bad_value_exits_with_one_line(tmp_path, argv, env):
    r = subprocess.run([sys.executable, "-m", "webui", *argv, "--data-dir", str(tmp_path)], capture_output=True,
                       text=True, timeout=120, cwd=tmp_path,
                       env=dict(os.environ, PYTHONPATH=os.getcwd(), COMMANDLINE_ARGS=env))
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().splitlines() == [
        f"webui: error: {'COMMANDLINE_ARGS: ' if env else ''}argument --port: invalid int value: 'abc'"]
