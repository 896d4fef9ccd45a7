#!/usr/bin/env bash
# Deploy itsmc to Azure: build the static Linux binary, package it, deploy infra/main.bicep, upload the
# package, store the connection's secrets in Key Vault, and connect the action group. Run with --help.
#
# Every command that acts goes through `run`, so --dry-run prints each one (`would run: ...`) and runs
# none. Secrets are read from the environment or a silent prompt and only ever reach a command through a
# pipe: they never appear on a command line, in output or in a trace (this script never uses `set -x`).
set -euo pipefail

# shellcheck source=lib.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

readonly TARGET=x86_64-unknown-linux-musl
readonly BINARY=target/$TARGET/dist/itsmc
readonly PACKAGE=target/itsmc.zip
readonly TEMPLATE=infra/main.bicep
# The deployment outputs deploy.sh reads (the contract in infra/main.bicep), in this order.
readonly OUTPUTS=(functionAppName alertUrl actionGroupId keyVaultName keyVaultUri storageAccountName
    workspaceResourceId logsIngestionEndpoint dcrImmutableId planKind packageBlobUrl connectionName
    serviceNowConfigured serviceNowUrl serviceNowUsername oauth)
# Role assignments made by the deployment take a while to apply, and a new app's host a while to start:
# what depends on them is retried.
readonly RETRIES=6 RETRY_PAUSE=30

usage() {
    cat <<'EOF'
Usage: infra/deploy.sh --resource-group RG --prefix P [options]

Builds itsmc as a static Linux x86-64 binary (musl), packages it, deploys infra/main.bicep into the
resource group, uploads the package, stores the ServiceNow connection's secrets in Key Vault and creates
the action group that forwards alerts to itsmc. Running it again updates the deployment in place.

Required:
  --resource-group RG     resource group to deploy into (created when missing)
  --prefix P              3-11 lowercase letters and digits; every resource
                          name derives from it

Options:
  --location L            region for a new resource group (default westeurope); the resources go
                          where the group is
  --workspace ID          resource id of an existing Log Analytics workspace (default: create one)
  --plan KIND             FlexConsumption or Consumption (Linux). Default: FlexConsumption where the
                          resource group's region offers it (az functionapp
                          list-flexconsumption-locations), else Consumption
  --servicenow-url URL    ServiceNow instance, e.g. https://example.service-now.com
                          (without it itsmc runs with ITSMC_PRODUCT=dry-run and calls nothing)
  --username U            ServiceNow user (required with --servicenow-url)
  --client-id ID          ServiceNow OAuth client id (the connection then signs in with OAuth)
  --connection NAME       connection name (default "default"); Key Vault secrets are
                          NAME-password and NAME-client-secret
  --parameters FILE       a .bicepparam or JSON parameters file for infra/main.bicep (e.g. the
                          `settings` tunables); options given on the command line override it.
                          Which secrets are stored follows the deployment: a file that sets
                          serviceNowUrl (serviceNowClientId) needs ITSMC_PASSWORD (ITSMC_CLIENT_SECRET)
  --deployer-object-id ID Entra object id of whoever runs this (default: looked up from the
                          az login; needed for a managed identity login)
  --what-if               show what the deployment would change (az deployment group what-if), stop;
                          the action group is left out until the function app exists
  --dry-run               print every command (`would run: ...`) and run none
  --yes                   do not ask for confirmation
  -h, --help              this help

Secrets (never on the command line):
  ITSMC_PASSWORD          the ServiceNow user's password (with --servicenow-url, or serviceNowUrl in
                          the parameters file)
  ITSMC_CLIENT_SECRET     the OAuth client secret (with --client-id, or serviceNowClientId there)
  Taken from the environment; when unset and this runs in a terminal, asked for without echo (one
  that only the parameters file asks for, after the first deployment pass).

Permissions of whoever runs this (the deployment assigns roles, to the app's identity and to you):
  - Owner on the resource group, or Contributor plus User Access Administrator (or Role Based Access
    Control Administrator) there; to create a missing group, Contributor on the subscription too
  - with --workspace in another resource group: write access to that workspace's tables, through a
    deployment in its group (e.g. Log Analytics Contributor on that group)

Needs: the Azure CLI 2.60 or later (az login done), cargo with the x86_64-unknown-linux-musl target
(rustup target add x86_64-unknown-linux-musl) and musl-gcc (Debian/Ubuntu: apt-get install musl-tools).
EOF
}

# ---------------------------------------------------------------------------------------------
# Helpers (the shared ones, `run` among them, are in lib.sh)
# ---------------------------------------------------------------------------------------------

# retry WHAT run-arguments...: run, and run again after a pause while it fails (role assignments apply
# within minutes of the deployment that made them; a new app's host starts, and makes its keys, within
# minutes of its first package).
retry() {
    local what=$1 attempt
    shift
    for ((attempt = 1; ; attempt++)); do
        if run "$@"; then
            return 0
        fi
        if ((attempt >= RETRIES)); then
            return 1
        fi
        say "    $what failed (attempt $attempt of $RETRIES); new role assignments and a new app's host can" \
            "take a few minutes to be ready: trying again in ${RETRY_PAUSE}s"
        sleep "$RETRY_PAUSE"
    done
}

# ---------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------

resource_group='' prefix='' location=westeurope workspace='' plan='' servicenow_url='' username=''
client_id='' connection=default connection_given=0 parameters_file='' deployer_object_id=''
what_if=0 assume_yes=0

while (($#)); do
    opt=$1
    if [[ $opt == --*=* ]]; then
        set -- "${opt%%=*}" "${opt#*=}" "${@:2}"
        opt=$1
    fi
    case $opt in
        -h | --help) usage; exit 0 ;;
        --dry-run) dry_run=1; shift; continue ;;
        --what-if) what_if=1; shift; continue ;;
        --yes | -y) assume_yes=1; shift; continue ;;
        --resource-group | -g | --prefix | --location | -l | --workspace | --plan | --servicenow-url | \
            --username | --client-id | --connection | --parameters | --deployer-object-id)
            need_value "$opt" "${2-}"
            ;;
        *) usage_error "unknown argument '$opt'" ;;
    esac
    case $opt in
        --resource-group | -g) resource_group=$2 ;;
        --prefix) prefix=$2 ;;
        --location | -l) location=$2 ;;
        --workspace) workspace=$2 ;;
        --plan) plan=$2 ;;
        --servicenow-url) servicenow_url=$2 ;;
        --username) username=$2 ;;
        --client-id) client_id=$2 ;;
        --connection) connection=$2 connection_given=1 ;;
        --parameters) parameters_file=$2 ;;
        --deployer-object-id) deployer_object_id=$2 ;;
    esac
    shift 2
done

check_resource_group "$resource_group"
[[ -n $prefix ]] || usage_error "--prefix is required"
if [[ ! $prefix =~ ^[a-z0-9]{3,11}$ ]]; then
    usage_error "--prefix '$prefix': use 3 to 11 lowercase letters and digits (resource names derive from it)"
fi
[[ $location =~ ^[A-Za-z0-9]+$ ]] || usage_error "--location '$location' is not a region name (e.g. westeurope)"
if [[ -n $plan && $plan != FlexConsumption && $plan != Consumption ]]; then
    usage_error "--plan '$plan': use FlexConsumption or Consumption"
fi
if [[ -n $workspace ]]; then
    shopt -s nocasematch
    if [[ ! $workspace =~ $WORKSPACE_ID_RE ]]; then
        shopt -u nocasematch
        usage_error "--workspace: give the workspace's resource id, /subscriptions/<id>/resourceGroups/<group>/providers/Microsoft.OperationalInsights/workspaces/<name> (az monitor log-analytics workspace show -g GROUP -n NAME --query id -o tsv)"
    fi
    shopt -u nocasematch
fi
if [[ -n $servicenow_url ]]; then
    [[ $servicenow_url =~ ^https://[^/[:space:]]+/?$ ]] ||
        usage_error "--servicenow-url '$servicenow_url': give the instance's https URL, e.g. https://example.service-now.com"
    [[ -n $username ]] || usage_error "--servicenow-url needs --username (the ServiceNow user itsmc signs in as)"
elif [[ -n $username || -n $client_id ]]; then
    usage_error "--username and --client-id describe a ServiceNow connection: give --servicenow-url too"
fi
if [[ -z $connection || ${#connection} -gt 100 || $connection =~ [[:space:]] ]]; then
    usage_error "--connection '$connection': use a name of 1 to 100 characters without spaces"
fi
if [[ -n $deployer_object_id && ! $deployer_object_id =~ ^[0-9a-fA-F-]{36}$ ]]; then
    usage_error "--deployer-object-id '$deployer_object_id' is not an object id (a GUID)"
fi
if ((!what_if)); then
    need_terminal_or_yes "$assume_yes" deploy
fi
if [[ -n $parameters_file ]]; then
    [[ $parameters_file == *.bicepparam || $parameters_file == *.json ]] ||
        usage_error "--parameters '$parameters_file': give a .bicepparam or .json file"
    [[ -f $parameters_file ]] || usage_error "--parameters: '$parameters_file' is not a file"
    # The script works from the repository root: keep the path valid from there.
    parameters_file=$(cd "$(dirname -- "$parameters_file")" && pwd)/$(basename -- "$parameters_file")
fi

# The secrets stay in this shell: no command this script runs gets them in its environment.
for var in ITSMC_PASSWORD ITSMC_CLIENT_SECRET; do
    if [[ -v $var ]]; then
        export -n "${var?}"
    fi
done

repo_root=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
cd -- "$repo_root"

on_exit() {
    local status=$?
    if ((status != 0)) && [[ -n $step ]]; then
        say ""
        say "$SCRIPT_NAME: failed during: $step (exit $status)"
    fi
}
trap on_exit EXIT

announce_dry_run

# ---------------------------------------------------------------------------------------------
# Prerequisites
# ---------------------------------------------------------------------------------------------

problems=() installed_targets=''
problem() {
    if ((dry_run)); then warn "$1"; else problems+=("$1"); fi
}

az_message=$(az_problem)
if [[ -n $az_message ]]; then
    problem "$az_message"
fi
if ((!what_if)); then
    if ! command -v cargo >/dev/null 2>&1; then
        problem "cargo is not installed: install Rust with rustup (https://rustup.rs)"
    fi
    if ! command -v rustup >/dev/null 2>&1; then
        warn "rustup is not installed, so the $TARGET target cannot be checked; the build needs it"
    elif ! run --probe --capture installed_targets '' rustup target list --installed 2>/dev/null ||
        [[ $'\n'$installed_targets$'\n' != *$'\n'$TARGET$'\n'* ]]; then
        problem "the Rust target $TARGET is not installed: run 'rustup target add $TARGET'"
    fi
    if [[ -z ${CC_x86_64_unknown_linux_musl-} ]] && ! command -v musl-gcc >/dev/null 2>&1; then
        problem "musl-gcc is not installed (the build compiles C code for musl): on Debian/Ubuntu run 'sudo apt-get install musl-tools', elsewhere set CC_x86_64_unknown_linux_musl to a musl C compiler"
    fi
    if [[ $OSTYPE != linux* || $HOSTTYPE != x86_64 ]]; then
        warn "this is $HOSTTYPE $OSTYPE, not Linux x86_64: the musl build needs a cross toolchain (CC_x86_64_unknown_linux_musl and a linker)"
    fi
fi
if [[ ! -f $TEMPLATE ]]; then
    problem "$TEMPLATE is missing (this script deploys it from $repo_root)"
fi
if ((${#problems[@]})); then
    say "$SCRIPT_NAME: cannot deploy yet:"
    for p in "${problems[@]}"; do
        say "  - $p"
    done
    exit 1
fi


# ---------------------------------------------------------------------------------------------
# Secrets: asked for before anything long starts when the options need them, kept in this shell only
# ---------------------------------------------------------------------------------------------

asked=' '

# ask_secret VAR DESCRIPTION [late]: VAR from the environment, or a silent prompt; never exported to
# children. Asks (in a dry run, warns) once per VAR. `late`: asked after the first deployment, because only
# its outputs showed the secret is needed (a parameters file set the connection).
ask_secret() {
    local var=$1 description=$2 late=${3-}
    if [[ -n ${!var-} || $asked == *" $var "* ]]; then
        return 0
    fi
    asked+="$var "
    if ((dry_run)); then
        warn "$var is not set: a real run asks for $description"
        return 0
    fi
    if [[ ! -t 0 ]]; then
        if [[ -n $late ]]; then
            die "the deployment needs $description ($var), and there is no terminal to ask on: set $var in the environment and run this script again (it updates the deployment in place)"
        fi
        usage_error "$var is not set and there is no terminal to ask for $description: set $var in the environment"
    fi
    local value=''
    read -rs -p "$description (not echoed): " value || value=''
    printf '\n' >&2
    [[ -n $value ]] || usage_error "$description is empty"
    printf -v "$var" '%s' "$value"
}

# The options ask for these now; a parameters file that sets the connection is known only after the first
# deployment (its outputs), when what is still missing is asked for.
if ((!what_if)) && [[ -n $servicenow_url ]]; then
    ask_secret ITSMC_PASSWORD "ServiceNow password of $username"
    if [[ -n $client_id ]]; then
        ask_secret ITSMC_CLIENT_SECRET "ServiceNow OAuth client secret of $client_id"
    fi
fi

# ---------------------------------------------------------------------------------------------
# Azure account
# ---------------------------------------------------------------------------------------------

begin "Azure account"
account='' subscription_id='' subscription_name='' user_type='' user_name='' group_exists=''
run --capture account "$(placeholders subscriptionId subscriptionName userType userName)" \
    az account show --query "[id, name, user.type, user.name, 'end']" --output tsv
read_lines "$account" subscription_id subscription_name user_type user_name
say "subscription: $subscription_name ($subscription_id), signed in as $user_name"

if [[ -z $deployer_object_id ]]; then
    if [[ $user_type == servicePrincipal ]]; then
        run --capture deployer_object_id '<deployerObjectId>' \
            az ad sp show --id "$user_name" --query id --output tsv ||
            die "cannot find the object id of service principal $user_name: pass --deployer-object-id ID"
    else
        run --capture deployer_object_id '<deployerObjectId>' \
            az ad signed-in-user show --query id --output tsv ||
            die "cannot read your Entra object id (az ad signed-in-user show): pass --deployer-object-id ID"
    fi
fi
[[ -n $deployer_object_id ]] || die "the deployer's object id came back empty: pass --deployer-object-id ID"

# The deployment's parameters: the file first, then what the command line says (later values win).
deployment_parameters() { # WITH_ACTION_GROUP
    local params=()
    [[ -n $parameters_file ]] && params+=(--parameters "$parameters_file")
    params+=(--parameters "namePrefix=$prefix" "deployerObjectId=$deployer_object_id" "withActionGroup=$1")
    # Without --connection a parameters file's connectionName stands (the outputs then say which it is).
    if [[ -z $parameters_file || $connection_given == 1 ]]; then
        params+=("connectionName=$connection")
    fi
    [[ -n $workspace ]] && params+=("workspaceResourceId=$workspace")
    [[ -n $plan ]] && params+=("planKind=$plan")
    [[ -n $servicenow_url ]] && params+=("serviceNowUrl=${servicenow_url%/}")
    [[ -n $username ]] && params+=("serviceNowUsername=$username")
    [[ -n $client_id ]] && params+=("serviceNowClientId=$client_id")
    printf '%s\0' "${params[@]}"
}

first_deployment=itsmc-$prefix-infra
second_deployment=itsmc-$prefix-actiongroup

# choose_plan REGION: without --plan, Flex Consumption where REGION offers it (then the parameters file's
# planKind, or the template's default FlexConsumption, stands), else Linux Consumption (planKind=Consumption,
# over the file too: Flex cannot be created there). The check is a read-only probe; a dry run skips it and
# takes the default.
choose_plan() {
    local region=${1,,} regions='' line found=0
    region=${region// /}
    [[ -z $plan ]] || return 0
    if ((dry_run)); then
        say "No --plan: a real run checks whether the region offers Flex Consumption (az functionapp" \
            "list-flexconsumption-locations) and deploys on Consumption if it does not; this dry run takes FlexConsumption."
        return 0
    fi
    if ! run --probe --capture regions '' \
        az functionapp list-flexconsumption-locations --query '[].name' --output tsv 2>/dev/null; then
        warn "could not list the regions that offer Flex Consumption (az functionapp list-flexconsumption-locations needs Azure CLI 2.60 or later): taking FlexConsumption; pass --plan Consumption if $region has none"
        return 0
    fi
    while IFS= read -r line; do
        line=${line,,}
        [[ ${line// /} == "$region" ]] && found=1
    done <<<"$regions"
    if ((found)); then
        say "$region offers Flex Consumption"
    else
        plan=Consumption
        say "note: $region does not offer Flex Consumption (az functionapp list-flexconsumption-locations):" \
            "deploying on Linux Consumption (Y1), which retires on 30 September 2028. --plan chooses the plan."
    fi
}

# plan_for_group: choose_plan for where the resources go, the resource group's region ($group_exists says
# whether the group is there; a new group is made in --location). A parameters file's `location` is not read.
plan_for_group() {
    local region=$location
    if [[ -z $plan && $group_exists == true ]]; then
        run --probe --capture region '' \
            az group show --name "$resource_group" --query location --output tsv ||
            die "cannot read the region of resource group $resource_group"
    fi
    choose_plan "$region"
}

# function_app_exists: whether the function app of an earlier run is there (its first deployment names it).
function_app_exists() {
    local name=''
    run --probe --capture name '' az deployment group show --resource-group "$resource_group" \
        --name "$first_deployment" --query properties.outputs.functionAppName.value --output tsv 2>/dev/null ||
        return 1
    [[ -n $name && $name != None ]] || return 1
    run --probe az functionapp show --resource-group "$resource_group" --name "$name" --output none 2>/dev/null
}

# ---------------------------------------------------------------------------------------------
# --what-if: show the changes and stop
# ---------------------------------------------------------------------------------------------

if ((what_if)); then
    begin "What-if of $TEMPLATE in $resource_group"
    resource_group_exists group_exists "$resource_group"
    if [[ $group_exists == false ]]; then
        say "Resource group $resource_group does not exist: everything would be created. what-if needs the group;"
        say "create it with: az group create --name $(quote_arg "$resource_group") --location $(quote_arg "$location")"
        step=''
        exit 1
    fi
    plan_for_group
    # The action group's webhook URL holds the host's key (listKeys), which exists only once the function app
    # runs: before that, what-if could not evaluate it.
    with_action_group=false
    if ((dry_run)); then
        say "A real run includes the action group (withActionGroup=true) when the function app already exists" \
            "(az functionapp show); this dry run takes a first deployment: withActionGroup=false."
    elif function_app_exists; then
        with_action_group=true
    else
        say "The function app does not exist yet (a first deployment): what-if leaves out the action group" \
            "(withActionGroup=false), which deploy.sh adds once the app's host has its keys."
    fi
    what_if_deployment=$first_deployment
    [[ $with_action_group == true ]] && what_if_deployment=$second_deployment
    mapfile -d '' params < <(deployment_parameters "$with_action_group")
    run az deployment group what-if --resource-group "$resource_group" --name "$what_if_deployment" \
        --template-file "$TEMPLATE" "${params[@]}"
    exit 0
fi

# ---------------------------------------------------------------------------------------------
# Confirmation
# ---------------------------------------------------------------------------------------------

if ((!dry_run && !assume_yes)); then
    confirm "Deploy itsmc (prefix $prefix) into resource group $resource_group of subscription $subscription_name?" \
        "not deployed"
fi

# ---------------------------------------------------------------------------------------------
# Build and package
# ---------------------------------------------------------------------------------------------

begin "Build: static Linux x86-64 binary (musl), then the Function App package"
run cargo build --locked --profile dist --target "$TARGET"
run "$BINARY" package --out "$PACKAGE" --binary "$BINARY"

# ---------------------------------------------------------------------------------------------
# Infrastructure, first pass (no action group: the app has no code, so maybe no host keys yet)
# ---------------------------------------------------------------------------------------------

begin "Resource group $resource_group"
resource_group_exists group_exists "$resource_group"
if [[ $group_exists == true ]]; then
    say "exists"
else
    run az group create --name "$resource_group" --location "$location" --output none
fi
plan_for_group

# read_outputs DEPLOYMENT: the deployment's outputs into out_<name>.
read_outputs() {
    local query="[" name text=''
    # In a dry run, what the options decide: the plan (the template's default is FlexConsumption), and the
    # connection unless a parameters file may set it; <name> for the rest.
    local -A known=([planKind]=${plan:-FlexConsumption})
    if [[ -z $parameters_file || $connection_given == 1 ]]; then
        known[connectionName]=$connection
    fi
    if [[ -n $servicenow_url ]]; then
        known[serviceNowConfigured]=true known[serviceNowUrl]=${servicenow_url%/} known[serviceNowUsername]=$username
    elif [[ -z $parameters_file ]]; then
        known[serviceNowConfigured]=false known[serviceNowUrl]=None known[serviceNowUsername]=None
    fi
    if [[ -n $client_id ]]; then
        known[oauth]=true
    elif [[ -z $parameters_file ]]; then
        known[oauth]=false
    fi
    for name in "${OUTPUTS[@]}"; do
        query+="properties.outputs.$name.value, "
        text+=${known[$name]-<$name>}$'\n'
    done
    query+="'end']"
    text+=end
    run --capture text "$text" \
        az deployment group show --resource-group "$resource_group" --name "$1" --query "$query" --output tsv
    local vars=()
    for name in "${OUTPUTS[@]}"; do
        vars+=("out_$name")
    done
    read_lines "$text" "${vars[@]}"
}

begin "Deployment $first_deployment ($TEMPLATE, withActionGroup=false)"
mapfile -d '' params < <(deployment_parameters false)
run az deployment group create --resource-group "$resource_group" --name "$first_deployment" \
    --template-file "$TEMPLATE" "${params[@]}" --output none
out_functionAppName='' out_alertUrl='' out_actionGroupId='' out_keyVaultName='' out_keyVaultUri=''
out_storageAccountName='' out_workspaceResourceId='' out_logsIngestionEndpoint='' out_dcrImmutableId=''
out_planKind='' out_packageBlobUrl='' out_connectionName='' out_serviceNowConfigured='' out_serviceNowUrl=''
out_serviceNowUsername='' out_oauth=''
read_outputs "$first_deployment"
[[ -n $out_functionAppName && -n $out_keyVaultName && -n $out_connectionName ]] ||
    die "deployment $first_deployment did not return functionAppName, keyVaultName and connectionName"

# ---------------------------------------------------------------------------------------------
# Package upload
# ---------------------------------------------------------------------------------------------

begin "Upload $PACKAGE to $out_functionAppName ($out_planKind)"
case $out_planKind in
    FlexConsumption)
        # The app's deployment storage is a blob container it reaches with its system identity.
        retry "the upload" az functionapp deployment source config-zip --resource-group "$resource_group" \
            --name "$out_functionAppName" --src "$PACKAGE" --output none ||
            die "could not deploy $PACKAGE; run this script again once the role assignments have applied"
        ;;
    Consumption)
        # Linux Consumption runs the zip from WEBSITE_RUN_FROM_PACKAGE (packageBlobUrl), which the app reads
        # with its identity; the deployment gave this deployer Storage Blob Data Contributor to write it.
        [[ -n $out_packageBlobUrl ]] || die "deployment $first_deployment returned no packageBlobUrl"
        retry "the upload" az storage blob upload --auth-mode login --blob-url "$out_packageBlobUrl" \
            --file "$PACKAGE" --overwrite --output none ||
            die "could not upload $PACKAGE to $out_packageBlobUrl (Storage Blob Data Contributor not applied yet?): run this script again in a few minutes"
        # The app loads the new package when it restarts; a package run from a URL also needs its triggers
        # synced, or the timer keeps the schedule it had (or none).
        run az functionapp restart --resource-group "$resource_group" --name "$out_functionAppName"
        run az rest --method post --url "https://management.azure.com/subscriptions/$subscription_id/resourceGroups/$resource_group/providers/Microsoft.Web/sites/$out_functionAppName/syncfunctiontriggers?api-version=2024-04-01"
        ;;
    *) die "deployment $first_deployment returned planKind '$out_planKind' (expected FlexConsumption or Consumption)" ;;
esac

# ---------------------------------------------------------------------------------------------
# Secrets: which ones, the deployment says (the options or the parameters file set the connection)
# ---------------------------------------------------------------------------------------------

# flag VAR NAME VALUE: the bool output NAME (az prints true or false) into VAR; `unknown` for a dry run's
# placeholder, when the parameters file decides.
flag() {
    local value=$3
    if [[ $value == "<$2>" ]]; then
        value=unknown
    else
        value=${value,,}
        [[ $value == true || $value == false ]] ||
            die "deployment $first_deployment returned $2 '$3' (expected true or false)"
    fi
    printf -v "$1" '%s' "$value"
}

servicenow_configured='' oauth=''
flag servicenow_configured serviceNowConfigured "$out_serviceNowConfigured"
flag oauth oauth "$out_oauth"
connection_name=$out_connectionName
# Key Vault secret names, as itsmc derives them (src/secrets.rs: every character other than an ASCII
# letter, digit or '-' becomes '-'); a dry run's <connectionName> stays readable.
secret_base=$connection_name
[[ $secret_base == '<connectionName>' ]] || secret_base=${secret_base//[^A-Za-z0-9-]/-}
password_secret_name=$secret_base-password
client_secret_secret_name=$secret_base-client-secret
store_password=0 store_client_secret=0
if [[ $servicenow_configured != false ]]; then
    store_password=1
    [[ $oauth != false ]] && store_client_secret=1
fi

# store_secret VAR SECRET_NAME: the value of VAR into the vault, through a pipe.
store_secret() {
    local var=$1 name=$2
    if retry "writing $name" --secret "$var" az keyvault secret set --vault-name "$out_keyVaultName" \
        --name "$name" --file /dev/stdin --encoding utf-8 --output none; then
        ((dry_run)) || say "stored $name"
        return 0
    fi
    say "$SCRIPT_NAME: could not store $name in Key Vault $out_keyVaultName. The deployment gave you Key Vault"
    say "Secrets Officer on it; once that applies, run this script again, or store the secret yourself:"
    say "  printf '%s' \"\$$var\" | az keyvault secret set --vault-name $out_keyVaultName --name $name --file /dev/stdin --encoding utf-8 --output none"
    exit 1
}

if ((store_password)); then
    begin "Secrets in Key Vault $out_keyVaultName"
    if [[ $servicenow_configured == unknown ]]; then
        say "The parameters file decides whether itsmc connects to ServiceNow (output serviceNowConfigured) and"
        say "with OAuth (output oauth); a real run stores the secrets below only if it does."
    elif [[ $oauth == unknown ]]; then
        say "The parameters file decides whether the connection uses OAuth (output oauth); a real run stores"
        say "$client_secret_secret_name only if it does."
    fi
    ask_secret ITSMC_PASSWORD "ServiceNow password of ${out_serviceNowUsername:-the ServiceNow user}" late
    store_secret ITSMC_PASSWORD "$password_secret_name"
    if ((store_client_secret)); then
        ask_secret ITSMC_CLIENT_SECRET "ServiceNow OAuth client secret of connection $connection_name" late
        store_secret ITSMC_CLIENT_SECRET "$client_secret_secret_name"
    fi
else
    say ""
    say "No ServiceNow URL (--servicenow-url, or serviceNowUrl in the parameters file): itsmc runs with"
    say "ITSMC_PRODUCT=dry-run (alerts are received and logged, nothing is created)."
fi

# ---------------------------------------------------------------------------------------------
# Infrastructure, second pass: the action group, now that the app has code and host keys
# ---------------------------------------------------------------------------------------------

begin "Deployment $second_deployment ($TEMPLATE, withActionGroup=true)"
mapfile -d '' params < <(deployment_parameters true)
# The webhook URL takes the host's key (listKeys on host/default), which needs the host running, and for
# that its storage roles applied: minutes after the upload on a new app, so this is retried too.
retry "the deployment with the action group" \
    az deployment group create --resource-group "$resource_group" --name "$second_deployment" \
    --template-file "$TEMPLATE" "${params[@]}" --output none ||
    die "could not deploy the action group: the app's host has no key yet (it starts once its storage roles apply). Run this script again in a few minutes: it updates the deployment in place"
read_outputs "$second_deployment"
step=''

# ---------------------------------------------------------------------------------------------
# Summary and next steps
# ---------------------------------------------------------------------------------------------

if [[ $out_alertUrl == https://*/api/alert ]]; then
    base_url=${out_alertUrl%/api/alert}
else
    base_url="https://<functionAppHost>"
fi
q_rg=$(quote_arg "$resource_group")
q_app=$(quote_arg "$out_functionAppName")
q_ag=$(quote_arg "$out_actionGroupId")
result ""
if ((dry_run)); then
    result "Dry run: nothing was built or deployed. A real run ends with:"
else
    result "itsmc is deployed."
fi
result "  function app:          $out_functionAppName"
result "  alert URL (no key):    $out_alertUrl"
result "  action group:          $out_actionGroupId"
result "  Log Analytics:         $out_workspaceResourceId"
result "  DCR immutable id:      $out_dcrImmutableId"
result "  Key Vault:             $out_keyVaultName ($out_keyVaultUri)"
result "  storage account:       $out_storageAccountName"
result "  Logs Ingestion:        $out_logsIngestionEndpoint"
if ((store_password)); then
    secret_names=$password_secret_name
    ((store_client_secret)) && secret_names+=", $client_secret_secret_name"
    result "  connection:            $connection_name: $out_serviceNowUrl as $out_serviceNowUsername (Key Vault secrets $secret_names)"
else
    result "  connection:            $connection_name: dry run (no ServiceNow URL)"
fi
result ""
result "Next steps:"
result "1. Send alerts to the action group (common alert schema), e.g.:"
result "   every alert of the subscription, through an alert processing rule:"
result "     az monitor alert-processing-rule create --resource-group $q_rg --name itsmc-$prefix-all \\"
result "       --rule-type AddActionGroups --action-groups $q_ag --scopes /subscriptions/$subscription_id"
result "   one metric alert rule:     az monitor metrics alert update --resource-group RULE_GROUP --name RULE --add-action $q_ag"
result "   one log search alert rule (--action-groups replaces the rule's list: name any it already has too):"
result "     az monitor scheduled-query update --resource-group RULE_GROUP --name RULE --action-groups $q_ag"
result "2. Check itsmc's health (the function key is not printed here):"
result "     key=\$(az functionapp function keys list --resource-group $q_rg --name $q_app --function-name function-health --query default --output tsv)"
result "     curl -fsS \"$base_url/api/health?code=\$key\""
if ((store_password)); then
    result "3. Test the ServiceNow connection:"
    result "     key=\$(az functionapp function keys list --resource-group $q_rg --name $q_app --function-name function-connections --query default --output tsv)"
    result "     curl -fsS -X POST \"$base_url/api/connections/$connection_name/test?code=\$key\""
fi
