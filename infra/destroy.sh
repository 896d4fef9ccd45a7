#!/usr/bin/env bash
# Delete what infra/deploy.sh made: the resource group and everything in it; with --purge-key-vault also
# the soft-deleted Key Vault, so its name can be used again. Run with --help.
#
# Every command that acts goes through `run`, so --dry-run prints each one (`would run: ...`) and runs none.
set -euo pipefail

if ((BASH_VERSINFO[0] < 4 || (BASH_VERSINFO[0] == 4 && BASH_VERSINFO[1] < 4))); then
    printf '%s: needs bash 4.4 or later (this is %s)\n' "${0##*/}" "$BASH_VERSION" >&2
    exit 1
fi

readonly TABLES=(ServiceDesk_CL ServiceDeskLog_CL)

usage() {
    cat <<'EOF'
Usage: infra/destroy.sh --resource-group RG [--purge-key-vault] [--yes] [--dry-run]

Deletes the resource group infra/deploy.sh deployed into, with everything in it, and waits for the
deletion to finish.

  --resource-group RG   the resource group to delete
  --purge-key-vault     purge the group's Key Vault after deleting it. Key Vault soft-delete otherwise
                        keeps the vault, and reserves its name, for its retention period (90 days by
                        default), so deploying again with the same prefix would fail on the name
  --yes                 do not ask for confirmation
  --dry-run             print every command (`would run: ...`) and run none
  -h, --help            this help

A Log Analytics workspace that the deployment used from another resource group is not deleted: its
custom tables ServiceDesk_CL and ServiceDeskLog_CL keep their data. destroy.sh prints the commands that
delete them rather than running them.
EOF
}

# ---------------------------------------------------------------------------------------------
# Output helpers (as in deploy.sh)
# ---------------------------------------------------------------------------------------------

dry_run=0

say() { printf '%s\n' "$*" >&2; }
warn() { printf 'destroy.sh: warning: %s\n' "$*" >&2; }
die() { printf 'destroy.sh: %s\n' "$*" >&2; exit 1; }
usage_error() {
    printf 'destroy.sh: %s\n' "$*" >&2
    printf "Run 'infra/destroy.sh --help' for the options.\n" >&2
    exit 2
}
# The results: on stdout, except in a dry run, whose stdout carries only the `would run:` lines.
result() {
    if ((dry_run)); then printf '%s\n' "$*" >&2; else printf '%s\n' "$*"; fi
}

# One argument as the shell would need it. Placeholders (<name>) stay readable.
quote_arg() {
    local arg=$1 safe='^[A-Za-z0-9_@%+=:,./<>-]+$' special='[$`"\\!]'
    if [[ $arg =~ $safe ]]; then
        printf '%s' "$arg"
    elif [[ $arg != *"'"* ]]; then
        printf "'%s'" "$arg"
    elif [[ ! $arg =~ $special ]]; then
        printf '"%s"' "$arg"
    else
        printf "'%s'" "${arg//\'/\'\\\'\'}"
    fi
}

quote_command() {
    local arg sep=''
    for arg in "$@"; do
        printf '%s' "$sep"
        quote_arg "$arg"
        sep=' '
    done
}

# run [--capture VAR PLACEHOLDER] [--probe] [--] COMMAND [ARG...]
#
# The only way this script runs a command. In a dry run it prints `would run: COMMAND` on stdout and, with
# --capture, sets VAR to PLACEHOLDER instead of the command's output. Otherwise it shows the command on
# stderr and runs it (--capture: its stdout, trailing newlines removed, into VAR). --probe marks a
# read-only prerequisite check, which also runs in a dry run and is not shown.
run() {
    local _run_var='' _run_placeholder='' _run_probe=0 _run_shown _run_out
    while (($#)); do
        case $1 in
            --capture) _run_var=$2 _run_placeholder=$3; shift 3 ;;
            --probe) _run_probe=1; shift ;;
            --) shift; break ;;
            *) break ;;
        esac
    done
    _run_shown=$(quote_command "$@")
    if ((dry_run && !_run_probe)); then
        printf 'would run: %s\n' "$_run_shown"
        if [[ -n $_run_var ]]; then
            printf -v "$_run_var" '%s' "$_run_placeholder"
        fi
        return 0
    fi
    if ((!_run_probe)); then
        printf '+ %s\n' "$_run_shown" >&2
    fi
    if [[ -n $_run_var ]]; then
        _run_out=$("$@") || return
        printf -v "$_run_var" '%s' "${_run_out//$'\r'/}"
    else
        "$@"
    fi
}

# ---------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------

resource_group='' purge=0 assume_yes=0

while (($#)); do
    opt=$1
    if [[ $opt == --*=* ]]; then
        set -- "${opt%%=*}" "${opt#*=}" "${@:2}"
        opt=$1
    fi
    case $opt in
        -h | --help) usage; exit 0 ;;
        --dry-run) dry_run=1; shift ;;
        --purge-key-vault) purge=1; shift ;;
        --yes | -y) assume_yes=1; shift ;;
        --resource-group | -g)
            if [[ -z ${2-} || $2 == --* ]]; then
                usage_error "$opt needs a value"
            fi
            resource_group=$2
            shift 2
            ;;
        *) usage_error "unknown argument '$opt'" ;;
    esac
done

[[ -n $resource_group ]] || usage_error "--resource-group is required"
if [[ ! $resource_group =~ ^[A-Za-z0-9_.()-]{1,90}$ || $resource_group == *. ]]; then
    usage_error "--resource-group '$resource_group': use up to 90 letters, digits, '_', '-', '.', '(' or ')', not ending in '.'"
fi

if ((!dry_run && !assume_yes)) && [[ ! -t 0 ]]; then
    usage_error "no terminal to confirm on: pass --yes to delete without asking"
fi
if ((dry_run)); then
    say "Dry run: the commands below are printed, not run."
fi

# ---------------------------------------------------------------------------------------------
# Prerequisites
# ---------------------------------------------------------------------------------------------

if ! command -v az >/dev/null 2>&1; then
    message="the Azure CLI (az) is not installed: see https://learn.microsoft.com/cli/azure/install-azure-cli"
    if ((dry_run)); then warn "$message"; else die "$message"; fi
elif ! run --probe az account show --output none >/dev/null 2>&1; then
    message="the Azure CLI is not signed in: run 'az login' (and 'az account set --subscription ID' to pick the subscription)"
    if ((dry_run)); then warn "$message"; else die "$message"; fi
fi

# lines TEXT ARRAY: the non-empty lines of TEXT into ARRAY.
lines() {
    local -n _lines_into=$2
    local line
    _lines_into=()
    while IFS= read -r line; do
        [[ -n $line ]] && _lines_into+=("$line")
    done <<<"$1"
}

# ---------------------------------------------------------------------------------------------
# What is there
# ---------------------------------------------------------------------------------------------

account='' group_exists='' resources='' vault_text='' workspace_text=''
run --capture account $'<subscriptionId>\t<subscriptionName>' az account show --query '[id, name]' --output tsv
subscription_id=${account%%$'\t'*}
subscription_name=${account#*$'\t'}

run --capture group_exists '<groupExists>' az group exists --name "$resource_group"
if [[ $group_exists == false ]]; then
    say "Resource group $resource_group does not exist in subscription $subscription_name: nothing to delete."
    exit 0
fi

run --capture resources $'<type>\t<name>' \
    az resource list --resource-group "$resource_group" --query '[].[type, name]' --output tsv
# Key Vault names, read before the group goes: purging needs them afterwards.
run --capture vault_text '<keyVaultName>' \
    az keyvault list --resource-group "$resource_group" --query '[].name' --output tsv
# The workspaces the deployments used (deploy.sh's outputs), to tell whether one lives outside the group.
run --capture workspace_text '<workspaceResourceId>' \
    az deployment group list --resource-group "$resource_group" \
    --query '[].properties.outputs.workspaceResourceId.value' --output tsv
vaults=() workspace_lines=() workspaces=()
lines "$vault_text" vaults
lines "$workspace_text" workspace_lines
for id in "${workspace_lines[@]}"; do
    [[ $id == None ]] && continue
    seen=0
    for known in "${workspaces[@]}"; do
        [[ ${known,,} == "${id,,}" ]] && seen=1
    done
    ((seen)) || workspaces+=("$id")
done

# ---------------------------------------------------------------------------------------------
# Confirmation
# ---------------------------------------------------------------------------------------------

if ((!dry_run && !assume_yes)); then
    say "Resource group $resource_group (subscription $subscription_name) holds:"
    while IFS= read -r line; do
        [[ -n $line ]] && say "  ${line//$'\t'/  }"
    done <<<"$resources"
    read -r -p "Delete resource group $resource_group and everything in it? [y/N] " answer || answer=''
    [[ $answer == [yY] || $answer == [yY][eE][sS] ]] || die "nothing deleted"
fi

# ---------------------------------------------------------------------------------------------
# Delete
# ---------------------------------------------------------------------------------------------

say ""
say "==> Deleting resource group $resource_group (this waits until Azure has finished)"
run az group delete --name "$resource_group" --yes

purge_failed=0
if ((purge)); then
    for vault in "${vaults[@]}"; do
        say ""
        say "==> Purging soft-deleted Key Vault $vault"
        if ! run az keyvault purge --name "$vault"; then
            purge_failed=1
            say "destroy.sh: could not purge $vault (purge protection on, or no permission to purge?): its name stays"
            say "reserved until the retention period ends."
        fi
    done
fi

# ---------------------------------------------------------------------------------------------
# What stays
# ---------------------------------------------------------------------------------------------

result ""
if ((dry_run)); then
    result "Dry run: nothing was deleted. After a real run:"
else
    result "Resource group $resource_group is deleted."
fi
if ((!purge)); then
    for vault in "${vaults[@]}"; do
        result "Key Vault $vault is soft-deleted: it keeps its name for the retention period (90 days by default). To free the name:"
        result "  az keyvault purge --name $(quote_arg "$vault")"
    done
fi

workspace_re='^/subscriptions/([^/]+)/resourceGroups/([^/]+)/providers/Microsoft\.OperationalInsights/workspaces/([^/]+)$'
for id in "${workspaces[@]}"; do
    shopt -s nocasematch
    if [[ $id =~ $workspace_re ]]; then
        ws_subscription=${BASH_REMATCH[1]} ws_group=${BASH_REMATCH[2]} ws_name=${BASH_REMATCH[3]}
    elif [[ $id == '<workspaceResourceId>' ]]; then
        ws_subscription='<subscriptionId>' ws_group='<workspaceResourceGroup>' ws_name='<workspaceName>'
    else
        shopt -u nocasematch
        warn "cannot read the workspace id '$id'"
        continue
    fi
    same_group=0
    [[ $ws_subscription == "$subscription_id" && $ws_group == "$resource_group" ]] && same_group=1
    shopt -u nocasematch
    if ((same_group)); then
        result "Log Analytics workspace $ws_name went with the group; Azure keeps it soft-deleted for 14 days"
        result "(deploying again with the same prefix into a group named $resource_group, same region, recovers it with its data)."
        continue
    fi
    if [[ $id == '<workspaceResourceId>' ]]; then
        result "If the deployment used an existing Log Analytics workspace in another resource group, it stays, and so"
    else
        result "Log Analytics workspace $ws_name is in resource group $ws_group, not $resource_group: it stays, and so"
    fi
    result "do itsmc's custom tables there, ${TABLES[0]} and ${TABLES[1]}, with their data. Not run by destroy.sh;"
    result "to delete those tables and their data:"
    for table in "${TABLES[@]}"; do
        result "  $(quote_command az monitor log-analytics workspace table delete --subscription "$ws_subscription" \
            --resource-group "$ws_group" --workspace-name "$ws_name" --name "$table" --yes)"
    done
done

if ((purge_failed)); then
    exit 1
fi
