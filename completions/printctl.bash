# bash completion for printctl: generated from printctl's command tree by `python -m printctl.completion`; do not edit.
# Install: cp completions/printctl.bash /etc/bash_completion.d/printctl (or source it from ~/.bashrc).

_printctl_children() {
    case "$1" in
        "printctl") echo "agent circuits cluster config deploy failover-test health instance jobs loadtest printers token verify-prints" ;;
        "printctl circuits") echo "disable force-open list reset" ;;
        "printctl cluster") echo "down ls rebalance status up" ;;
        "printctl config") echo "check init" ;;
        "printctl jobs") echo "get list submit" ;;
        "printctl printers") echo "list move test wait" ;;
    esac
}

_printctl_options() {
    case "$1" in
        "printctl") echo "--version --install-completion --show-completion -h --help" ;;
        "printctl agent") echo "--url --token --printer --output --status-interval --print-delay --fail-printer --crash-after-print --max-backoff --ping-interval --ping-timeout --json -h --help" ;;
        "printctl circuits") echo "-h --help" ;;
        "printctl circuits disable") echo "--url --token --json --timeout -h --help" ;;
        "printctl circuits force-open") echo "--url --token --json --timeout -h --help" ;;
        "printctl circuits list") echo "--url --token --json --timeout -h --help" ;;
        "printctl circuits reset") echo "--url --token --json --timeout -h --help" ;;
        "printctl cluster") echo "-h --help" ;;
        "printctl cluster down") echo "--state-dir --timeout --json -h --help" ;;
        "printctl cluster ls") echo "--state-dir --timeout --json -h --help" ;;
        "printctl cluster rebalance") echo "--url --token --per-second --dry-run --settle --timeout --json -h --help" ;;
        "printctl cluster status") echo "--url --token --redis --prefix --watch -w --expect --timeout --json -h --help" ;;
        "printctl cluster up") echo "--config -c --instances -n --port --state-dir --timeout --private-redis --db-proxy --json -h --help" ;;
        "printctl config") echo "-h --help" ;;
        "printctl config check") echo "--production --json -h --help" ;;
        "printctl config init") echo "--force --json -h --help" ;;
        "printctl deploy") echo "--config -c --output -o --dry-run --apply --restart --health-timeout --json -h --help" ;;
        "printctl failover-test") echo "--url --state-dir --agents --dashboards --job-rate --rounds --faults --seed --hold-min --hold-max --settle-timeout --drain --slo-reconnect-p99 --slo-lost --slo-duplicated --stop-cmd --start-cmd --workers --json --output --secret --data-dir --i-know-this-is-production -h --help" ;;
        "printctl health") echo "--url --json --watch --wait --timeout --cluster --config --state-dir --token -h --help" ;;
        "printctl instance") echo "--url --token --json --timeout -h --help" ;;
        "printctl jobs") echo "-h --help" ;;
        "printctl jobs get") echo "--company --url --token --json --timeout -h --help" ;;
        "printctl jobs list") echo "--printer --state --limit --company --url --token --json --timeout -h --help" ;;
        "printctl jobs submit") echo "--printer --kind --payload --text --idempotency-key --wait --company --url --token --json --timeout -h --help" ;;
        "printctl loadtest") echo "--url --agents --printers-per-agent --dashboards --companies --status-rate --job-rate --duration --ramp --drain --no-compression --status-bytes --workers --max-p99-job-ms --max-errors --json --output --secret --data-dir --secret-from-config --i-know-this-is-production -h --help" ;;
        "printctl printers") echo "-h --help" ;;
        "printctl printers list") echo "--branch --company --url --token --json --timeout -h --help" ;;
        "printctl printers move") echo "--branch --agent --company --url --token --json --timeout -h --help" ;;
        "printctl printers test") echo "--text --payload --company --url --token --json --timeout -h --help" ;;
        "printctl printers wait") echo "--company --url --token --json --timeout -h --help" ;;
        "printctl token") echo "--role --company --sub --branch --ttl --secret-from-config --data-dir --json -h --help" ;;
        "printctl verify-prints") echo "--accepted --json -h --help" ;;
    esac
}

# what an option's value is: file, choice A B..., any; nothing for a flag
_printctl_value() {
    case "$1|$2" in
        "printctl agent|--url") echo "any" ;;
        "printctl agent|--token") echo "any" ;;
        "printctl agent|--printer") echo "any" ;;
        "printctl agent|--output") echo "file" ;;
        "printctl agent|--status-interval") echo "any" ;;
        "printctl agent|--print-delay") echo "any" ;;
        "printctl agent|--fail-printer") echo "any" ;;
        "printctl agent|--max-backoff") echo "any" ;;
        "printctl agent|--ping-interval") echo "any" ;;
        "printctl agent|--ping-timeout") echo "any" ;;
        "printctl circuits disable|--url") echo "any" ;;
        "printctl circuits disable|--token") echo "any" ;;
        "printctl circuits disable|--timeout") echo "any" ;;
        "printctl circuits force-open|--url") echo "any" ;;
        "printctl circuits force-open|--token") echo "any" ;;
        "printctl circuits force-open|--timeout") echo "any" ;;
        "printctl circuits list|--url") echo "any" ;;
        "printctl circuits list|--token") echo "any" ;;
        "printctl circuits list|--timeout") echo "any" ;;
        "printctl circuits reset|--url") echo "any" ;;
        "printctl circuits reset|--token") echo "any" ;;
        "printctl circuits reset|--timeout") echo "any" ;;
        "printctl cluster down|--state-dir") echo "file" ;;
        "printctl cluster down|--timeout") echo "any" ;;
        "printctl cluster ls|--state-dir") echo "file" ;;
        "printctl cluster ls|--timeout") echo "any" ;;
        "printctl cluster rebalance|--url") echo "any" ;;
        "printctl cluster rebalance|--token") echo "any" ;;
        "printctl cluster rebalance|--per-second") echo "any" ;;
        "printctl cluster rebalance|--settle") echo "any" ;;
        "printctl cluster rebalance|--timeout") echo "any" ;;
        "printctl cluster status|--url") echo "any" ;;
        "printctl cluster status|--token") echo "any" ;;
        "printctl cluster status|--redis") echo "any" ;;
        "printctl cluster status|--prefix") echo "any" ;;
        "printctl cluster status|--watch") echo "any" ;;
        "printctl cluster status|-w") echo "any" ;;
        "printctl cluster status|--expect") echo "any" ;;
        "printctl cluster status|--timeout") echo "any" ;;
        "printctl cluster up|--config") echo "file" ;;
        "printctl cluster up|-c") echo "file" ;;
        "printctl cluster up|--instances") echo "any" ;;
        "printctl cluster up|-n") echo "any" ;;
        "printctl cluster up|--port") echo "any" ;;
        "printctl cluster up|--state-dir") echo "file" ;;
        "printctl cluster up|--timeout") echo "any" ;;
        "printctl deploy|--config") echo "file" ;;
        "printctl deploy|-c") echo "file" ;;
        "printctl deploy|--output") echo "file" ;;
        "printctl deploy|-o") echo "file" ;;
        "printctl deploy|--restart") echo "choice changed all none" ;;
        "printctl deploy|--health-timeout") echo "any" ;;
        "printctl failover-test|--url") echo "any" ;;
        "printctl failover-test|--state-dir") echo "file" ;;
        "printctl failover-test|--agents") echo "any" ;;
        "printctl failover-test|--dashboards") echo "any" ;;
        "printctl failover-test|--job-rate") echo "any" ;;
        "printctl failover-test|--rounds") echo "any" ;;
        "printctl failover-test|--faults") echo "any" ;;
        "printctl failover-test|--seed") echo "any" ;;
        "printctl failover-test|--hold-min") echo "any" ;;
        "printctl failover-test|--hold-max") echo "any" ;;
        "printctl failover-test|--settle-timeout") echo "any" ;;
        "printctl failover-test|--drain") echo "any" ;;
        "printctl failover-test|--slo-reconnect-p99") echo "any" ;;
        "printctl failover-test|--slo-lost") echo "any" ;;
        "printctl failover-test|--slo-duplicated") echo "any" ;;
        "printctl failover-test|--stop-cmd") echo "any" ;;
        "printctl failover-test|--start-cmd") echo "any" ;;
        "printctl failover-test|--workers") echo "any" ;;
        "printctl failover-test|--json") echo "any" ;;
        "printctl failover-test|--output") echo "file" ;;
        "printctl failover-test|--secret") echo "any" ;;
        "printctl failover-test|--data-dir") echo "file" ;;
        "printctl health|--url") echo "any" ;;
        "printctl health|--watch") echo "any" ;;
        "printctl health|--wait") echo "any" ;;
        "printctl health|--timeout") echo "any" ;;
        "printctl health|--config") echo "file" ;;
        "printctl health|--state-dir") echo "file" ;;
        "printctl health|--token") echo "any" ;;
        "printctl instance|--url") echo "any" ;;
        "printctl instance|--token") echo "any" ;;
        "printctl instance|--timeout") echo "any" ;;
        "printctl jobs get|--company") echo "any" ;;
        "printctl jobs get|--url") echo "any" ;;
        "printctl jobs get|--token") echo "any" ;;
        "printctl jobs get|--timeout") echo "any" ;;
        "printctl jobs list|--printer") echo "any" ;;
        "printctl jobs list|--state") echo "choice queued dispatched acked printed failed expired" ;;
        "printctl jobs list|--limit") echo "any" ;;
        "printctl jobs list|--company") echo "any" ;;
        "printctl jobs list|--url") echo "any" ;;
        "printctl jobs list|--token") echo "any" ;;
        "printctl jobs list|--timeout") echo "any" ;;
        "printctl jobs submit|--printer") echo "any" ;;
        "printctl jobs submit|--kind") echo "choice print test" ;;
        "printctl jobs submit|--payload") echo "any" ;;
        "printctl jobs submit|--text") echo "any" ;;
        "printctl jobs submit|--idempotency-key") echo "any" ;;
        "printctl jobs submit|--wait") echo "any" ;;
        "printctl jobs submit|--company") echo "any" ;;
        "printctl jobs submit|--url") echo "any" ;;
        "printctl jobs submit|--token") echo "any" ;;
        "printctl jobs submit|--timeout") echo "any" ;;
        "printctl loadtest|--url") echo "any" ;;
        "printctl loadtest|--agents") echo "any" ;;
        "printctl loadtest|--printers-per-agent") echo "any" ;;
        "printctl loadtest|--dashboards") echo "any" ;;
        "printctl loadtest|--companies") echo "any" ;;
        "printctl loadtest|--status-rate") echo "any" ;;
        "printctl loadtest|--job-rate") echo "any" ;;
        "printctl loadtest|--duration") echo "any" ;;
        "printctl loadtest|--ramp") echo "any" ;;
        "printctl loadtest|--drain") echo "any" ;;
        "printctl loadtest|--status-bytes") echo "any" ;;
        "printctl loadtest|--workers") echo "any" ;;
        "printctl loadtest|--max-p99-job-ms") echo "any" ;;
        "printctl loadtest|--max-errors") echo "any" ;;
        "printctl loadtest|--json") echo "any" ;;
        "printctl loadtest|--output") echo "file" ;;
        "printctl loadtest|--secret") echo "any" ;;
        "printctl loadtest|--data-dir") echo "file" ;;
        "printctl loadtest|--secret-from-config") echo "file" ;;
        "printctl printers list|--branch") echo "any" ;;
        "printctl printers list|--company") echo "any" ;;
        "printctl printers list|--url") echo "any" ;;
        "printctl printers list|--token") echo "any" ;;
        "printctl printers list|--timeout") echo "any" ;;
        "printctl printers move|--branch") echo "any" ;;
        "printctl printers move|--agent") echo "any" ;;
        "printctl printers move|--company") echo "any" ;;
        "printctl printers move|--url") echo "any" ;;
        "printctl printers move|--token") echo "any" ;;
        "printctl printers move|--timeout") echo "any" ;;
        "printctl printers test|--text") echo "any" ;;
        "printctl printers test|--payload") echo "any" ;;
        "printctl printers test|--company") echo "any" ;;
        "printctl printers test|--url") echo "any" ;;
        "printctl printers test|--token") echo "any" ;;
        "printctl printers test|--timeout") echo "any" ;;
        "printctl printers wait|--company") echo "any" ;;
        "printctl printers wait|--url") echo "any" ;;
        "printctl printers wait|--token") echo "any" ;;
        "printctl printers wait|--timeout") echo "any" ;;
        "printctl token|--role") echo "any" ;;
        "printctl token|--company") echo "any" ;;
        "printctl token|--sub") echo "any" ;;
        "printctl token|--branch") echo "any" ;;
        "printctl token|--ttl") echo "any" ;;
        "printctl token|--secret-from-config") echo "file" ;;
        "printctl token|--data-dir") echo "file" ;;
        "printctl verify-prints|--accepted") echo "file" ;;
    esac
}

_printctl_path_argument() {
    case "$1" in
        "printctl config check") return 0 ;;
        "printctl config init") return 0 ;;
        "printctl verify-prints") return 0 ;;
    esac
    return 1
}

_printctl() {
    local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}"
    local path="printctl" i word
    for ((i = 1; i < COMP_CWORD; i++)); do
        word="${COMP_WORDS[i]}"
        if [[ " $(_printctl_children "$path") " == *" $word "* ]]; then
            path="$path $word"
        fi
    done
    local kind
    kind="$(_printctl_value "$path" "$prev")"
    case "$kind" in
        file) compopt -o filenames 2>/dev/null; COMPREPLY=($(compgen -f -- "$cur")); return ;;
        choice*) COMPREPLY=($(compgen -W "${kind#choice }" -- "$cur")); return ;;
        any) COMPREPLY=(); return ;;
    esac
    if [[ "$cur" == -* ]]; then
        COMPREPLY=($(compgen -W "$(_printctl_options "$path")" -- "$cur"))
        return
    fi
    local children
    children="$(_printctl_children "$path")"
    if [[ -n "$children" ]]; then
        COMPREPLY=($(compgen -W "$children" -- "$cur"))
    elif _printctl_path_argument "$path"; then
        compopt -o filenames 2>/dev/null
        COMPREPLY=($(compgen -f -- "$cur"))
    fi
}

complete -F _printctl printctl
