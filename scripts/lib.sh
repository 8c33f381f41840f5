# shellcheck shell=bash
# lib.sh: the shell helpers the scripts in scripts/ share: their messages (log, die), their
# help text (usage) and the sha256 checks of what the fetch scripts download. One copy here,
# so that every script reports the same way. Sourced, never run; a script starts with:
#
#   set -euo pipefail
#   # shellcheck source-path=SCRIPTDIR source=lib.sh
#   . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#
# (the directive lets `shellcheck scripts/*.sh` follow the file from any directory). Sourcing
# it defines the functions and variables below and runs nothing else.

# Every message starts with the name of the script that sourced this file, without .sh
# ("fetch-model: ..."), so a line in a long log says which script wrote it.
script_name="$(basename "$0" .sh)"

# What die prints after the name, and the status it exits with. A script sets them after
# sourcing this file when a stop means something else there: container-test.sh prints FAIL
# (it is a test); soak.sh and miri.sh exit 2 (their status 1 means "a check failed", and 2
# "nothing was checked").
die_label=ERROR
die_status=1

# log MESSAGE...: a progress message, on stderr (stdout is for what a script prints for its
# caller, e.g. the path a fetch script installed).
log() { printf '%s: %s\n' "$script_name" "$*" >&2; }

# die MESSAGE...: the error message on stderr, then exit.
die() {
    printf '%s: %s: %s\n' "$script_name" "$die_label" "$*" >&2
    exit "$die_status"
}

# usage: the script's header comment (line 2 up to `set -euo pipefail`) without the comment
# marks, on stdout. On an error path: `usage >&2`.
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p;}' "$0"; }

# sha256_of FILE: FILE's sha256 digest in hex, from sha256sum, shasum or, when neither is
# installed, Python ($PYTHON, default python3).
sha256_of() {
    if command -v sha256sum >/dev/null 2>&1; then
        sha256sum "$1" | cut -d' ' -f1
    elif command -v shasum >/dev/null 2>&1; then
        shasum -a 256 "$1" | cut -d' ' -f1
    else
        "${PYTHON:-python3}" -c 'import hashlib, sys
h = hashlib.sha256()
with open(sys.argv[1], "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
print(h.hexdigest())' "$1"
    fi
}

# verify_sha256 FILE EXPECTED NAME: dies unless FILE's sha256 digest is EXPECTED; NAME is how
# the message calls the file.
verify_sha256() {
    local actual
    actual="$(sha256_of "$1")"
    [[ "$actual" == "$2" ]] \
        || die "$3 checksum mismatch: expected sha256 $2, got $actual; refusing to install it"
}
