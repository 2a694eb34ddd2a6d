"""A1111's launch flags (where they apply), safe-exposure rules, and credentials that never leak."""

from __future__ import annotations

import argparse
import ipaddress
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modules.errors import WebUIError

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
REDACTED = "<redacted>"
_SECRET_FLAGS = ("api_auth", "gradio_auth")


class LaunchError(WebUIError):
    """The server refuses to start as configured."""


def add_server_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=int, default=None, help="port to listen on (7860; 7861 with --nowebui)")
    p.add_argument("--listen", action="store_true", help="listen on all interfaces (0.0.0.0); needs auth")
    p.add_argument("--server-name", type=str, default=None, help="address or hostname to listen on")
    p.add_argument("--data-dir", type=str, default=None, help="folder for config.json, outputs, caches")
    p.add_argument("--models-dir", type=str, default=None, help="folder holding Stable-diffusion/, VAE/, ...")
    p.add_argument("--ckpt-dir", type=str, action="append", default=[], help="extra folder of checkpoints")
    p.add_argument("--ckpt", type=str, default=None, help="checkpoint to load at start (path or name)")
    p.add_argument("--nowebui", action="store_true", help="serve the API only")
    p.add_argument("--api", action="store_true", help="accepted for compatibility: the API is always on")
    p.add_argument("--api-auth", type=str, default=None, help='API credentials "user:pass[,user2:pass2]"')
    p.add_argument("--gradio-auth", type=str, default=None, help='UI credentials "user:pass[,user2:pass2]"')
    p.add_argument("--gradio-auth-path", type=str, default=None, help="file with credentials, one user:pass a line")
    p.add_argument("--insecure", action="store_true", help="allow listening on the network without auth")
    p.add_argument("--skip-load-model-at-start", action="store_true", help="do not load a model at start-up")
    p.add_argument("--no-half", action="store_true", help="run the model in float32")
    p.add_argument("--precision", choices=["full", "half", "autocast", "bf16"], default=None,
                   help="full = float32, half/autocast = float16 on CUDA, bf16 = bfloat16")
    p.add_argument("--use-cpu", nargs="*", default=None, help="run on the CPU (A1111: --use-cpu all)")
    p.add_argument("--xformers", action="store_true", help="use xformers attention")
    p.add_argument("--opt-sdp-attention", action="store_true", help="use PyTorch SDPA attention")


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


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def server_config(args: argparse.Namespace) -> ServerConfig:
    host = args.server_name or ("0.0.0.0" if args.listen else "127.0.0.1")
    port = args.port or (7861 if args.nowebui else 7860)
    api_users = parse_credentials(args.api_auth, "--api-auth")
    ui_text = args.gradio_auth or ""
    if args.gradio_auth_path:
        try:
            ui_text = ",".join(filter(None, [ui_text, Path(args.gradio_auth_path).read_text(encoding="utf-8")]))
        except OSError as exc:
            raise LaunchError(f"--gradio-auth-path: cannot read {args.gradio_auth_path}: {exc.strerror}") from None
    ui_users = parse_credentials(ui_text, "--gradio-auth")
    flags = {k: v for k, v in vars(args).items() if k != "command"}
    for key in _SECRET_FLAGS:
        if flags.get(key):
            flags[key] = REDACTED
    config = ServerConfig(host, port, bool(args.nowebui), api_users, ui_users, bool(args.insecure), flags)
    if config.exposed and not config.auth_enabled and not config.insecure:
        raise LaunchError(
            f"refusing to listen on {host} without authentication: anyone on the network could use this "
            f"machine. Add --api-auth user:password (and --gradio-auth user:password for the UI), or "
            f"--insecure to accept the risk.")
    return config


def precision_from_flags(args: argparse.Namespace) -> str | None:
    if args.no_half or args.precision == "full":
        return "fp32"
    return {"half": "fp16", "autocast": "auto", "bf16": "bf16"}.get(args.precision or "")


def redacted_flags(app: Any) -> dict[str, Any]:
    """``/sdapi/v1/cmd-flags``: the launch flags with every credential replaced."""
    flags = dict(getattr(app, "launch_flags", {}) or {})
    for key in _SECRET_FLAGS:
        if flags.get(key):
            flags[key] = REDACTED
    return flags
