#!/usr/bin/env bash
# Creates .venv and installs the product into it. `--test` adds the test tools; `--cuda` adds xformers.
# torch is installed first and pinned, so nothing later replaces it with another build.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "$TORCH_SPEC"
TORCH_VERSION=$(.venv/bin/python -c "import torch; print(torch.__version__.split('+')[0])")
EXTRAS=""
for arg in "$@"; do
    case "$arg" in
        --test) EXTRAS="${EXTRAS:+$EXTRAS,}test" ;;
        --cuda) EXTRAS="${EXTRAS:+$EXTRAS,}cuda" ;;
    esac
done
CONSTRAINT=$(mktemp)
echo "torch==${TORCH_VERSION}" > "$CONSTRAINT"
.venv/bin/python -m pip install -q -c "$CONSTRAINT" -e ".${EXTRAS:+[$EXTRAS]}"
rm -f "$CONSTRAINT"
# spandrel (model upscalers) declares torchvision, which would replace torch with another build and cannot import
# beside this one: it is installed pinned, without its declared dependencies (the ones it uses are ours).
.venv/bin/python -m pip install -q --no-deps "spandrel==0.4.2" "spandrel-extra-arches==0.2.0"
