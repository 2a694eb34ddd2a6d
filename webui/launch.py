"""Start UI and API in one process: ``python -m webui`` (every A1111 v1.10 flag is accepted)."""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from modules.errors import WebUIError
from webui.launch_options import (
    API_AUTH_ENV,
    UI_AUTH_ENV,
    LaunchError,
    LaunchParser,
    ServerConfig,
    add_launch_flags,
    device_from_flags,
    ignored_flags,
    model_dirs_from_flags,
    parse_admin_users,
    precision_from_flags,
    server_config,
    settings_from_flags,
)

if TYPE_CHECKING:
    from modules.app import StartOptions

log = logging.getLogger("webui")
_SHORT_SWITCHES = ("-f", "-h")
_PASSWORD_FLAGS = ("--api-auth", "--gradio-auth")


def build_parser() -> argparse.ArgumentParser:
    p = LaunchParser(prog="webui", allow_abbrev=False, usage="%(prog)s [flags]",
                     description="Stable Diffusion web UI and A1111-compatible API. Flags may also come from the "
                     "COMMANDLINE_ARGS environment variable (the command line wins). Other commands: "
                     "'webui txt2img --help' (the CompVis command line), 'webui merge --help'.")
    add_launch_flags(p)
    return p


def _set_aside(words: Sequence[str]) -> tuple[list[str], list[str]]:
    """Words argparse would refuse although no known flag is meant (``-foo`` reads as ``-f oo``): set aside."""
    keep: list[str] = []
    aside: list[str] = []
    for word in words:
        bundled = len(word) > 2 and not word.startswith("--") and word[:2] in _SHORT_SWITCHES
        (aside if bundled else keep).append(word)
    return keep, aside


def parse_launch_args(argv: Sequence[str], environ: Mapping[str, str]) -> tuple[argparse.Namespace, list[str]]:
    """``COMMANDLINE_ARGS`` then the command line, which wins; returns the flags and the words not understood.

    Unknown words are returned, not refused (an extension's flag, a newer A1111's); a bad value for a known flag
    raises :class:`LaunchError` with a one-line message.
    """
    parser = build_parser()
    try:
        env_words = shlex.split(environ.get("COMMANDLINE_ARGS", ""))
    except ValueError as exc:
        raise LaunchError(f"COMMANDLINE_ARGS: {exc}") from None
    env_words, unknown = _set_aside(env_words)
    try:
        args, extra = parser.parse_known_args(env_words)
    except LaunchError as exc:
        raise LaunchError(f"COMMANDLINE_ARGS: {exc}") from None
    cli_words, aside = _set_aside(argv)
    args, cli_extra = parser.parse_known_args(cli_words, namespace=args)
    return args, [*unknown, *extra, *aside, *cli_extra]


def warning_line(args: argparse.Namespace, unknown: Sequence[str]) -> str | None:
    """One line naming the flags without effect here and the unknown flags (their values are never shown)."""
    parts = []
    ignored = ignored_flags(args)
    if ignored:
        parts.append("ignored launch flags (no effect here): " + ", ".join(ignored))
    names = list(dict.fromkeys(w.split("=", 1)[0] for w in unknown if w.startswith("-") and w != "-"))
    others = len([w for w in unknown if not w.startswith("-") or w == "-"])
    if names or others:
        tail = f" (and {others} other word{'s' if others > 1 else ''})" if others else ""
        parts.append("unknown launch arguments ignored: " + (", ".join(names) or "none") + tail)
    return "; ".join(parts) or None


def password_warning(argv: Sequence[str]) -> str | None:
    """A warning when passwords were given on the command line, where every user of the machine sees them."""
    given = sorted({w.split("=", 1)[0] for w in argv if w.split("=", 1)[0] in _PASSWORD_FLAGS})
    if not given:
        return None
    return (f"{' and '.join(given)} on the command line: other users of this machine can read the passwords "
            f"(ps); use --api-auth-file / --gradio-auth-path or {API_AUTH_ENV} / {UI_AUTH_ENV} instead")


def admin_warning(admins: tuple[str, ...], config: ServerConfig) -> str | None:
    """A start-up warning when ``--admin-users`` cannot do what it says: no auth, or names no user has."""
    if not admins:
        return None
    if not config.auth_enabled:
        return "--admin-users has no effect without --api-auth or --gradio-auth: the one local user may do anything"
    unknown = [u for u in admins if u not in config.api_users and u not in config.ui_users]
    return f"--admin-users names unknown users: {', '.join(unknown)}" if unknown else None


def _log_level(name: str | None) -> int:
    level = logging.getLevelName((name or "INFO").strip().upper())
    return level if isinstance(level, int) else logging.INFO


def main(argv: list[str] | None = None) -> int:
    t0 = time.monotonic()
    words = sys.argv[1:] if argv is None else argv
    try:
        args, unknown = parse_launch_args(words, os.environ)
        config = server_config(args, os.environ)
    except LaunchError as exc:
        print(f"webui: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=_log_level(args.loglevel or os.environ.get("SD_WEBUI_LOG_LEVEL")),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for line in (warning_line(args, unknown), password_warning(words),
                 admin_warning(parse_admin_users(args.admin_users), config)):
        if line:
            log.warning(line)
    if config.exposed and not config.auth_enabled:
        log.warning("listening on %s WITHOUT authentication (--insecure): anyone who can reach this port can "
                    "use it", config.host)
    return _serve(args, config, t0)


def start_options(args: argparse.Namespace, exposed: bool) -> StartOptions:
    """What the flags decide about the application."""
    from modules.app import StartOptions

    return StartOptions(data_dir=args.data_dir, models_dir=args.models_dir, ckpt_dirs=tuple(args.ckpt_dir),
                        lora_dir=args.lora_dir, embeddings_dir=args.embeddings_dir,
                        hypernetwork_dir=args.hypernetwork_dir, styles_files=tuple(args.styles_file or ()),
                        model_dirs=model_dirs_from_flags(args),
                        ckpt=args.ckpt, device=device_from_flags(args), precision=precision_from_flags(args),
                        medvram_sdxl=args.medvram_sdxl, no_half_vae=args.no_half_vae, lowram=args.lowram,
                        skip_load_model=args.skip_load_model_at_start or args.ui_debug_mode, exposed=exposed,
                        admin_users=parse_admin_users(args.admin_users),
                        extension_access=args.enable_insecure_extension_access,
                        disable_extensions="all" if args.disable_all_extensions else
                        "extra" if args.disable_extra_extensions else "none",
                        workers=args.workers, worker_count=args.worker_count,
                        worker_models_dir=Path(args.worker_models_dir) if args.worker_models_dir else None,
                        worker_threads=args.worker_threads)


def _serve(args: argparse.Namespace, config: ServerConfig, t0: float) -> int:
    from modules.app import App
    from webui.server import create_server, serve

    try:
        app = App(start_options(args, config.exposed))
    except WebUIError as exc:
        print(f"webui: error: {exc}", file=sys.stderr)
        return 2
    from_flags = settings_from_flags(args)
    if from_flags:
        app.settings.update(from_flags, save=False)
        app.models.config = app.device_config(app.models.config.device)
    app.launch_flags = config.flags
    if app.settings.load_message:
        log.warning(app.settings.load_message)

    def started() -> None:
        where = f"http://{'127.0.0.1' if config.host in ('0.0.0.0', '::') else config.host}:{config.port}"
        print(f"Running on {where} ({'API only' if config.nowebui else 'UI and API'}); "
              f"started in {time.monotonic() - t0:.1f}s", flush=True)

    serve(app, config, create_server(app, config, on_started=started), args.timeout_keep_alive)
    return 0
