#!/usr/bin/env bash
# fetch-generation-model.sh: the text-generation model (SmolLM2-135M-Instruct,
# GGUF, Q4_1), fetched and verified by the same script as the embedding model:
# `scripts/fetch-model.sh --generation [DEST_DIR]` (see its header). Kept under
# this name for the commands and documents that use it.
#
#   gguf=$(scripts/fetch-generation-model.sh | tail -n1)
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/fetch-model.sh" --generation "$@"
