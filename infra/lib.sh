# shellcheck shell=bash
# What infra/deploy.sh and infra/destroy.sh share: output helpers, the one `run` every acting command goes
# through (so --dry-run prints it instead), option and resource group checks, and reading az's answers.
# Sourced by both, from their own directory; it sets no shell options and runs nothing but the bash version
# check.

if ((BASH_VERSINFO[0] < 4 || (BASH_VERSINFO[0] == 4 && BASH_VERSINFO[1] < 4))); then
    printf '%s: needs bash 4.4 or later (this is %s)\n' "${0##*/}" "$BASH_VERSION" >&2
    exit 1
fi

# The script that sourced this file, for messages (deploy.sh, destroy.sh).
SCRIPT_NAME=${0##*/}

# Set to 1 by --dry-run: `run` then prints commands instead of running them.
dry_run=0

# A Log Analytics workspace's resource id: subscription, resource group and name in groups 1 to 3. Match it
# with nocasematch on (Azure resource ids are case-insensitive).
# shellcheck disable=SC2034 # used by deploy.sh and destroy.sh
readonly WORKSPACE_ID_RE='^/subscriptions/([^/]+)/resourceGroups/([^/]+)/providers/Microsoft\.OperationalInsights/workspaces/([^/]+)$'

# What the script is doing, for a failure message (set by `begin`).
step=''

# ---------------------------------------------------------------------------------------------
# Output helpers
# ---------------------------------------------------------------------------------------------

say() { printf '%s\n' "$*" >&2; }
# begin WHAT: a step's heading; WHAT is also $step, named if the script fails during it.
begin() {
    # shellcheck disable=SC2034 # read by deploy.sh's exit trap
    step=$1
    say ""
    say "==> $1"
}
# announce_dry_run: say, in a dry run, that the commands are printed, not run.
announce_dry_run() {
    if ((dry_run)); then
        say "Dry run: the commands below are printed, not run."
    fi
}
warn() { printf '%s: warning: %s\n' "$SCRIPT_NAME" "$*" >&2; }
die() { printf '%s: %s\n' "$SCRIPT_NAME" "$*" >&2; exit 1; }
usage_error() {
    printf '%s: %s\n' "$SCRIPT_NAME" "$*" >&2
    printf "Run 'infra/%s --help' for the options.\n" "$SCRIPT_NAME" >&2
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

# run [--capture VAR PLACEHOLDER] [--secret NAME] [--probe] [--] COMMAND [ARG...]
#
# The only way these scripts run a command. In a dry run it prints `would run: COMMAND` on stdout and, with
# --capture, sets VAR to PLACEHOLDER instead of the command's output. Otherwise it shows the command on
# stderr and runs it: --capture puts its stdout (trailing newlines removed) into VAR; --secret feeds the
# value of the variable NAME to its stdin (shown as <NAME>, never the value). --probe marks a read-only
# check, which also runs in a dry run and is not shown.
run() {
    local _run_var='' _run_placeholder='' _run_secret='' _run_probe=0 _run_shown _run_out
    while (($#)); do
        case $1 in
            --capture) _run_var=$2 _run_placeholder=$3; shift 3 ;;
            --secret) _run_secret=$2; shift 2 ;;
            --probe) _run_probe=1; shift ;;
            --) shift; break ;;
            *) break ;;
        esac
    done
    _run_shown=$(quote_command "$@")
    if [[ -n $_run_secret ]]; then
        _run_shown="printf %s <$_run_secret> | $_run_shown"
    fi
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
    elif [[ -n $_run_secret ]]; then
        printf '%s' "${!_run_secret}" | "$@"
    else
        "$@"
    fi
}

# ---------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------

# need_value OPTION VALUE: refuse an option given without its value (missing, or the next option).
need_value() {
    if [[ -z ${2-} || $2 == --* ]]; then
        usage_error "$1 needs a value"
    fi
}

# check_resource_group NAME: refuse what Azure would refuse as a resource group name.
check_resource_group() {
    [[ -n $1 ]] || usage_error "--resource-group is required"
    if [[ ! $1 =~ ^[A-Za-z0-9_.()-]{1,90}$ || $1 == *. ]]; then
        usage_error "--resource-group '$1': use up to 90 letters, digits, '_', '-', '.', '(' or ')', not ending in '.'"
    fi
}

# need_terminal_or_yes ASSUME_YES WHAT: a run that asks for confirmation needs a terminal to ask on.
need_terminal_or_yes() {
    if ((!dry_run && !$1)) && [[ ! -t 0 ]]; then
        usage_error "no terminal to confirm on: pass --yes to $2 without asking"
    fi
}

# confirm QUESTION REFUSAL: ask QUESTION [y/N]; anything but yes ends the script with REFUSAL.
confirm() {
    local answer=''
    read -r -p "$1 [y/N] " answer || answer=''
    [[ $answer == [yY] || $answer == [yY][eE][sS] ]] || die "$2"
}

# ---------------------------------------------------------------------------------------------
# Azure CLI
# ---------------------------------------------------------------------------------------------

# az_problem: why az cannot be used here (not installed, not signed in), or nothing when it can.
az_problem() {
    if ! command -v az >/dev/null 2>&1; then
        printf '%s' "the Azure CLI (az) is not installed: see https://learn.microsoft.com/cli/azure/install-azure-cli"
    elif ! run --probe az account show --output none >/dev/null 2>&1; then
        printf '%s' "the Azure CLI is not signed in: run 'az login' (and 'az account set --subscription ID' to pick the subscription)"
    fi
}

# read_lines TEXT NAME...: the lines of TEXT into the variables NAME... ('None', az's null, becomes '').
# TEXT is what `az ... --query "[a, b, 'end']" --output tsv` prints: one value per line for a list (tab-
# separated columns only for a list of lists), with the 'end' that proves no value was lost.
read_lines() {
    local text=$1 lines i value
    shift
    mapfile -t lines <<<"$text"
    if ((${#lines[@]} != $# + 1)) || [[ ${lines[$#]} != end ]]; then
        die "unexpected answer from az (expected $# values): $text"
    fi
    for ((i = 1; i <= $#; i++)); do
        value=${lines[i - 1]}
        [[ $value == None ]] && value=''
        printf -v "${!i}" '%s' "$value"
    done
}

# lines TEXT ARRAY: the non-empty lines of TEXT into ARRAY.
lines() {
    local -n _lines_into=$2
    local line
    _lines_into=()
    while IFS= read -r line; do
        [[ -n $line ]] && _lines_into+=("$line")
    done <<<"$1"
}

# placeholders NAME...: what read_lines takes, with <NAME> for each value (a dry run's answer).
placeholders() {
    local name
    for name in "$@"; do
        printf '<%s>\n' "$name"
    done
    printf 'end'
}

# resource_group_exists VAR GROUP: true or false into VAR (<groupExists> in a dry run).
resource_group_exists() {
    run --capture "$1" '<groupExists>' az group exists --name "$2"
}
