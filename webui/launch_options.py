"""A1111's launch flags (every one of v1.10's is accepted), safe-exposure rules, and credentials that never leak."""

from __future__ import annotations

import argparse
import ipaddress
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

from modules.errors import WebUIError

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
REDACTED = "<redacted>"
API_AUTH_ENV = "SD_WEBUI_API_AUTH"
UI_AUTH_ENV = "SD_WEBUI_GRADIO_AUTH"
DEFAULT_PORTS = {"http": 80, "https": 443}
_SECRET_FLAGS = ("api_auth", "gradio_auth", "ngrok", "ngrok_options", "tls_keyfile")

# One row per flag: (names, kind, default, help). Several names are split by "|" (the first gives the key).
# kind: "on" a switch, "off" a switch that stores False, "str", "int", "json", "list" (may repeat, values add up),
# "cpu" (zero or more lower-cased words), "choice:a,b,c".
FlagRow = tuple[str, str, Any, str]

# Flags with an effect here.
HONOURED: tuple[FlagRow, ...] = (
    ("--port", "int", None, "port to listen on (7860; 7861 with --nowebui)"),
    ("--listen", "on", None, "listen on all interfaces (0.0.0.0); needs auth"),
    ("--server-name", "str", None, "address or hostname to listen on"),
    ("--data-dir", "str", None, "folder for config.json, outputs, caches"),
    ("--models-dir", "str", None, "folder holding Stable-diffusion/, VAE/, ..."),
    ("--ckpt-dir", "list", None, "extra folder of checkpoints (may repeat)"),
    ("--lora-dir", "str", None, "folder of LoRA networks (instead of models/Lora)"),
    ("--embeddings-dir", "str", None, "folder of textual-inversion embeddings (instead of embeddings/)"),
    ("--styles-file", "list", None, "styles file or wildcard (may repeat; instead of styles.csv)"),
    ("--hypernetwork-dir", "str", None, "folder of hypernetworks (instead of models/hypernetworks)"),
    ("--esrgan-models-path", "str", None, "extra folder of ESRGAN models (besides models/ESRGAN)"),
    ("--realesrgan-models-path", "str", None, "extra folder of RealESRGAN models"),
    ("--swinir-models-path", "str", None, "extra folder of SwinIR models"),
    ("--dat-models-path", "str", None, "extra folder of DAT models"),
    ("--scunet-models-path", "str", None, "extra folder of ScuNET models"),
    ("--gfpgan-models-path", "str", None, "extra folder of GFPGAN models (and the face detector)"),
    ("--codeformer-models-path", "str", None, "extra folder of CodeFormer models (and the face detector)"),
    ("--clip-models-path", "str", None, "extra folder of CLIP interrogator models"),
    ("--ckpt", "str", None, "checkpoint to load at start (path or name)"),
    ("--nowebui", "on", None, "serve the API only"),
    ("--api", "on", None, "accepted for compatibility: the API is always on"),
    ("--api-auth", "str", None, f'API credentials "user:pass[,user2:pass2]" (visible in ps: prefer '
     f'--api-auth-file or {API_AUTH_ENV})'),
    ("--api-auth-file", "str", None, "file with API credentials, one user:pass a line"),
    ("--gradio-auth", "str", None, f'UI credentials "user:pass[,user2:pass2]" (visible in ps: prefer '
     f'--gradio-auth-path or {UI_AUTH_ENV})'),
    ("--gradio-auth-path", "str", None, "file with UI credentials, one user:pass a line"),
    ("--admin-users", "str", None, "users (comma-separated) who may change settings and models: POST /options, "
     "refresh/unload/reload-checkpoint, merge-checkpoints, the Settings tab, the checkpoint list and the merger; "
     "other users get 403. With auth but no --admin-users every user may (as in A1111); without auth the one "
     "local user may. Every user may still override settings for their own jobs"),
    ("--allowed-hosts", "str", None, "more Host names the server answers to, comma-separated: name (any port), "
     "name:port, or * for any (turns off the DNS-rebinding check)"),
    ("--insecure", "on", None, "allow listening on the network without auth"),
    ("--enable-insecure-extension-access", "on", None, "allow installing, enabling and disabling extensions while "
     "the server is reachable from the network (an extension runs with the server's rights)"),
    ("--disable-all-extensions", "on", None, "run no extension"),
    ("--disable-extra-extensions", "on", None, "run only the extensions shipped with the program"),
    ("--skip-load-model-at-start", "on", None, "do not load a model at start-up"),
    ("--ui-debug-mode", "on", None, "start without loading a model (as --skip-load-model-at-start)"),
    ("--no-half", "on", None, "run the model in float32"),
    ("--precision", "choice:full,half,autocast,bf16", None,
     "full = float32, half/autocast = float16 on CUDA, bf16 = bfloat16"),
    ("--use-cpu", "cpu", None, "run on the CPU: bare, 'all' or 'sd' (other module names change nothing here)"),
    ("--xformers", "on", None, "use xformers attention"),
    ("--lowram", "on", None, "read a safetensors checkpoint's UNet and VAE weights straight into VRAM, not RAM"),
    ("--force-enable-xformers", "on", None, "use xformers attention (as --xformers)"),
    ("--opt-sdp-attention", "on", None, "use PyTorch SDPA attention"),
    ("--opt-split-attention", "on", None, "attention computed in slices (the setting's Doggettx), for small cards"),
    ("--medvram", "on", None, "memory mode medvram: one part of the model (text encoder, UNet, VAE) on the GPU at "
     "a time"),
    ("--medvram-sdxl", "on", None, "--medvram for SDXL models only"),
    ("--lowvram", "on", None, "memory mode lowvram: the UNet on the GPU one block at a time"),
    ("--no-half-vae", "on", None, "run the VAE in float32"),
    ("--opt-channelslast", "on", None, "channels-last memory format for the UNet"),
    ("--hide-ui-dir-config", "on", None, "hide the output-folder buttons under the galleries"),
    ("--loglevel", "str", None, "log level: CRITICAL, ERROR, WARNING, INFO or DEBUG"),
    ("--timeout-keep-alive", "int", 30, "seconds an idle HTTP connection stays open"),
    ("--workers", "str", None, "run generations on workers: 'ray' (a worker per local GPU) or 'ray://HEAD:PORT' "
     "(an existing Ray cluster); needs pip install '.[cluster]'"),
    ("--worker-count", "int", None, "how many workers --workers starts (default: one per GPU; on CPUs, one)"),
    ("--worker-models-dir", "str", None, "the models folder the workers read (may be shared storage; default: "
     "this server's)"),
    ("--worker-threads", "int", None, "torch threads in each CPU worker (default: the cores shared out)"),
)

# A1111 flags whose request is already the behaviour here: A1111's own no-ops, and checks or downloads that
# this program never makes. Accepted without a warning.
ALREADY: tuple[FlagRow, ...] = (
    ("-f", "on", None, "A1111: allow running as root (never refused here)"),
    ("--skip-python-version-check", "on", None, "no Python version check is made here"),
    ("--skip-torch-cuda-test", "on", None, "no CUDA test is made at start here"),
    ("--skip-prepare-environment", "on", None, "nothing is installed at start here"),
    ("--skip-install", "on", None, "nothing is installed at start here"),
    ("--skip-version-check", "on", None, "no torch/xformers version check is made here"),
    ("--do-not-download-clip", "on", None, "nothing is downloaded at start here"),
    ("--upcast-sampling", "on", None, "the samplers compute in float32 here with a model of any precision"),
    ("--no-download-sd-model", "on", None, "nothing is downloaded at start here"),
    ("--max-batch-count", "int", 16, "no effect (in A1111 too)"),
    ("--always-batch-cond-uncond", "on", None, "no effect (in A1111 too)"),
    ("--unload-gfpgan", "on", None, "no effect (in A1111 too)"),
    ("--deepdanbooru", "on", None, "no effect (in A1111 too)"),
    ("--show-negative-prompt", "on", None, "no effect (in A1111 too)"),
    ("--gradio-img2img-tool", "str", None, "no effect (in A1111 too)"),
    ("--gradio-inpaint-tool", "str", None, "no effect (in A1111 too)"),
    ("--enable-console-prompts", "on", None, "no effect (in A1111 too)"),
    ("--add-stop-route", "on", None, "no effect (in A1111 too)"),
    ("--ngrok-region", "str", "", "no effect (in A1111 too)"),
    ("--gradio-queue", "on", True, "no effect (in A1111 too)"),
)

# A1111 flags accepted without an effect here (yet); one warning line at start names those given.
IGNORED: tuple[FlagRow, ...] = (
    ("--update-all-extensions", "on", None, "update every extension at start"),
    ("--reinstall-xformers", "on", None, "reinstall xformers at start"),
    ("--reinstall-torch", "on", None, "reinstall torch at start"),
    ("--update-check", "on", None, "check for a newer version at start"),
    ("--test-server", "on", None, "configure the server for A1111's tests"),
    ("--log-startup", "on", None, "detailed start-up timings"),
    ("--dump-sysinfo", "on", None, "write a system-information file and quit"),
    ("--config", "str", None, "model config (.yaml) for --ckpt"),
    ("--vae-dir", "str", None, "folder of VAE files"),
    ("--vae-path", "str", None, "VAE to use, overriding the settings"),
    ("--textual-inversion-templates-dir", "str", None, "folder of textual-inversion templates"),
    ("--localizations-dir", "str", None, "folder of UI translations"),
    ("--lyco-dir-backcompat|--lyco-dir", "str", None, "folder of LyCORIS networks"),
    ("--gfpgan-dir", "str", None, "GFPGAN source folder"),
    ("--gfpgan-model", "str", None, "GFPGAN model file"),
    ("--bsrgan-models-path", "str", None, "folder of BSRGAN models"),
    ("--ldsr-models-path", "str", None, "folder of LDSR models"),
    ("--ui-config-file", "str", None, "UI defaults file (ui-config.json)"),
    ("--ui-settings-file", "str", None, "settings file (config.json)"),
    ("--disable-model-loading-ram-optimization", "on", None, "load models without the RAM-saving path"),
    ("--xformers-flash-attention", "on", None, "xformers with Flash Attention"),
    ("--opt-sub-quad-attention", "on", None, "prefer sub-quadratic attention"),
    ("--sub-quad-q-chunk-size", "int", 1024, "sub-quadratic attention: query chunk size"),
    ("--sub-quad-kv-chunk-size", "int", None, "sub-quadratic attention: key/value chunk size"),
    ("--sub-quad-chunk-threshold", "int", None, "sub-quadratic attention: VRAM percentage that starts chunking"),
    ("--opt-split-attention-invokeai", "on", None, "prefer InvokeAI's split attention"),
    ("--opt-split-attention-v1", "on", None, "prefer the older split attention"),
    ("--opt-sdp-no-mem-attention", "on", None, "SDPA without memory-efficient kernels"),
    ("--disable-opt-split-attention", "on", None, "prefer no attention optimisation"),
    ("--disable-nan-check", "on", None, "do not check results for NaNs"),
    ("--use-ipex", "on", None, "use an Intel XPU"),
    ("--device-id", "str", None, "CUDA device number"),
    ("--no-progressbar-hiding", "on", None, "keep Gradio's progress bar"),
    ("--allow-code", "on", None, "allow the custom-code script"),
    ("--share", "on", None, "public Gradio share link"),
    ("--ngrok", "str", None, "ngrok auth token"),
    ("--ngrok-options", "json", None, "ngrok options as JSON"),
    ("--freeze-settings", "on", None, "make every setting read-only"),
    ("--freeze-settings-in-sections", "str", None, "read-only setting sections (comma-separated)"),
    ("--freeze-specific-settings", "str", None, "read-only settings (comma-separated)"),
    ("--gradio-debug", "on", None, "Gradio debug mode"),
    ("--gradio-allowed-path", "list", None, "extra folder Gradio may serve (may repeat)"),
    ("--autolaunch", "on", None, "open the UI in a browser at start"),
    ("--theme", "str", None, "light or dark UI"),
    ("--use-textbox-seed", "on", None, "seed as a text box"),
    ("--disable-console-progressbars", "on", None, "no progress bars on the console"),
    ("--disable-safe-unpickle", "on", None, "A1111: skip the pickle check (pickles are always checked here)"),
    ("--api-log", "on", None, "log every API request"),
    ("--administrator", "on", None, "administrator rights"),
    ("--cors-allow-origins", "str", None, "allowed CORS origins (comma-separated)"),
    ("--cors-allow-origins-regex", "str", None, "allowed CORS origins (a regular expression)"),
    ("--tls-keyfile", "str", None, "TLS private key file"),
    ("--tls-certfile", "str", None, "TLS certificate file"),
    ("--disable-tls-verify", "off", None, "accept self-signed certificates"),
    ("--no-gradio-queue", "on", None, "Gradio without its queue"),
    ("--no-hashing", "on", None, "do not hash checkpoints"),
    ("--subpath", "str", None, "serve under this URL path (reverse proxy)"),
    ("--api-server-stop", "on", None, "stop/restart routes in the API"),
    ("--unix-filenames-sanitization", "on", None, "allow any character but '/' in file names"),
    ("--filenames-max-length", "int", 128, "longest file name for saved images"),
    ("--no-prompt-history", "on", None, "do not write params.txt"),
)


class LaunchError(WebUIError):
    """The server refuses to start as configured."""


class LaunchParser(argparse.ArgumentParser):
    """An argument parser whose errors are one-line :class:`LaunchError` s instead of usage text and an exit."""

    def error(self, message: str) -> NoReturn:
        raise LaunchError(message)


def _json_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not valid JSON") from None  # the value may hold a password: not shown


def _argument_options(kind: str, default: Any, help_text: str) -> dict[str, Any]:
    if kind == "on":
        return {"action": "store_true", "default": bool(default), "help": help_text}
    if kind == "off":
        return {"action": "store_false", "default": None, "help": help_text}
    if kind == "list":
        return {"action": "append", "type": str, "default": [], "help": help_text}
    if kind == "cpu":
        return {"nargs": "*", "type": str.lower, "default": None, "help": help_text}
    if kind.startswith("choice:"):
        return {"choices": kind.partition(":")[2].split(","), "default": default, "help": help_text}
    types = {"str": str, "int": int, "json": _json_value}
    return {"type": types[kind], "default": default, "help": help_text}


def add_launch_flags(p: argparse.ArgumentParser) -> None:
    """Every A1111 v1.10 flag (and its built-in extensions'), plus this program's own."""
    groups = ((HONOURED, None), (ALREADY, "A1111 flags whose request is already the behaviour here"),
              (IGNORED, "A1111 flags accepted without effect here (a warning at start names them)"))
    for rows, title in groups:
        target: Any = p.add_argument_group(title) if title else p
        for names, kind, default, help_text in rows:
            target.add_argument(*names.split("|"), **_argument_options(kind, default, help_text))


def flag_key(names: str) -> str:
    """``--lyco-dir-backcompat|--lyco-dir`` -> ``lyco_dir_backcompat``: the key in the parsed flags."""
    return names.split("|")[0].lstrip("-").replace("-", "_")


def _given(kind: str, default: Any, value: Any) -> bool:
    if kind == "on":
        return value is True and not default
    if kind == "off":
        return value is False
    if kind in ("list", "cpu"):
        return value is not None and (kind == "cpu" or bool(value))
    return value is not None and value != default


def ignored_flags(args: argparse.Namespace) -> list[str]:
    """The flags given that have no effect here, by their A1111 name."""
    return [names.split("|")[0] for names, kind, default, _ in IGNORED
            if _given(kind, default, getattr(args, flag_key(names), None))]


def parse_credentials(text: str | None, flag: str) -> dict[str, str]:
    """``user:pass,user2:pass2`` -> {user: pass}; the error message never repeats a password."""
    out: dict[str, str] = {}
    if not text:
        return out
    for i, item in enumerate(p for p in text.replace("\n", ",").split(",") if p.strip()):
        user, sep, password = item.strip().partition(":")
        if not sep or not user or not password:
            raise LaunchError(f"{flag}: entry {i + 1} is not user:password")
        out[user] = password
    return out


@dataclass(frozen=True)
class ServerConfig:
    host: str
    port: int
    nowebui: bool
    api_users: dict[str, str]
    ui_users: dict[str, str]
    insecure: bool
    flags: dict[str, Any]
    allowed_hosts: tuple[str, ...] = ()

    @property
    def exposed(self) -> bool:
        return not is_loopback(self.host)

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_users or self.ui_users)

    def check_api(self, user: str, password: str) -> bool:
        return _check(self.api_users or self.ui_users, user, password)

    def check_ui(self, user: str, password: str) -> bool:
        return _check(self.ui_users or self.api_users, user, password)


def _check(users: dict[str, str], user: str, password: str) -> bool:
    ok = False
    for name, secret in users.items():  # compare every entry: no timing hint about which user exists
        ok |= secrets.compare_digest(name.encode(), user.encode()) & secrets.compare_digest(
            secret.encode(), password.encode())
    return ok


def parse_authority(text: str, scheme: str) -> tuple[str, int | None] | None:
    """``name[:port]`` or ``[v6]:port`` -> (lower-case name, port, else the scheme's default); None if malformed."""
    if not text or any(c in text for c in "/?#@\\ "):
        return None
    try:
        parts = urlsplit(f"//{text}")
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname:
        return None
    return parts.hostname, port if port is not None else DEFAULT_PORTS.get(scheme)


def parse_admin_users(text: str | None) -> tuple[str, ...]:
    """``--admin-users a,b`` -> ("a", "b")."""
    return tuple(dict.fromkeys(u.strip() for u in (text or "").split(",") if u.strip()))


def parse_allowed_hosts(text: str | None) -> tuple[str, ...]:
    hosts = tuple(h.strip().lower() for h in (text or "").split(",") if h.strip())
    for host in hosts:
        if host != "*" and parse_authority(host, "") is None:
            raise LaunchError(f"--allowed-hosts: {host!r} is not a host name or host:port")
    return hosts


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _read_secret_file(path: str | None, flag: str) -> str:
    if not path:
        return ""
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise LaunchError(f"{flag}: cannot read {path}: {exc.strerror}") from None


def _users(sources: list[tuple[str | None, str]]) -> dict[str, str]:
    """Credentials from (text, where it came from) pairs, merged in order."""
    users: dict[str, str] = {}
    for text, where in sources:
        users.update(parse_credentials(text, where))
    return users


def server_config(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> ServerConfig:
    """The server's settings from the flags and, for credentials, ``environ`` (``SD_WEBUI_*_AUTH``)."""
    env = environ or {}
    host = args.server_name or ("0.0.0.0" if args.listen else "127.0.0.1")
    port = args.port or (7861 if args.nowebui else 7860)
    api_users = _users([(args.api_auth, "--api-auth"),
                        (_read_secret_file(args.api_auth_file, "--api-auth-file"), "--api-auth-file"),
                        (env.get(API_AUTH_ENV), API_AUTH_ENV)])
    ui_users = _users([(args.gradio_auth, "--gradio-auth"),
                       (_read_secret_file(args.gradio_auth_path, "--gradio-auth-path"), "--gradio-auth-path"),
                       (env.get(UI_AUTH_ENV), UI_AUTH_ENV)])
    flags = _redact({k: v for k, v in vars(args).items() if k != "command"})
    config = ServerConfig(host, port, bool(args.nowebui), api_users, ui_users, bool(args.insecure), flags,
                          parse_allowed_hosts(args.allowed_hosts))
    if config.exposed and not config.auth_enabled and not config.insecure:
        raise LaunchError(
            f"refusing to listen on {host} without authentication: anyone on the network could use this "
            f"machine. Add --api-auth-file FILE (and --gradio-auth-path FILE for the UI), set {API_AUTH_ENV}, "
            f"or give --insecure to accept the risk (--api-auth user:password works too, but shows in ps).")
    return config


def precision_from_flags(args: argparse.Namespace) -> str | None:
    if args.no_half or args.precision == "full":
        return "fp32"
    return {"half": "fp16", "autocast": "auto", "bf16": "bf16"}.get(args.precision or "")


def device_from_flags(args: argparse.Namespace) -> str | None:
    """``--use-cpu`` bare, ``all`` or ``sd`` put the model on the CPU (A1111 names other modules too)."""
    wanted = args.use_cpu
    if wanted is None:
        return None
    return "cpu" if not wanted or "all" in wanted or "sd" in wanted else None


def attention_from_flags(args: argparse.Namespace) -> str | None:
    if args.xformers or args.force_enable_xformers:
        return "xformers"
    if args.opt_sdp_attention:
        return "sdp"
    return "Doggettx" if args.opt_split_attention else None


def settings_from_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the flags set for this run (not saved): attention, memory mode, channels-last."""
    out: dict[str, Any] = {}
    attention = attention_from_flags(args)
    if attention:
        out["cross_attention_optimization"] = attention
    if args.lowvram or args.medvram:  # A1111: --lowvram wins
        out["memory_mode"] = "lowvram" if args.lowvram else "medvram"
    if args.opt_channelslast:
        out["channels_last"] = True
    return out


def redacted_flags(app: Any) -> dict[str, Any]:
    """``/sdapi/v1/cmd-flags``: the launch flags with every credential replaced."""
    return _redact(dict(getattr(app, "launch_flags", {}) or {}))


def _redact(flags: dict[str, Any]) -> dict[str, Any]:
    for key in _SECRET_FLAGS:
        if flags.get(key):
            flags[key] = REDACTED
    return flags


MODEL_PATH_FLAGS: tuple[tuple[str, str], ...] = (  # A1111's per-kind model folder flags -> the models/ folder kind
    ("esrgan_models_path", "ESRGAN"), ("realesrgan_models_path", "RealESRGAN"), ("swinir_models_path", "SwinIR"),
    ("dat_models_path", "DAT"), ("scunet_models_path", "ScuNET"), ("gfpgan_models_path", "GFPGAN"),
    ("codeformer_models_path", "Codeformer"), ("clip_models_path", "CLIP"))


def model_dirs_from_flags(args: argparse.Namespace) -> tuple[tuple[str, Path], ...]:
    """(folder kind, path) for each model folder flag given."""
    return tuple((kind, Path(getattr(args, key)).expanduser()) for key, kind in MODEL_PATH_FLAGS
                 if getattr(args, key, None))
