#!/usr/bin/env bash
# test-venv.sh: make the Python venv that tests/python_clients.rs runs the real clients in
# (huggingface_hub's InferenceClient, openai's OpenAI and LlamaIndex's TEI reranker, pinned
# in tests/clients/requirements.txt).
#
# Usage:
#   python=$(scripts/test-venv.sh | tail -n 1)
#
# The venv is built once under target/ (so it is never committed and `cargo clean` removes
# it) and reused while tests/clients/requirements.txt is unchanged; a venv left half-built
# by an interrupted run has no stamp and is built again. The last line on stdout is the
# venv's interpreter; progress messages go to stderr. Exits non-zero when Python 3, its venv
# module, pip or the package registry is unavailable.
#
# Environment:
#   PYTHON               interpreter that creates the venv (default: python3)
#   ZEROBATCH_TEST_VENV  where the venv goes (default: target/test-venv)
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PYTHON="${PYTHON:-python3}"
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
requirements="$repo_root/tests/clients/requirements.txt"
venv="${ZEROBATCH_TEST_VENV:-$repo_root/target/test-venv}"
stamp="$venv/zerobatch-requirements.txt"
python="$venv/bin/python"
# What the test imports: a venv that cannot import these is rebuilt.
readonly CHECK='import huggingface_hub, numpy, openai, jsonschema, llama_index.postprocessor.tei_rerank'

[[ -f "$requirements" ]] || die "missing $requirements"

if [[ -x "$python" && -f "$stamp" ]] && cmp -s "$stamp" "$requirements" \
    && "$python" -c "$CHECK" 2>/dev/null; then
    log "reusing $venv"
    printf '%s\n' "$python"
    exit 0
fi

command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found (install Python 3)"
log "building $venv from tests/clients/requirements.txt"
rm -rf "$venv"
mkdir -p "$(dirname "$venv")"
"$PYTHON" -m venv "$venv" >&2 \
    || die "$PYTHON -m venv failed (on Debian or Ubuntu: apt-get install python3-venv)"
"$python" -m pip install --disable-pip-version-check -q -r "$requirements" >&2 \
    || die "pip install -r tests/clients/requirements.txt failed (is the package registry reachable?)"
"$python" -c "$CHECK" || die "the venv cannot import the clients after installing them"
cp "$requirements" "$stamp"
log "built $venv"
printf '%s\n' "$python"
