#!/usr/bin/env bash
# deploy-aca.sh: create or update zerobatch on Azure Container Apps with the az CLI.
#
# Usage:
#   scripts/deploy-aca.sh [options]            create or update, then print the URL
#   scripts/deploy-aca.sh --logs               follow the app's console logs
#   scripts/deploy-aca.sh --system-logs        follow the platform's logs for the app
#                                              (image pulls, probes, restarts)
#
# Creates the resource group and the Container Apps environment when they do not exist,
# then creates the app from container/containerapp.yaml, or updates it when it exists
# (the file's settings and the image; a new revision when the template changed).
#
# Options (each also read from the environment variable in brackets):
#   -g, --resource-group NAME   [RESOURCE_GROUP]   default zerobatch-rg
#   -l, --location REGION       [LOCATION]         default westeurope (used when creating)
#   -e, --environment NAME      [ACA_ENVIRONMENT]  default zerobatch-env
#   -n, --name NAME             [APP_NAME]         default zerobatch
#   -i, --image REF             [IMAGE]            default ghcr.io/<GHCR_USERNAME>/zerobatch:latest
#   -u, --registry-username U   [GHCR_USERNAME]    GitHub user that owns GHCR_PAT
#   -f, --file PATH             [ACA_YAML]         default container/containerapp.yaml
#       --no-registry-auth                         the image is public: no registry login
#       --open                   [ALLOW_OPEN_ENDPOINT=1]  deploy WITHOUT an API key: anyone
#                                                  who finds the URL can use the model
#       --check                                    after deploying, wait (up to 5 min) for
#                                                  GET /readyz to answer 200, then check
#                                                  that /info refuses a request without
#                                                  the key (401)
#       --dry-run                                  print the commands and the YAML (secrets
#                                                  masked) without calling az
#   -h, --help                                     this text
#
# The registry password is read only from the environment, never from a flag (flags
# end up in shell history and process lists):
#   GHCR_PAT   classic personal access token of GHCR_USERNAME; ACA pulls with it, which
#              needs read:packages (docs/deploy-azure.md explains why the project's PAT
#              has write:packages). Required unless --no-registry-auth.
# The API key likewise:
#   API_KEY    the key clients must send as `Authorization: Bearer <key>` (e.g.
#              `openssl rand -hex 32`); stored as the app's secret api-key and given to
#              zerobatch as API_KEY. Required unless --open: the app's ingress is public,
#              so the script refuses to deploy an open endpoint by accident.
#
# Requires: az (logged in: `az login`, or azure/login in a workflow) with rights to
# create resource groups in the subscription. See docs/deploy-azure.md.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "$script_dir/.." && pwd)"

resource_group="${RESOURCE_GROUP:-zerobatch-rg}"
location="${LOCATION:-westeurope}"
environment="${ACA_ENVIRONMENT:-zerobatch-env}"
app="${APP_NAME:-zerobatch}"
image="${IMAGE:-}"
registry_user="${GHCR_USERNAME:-}"
yaml_file="${ACA_YAML:-$repo_root/container/containerapp.yaml}"
registry_auth=1
open_endpoint=0
case "${ALLOW_OPEN_ENDPOINT:-}" in
    1 | true | yes) open_endpoint=1 ;;
    "" | 0 | false | no) ;;
    *) die "ALLOW_OPEN_ENDPOINT must be 1 or 0, not '${ALLOW_OPEN_ENDPOINT}'" ;;
esac
mode=deploy
check=0
dry_run=0

need_value() { [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value"; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        -g | --resource-group) need_value "$@"; resource_group="$2"; shift 2 ;;
        -l | --location) need_value "$@"; location="$2"; shift 2 ;;
        -e | --environment) need_value "$@"; environment="$2"; shift 2 ;;
        -n | --name) need_value "$@"; app="$2"; shift 2 ;;
        -i | --image) need_value "$@"; image="$2"; shift 2 ;;
        -u | --registry-username) need_value "$@"; registry_user="$2"; shift 2 ;;
        -f | --file) need_value "$@"; yaml_file="$2"; shift 2 ;;
        --no-registry-auth) registry_auth=0; shift ;;
        --open) open_endpoint=1; shift ;;
        --check) check=1; shift ;;
        --dry-run) dry_run=1; shift ;;
        --logs) mode=logs; shift ;;
        --system-logs) mode=system-logs; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

# az, or in --dry-run its echo.
az_run() {
    if [[ $dry_run -eq 1 ]]; then
        printf '+ az' >&2
        printf ' %q' "$@" >&2
        printf '\n' >&2
    else
        az "$@"
    fi
}

if [[ $dry_run -eq 0 ]]; then
    command -v az >/dev/null 2>&1 || die "the az CLI is not installed (https://learn.microsoft.com/cli/azure/install-azure-cli)"
    az account show --output none 2>/dev/null || die "not logged in to Azure: run 'az login' (and 'az account set --subscription ID')"
    # The containerapp commands live in an extension; --upgrade keeps the YAML schema current.
    az extension add --name containerapp --upgrade --only-show-errors >/dev/null
fi

case "$mode" in
    logs | system-logs)
        type=console
        [[ $mode == system-logs ]] && type=system
        log "following the $type logs of $app (Ctrl-C to stop)"
        az_run containerapp logs show --name "$app" --resource-group "$resource_group" \
            --type "$type" --follow --tail 100 --format text
        exit 0
        ;;
esac

# --- the app definition ---------------------------------------------------------------
[[ -f "$yaml_file" ]] || die "no such file: $yaml_file"

if [[ -z "$image" ]]; then
    [[ -n "$registry_user" ]] || die "set --image (IMAGE), or --registry-username (GHCR_USERNAME) for the default ghcr.io/<user>/zerobatch:latest"
    image="ghcr.io/${registry_user,,}/zerobatch:latest"
fi
registry_pat="${GHCR_PAT:-}"
if [[ $registry_auth -eq 1 ]]; then
    [[ -n "$registry_user" ]] || die "set --registry-username (GHCR_USERNAME), or --no-registry-auth for a public image"
    [[ -n "$registry_pat" ]] || die "set GHCR_PAT in the environment, or --no-registry-auth for a public image"
fi
api_key="${API_KEY:-}"
if [[ $open_endpoint -eq 1 ]]; then
    [[ -z "$api_key" ]] || die "API_KEY is set and --open (ALLOW_OPEN_ENDPOINT=1) asks for no key: unset one of them"
    log "WARNING: deploying an OPEN endpoint (--open / ALLOW_OPEN_ENDPOINT=1): no API key, anyone with the URL can use it"
else
    [[ -n "$api_key" ]] || die "set API_KEY in the environment (e.g. export API_KEY=\"\$(openssl rand -hex 32)\"), or pass --open to deploy an endpoint without a key on purpose"
    [[ "$api_key" =~ ^[[:graph:]]+$ ]] || die "API_KEY must be printable characters without spaces (zerobatch compares it with the trimmed bearer token)"
fi

# Without the comments: they mention the placeholders too, and the rendered file is
# only for az.
template="$(grep -v '^[[:space:]]*#' "$yaml_file")"

# ACA sends traffic and probes to ingress.targetPort; zerobatch listens on PORT. They
# must agree, or every probe fails and the revision never becomes ready.
target_port="$(sed -n 's/^ *targetPort: *\([0-9][0-9]*\).*/\1/p' <<<"$template" | head -n1)"
env_port="$(awk '/- name: PORT$/ { getline; gsub(/[^0-9]/, ""); print; exit }' <<<"$template")"
[[ -n "$target_port" ]] || die "$yaml_file has no ingress targetPort"
if [[ -n "$env_port" && "$env_port" != "$target_port" ]]; then
    die "$yaml_file: ingress targetPort $target_port but PORT=$env_port: they must be equal"
fi
while read -r probe_port; do
    [[ "$probe_port" == "$target_port" ]] \
        || die "$yaml_file: a probe uses port $probe_port, the ingress targetPort is $target_port"
done < <(sed -n 's/^ *port: *\([0-9][0-9]*\).*/\1/p' <<<"$template")

# Removes each line matching the regex $1 together with the lines under it (indented
# deeper), i.e. a YAML key with its value or a list item with its fields.
drop_block() {
    awk -v re="$1" '
        function indent(s) { match(s, /^ */); return RLENGTH }
        skipping && indent($0) > depth { next }
        { skipping = 0 }
        $0 ~ re { skipping = 1; depth = indent($0); next }
        { print }'
}
if [[ $registry_auth -eq 0 ]]; then
    # A public image: no configuration.registries and no ghcr-pat secret.
    template="$(drop_block '^    registries:$' <<<"$template" | drop_block '^      - name: ghcr-pat$')"
fi
if [[ $open_endpoint -eq 1 ]]; then
    # No api-key secret and no API_KEY variable: zerobatch then needs no key.
    template="$(drop_block '^      - name: api-key$' <<<"$template" | drop_block '^ *- name: API_KEY$')"
fi
# Neither secret left: no secrets key at all rather than an empty one.
template="$(awk '{ line[NR] = $0 }
    END {
        for (i = 1; i <= NR; i++) {
            if (line[i] ~ /^    secrets:$/ && (i == NR || line[i + 1] !~ /^     /)) continue
            print line[i]
        }
    }' <<<"$template")"
if [[ $open_endpoint -eq 0 ]]; then
    grep -q '^ *secretRef: api-key$' <<<"$template" \
        || die "$yaml_file does not pass the api-key secret to the container as API_KEY (secretRef: api-key); fix it, or deploy with --open"
fi

render() { # render ENVIRONMENT_ID PAT API_KEY
    local out="$template"
    out="${out//\$\{ENVIRONMENT_ID\}/"$1"}"
    out="${out//\$\{IMAGE\}/"$image"}"
    out="${out//\$\{GHCR_USERNAME\}/"$registry_user"}"
    out="${out//\$\{GHCR_PAT\}/"$2"}"
    out="${out//\$\{API_KEY\}/"$3"}"
    local placeholder="[$]{[A-Z_]*}"
    if grep -q "$placeholder" <<<"$out"; then
        die "$yaml_file has placeholders this script does not fill: $(grep -o "$placeholder" <<<"$out" | sort -u | tr '\n' ' ')"
    fi
    printf '%s\n' "$out"
}

# --- resource group and environment ---------------------------------------------------
if [[ $dry_run -eq 1 ]] || [[ "$(az group exists --name "$resource_group")" != true ]]; then
    log "creating resource group $resource_group in $location"
    az_run group create --name "$resource_group" --location "$location" --output none
fi

if [[ $dry_run -eq 1 ]]; then
    env_id="/subscriptions/<subscription>/resourceGroups/$resource_group/providers/Microsoft.App/managedEnvironments/$environment"
elif ! env_id="$(az containerapp env show --name "$environment" --resource-group "$resource_group" --query id --output tsv 2>/dev/null)" || [[ -z "$env_id" ]]; then
    log "registering the resource providers (once per subscription)"
    az provider register --namespace Microsoft.App --wait --output none
    az provider register --namespace Microsoft.OperationalInsights --wait --output none
    log "creating Container Apps environment $environment (takes a few minutes)"
    # A workload-profiles environment (containerapp.yaml runs on its Consumption profile);
    # a Log Analytics workspace is created with it for the logs.
    az containerapp env create --name "$environment" --resource-group "$resource_group" \
        --location "$location" --enable-workload-profiles --output none
    env_id="$(az containerapp env show --name "$environment" --resource-group "$resource_group" --query id --output tsv)"
fi

# --- the app ----------------------------------------------------------------------------
if [[ $dry_run -eq 1 ]]; then
    log "the YAML that would be applied (password and API key masked):"
    render "$env_id" '***' '***' >&2
    action=create
elif az containerapp show --name "$app" --resource-group "$resource_group" --output none 2>/dev/null; then
    action=update
else
    action=create
fi

# The filled-in YAML holds the registry password and the API key: private file, removed
# on exit.
umask 077
rendered="$(mktemp "${TMPDIR:-/tmp}/zerobatch-aca.XXXXXX")"
trap 'rm -f "$rendered"' EXIT
render "$env_id" "$registry_pat" "$api_key" >"$rendered"

log "${action} app $app with image $image"
az_run containerapp "$action" --name "$app" --resource-group "$resource_group" \
    --yaml "$rendered" --output none

if [[ $dry_run -eq 1 ]]; then
    exit 0
fi

fqdn="$(az containerapp show --name "$app" --resource-group "$resource_group" \
    --query properties.configuration.ingress.fqdn --output tsv)"
[[ -n "$fqdn" ]] || die "the app has no ingress FQDN: is ingress enabled in $yaml_file?"
url="https://$fqdn"

if [[ $check -eq 1 ]]; then
    log "waiting for $url/readyz (the first request wakes a replica from zero)"
    deadline=$((SECONDS + 300))
    until curl -fsS --max-time 10 -o /dev/null "$url/readyz"; do
        if [[ $SECONDS -ge $deadline ]]; then
            log "not ready after 5 minutes; the platform's view:"
            az containerapp revision list --name "$app" --resource-group "$resource_group" \
                --query '[].{revision:name, active:properties.active, health:properties.healthState, running:properties.runningState}' \
                --output table >&2 || true
            die "see: $0 --system-logs -g $resource_group -n $app"
        fi
        sleep 5
    done
    log "ready"
    # The point of the key: a request without it must be refused. Retried for a minute,
    # as the previous revision (perhaps an open one) may still take the traffic.
    for _ in {1..12}; do
        status="$(curl -sS --max-time 10 -o /dev/null -w '%{http_code}' "$url/info" || true)"
        [[ $open_endpoint -eq 1 || "$status" == 401 ]] && break
        sleep 5
    done
    if [[ $open_endpoint -eq 1 ]]; then
        log "GET /info without a key: HTTP $status (open endpoint, as asked)"
    elif [[ "$status" == 401 ]]; then
        log "GET /info without a key: 401, as it should be"
    else
        die "GET /info without a key answered HTTP $status, not 401: the app is not protected by API_KEY"
    fi
fi

log "logs: $0 --logs -g $resource_group -n $app (platform: --system-logs)"
printf '%s\n' "$url"
