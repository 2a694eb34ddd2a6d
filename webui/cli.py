"""The ``webui`` command: the server by default; ``webui txt2img ...`` runs the CompVis command line."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "txt2img":
        from webui.compvis import main as compvis_main

        return compvis_main(argv[1:])
    if argv and argv[0] == "merge":
        from webui.merge_cli import main as merge_main

        return merge_main(argv[1:])
    from webui.launch import main as launch_main

    return launch_main(argv)


if __name__ == "__main__":
    sys.exit(main())
