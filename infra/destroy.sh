#!/usr/bin/env bash
# Delete what infra/deploy.sh made: the resource group and everything in it; with --purge-key-vault also
# the soft-deleted Key Vault, so its name can be used again. Run with --help.
#
# Every command that acts goes through `run`, so --dry-run prints each one (`would run: ...`) and runs none.
set -euo pipefail

# shellcheck source=lib.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

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
            need_value "$opt" "${2-}"
            resource_group=$2
            shift 2
            ;;
        *) usage_error "unknown argument '$opt'" ;;
    esac
done

check_resource_group "$resource_group"
need_terminal_or_yes "$assume_yes" delete
announce_dry_run

# ---------------------------------------------------------------------------------------------
# Prerequisites
# ---------------------------------------------------------------------------------------------

message=$(az_problem)
if [[ -n $message ]]; then
    if ((dry_run)); then warn "$message"; else die "$message"; fi
fi

# ---------------------------------------------------------------------------------------------
# What is there
# ---------------------------------------------------------------------------------------------

account='' subscription_id='' subscription_name='' group_exists='' resources='' vault_text='' workspace_text=''
# A list prints one value per line with --output tsv (columns are for a list of lists): read it as lines,
# with the 'end' that shows nothing was lost (a subscription name may hold spaces or tabs).
run --capture account "$(placeholders subscriptionId subscriptionName)" \
    az account show --query "[id, name, 'end']" --output tsv
read_lines "$account" subscription_id subscription_name

resource_group_exists group_exists "$resource_group"
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
    confirm "Delete resource group $resource_group and everything in it?" "nothing deleted"
fi

# ---------------------------------------------------------------------------------------------
# Delete
# ---------------------------------------------------------------------------------------------

begin "Deleting resource group $resource_group (this waits until Azure has finished)"
run az group delete --name "$resource_group" --yes

purge_failed=0
if ((purge)); then
    for vault in "${vaults[@]}"; do
        begin "Purging soft-deleted Key Vault $vault"
        if ! run az keyvault purge --name "$vault"; then
            purge_failed=1
            say "$SCRIPT_NAME: could not purge $vault (purge protection on, or no permission to purge?): its name stays"
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

for id in "${workspaces[@]}"; do
    shopt -s nocasematch
    if [[ $id =~ $WORKSPACE_ID_RE ]]; then
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
