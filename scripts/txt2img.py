"""CompVis-compatible text-to-image command line.

    python scripts/txt2img.py --prompt "..." --ckpt model.safetensors
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from webui.compvis import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
