#!/usr/bin/env bash
# baseline-venv.sh: build the throwaway venv that scripts/baseline-fastapi.py (the FastAPI +
# sentence-transformers baseline) and scripts/make-reference.py / make-retrieval-set.py run in.
#
# Usage:
#   scripts/baseline-venv.sh [VENV_DIR]      # default: ${TMPDIR:-/tmp}/zerobatch-baseline-venv
#   HF_HUB_OFFLINE=1 "$VENV_DIR/bin/python" scripts/baseline-fastapi.py --port 8081
#
# The venv goes outside the repository. Running it again on a built venv only checks the
# pins (pip finds them satisfied). The default torch wheel pulls the NVIDIA CUDA packages,
# about 3 GB, which are never used: everything runs on the CPU. The last line on stdout is
# the venv's interpreter; progress goes to stderr.
#
# Environment:
#   PYTHON   interpreter that creates the venv (default: python3; 3.11.7 when the pins were
#            chosen)
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PYTHON="${PYTHON:-python3}"
venv="${1:-${TMPDIR:-/tmp}/zerobatch-baseline-venv}"
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# realpath -m resolves a path whose folders do not exist yet.
case "$(realpath -m "$venv")/" in
    "$(realpath -m "$repo_root")"/*) die "$venv is inside the repository; put the venv elsewhere" ;;
esac

# The pins of make-reference.py's docstring, plus the web stack (as installed 2026-11-27).
readonly PINS=(
    sentence-transformers==6.2.0
    transformers==5.24.0
    tokenizers==0.23.3
    torch==2.15.0
    numpy==2.4.6
    fastapi==0.165.0
    'uvicorn[standard]==0.54.0'
)

command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found"
if [[ ! -x "$venv/bin/python" ]]; then
    log "creating $venv"
    "$PYTHON" -m venv "$venv" || die "could not create the venv (apt-get install python3-venv)"
fi
log "installing ${PINS[*]}"
nice -n 15 "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${PINS[@]}" >&2 \
    || die "pip install failed"
"$venv/bin/python" -c 'import fastapi, sentence_transformers, torch, uvicorn' \
    || die "the venv cannot import its packages"
log "ready"
printf '%s\n' "$venv/bin/python"
