#!/usr/bin/env bash
# container-test.sh: build the zerobatch runtime images (embedding and text generation)
# with podman and check them for real.
#
# Usage:
#   scripts/container-test.sh [--port N] [--runs N] [--binary PATH] [--keep]
#
#   --port N       host port to publish the container's port 80 on, bound to 127.0.0.1
#                  only (default: the first free one from 18080 on)
#   --runs N       cold starts to time (default 3; the median is reported)
#   --binary PATH  the zerobatch binary to put in the images (default
#                  target/release/zerobatch, built with cargo when missing or stale;
#                  a given binary is used as it is). It is copied when the test starts,
#                  so a rebuild meanwhile does not change what is tested.
#   --keep         keep the images zerobatch:container-test and
#                  zerobatch:container-test-generation afterwards
#
# What it does:
#   1. installs podman, runc and debootstrap with apt-get when missing (root only);
#   2. makes the base image debian:bookworm-slim locally with debootstrap, from the
#      Debian mirror apt uses on this machine (there is no image registry here), unless
#      podman already has it;
#   3. builds the `runtime` stage of container/Dockerfile, the same instructions users
#      build elsewhere, with BINARY_SOURCE=context (target/release/zerobatch, built with
#      cargo when missing or older than the sources) and MODEL_SOURCE=local (the model
#      from scripts/fetch-model.sh): this machine has no Rust toolchain image and no hub.
#      The build context is a snapshot in a temporary directory holding just the binary
#      and the models (hard links where possible);
#   4. checks that the image carries a CA bundle (/etc/ssl/certs, for https to Azure Storage),
#      runs it as ACA would (non-root, port 80, net.ipv4.ip_unprivileged_port_start=1024,
#      which only the binary's file capability gets past), waits for /readyz, checks
#      /healthz and POST /embed (384 finite floats, and close to the reference embedding
#      in tests/data when python3 is there), and that SIGTERM ends it with exit code 0;
#   5. prints the image size and the cold start (podman run -> first 200 from /embed),
#      median of --runs;
#   6. builds the text-generation image from the same binary (its stages come from the
#      build cache; only the model layer is new), MODEL=/models/SmolLM2-135M-Instruct with
#      the GGUF from scripts/fetch-model.sh --generation, runs it the same way and checks
#      /info (task text-generation), POST /generate in the upstream shape ({"text"} ->
#      generated_text = prompt + continuation) and the TGI shape ({"inputs",
#      "parameters"}), and prints its size, its start (podman run -> /readyz 200) and
#      the time this step took.
# Exits 0 with "SKIP: <reason>" when podman cannot be installed or run here; any other
# failure exits non-zero.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
die_label=FAIL

skip() { printf 'SKIP: %s\n' "$*"; exit 0; }

port=""
runs=3
keep=0
binary_arg=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --port) [[ $# -ge 2 ]] || die "--port needs a value"; port="$2"; shift 2 ;;
        --runs) [[ $# -ge 2 ]] || die "--runs needs a value"; runs="$2"; shift 2 ;;
        --binary) [[ $# -ge 2 ]] || die "--binary needs a value"; binary_arg="$2"; shift 2 ;;
        --keep) keep=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
if [[ -z "$port" ]]; then
    port=18080
    while ! port_free "$port"; do
        port=$((port + 1))
        [[ $port -lt 18180 ]] || die "no free port between 18080 and 18179"
    done
fi
[[ "$port" =~ ^[0-9]+$ ]] || die "--port must be a number"
port_free "$port" || die "port $port is already in use"
[[ "$runs" =~ ^[1-9][0-9]*$ ]] || die "--runs must be a positive number"

[[ -z "$binary_arg" || -x "$binary_arg" ]] || die "--binary $binary_arg is not an executable file"
[[ -z "$binary_arg" ]] || binary_arg="$(cd "$(dirname "$binary_arg")" && pwd)/$(basename "$binary_arg")"

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "$script_dir/.." && pwd)"
cd "$repo_root"

readonly base_image=docker.io/library/debian:bookworm-slim
readonly image=localhost/zerobatch:container-test
readonly gen_image=localhost/zerobatch:container-test-generation
readonly model_rel=models/all-MiniLM-L6-v2
readonly gen_model_rel=models/SmolLM2-135M-Instruct
# Where the generation image keeps the GGUF, and so the server's MODEL.
readonly gen_model_path=/models/SmolLM2-135M-Instruct
readonly binary_rel=target/release/zerobatch
readonly sentence="A man is eating food."
readonly prompt="Once upon a time"
url="http://127.0.0.1:$port"

# --- 1. podman ------------------------------------------------------------------------
if ! command -v podman >/dev/null 2>&1 || ! command -v runc >/dev/null 2>&1 \
    || ! command -v debootstrap >/dev/null 2>&1; then
    if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
        skip "podman, runc or debootstrap is missing, and installing them needs root and apt-get"
    fi
    log "installing podman, runc and debootstrap"
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc debootstrap; } >/dev/null 2>&1; then
        skip "apt-get could not install podman, runc and debootstrap"
    fi
fi
# crun (podman's default runtime) refuses hybrid cgroups on these machines, and the
# default ulimits exceed what they allow: runc and explicit ulimits.
podman=(podman --runtime runc)
ulimits=(--ulimit nofile=20000:20000 --ulimit nproc=4096:4096)
if ! "${podman[@]}" info >/dev/null 2>&1; then
    skip "podman cannot run here: $("${podman[@]}" info 2>&1 | tail -n1)"
fi

containers=()
dangling_before=""
tmp="$(mktemp -d "${TMPDIR:-/tmp}/zerobatch-container-test.XXXXXX")"
cleanup() {
    local c
    for c in "${containers[@]}"; do
        "${podman[@]}" rm -f -t 0 "$c" >/dev/null 2>&1 || true
    done
    if [[ $keep -eq 0 ]]; then
        "${podman[@]}" rmi -f "$image" "$gen_image" >/dev/null 2>&1 || true
        # The build's intermediate stage images (only those this run added).
        if [[ -n "$dangling_before" ]]; then
            comm -13 "$tmp/dangling-before" <("${podman[@]}" images -q --filter dangling=true | sort -u) \
                | xargs -r "${podman[@]}" rmi -f >/dev/null 2>&1 || true
        fi
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT

# --- 2. base image ----------------------------------------------------------------------
if ! "${podman[@]}" image exists "$base_image"; then
    # The mirror apt uses here: deb822 .sources files ("URIs:") or one-line .list files.
    mirror=""
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -f "$f" ]] || continue
        mirror="$(awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i ~ /\/debian\/?$/) { print $i; exit } }' "$f")"
        [[ -n "$mirror" ]] && break
    done
    if [[ -z "$mirror" ]]; then
        for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
            [[ -f "$f" ]] || continue
            mirror="$(awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^https?:\/\/.*\/debian\/?$/) { print $i; exit } }' "$f")"
            [[ -n "$mirror" ]] && break
        done
    fi
    [[ -n "$mirror" ]] || skip "no Debian mirror found in /etc/apt to make $base_image from"
    log "making $base_image with debootstrap from $mirror (a minute or two)"
    if ! debootstrap --variant=minbase bookworm "$tmp/rootfs" "$mirror" >"$tmp/debootstrap.log" 2>&1; then
        tail -n 5 "$tmp/debootstrap.log" >&2
        skip "debootstrap could not make the base image from $mirror"
    fi
    # Trim it towards the real image: no package caches or lists, docs, man pages, locales.
    rm -rf "$tmp"/rootfs/var/cache/apt/archives/*.deb "$tmp"/rootfs/var/lib/apt/lists/* \
        "$tmp"/rootfs/usr/share/doc/* "$tmp"/rootfs/usr/share/man/* \
        "$tmp"/rootfs/usr/share/locale/* "$tmp"/rootfs/usr/share/info/*
    tar -C "$tmp/rootfs" -c . | "${podman[@]}" import -q - "$base_image" >/dev/null
    rm -rf "$tmp/rootfs"
fi
if ! err="$("${podman[@]}" run --rm "${ulimits[@]}" --network none "$base_image" true 2>&1)"; then
    skip "podman cannot run a container here: $err"
fi

# --- 3. binary and models, then the image ----------------------------------------------
binary="$binary_arg"
if [[ -z "$binary" ]]; then
    binary="$repo_root/$binary_rel"
    if [[ ! -x "$binary" ]] \
        || [[ -n "$(find Cargo.toml Cargo.lock src benches -newer "$binary" -print -quit 2>/dev/null)" ]]; then
        command -v cargo >/dev/null 2>&1 || die "$binary_rel is missing or stale and cargo is not installed"
        log "building $binary_rel"
        cargo build --release --locked --bin zerobatch
    fi
fi

log "fetching the models"
"$script_dir/fetch-model.sh" "$repo_root/$model_rel" >/dev/null
"$script_dir/fetch-model.sh" --generation "$repo_root/$gen_model_rel" >/dev/null

# The build context: the binary (a copy: a rebuild while the test runs must not change
# it) and the two models (hard links, or copies across file systems).
context="$tmp/context"
mkdir -p "$context/models"
cp "$binary" "$context/zerobatch"
"$context/zerobatch" --help >/dev/null || die "$binary --help failed"
for m in "$model_rel" "$gen_model_rel"; do
    if ! cp -al "$repo_root/$m" "$context/$m" 2>/dev/null; then
        rm -rf "${context:?}/$m"
        cp -a "$repo_root/$m" "$context/$m"
    fi
done

# Where podman keeps image layers, and the room left there: a full disk shows up in podman
# only as "read/write on closed pipe" while it commits a layer.
graph_root="$("${podman[@]}" info --format '{{.Store.GraphRoot}}' 2>/dev/null || echo /var/lib/containers)"
free_mib() { df -Pm "$1" 2>/dev/null | awk 'NR == 2 { print $4 }'; }
storage_free="$(free_mib "$graph_root")"
if [[ -n "$storage_free" && "$storage_free" -lt 2048 ]]; then
    die "only ${storage_free} MiB free in podman's storage ($graph_root); the images need about 2 GiB"
fi
build_image() { # build_image TAG LOG BUILD-ARG...: the runtime stage, from the context
    local tag="$1" logfile="$2"
    shift 2
    local args=() a
    for a in "$@"; do args+=(--build-arg "$a"); done
    "${podman[@]}" build --pull=never "${ulimits[@]}" \
        -f "$repo_root/container/Dockerfile" --target runtime \
        --build-arg BINARY_SOURCE=context --build-arg BINARY=zerobatch \
        "${args[@]}" -t "$tag" "$context" >"$logfile" 2>&1 \
        || { tail -n 30 "$logfile" >&2
            die "podman build of $tag failed ($(free_mib "$graph_root") MiB free in $graph_root)"; }
}

log "building $image (runtime stage of container/Dockerfile)"
"${podman[@]}" images -q --filter dangling=true | sort -u >"$tmp/dangling-before"
dangling_before=yes
build_image "$image" "$tmp/build.log" MODEL_SOURCE=local "MODEL_DIR=$model_rel"
size_bytes="$("${podman[@]}" image inspect --format '{{.Size}}' "$image")"
# The CA bundle the Azure SDK needs for https to a storage account (--queue azure-queue://):
# a scratch image has none unless the Dockerfile copies it in.
certs_ctr="zb-certs-$$"
"${podman[@]}" create --name "$certs_ctr" "$image" >/dev/null
"${podman[@]}" cp "$certs_ctr:/etc/ssl/certs/ca-certificates.crt" "$tmp/ca-certificates.crt" \
    || { "${podman[@]}" rm -f "$certs_ctr" >/dev/null; die "the image has no /etc/ssl/certs/ca-certificates.crt"; }
"${podman[@]}" rm -f "$certs_ctr" >/dev/null
grep -q 'BEGIN CERTIFICATE' "$tmp/ca-certificates.crt" || die "the image's CA bundle holds no certificate"
log "CA bundle in the image: $(grep -c 'BEGIN CERTIFICATE' "$tmp/ca-certificates.crt") certificates"

# --- 4. run it as ACA would ------------------------------------------------------------
run_container() { # run_container NAME [IMAGE]: start the image detached, publish port 80
    "${podman[@]}" run -d --name "$1" "${ulimits[@]}" \
        --sysctl net.ipv4.ip_unprivileged_port_start=1024 \
        -p "127.0.0.1:$port:80" "${2:-$image}" >/dev/null
    containers+=("$1")
}
is_running() { [[ "$("${podman[@]}" inspect --format '{{.State.Running}}' "$1" 2>/dev/null)" == true ]]; }
fail_with_logs() { # fail_with_logs NAME MESSAGE
    "${podman[@]}" logs "$1" 2>&1 | tail -n 30 >&2 || true
    die "$2"
}
embed() { # embed OUTFILE: POST /embed, prints the HTTP status
    curl -s -o "$1" -w '%{http_code}' --max-time 10 -H 'Content-Type: application/json' \
        -d "{\"inputs\":\"$sentence\"}" "$url/embed" 2>/dev/null || true
}
now_ms() { echo $(($(date +%s%N) / 1000000)); }

wait_ready() { # wait_ready NAME: until /readyz answers 200
    local deadline=$((SECONDS + 180))
    until [[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$url/readyz" 2>/dev/null || true)" == 200 ]]; do
        is_running "$1" || fail_with_logs "$1" "the container exited before /readyz answered 200"
        [[ $SECONDS -lt $deadline ]] || fail_with_logs "$1" "/readyz did not answer 200 within 180 s"
        sleep 0.1
    done
}
mb() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1e6 }'; }

name="zerobatch-test-$$"
log "starting $image as $name on $url"
run_container "$name"
wait_ready "$name"
log "/readyz: 200"

pid="$("${podman[@]}" inspect --format '{{.State.Pid}}' "$name")"
uid="$(awk '/^Uid:/ { print $2 }' "/proc/$pid/status")"
[[ "$uid" != 0 ]] || die "the server runs as root"
log "server process runs as uid $uid and listens on port 80"

[[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$url/healthz")" == 200 ]] \
    || fail_with_logs "$name" "/healthz did not answer 200"

status="$(embed "$tmp/embed.json")"
[[ "$status" == 200 ]] || { cat "$tmp/embed.json" >&2; fail_with_logs "$name" "POST /embed answered $status"; }
if command -v python3 >/dev/null 2>&1; then
    python3 - "$tmp/embed.json" "$repo_root/tests/data/minilm_reference.json" "$sentence" <<'PY' \
        || die "unexpected /embed answer: $(head -c 300 "$tmp/embed.json")"
import json, math, os, sys

body = json.load(open(sys.argv[1]))

def first_vector(x):
    if isinstance(x, dict):
        for key in ("embeddings", "data", "embedding"):
            if key in x:
                return first_vector(x[key])
        sys.exit("no embedding in an object with keys %s" % sorted(x))
    if isinstance(x, list) and x and all(isinstance(v, (int, float)) for v in x):
        return x
    if isinstance(x, list) and x:
        return first_vector(x[0])
    sys.exit("no embedding found")

v = first_vector(body)
if len(v) != 384 or not all(math.isfinite(f) for f in v):
    sys.exit("expected 384 finite floats, got %d values" % len(v))
msg = "POST /embed: 384 finite floats"
if os.path.exists(sys.argv[2]):
    ref = next((c["embedding"] for c in json.load(open(sys.argv[2]))["cases"] if c["text"] == sys.argv[3]), None)
    if ref is not None:
        dot = sum(a * b for a, b in zip(v, ref))
        cos = dot / (math.sqrt(sum(a * a for a in v)) * math.sqrt(sum(b * b for b in ref)))
        if cos < 0.999:
            sys.exit("cosine similarity to the reference embedding is %.6f" % cos)
        msg += ", cosine %.6f to the reference" % cos
print(msg, file=sys.stderr)
PY
else
    count="$(grep -oE -- '-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?' "$tmp/embed.json" | wc -l)"
    [[ "$count" -eq 384 ]] || die "expected 384 numbers from /embed, got $count"
    log "POST /embed: 384 numbers"
fi

log "stopping with SIGTERM"
stop_start="$(now_ms)"
"${podman[@]}" stop -t 30 "$name" >/dev/null
stop_ms=$(($(now_ms) - stop_start))
exit_code="$("${podman[@]}" inspect --format '{{.State.ExitCode}}' "$name")"
[[ "$exit_code" == 0 ]] || fail_with_logs "$name" "exit code $exit_code after SIGTERM (expected 0)"
log "exited 0 after SIGTERM in ${stop_ms} ms"
"${podman[@]}" rm -f "$name" >/dev/null

# --- 5. cold starts ----------------------------------------------------------------------
times=()
for ((i = 1; i <= runs; i++)); do
    name="zerobatch-cold-$$-$i"
    start="$(now_ms)"
    run_container "$name"
    deadline=$((SECONDS + 180))
    until [[ "$(embed /dev/null)" == 200 ]]; do
        is_running "$name" || fail_with_logs "$name" "the container exited during cold start $i"
        [[ $SECONDS -lt $deadline ]] || fail_with_logs "$name" "no 200 from /embed within 180 s"
        sleep 0.02
    done
    times+=($(($(now_ms) - start)))
    log "cold start $i: ${times[-1]} ms"
    "${podman[@]}" rm -f -t 0 "$name" >/dev/null
done
mapfile -t sorted < <(printf '%s\n' "${times[@]}" | sort -n)
median="${sorted[$((runs / 2))]}"
if ((runs % 2 == 0)); then
    median=$(((sorted[runs / 2 - 1] + sorted[runs / 2]) / 2))
fi

# --- 6. the text-generation image ---------------------------------------------------------
gen_start="$(now_ms)"
log "building $gen_image (MODEL=$gen_model_path, the GGUF from $gen_model_rel)"
build_image "$gen_image" "$tmp/build-generation.log" MODEL_SOURCE=local \
    "MODEL_DIR=$gen_model_rel" "MODEL=$gen_model_path"
gen_size_bytes="$("${podman[@]}" image inspect --format '{{.Size}}' "$gen_image")"

name="zerobatch-generation-$$"
log "starting $gen_image as $name on $url"
run_start="$(now_ms)"
run_container "$name" "$gen_image"
wait_ready "$name"
gen_ready_ms=$(($(now_ms) - run_start))
log "/readyz: 200 after ${gen_ready_ms} ms"

post() { # post PATH BODY OUTFILE: prints the HTTP status
    curl -s -o "$3" -w '%{http_code}' --max-time 60 -H 'Content-Type: application/json' \
        -d "$2" "$url$1" 2>/dev/null || true
}
curl -s -o "$tmp/info.json" --max-time 5 "$url/info" || true
grep -q '"task":"text-generation"' "$tmp/info.json" \
    || fail_with_logs "$name" "/info does not say task text-generation: $(head -c 300 "$tmp/info.json")"
log "/info: task text-generation"
status="$(post /generate "{\"text\":\"$prompt\"}" "$tmp/generate-upstream.json")"
[[ "$status" == 200 ]] || fail_with_logs "$name" "POST /generate {\"text\"} answered $status: $(head -c 300 "$tmp/generate-upstream.json")"
status="$(post /generate "{\"inputs\":\"$prompt\",\"parameters\":{\"max_new_tokens\":8}}" "$tmp/generate-tgi.json")"
[[ "$status" == 200 ]] || fail_with_logs "$name" "POST /generate {\"inputs\"} answered $status: $(head -c 300 "$tmp/generate-tgi.json")"
if command -v python3 >/dev/null 2>&1; then
    python3 - "$tmp/generate-upstream.json" "$tmp/generate-tgi.json" "$prompt" <<'PY' \
        || die "unexpected /generate answer"
import json, sys

upstream = json.load(open(sys.argv[1]))
tgi = json.load(open(sys.argv[2]))
prompt = sys.argv[3]
text = upstream.get("generated_text") if isinstance(upstream, dict) else None
if not isinstance(text, str) or not text.startswith(prompt) or len(text) <= len(prompt):
    sys.exit("upstream shape: expected generated_text = prompt + continuation, got %r" % upstream)
# TGI answers an object, or a list of them (one per input).
item = tgi[0] if isinstance(tgi, list) and tgi else tgi
cont = item.get("generated_text") if isinstance(item, dict) else None
if not isinstance(cont, str) or not cont:
    sys.exit("TGI shape: expected a non-empty generated_text, got %r" % tgi)
print("POST /generate: %r; TGI shape (8 new tokens): %r" % (text, cont), file=sys.stderr)
PY
else
    grep -q "^{\"generated_text\":\"$prompt." "$tmp/generate-upstream.json" \
        || die "upstream shape: generated_text does not continue the prompt: $(head -c 300 "$tmp/generate-upstream.json")"
    grep -q '"generated_text":"[^"]' "$tmp/generate-tgi.json" \
        || die "TGI shape: no generated_text: $(head -c 300 "$tmp/generate-tgi.json")"
    log "POST /generate: both shapes answered generated_text"
fi
"${podman[@]}" rm -f -t 0 "$name" >/dev/null
gen_ms=$(($(now_ms) - gen_start))

printf 'image: %s\n' "$image"
printf 'image size: %s MB (%s bytes)\n' "$(mb "$size_bytes")" "$size_bytes"
printf 'cold start (podman run -> first 200 from POST /embed): median %s ms of %s runs (%s ms)\n' \
    "$median" "$runs" "$(IFS=' '; echo "${times[*]}")"
printf 'shutdown on SIGTERM: %s ms, exit code 0\n' "$stop_ms"
printf 'generation image: %s\n' "$gen_image"
printf 'generation image size: %s MB (%s bytes)\n' "$(mb "$gen_size_bytes")" "$gen_size_bytes"
printf 'generation start (podman run -> /readyz 200): %s ms; POST /generate in both shapes: 200\n' "$gen_ready_ms"
printf 'generation step (build, run, checks): %s s\n' "$(awk -v ms="$gen_ms" 'BEGIN { printf "%.1f", ms / 1000 }')"
printf 'container test: ok\n'
