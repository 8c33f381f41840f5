#!/usr/bin/env bash
# fetch-azurite.sh: install Azurite, Microsoft's Azure Storage emulator, into the project
# (not on the system) for the Azure Storage Queues tests (tests/queue_azure.rs) and
# scripts/queue-load.sh --azure.
#
# Usage:
#   bin=$(scripts/fetch-azurite.sh | tail -n1)
#
# Azurite is the npm package `azurite`, pinned below; npm checks every package it installs
# against the registry's sha512 integrity. It goes to target/azurite (or $ZEROBATCH_AZURITE_DIR)
# and the last line on stdout is the absolute path of its `azurite` command. Running it again
# when that version is installed does nothing but print the path.
#
# Environment:
#   ZEROBATCH_AZURITE_DIR  where to install (default: target/azurite under the repository root)
#   NPM                    npm client (default: npm)
set -euo pipefail

readonly PACKAGE="azurite"
readonly VERSION="3.35.0"

NPM="${NPM:-npm}"
root="$(cd "$(dirname "$0")/.." && pwd)"
dir="${ZEROBATCH_AZURITE_DIR:-$root/target/azurite}"
bin="$dir/node_modules/.bin/azurite"
installed="$dir/node_modules/azurite/package.json"

if [ -x "$bin" ] && [ -f "$installed" ] && grep -q "\"version\": \"$VERSION\"" "$installed"; then
  echo "$bin"
  exit 0
fi
if ! command -v "$NPM" >/dev/null 2>&1; then
  echo "error: npm is not installed; it installs Azurite ($PACKAGE@$VERSION) for the Azure queue tests (e.g. apt-get install npm)" >&2
  exit 1
fi
mkdir -p "$dir"
echo "installing $PACKAGE@$VERSION into $dir" >&2
"$NPM" install --prefix "$dir" --no-audit --no-fund --loglevel=error "$PACKAGE@$VERSION" >&2
if [ ! -x "$bin" ]; then
  echo "error: npm installed $PACKAGE@$VERSION but $bin is missing" >&2
  exit 1
fi
echo "$bin"
