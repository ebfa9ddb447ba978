#compdef printctl
# zsh completion for printctl: generated from printctl's command tree by `python -m printctl.completion`; do not edit.
# Install: copy it as _printctl into a directory of $fpath (e.g. /usr/local/share/zsh/site-functions/_printctl).

_printctl() {
    local curcontext="$curcontext" state line
    _arguments -C \
        '--version[Print the version and exit]' \
        '--install-completion[Install completion for the current shell]' \
        '--show-completion[Show completion for the current shell, to copy it or customize the installation]' \
        '(-h --help)-h[Show the help and exit]' \
        '(-h --help)--help[Show the help and exit]' \
        '1: :->command' \
        '*:: :->args'
    case $state in
        command) local -a commands; commands=('agent:Run the reference print agent\: receive jobs over /printing-ws and "print" them t' 'circuits:Circuit breakers\: list them; reset, force-open or disable one (admin token)' 'cluster:A local cluster\: N printd behind nginx on loopback (up, down, ls)' 'config:Write and check printd config files' 'deploy:Render the deployment of a cluster\: systemd unit, one env file per instance, the' 'failover-test:Inject faults into a running cluster under load, round after round, and check th' 'health:Is printd healthy? Exit 0 when status is ok, 1 when degraded, draining or unreac' 'instance:This instances figures\: connections by role, messages, compression saving, jobs' 'jobs:Print jobs\: submit one (and wait for it), show one, list them' 'loadtest:Load printd with simulated agents, dashboards and back offices; report latency, ' 'printers:Printers\: list them with their agents state; send a test print (service or admi' 'token:Mint a token; only the token is printed on stdout, so `$(printctl token ...)` wo' 'verify-prints:Compare accepted jobs with the agents print logs; exit 1 on any lost, duplicate'); _describe command commands ;;
        args)
            case $words[1] in
                agent) _printctl_agent ;;
                circuits) _printctl_circuits ;;
                cluster) _printctl_cluster ;;
                config) _printctl_config ;;
                deploy) _printctl_deploy ;;
                failover-test) _printctl_failover_test ;;
                health) _printctl_health ;;
                instance) _printctl_instance ;;
                jobs) _printctl_jobs ;;
                loadtest) _printctl_loadtest ;;
                printers) _printctl_printers ;;
                token) _printctl_token ;;
                verify-prints) _printctl_verify_prints ;;
            esac ;;
    esac
}

_printctl_agent() {
    local curcontext="$curcontext" state line
    _arguments \
        '--url[printd base URL (env PRINTD_URL)]:url: ' \
        '--token[Bearer token (env PRINTD_TOKEN)]:token: ' \
        '*--printer[A printer this agent drives (repeat for several)]:printer: ' \
        '--output[Directory for prints.jsonl, tickets and the journal]:output:_files' \
        '--status-interval[Seconds between printer.status reports]:status-interval: ' \
        '--print-delay[Simulated seconds per print]:print-delay: ' \
        '*--fail-printer[This printer is out of paper\: its jobs fail]:fail-printer: ' \
        '--crash-after-print[Fault drill\: exit (3) right after a print is journaled, before the result is sen]' \
        '--max-backoff[Upper bound of the reconnect delay, seconds]:max-backoff: ' \
        '--ping-interval[Seconds without a message from printd before pinging it (0\: never)]:ping-interval: ' \
        '--ping-timeout[Seconds to wait for printds answer before reconnecting]:ping-timeout: ' \
        '--json[Machine-readable JSON on stdout]' \
        '(-h --help)-h[Show the help and exit]' \
        '(-h --help)--help[Show the help and exit]'
}

_printctl_circuits() {
    local curcontext="$curcontext" state line
    _arguments -C \
        '(-h --help)-h[Show the help and exit]' \
        '(-h --help)--help[Show the help and exit]' \
        '1: :->command' \
        '*:: :->args'
    case $state in
        command) local -a commands; commands=('disable:Let every call through a circuit and never open it until `reset` (outcomes still' 'force-open:Reject every call through a circuit until `reset`, e.g' 'list:Every circuit with its state, counts, failure rate and time until it tries again' 'reset:Close a circuit and clear its counters (also ends force-open and disable)'); _describe command commands ;;
        args)
            case $words[1] in
                disable) _printctl_circuits_disable ;;
                force-open) _printctl_circuits_force_open ;;
                list) _printctl_circuits_list ;;
                reset) _printctl_circuits_reset ;;
            esac ;;
    esac
}

_printctl_circuits_disable() {
    local curcontext="$curcontext" state line
    _arguments \
        '--url[printd base URL (env PRINTD_URL)]:url: ' \
        '--token[Bearer token (env PRINTD_TOKEN)]:token: ' \
        '--json[Machine-readable JSON on stdout]' \
        '--timeout[Seconds to wait for printd]:timeout: ' \
        '(-h --help)-h[Show the help and exit]' \
        '(-h --help)--help[Show the help and exit]'
}

_printctl_circuits_force_open() {
    local curcontext="$curcontext" state line
    _arguments \
        '--url[printd base URL (env PRINTD_URL)]:url: ' \
        '--token[Bearer token (env PRINTD_TOKEN)]:token: ' \
        '--json[Machine-readable JSON on stdout]' \
        '--timeout[Seconds to wait for printd]:timeout: ' \
        '(-h --help)-h[Show the help and exit]' \
        '(-h --help)--help[Show the help and exit]'
}

_printctl_circuits_list() {
    local curcontext="$curcontext" state line
    _arguments \
        '--url[printd base URL (env PRINTD_URL)]:url: ' \
        '--token[Admin token, or printds metrics token (env PRINTD_TOKEN or PRINTD_METRICS_TOKEN]:token: ' \
        '--json[Machine-readable JSON on stdout]' \
        '--timeout[Seconds to wait for printd]:timeout: ' \
        '(-h --help)-h[Show the help and exit]' \
        '(-h --help)--help[Show the help and exit]'
}

_printctl_circuits_reset() {
    local curcontext="$curcontext" state line
    _arguments \
        '--url[printd base URL (env PRINTD_URL)]:url: ' \
        '--token[Bearer token (env PRINTD_TOKEN)]:token: ' \
        '--json[Machine-readable JSON on stdout]' \
        '--timeout[Seconds to wait for printd]:timeout: ' \
        '(-h --help)-h[Show the help and exit]' \
        '(-h --help)--help[Show the help and exit]'
}

_printctl_cluster() {
    local curcontext="$curcontext" state line
    _arguments -C \
        '(-h --help)-h[Show the help and exit]' \
        '(-h --help)--help[Show the help and exit]' \
        '1: :->command' \
        '*:: :->args'
    case $state in
        command) local -a commands; commands=('down:Stop every process of the local cluster (printd drains on SIGTERM; SIGKILL after' 'ls:The local clusters processes\: pid, running or not, health, connections, log' 'rebalance:Even out agents after an instance rejoined\: instances above the average close a ' 'status:Members, leader and health of the cluster' 'up:Start N printd instances and nginx in front of them on loopback; return once all'); _describe command commands ;;
        args)
            case $words[1] in
                down) _printctl_cluster_down ;;
                ls) _printctl_cluster_ls ;;
                rebalance) _printctl_cluster_rebalance ;;
                status) _printctl_cluster_status ;;
                up) _printctl_cluster_up ;;
            esac ;;
    esac
}

_printctl_cluster_down() {
    local curcontext="$curcontext" state line
    _arguments \
        '--state-dir[Pidfiles, logs and data of the local cluster]:state-dir:_files' \
        '--timeout[Seconds to let printd drain before SIGKILL]:timeout: ' \
        '--json[Machine-readable JSON on stdout]' \
        '(-h --help)-h[Show the help and exit]' \
        '(-h --help)--help[Show the help and exit]'
}

_printctl_cluster_ls() {
    local curcontext="$curcontext" state line
    _arguments \
        '--state-dir[Pidfiles, logs and data of the local cluster]:state-dir:_files' \
        '--timeout[Seconds to wait for each health answer]:timeout: ' \
        '--json[Machine-readable JSON on stdout]' \
        '(-h --help)-h[Show the help and exit]' \
        '(-h --help)--help[Show the help and exit]'
}

_printctl_cluster_rebalance() {
    local curcontext="$curcontext" state line
    _arguments \
        '--url[printd base URL (env PRINTD_URL)]:url: ' \
        '--token[Admin token, or printds metrics token (env PRINTD_TOKEN or PRINTD_METRICS_TOKEN]:token: ' \
        '--per-second[Agents each instance closes per second]:per-second: ' \
        '--dry-run[Show the plan, move nobody]' \
        '--settle[Seconds to wait for the moved agents to show up elsewhere before checking the re]:settle: ' \
        '--timeout[Seconds to wait for printd]:timeout: ' \
        '--json[Machine-readable JSON on stdout]' \
        '(-h --help)-h[Show the help and exit]' \
        '(-h --help)--help[Show the help and exit]'
}

_printctl_cluster_status() {
    local curcontext="$curcontext" state line
    _arguments \
        '--url[printd base URL (env PRINTD_URL)]:url: ' \
        '--token[Admin token, or printds metrics token (env PRINTD_TOKEN or PRINTD_METRICS_TOKEN]:token: ' \
        '--redis[Read the clusters Redis directly (works when no instance answers)]:redis: ' \
        '--prefix[The clusters Redis key prefix (with --redis)]:prefix: ' \
        '(--watch -w)--watch[Refresh every SECONDS until Ctrl-C]:w: ' \
        '(--watch -w)-w[Refresh every SECONDS until Ctrl-C]:w: ' \
        '--expect[Members there should be\: fewer fails the check (an instance that died is no memb]:expect: ' \
        '--timeout[Seconds to wait for printd]:timeout: ' \
        '--json[Machine-readable JSON on stdout]' \
        '(-h --help)-h[Show the help and exit]' \
        '(-h --help)--help[Show the help and exit]'
}

_printctl_cluster_up() {
    local curcontext="$curcontext" state line
    _arguments \
        '(--config -c)--config[Cluster description (instances, ports, Redis, database)]:c:_files' \
        '(--config -c)-c[Cluster description (instances, ports, Redis, database)]:c:_files' \
        '(--instances -n)--instances[printd instances (default 3, or the cluster files)]:n: ' \
        '(--instances -n)-n[printd instances (default 3, or the cluster files)]:n: ' \
        '--port[nginxs loopback port (default 8080 or the cluster files; 0 = any free one)]:port: ' \
        '--state-dir[Pidfiles, logs and data of the local cluster]:state-dir:_files' \
        '--timeout[Seconds to wait for every instance]:timeout: ' \
        '--private-redis[Run a redis-server of the clusters own (loopback, no persistence) as REDIS_URL,]' \
        '--db-proxy[Put a TCP proxy of the clusters own between the instances and PostgreSQL, for f]' \
        '--json[Machine-readable JSON on stdout]' \
        '(-h --help)-h[Show the help and exit]' \
        '(-h --help)--help[Show the help and exit]'
}

_printctl_config() {
    local curcontext="$curcontext" state line
    _arguments -C \
        '(-h --help)-h[Show the help and exit]' \
        '(-h --help)--help[Show the help and exit]' \
        '1: :->command' \
        '*:: :->args'
    case $state in
        command) local -a commands; commands=('check:Validate a config file plus the environment like `printd check-config`; exit 2 n' 'init:Write a commented default config (every key, its default, the env var overriding'); _describe command commands ;;
        args)
            case $words[1] in
                check) _printctl_config_check ;;
                init) _printctl_config_init ;;
            esac ;;
    esac
}

_printctl_config_check() {
    local curcontext="$curcontext" state line
    _arguments \
        '--production[Check with production rules]' \
        '--json[Machine-readable JSON on stdout]' \
        '(-h --help)-h[Show the help and exit]' \
        '(-h --help)--help[Show the help and exit]' \
        '*:file:_files'
}

_printctl_config_init() {
    local curcontext="$curcontext" state line
    _arguments \
        '--force[Overwrite an existing file]' \
        '--json[Machine-readable JSON on stdout]' \
        '(-h --help)-h[Show the help and exit]' \
        '(-h --help)--help[Show the help and exit]' \
        '*:file:_files'
}

_printctl_deploy() {
    local curcontext="$curcontext" state line
    _arguments \
        '(--config -c)--config[The cluster description (see config/cluster.toml)]:c:_files' \
        '(--config -c)-c[The cluster description (see config/cluster.toml)]:c:_files' \
        '(--output -o)--output[Write the rendered files under DIR (paths as installed)]:o:_files' \
        '(--output -o)-o[Write the rendered files under DIR (paths as installed)]:o:_files' \
        '--dry-run[Show a unified diff against what is installed, and the plan]' \
        '--apply[Install, check with nginx -t, reload, rolling restart (as root)]' \
        '--restart[Which running instances --apply restarts\: those whose files changed, all (after ]:restart:(changed all none)' \
        '--health-timeout[Seconds an instance has to be healthy again]:health-timeout: ' \
        '--json[Machine-readable JSON on stdout]' \
        '(-h --help)-h[Show the help and exit]' \
        '(-h --help)--help[Show the help and exit]'
}

_printctl_failover_test() {
    local curcontext="$curcontext" state line
    _arguments \
        '--url[The clusters front (nginx)]:url: ' \
        '--state-dir[The local cluster of `printctl cluster up`]:state-dir:_files' \
        '--agents[Simulated agents (one connection each)]:agents: ' \
        '--dashboards[Simulated dashboards]:dashboards: ' \
        '--job-rate[Jobs submitted per second, all along]:job-rate: ' \
        '--rounds[Rounds, 1-1000]:rounds: ' \
        '--faults[Fault kinds to deal from, comma-separated (kill,drain,pause,redis,db,agent-cut)]:faults: ' \
        '--seed[Seed of the rounds (default\: random, printed to reproduce the run)]:seed: ' \
        '--hold-min[Shortest hold of a fault, seconds]:hold-min: ' \
        '--hold-max[Longest hold of a fault, seconds]:hold-max: ' \
        '--settle-timeout[Seconds for the cluster to settle after a heal]:settle-timeout: ' \
        '--drain[At most this long after the last round for accepted jobs to print]:drain: ' \
        '--slo-reconnect-p99[Orphaned agents back within this (seconds, p99)]:slo-reconnect-p99: ' \
        '--slo-lost[Lost jobs allowed]:slo-lost: ' \
        '--slo-duplicated[Jobs printed twice allowed]:slo-duplicated: ' \
        '--stop-cmd[A deployed cluster\: the command that injects a fault, with {fault} {target} {hos]:stop-cmd: ' \
        '--start-cmd[A deployed cluster\: the command that heals it]:start-cmd: ' \
        '--workers[Load generator processes]:workers: ' \
        '--json[Write the report as JSON to FILE; --json alone prints it on stdout]:json: ' \
        '--output[Keep the print logs, accepted jobs and agents events here (default\: a temporary]:output:_files' \
        '--secret[printds JWT secret; prefer env JWT_SECRET]:secret: ' \
        '--data-dir[printd data directory holding the secret]:data-dir:_files' \
        '--i-know-this-is-production[Allow a front that is not on this machine]' \
        '(-h --help)-h[Show the help and exit]' \
        '(-h --help)--help[Show the help and exit]'
}

_printctl_health() {
    local curcontext="$curcontext" state line
    _arguments \
        '--url[printd base URL (env PRINTD_URL)]:url: ' \
        '--json[Machine-readable JSON on stdout]' \
        '--watch[Refresh every N seconds until Ctrl-C (JSON\: one line each)]:watch: ' \
        '--wait[Wait up to N seconds for status ok (a printd that is starting), then answer as u]:wait: ' \
        '--timeout[Seconds to wait for printd]:timeout: ' \
        '--cluster[Every instance in one table\: from --config, --state-dir, the local cluster in ./]' \
        '--config[With --cluster\: the cluster description]:config:_files' \
        '--state-dir[With --cluster\: a local clusters state directory]:state-dir:_files' \
        '--token[Admin token, or printds metrics token (env PRINTD_TOKEN or PRINTD_METRICS_TOKEN]:token: ' \
        '(-h --help)-h[Show the help and exit]' \
        '(-h --help)--help[Show the help and exit]'
}

_printctl_instance() {
    local curcontext="$curcontext" state line
    _arguments \
        '--url[printd base URL (env PRINTD_URL)]:url: ' \
        '--token[Admin token, or printds metrics token (env PRINTD_TOKEN or PRINTD_METRICS_TOKEN]:token: ' \
        '--json[Machine-readable JSON on stdout]' \
        '--timeout[Seconds to wait for printd]:timeout: ' \
        '(-h --help)-h[Show the help and exit]' \
        '(-h --help)--help[Show the help and exit]'
}

_printctl_jobs() {
    local curcontext="$curcontext" state line
    _arguments -C \
        '(-h --help)-h[Show the help and exit]' \
        '(-h --help)--help[Show the help and exit]' \
        '1: :->command' \
        '*:: :->args'
    case $state in
        command) local -a commands; commands=('get:Show one job\: state, attempts, timestamps, result or error, history' 'list:List recent jobs of the tokens company, newest first' 'submit:Submit a print job; with --wait, follow it and exit 1 unless it printed in time'); _describe command commands ;;
        args)
            case $words[1] in
                get) _printctl_jobs_get ;;
                list) _printctl_jobs_list ;;
                submit) _printctl_jobs_submit ;;
            esac ;;
    esac
}

_printctl_jobs_get() {
    local curcontext="$curcontext" state line
    _arguments \
        '--company[Company, only for an all-companies (*) admin token]:company: ' \
        '--url[printd base URL (env PRINTD_URL)]:url: ' \
        '--token[Bearer token (env PRINTD_TOKEN)]:token: ' \
        '--json[Machine-readable JSON on stdout]' \
        '--timeout[Seconds to wait for printd]:timeout: ' \
        '(-h --help)-h[Show the help and exit]' \
        '(-h --help)--help[Show the help and exit]'
}

_printctl_jobs_list() {
    local curcontext="$curcontext" state line
    _arguments \
        '--printer[Only this printer]:printer: ' \
        '--state[Only jobs in this state]:state:(queued dispatched acked printed failed expired)' \
        '--limit[At most this many jobs]:limit: ' \
        '--company[Company, only for an all-companies (*) admin token]:company: ' \
        '--url[printd base URL (env PRINTD_URL)]:url: ' \
        '--token[Bearer token (env PRINTD_TOKEN)]:token: ' \
        '--json[Machine-readable JSON on stdout]' \
        '--timeout[Seconds to wait for printd]:timeout: ' \
        '(-h --help)-h[Show the help and exit]' \
        '(-h --help)--help[Show the help and exit]'
}

_printctl_jobs_submit() {
    local curcontext="$curcontext" state line
    _arguments \
        '--printer[Printer id]:printer: ' \
        '--kind[Job kind]:kind:(print test)' \
        '--payload[Payload as a JSON object]:payload: ' \
        '--text[Shorthand for --payload {"text"\: TEXT}]:text: ' \
        '--idempotency-key[Resubmitting with the same key returns the same job]:idempotency-key: ' \
        '--wait[Wait up to N seconds for printed/failed/expired]:wait: ' \
        '--company[Company, only for an all-companies (*) admin token]:company: ' \
        '--url[printd base URL (env PRINTD_URL)]:url: ' \
        '--token[Bearer token (env PRINTD_TOKEN)]:token: ' \
        '--json[Machine-readable JSON on stdout]' \
        '--timeout[Seconds to wait for printd]:timeout: ' \
        '(-h --help)-h[Show the help and exit]' \
        '(-h --help)--help[Show the help and exit]'
}

_printctl_loadtest() {
    local curcontext="$curcontext" state line
    _arguments \
        '--url[printd base URL (env PRINTD_URL)]:url: ' \
        '--agents[Simulated agents (one connection each)]:agents: ' \
        '--printers-per-agent[Printers per agent]:printers-per-agent: ' \
        '--dashboards[Dashboards; dashboard d watches company d mod --companies]:dashboards: ' \
        '--companies[Companies (tenants); agent a is in a mod C]:companies: ' \
        '--status-rate[printer.status messages per second, whole fleet]:status-rate: ' \
        '--job-rate[Jobs submitted per second, whole back office]:job-rate: ' \
        '--duration[Seconds of the steady window]:duration: ' \
        '--ramp[Seconds over which the connections open]:ramp: ' \
        '--drain[At most this long after the window for accepted jobs to print]:drain: ' \
        '--no-compression[Do not offer permessage-deflate]' \
        '--status-bytes[Size of one status message]:status-bytes: ' \
        '--workers[Generator processes (default\: one per core)]:workers: ' \
        '--max-p99-job-ms[Fail (exit 1) if the job round trips p99 is above this]:max-p99-job-ms: ' \
        '--max-errors[Fail (exit 1) if more errors than this were seen]:max-errors: ' \
        '--json[Write the whole report as JSON to FILE; --json alone prints it on stdout]:json: ' \
        '--output[Keep the print logs and accepted jobs here (default\: a temporary dir, kept on fa]:output:_files' \
        '--secret[printds JWT secret; prefer env JWT_SECRET (ps shows options)]:secret: ' \
        '--data-dir[printd data directory holding the generated secret]:data-dir:_files' \
        '--secret-from-config[printd config file to take the secret from]:secret-from-config:_files' \
        '--i-know-this-is-production[Allow a URL that is not on this machine (loopback)]' \
        '(-h --help)-h[Show the help and exit]' \
        '(-h --help)--help[Show the help and exit]'
}

_printctl_printers() {
    local curcontext="$curcontext" state line
    _arguments -C \
        '(-h --help)-h[Show the help and exit]' \
        '(-h --help)--help[Show the help and exit]' \
        '1: :->command' \
        '*:: :->args'
    case $state in
        command) local -a commands; commands=('list:List printers with their last reported status and whether their agent is connect' 'move:Move a printer to another branch or agent; its queued jobs follow' 'test:Print a test page and wait for the agents answer; exit 1 unless the printer rep' 'wait:Wait until these printers are registered and their agents connected; exit 1 if n'); _describe command commands ;;
        args)
            case $words[1] in
                list) _printctl_printers_list ;;
                move) _printctl_printers_move ;;
                test) _printctl_printers_test ;;
                wait) _printctl_printers_wait ;;
            esac ;;
    esac
}

_printctl_printers_list() {
    local curcontext="$curcontext" state line
    _arguments \
        '--branch[Only this branch]:branch: ' \
        '--company[Company, only for an all-companies (*) admin token]:company: ' \
        '--url[printd base URL (env PRINTD_URL)]:url: ' \
        '--token[Bearer token (env PRINTD_TOKEN)]:token: ' \
        '--json[Machine-readable JSON on stdout]' \
        '--timeout[Seconds to wait for printd]:timeout: ' \
        '(-h --help)-h[Show the help and exit]' \
        '(-h --help)--help[Show the help and exit]'
}

_printctl_printers_move() {
    local curcontext="$curcontext" state line
    _arguments \
        '--branch[Branch the printer moves to]:branch: ' \
        '--agent[Agent id (token sub) that will print for it]:agent: ' \
        '--company[Company, only for an all-companies (*) admin token]:company: ' \
        '--url[printd base URL (env PRINTD_URL)]:url: ' \
        '--token[Bearer token (env PRINTD_TOKEN)]:token: ' \
        '--json[Machine-readable JSON on stdout]' \
        '--timeout[Seconds to wait for printd]:timeout: ' \
        '(-h --help)-h[Show the help and exit]' \
        '(-h --help)--help[Show the help and exit]'
}

_printctl_printers_test() {
    local curcontext="$curcontext" state line
    _arguments \
        '--text[Text of the test page (default\: the servers)]:text: ' \
        '--payload[Test payload as a JSON object]:payload: ' \
        '--company[Company, only for an all-companies (*) admin token]:company: ' \
        '--url[printd base URL (env PRINTD_URL)]:url: ' \
        '--token[Bearer token (env PRINTD_TOKEN)]:token: ' \
        '--json[Machine-readable JSON on stdout]' \
        '--timeout[Seconds to wait for printd]:timeout: ' \
        '(-h --help)-h[Show the help and exit]' \
        '(-h --help)--help[Show the help and exit]'
}

_printctl_printers_wait() {
    local curcontext="$curcontext" state line
    _arguments \
        '--company[Company, only for an all-companies (*) admin token]:company: ' \
        '--url[printd base URL (env PRINTD_URL)]:url: ' \
        '--token[Bearer token (env PRINTD_TOKEN)]:token: ' \
        '--json[Machine-readable JSON on stdout]' \
        '--timeout[Seconds to wait for the printers]:timeout: ' \
        '(-h --help)-h[Show the help and exit]' \
        '(-h --help)--help[Show the help and exit]'
}

_printctl_token() {
    local curcontext="$curcontext" state line
    _arguments \
        '--role[One of\: agent, dashboard, service, admin]:role: ' \
        '--company[Company id (* = all companies, admin only)]:company: ' \
        '--sub[Subject\: the agent, service or persons id]:sub: ' \
        '--branch[Branch id (required for agent tokens)]:branch: ' \
        '--ttl[Lifetime\: 90, 15m, 12h, 1d, 2w]:ttl: ' \
        '--secret-from-config[printd config file to take the secret from (default\: found like printd finds it)]:secret-from-config:_files' \
        '--data-dir[printd data directory holding the generated secret (env PRINTD_DATA_DIR; default]:data-dir:_files' \
        '--json[Machine-readable JSON on stdout]' \
        '(-h --help)-h[Show the help and exit]' \
        '(-h --help)--help[Show the help and exit]'
}

_printctl_verify_prints() {
    local curcontext="$curcontext" state line
    _arguments \
        '--accepted[File of accepted jobs (JSON lines with job_id, or ids)]:accepted:_files' \
        '--json[Machine-readable JSON on stdout]' \
        '(-h --help)-h[Show the help and exit]' \
        '(-h --help)--help[Show the help and exit]' \
        '*:file:_files'
}

_printctl "$@"
