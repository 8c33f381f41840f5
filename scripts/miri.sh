#!/usr/bin/env bash
# miri.sh: runs the kernel unit tests under miri (undefined-behaviour checker) with tree
# borrows, on the portable (non-AVX) kernel paths: `has_avx2_fma()` answers false under
# cfg(miri), so the AVX2+FMA versions and the in-place dot kernel are not used, and the tests
# shrink their shape lists under cfg(miri) so a run takes minutes, not hours.
#
# Usage:
#   scripts/miri.sh [FILTER] [-- TEST-ARGS...]
#
#   FILTER     test name filter (default: model::kernels)
#   TEST-ARGS  passed to the test binary (e.g. --test-threads=1)
#
# Needs a nightly toolchain with the miri and rust-src components:
#   rustup toolchain install nightly --component miri,rust-src
# Without them the script says so and exits with status 2 (nothing was checked).
#
# Environment:
#   MIRI_TOOLCHAIN  toolchain to run (default: nightly)
#   MIRIFLAGS       extra miri flags, added after -Zmiri-tree-borrows
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
die_status=2

toolchain="${MIRI_TOOLCHAIN:-nightly}"
filter="model::kernels"
if [[ $# -gt 0 && "$1" != "--" ]]; then
    filter="$1"
    shift
fi
if [[ $# -gt 0 && "$1" == "--" ]]; then
    shift
fi

cd "$(dirname "${BASH_SOURCE[0]}")/.."

command -v cargo >/dev/null 2>&1 || die "cargo is not installed"
if ! cargo "+$toolchain" --version >/dev/null 2>&1; then
    die "no '$toolchain' toolchain: miri needs nightly (rustup toolchain install $toolchain --component miri,rust-src); nothing was checked"
fi
if ! cargo "+$toolchain" miri --version >/dev/null 2>&1; then
    die "the '$toolchain' toolchain has no miri (rustup component add --toolchain $toolchain miri rust-src); nothing was checked"
fi

export MIRIFLAGS="-Zmiri-tree-borrows${MIRIFLAGS:+ $MIRIFLAGS}"
printf 'miri: cargo +%s miri test --lib %s (MIRIFLAGS=%s)\n' "$toolchain" "$filter" "$MIRIFLAGS" >&2
cargo "+$toolchain" miri setup
exec cargo "+$toolchain" miri test --lib "$filter" -- "$@"
