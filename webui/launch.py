"""Start UI and API in one process: ``python -m webui`` (same flags as A1111 where they apply)."""

from __future__ import annotations

import argparse
import logging
import sys
import time

from modules.errors import WebUIError
from webui.launch_options import LaunchError, add_server_flags, precision_from_flags, server_config

log = logging.getLogger("webui")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="webui", description="Stable Diffusion web UI and A1111-compatible API. "
                                "Other commands: 'webui txt2img --help' (the CompVis command line).")
    add_server_flags(p)
    return p


def main(argv: list[str] | None = None) -> int:
    t0 = time.monotonic()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        config = server_config(args)
    except LaunchError as exc:
        print(f"webui: error: {exc}", file=sys.stderr)
        return 2
    if config.exposed and not config.auth_enabled:
        log.warning("listening on %s WITHOUT authentication (--insecure): anyone who can reach this port can "
                    "use it", config.host)

    import uvicorn

    from modules.app import App, StartOptions
    from webui.server import create_server

    device = "cpu" if args.use_cpu is not None else None
    options = StartOptions(data_dir=args.data_dir, models_dir=args.models_dir, ckpt_dirs=tuple(args.ckpt_dir),
                           ckpt=args.ckpt, device=device, precision=precision_from_flags(args),
                           skip_load_model=args.skip_load_model_at_start, exposed=config.exposed)
    try:
        app = App(options)
    except WebUIError as exc:
        print(f"webui: error: {exc}", file=sys.stderr)
        return 2
    if args.xformers or args.opt_sdp_attention:
        app.settings.update({"cross_attention_optimization": "xformers" if args.xformers else "sdp"}, save=False)
    app.launch_flags = config.flags
    if app.settings.load_message:
        log.warning(app.settings.load_message)

    def started() -> None:
        where = f"http://{'127.0.0.1' if config.host in ('0.0.0.0', '::') else config.host}:{config.port}"
        print(f"Running on {where} ({'API only' if config.nowebui else 'UI and API'}); "
              f"started in {time.monotonic() - t0:.1f}s", flush=True)

    server = create_server(app, config, on_started=started)
    uvicorn.run(server, host=config.host, port=config.port, log_level="warning", timeout_keep_alive=30)
    return 0
