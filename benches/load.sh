#!/usr/bin/env bash
# benches/load.sh: cohort against NGINX split_clients, side by side in one run (issue 4).
#
# What it does, all on 127.0.0.1, every process started here stopped by PID on exit:
#   1. installs nginx, wrk (and curl) from Debian when missing; builds cohort (release);
#   2. starts two one-worker NGINX upstreams (stable, canary) answering a fixed body;
#   3. starts cohort (workers = 1, sticky header:x-user-id, 90/10) and an NGINX proxy doing
#      the same job (split_clients + keepalive upstreams); checks one request through each;
#   4. drives both with `wrk -t1` at each connection count, rounds interleaved
#      cohort, nginx, cohort, nginx ..., a random x-user-id per request; proxies on one
#      CPU, wrk and the upstreams on the other (the machine has 2 cores);
#   5. measures the no-proxy ceiling (wrk straight at the stable upstream);
#   6. measures memory per idle keep-alive client connection (10,000 by default) for both
#      proxies, freshly restarted, from a separate Python process;
#   7. prints a table and writes target/load/{summary.txt,rounds.tsv,table.txt}.
# The machine is shared and noisy: read the ratios, not the absolute numbers.
#
# Usage: benches/load.sh [--quick] [--profile] [--instructions] [--help]
#   --quick     ~1-minute smoke run (3 s runs, 1 s warm-up, 2 rounds, 2,000 idle connections)
#   --profile   afterwards, profile both proxies at the highest connection count:
#               perf record -g (top symbols, user/kernel split) and syscalls per request
#               by name (perf stat on the syscall tracepoints); installs linux-perf
#   --instructions  afterwards, run each proxy under callgrind (valgrind) and count its
#               user-space instructions per request at the first connection count: a
#               figure this noisy machine cannot blur (time can move 20 % between runs;
#               an instruction count moves well under 1 %); installs valgrind
# Environment knobs (defaults for the full run):
#   LOAD_DURATION=8       seconds per measured wrk run
#   LOAD_WARMUP=1         seconds of wrk warm-up before each measured run (0 = none)
#   LOAD_ROUNDS=5         measured rounds per proxy and connection count (more, shorter
#                         rounds ride out other people's builds better than fewer, longer)
#   LOAD_CONNS="64 256"   wrk connection counts
#   LOAD_IDLE_CONNS=10000 idle keep-alive connections for the memory scenario (0 = skip)
#   LOAD_PROFILE_SECONDS=10  length of the perf record window with --profile
#   LOAD_WAIT_QUIET=60    wait up to this long for other work on the CPUs to stop (0 = don't)
#   LOAD_NICE=0           nice value for everything the benchmark runs (after the build); a
#                         negative one helps only a little against a compiler started meanwhile
#                         (a woken proxy still waits for the compiler's time slice)
#   LOAD_PROXY_CPU=0, LOAD_CLIENT_CPU=1   CPUs for the proxies, and for wrk + upstreams
#   LOAD_CLIENT_SCHED=other  scheduling policy of everything on the client CPU (wrk, the
#                         upstreams, the idle clients): `other` (the kernel's default) or
#                         `batch` (SCHED_BATCH: a woken process there does not preempt the
#                         running one). The load side shares one core, so with `other` each
#                         wake-up the proxy causes there can preempt wrk or an upstream in
#                         mid-batch; `batch` shows what the proxies do when the load side
#                         does not pay for that (docs/performance.md)
#   LOAD_SEGMENTS=0       with N > 0, cohort's route also has three segments no request of
#                         the load matches (a header rule, a key list of N values from a
#                         file, an ip rule): the cost of segments configured but idle
#   LOAD_NGINX_KEEPALIVE=1024  NGINX's upstream keepalive pool (cohort keeps up to 1024)
#   LOAD_PORT_BASE=18400  ports used: base+1 stable, +2 canary, +10 cohort, +11 cohort admin,
#                         +20 nginx proxy
#   LOAD_OUT=target/load  where the summary goes
#   LOAD_SKIP_BUILD=1     use the existing target/release/cohort
#   LOAD_KEEP_TMP=1       keep the temp dir (configs, logs, raw wrk output); it is also kept
#                         when the script fails (not when interrupted)
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

QUICK=0
PROFILE=0
INSTRUCTIONS=0
for arg in "$@"; do
    case "$arg" in
        --quick) QUICK=1 ;;
        --profile) PROFILE=1 ;;
        --instructions) INSTRUCTIONS=1 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "load.sh: unknown argument: $arg" >&2; usage >&2; exit 2 ;;
    esac
done

if ((QUICK)); then
    d_duration=3 d_warmup=1 d_rounds=2 d_idle=2000
else
    d_duration=8 d_warmup=1 d_rounds=5 d_idle=10000
fi
DURATION=${LOAD_DURATION:-$d_duration}
WARMUP=${LOAD_WARMUP:-$d_warmup}
ROUNDS=${LOAD_ROUNDS:-$d_rounds}
IDLE_CONNS=${LOAD_IDLE_CONNS:-$d_idle}
read -r -a CONNS <<<"${LOAD_CONNS:-64 256}"
PROFILE_SECONDS=${LOAD_PROFILE_SECONDS:-10}
WAIT_QUIET=${LOAD_WAIT_QUIET:-60}
NICE=${LOAD_NICE:-0}
PROXY_CPU=${LOAD_PROXY_CPU:-0}
CLIENT_CPU=${LOAD_CLIENT_CPU:-1}
CLIENT_SCHED=${LOAD_CLIENT_SCHED:-other}
PORT_BASE=${LOAD_PORT_BASE:-18400}
# NGINX's upstream `keepalive` (idle connections kept per upstream): as many as cohort
# keeps (MAX_IDLE_PER_ENDPOINT), so neither proxy reconnects under load. With 64, NGINX
# closes and reopens upstream connections at 256 client connections and loses ~35 %.
NGINX_KEEPALIVE=${LOAD_NGINX_KEEPALIVE:-1024}
PORT_STABLE=$((PORT_BASE + 1))
PORT_CANARY=$((PORT_BASE + 2))
PORT_COHORT=$((PORT_BASE + 10))
PORT_ADMIN=$((PORT_BASE + 11))
PORT_NGINX=$((PORT_BASE + 20))

REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT_DIR=${LOAD_OUT:-$REPO/target/load}
COHORT_BIN=${CARGO_TARGET_DIR:-$REPO/target}/release/cohort
export PATH="$PATH:/usr/sbin:/sbin"

log() { printf '[load %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

for v in DURATION WARMUP ROUNDS IDLE_CONNS PROFILE_SECONDS WAIT_QUIET PROXY_CPU CLIENT_CPU PORT_BASE; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number, got '${!v}'"
done
[[ $CLIENT_SCHED == other || $CLIENT_SCHED == batch ]] ||
    die "LOAD_CLIENT_SCHED must be 'other' or 'batch', got '$CLIENT_SCHED'"
((DURATION > 0 && ROUNDS > 0)) || die "LOAD_DURATION and LOAD_ROUNDS must be positive"
((${#CONNS[@]} > 0)) || die "LOAD_CONNS is empty"
for c in "${CONNS[@]}"; do
    if ! [[ $c =~ ^[0-9]+$ ]] || ((c == 0)); then die "bad connection count '$c'"; fi
done

# ---------------------------------------------------------------------------------------
# 1. Tools and build
# ---------------------------------------------------------------------------------------
install_missing() {
    local need=() tool
    for tool in nginx:nginx wrk:wrk curl:curl python3:python3 taskset:util-linux chrt:util-linux ss:iproute2; do
        command -v "${tool%%:*}" >/dev/null 2>&1 || need+=("${tool#*:}")
    done
    if ((PROFILE)); then
        command -v perf >/dev/null 2>&1 || need+=(linux-perf)
    fi
    if ((INSTRUCTIONS)); then
        command -v callgrind_control >/dev/null 2>&1 || need+=(valgrind)
    fi
    ((${#need[@]} == 0)) && return 0
    [[ $EUID -eq 0 ]] || die "missing packages (${need[*]}): run as root or install them"
    log "installing from Debian: ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
}
install_missing
nproc_avail=$(nproc --all)
((PROXY_CPU < nproc_avail && CLIENT_CPU < nproc_avail)) ||
    die "CPU $PROXY_CPU or $CLIENT_CPU does not exist (this machine has $nproc_avail)"
# Prefixes that start a command on the proxy CPU, and on the client CPU under its policy.
ON_PROXY_CPU=(taskset -c "$PROXY_CPU")
ON_CLIENT_CPU=(taskset -c "$CLIENT_CPU")
if [[ $CLIENT_SCHED == batch ]]; then ON_CLIENT_CPU+=(chrt --batch 0); fi

if [[ ${LOAD_SKIP_BUILD:-0} != 1 ]]; then
    log "cargo build --release"
    (cd "$REPO" && cargo build --release --quiet --bin cohort)
fi
[[ -x $COHORT_BIN ]] || die "no cohort binary at $COHORT_BIN"
[[ $NICE =~ ^-?[0-9]+$ ]] || die "LOAD_NICE must be a whole number, got '$NICE'"
# Everything started from here on (proxies, upstreams, wrk, the idle clients) inherits it.
renice -n "$NICE" -p $$ >/dev/null 2>&1 || log "warning: cannot renice to $NICE; running at $(nice)"
NICE=$(nice)

# Enough file descriptors for 10,000 idle clients (the proxies inherit this limit).
hard_nofile=$(ulimit -Hn)
[[ $hard_nofile == unlimited ]] && hard_nofile=1048576
((hard_nofile > 1048576)) && hard_nofile=1048576
ulimit -n "$hard_nofile"
NOFILE=$(ulimit -n)
if ((IDLE_CONNS > 0 && IDLE_CONNS + 1024 > NOFILE)); then
    log "warning: open-file limit $NOFILE; idle connections lowered to $((NOFILE - 1024))"
    IDLE_CONNS=$((NOFILE - 1024))
fi

for p in "$PORT_STABLE" "$PORT_CANARY" "$PORT_COHORT" "$PORT_ADMIN" "$PORT_NGINX"; do
    [[ -z $(ss -Hltn "sport = :$p") ]] || die "port $p is in use (set LOAD_PORT_BASE)"
done

# ---------------------------------------------------------------------------------------
# Processes: every PID started here is stopped on exit
# ---------------------------------------------------------------------------------------
TMP=$(mktemp -d "${TMPDIR:-/tmp}/cohort-load.XXXXXX")
PIDS=()
# Prefix for starting a proxy (--instructions runs them under callgrind); empty otherwise.
WRAP=()
# "off" runs an NGINX as one process that serves itself (under callgrind: valgrind
# does not answer callgrind_control for a forked worker).
NGINX_MASTER_PROCESS=on

alive() { # true while PID exists and is not a zombie
    local st
    st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
    [[ -n $st && $st != Z ]]
}

stop_pids() { # TERM, wait up to 5 s, then KILL; reaps our children
    local pid i any
    for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
    for ((i = 0; i < 50; i++)); do
        any=0
        for pid in "$@"; do alive "$pid" && any=1; done
        ((any)) || break
        sleep 0.1
    done
    for pid in "$@"; do
        if alive "$pid"; then
            log "pid $pid did not stop on TERM; killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    for pid in "$@"; do wait "$pid" 2>/dev/null || true; done
}

forget_pids() { # drop stopped PIDs from the cleanup list
    local keep=() pid gone
    for pid in "${PIDS[@]}"; do
        for gone in "$@"; do [[ $pid == "$gone" ]] && continue 2; done
        keep+=("$pid")
    done
    PIDS=("${keep[@]}")
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if ((${#PIDS[@]})); then stop_pids "${PIDS[@]}"; fi
    if [[ ${LOAD_KEEP_TMP:-0} == 1 ]] || ((rc != 0 && rc != 130 && rc != 143)); then
        log "temp dir kept: $TMP"
    else
        rm -rf "$TMP"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

wait_http() { # URL, seconds: until it answers at all
    local i
    for ((i = 0; i < $2 * 10; i++)); do
        curl -s -o /dev/null --max-time 1 "$1" && return 0
        sleep 0.1
    done
    return 1
}

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
hwm_kb() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + 0, $13 + 0}'; } # utime stime
core_ticks() { # busy and total ticks of one CPU (busy: all but idle and iowait)
    awk -v c="cpu$1" '$1 == c {t = 0; for (i = 2; i <= 9; i++) t += $i; print t - $5 - $6, t}' /proc/stat
}
pct() { awk -v b0="$1" -v t0="$2" -v b1="$3" -v t1="$4" 'BEGIN {printf "%.0f", (t1 > t0 ? (b1 - b0) / (t1 - t0) * 100 : 0)}'; }
# How often both upstream workers went to sleep (voluntary context switches): each is a
# wake-up the load generator's core pays for; fewer per request = bigger batches there.
upstream_sleeps() { cat "/proc/$STABLE_WORKER/status" "/proc/$CANARY_WORKER/status" | awk '/^voluntary_ctxt_switches/ {s += $2} END {print s + 0}'; }
fd_count() { find "/proc/$1/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l; }
CLK_TCK=$(getconf CLK_TCK)

# ---------------------------------------------------------------------------------------
# 2. Upstreams, 3. proxies
# ---------------------------------------------------------------------------------------
nginx_common() { # prefix dir, worker_connections
    cat <<EOF
worker_processes 1;
worker_rlimit_nofile $NOFILE;
daemon off;
master_process $NGINX_MASTER_PROCESS;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections $2; multi_accept off; }
EOF
}

nginx_http_common() { # prefix dir
    cat <<EOF
    access_log off;
    default_type text/plain;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    client_body_temp_path $1/client_body;
    proxy_temp_path $1/proxy;
    fastcgi_temp_path $1/fastcgi;
    uwsgi_temp_path $1/uwsgi;
    scgi_temp_path $1/scgi;
EOF
}

start_nginx() { # name, config file, launch prefix...; sets NGINX_MASTER and NGINX_WORKER
    local dir=$TMP/$1 conf=$2 i
    nginx -t -q -p "$dir" -e "$dir/error.log" -c "$conf" 2>"$dir/check.log" ||
        die "nginx config $conf is invalid: $(cat "$dir/check.log")"
    "${@:3}" "${WRAP[@]}" nginx -p "$dir" -e "$dir/error.log" -c "$conf" >"$dir/stdout.log" 2>&1 &
    NGINX_MASTER=$!
    PIDS+=("$NGINX_MASTER")
    if [[ $NGINX_MASTER_PROCESS == off ]]; then
        NGINX_WORKER=$NGINX_MASTER
        return 0
    fi
    NGINX_WORKER=
    for ((i = 0; i < 100; i++)); do
        NGINX_WORKER=$(pgrep -P "$NGINX_MASTER" | head -n1 || true)
        [[ -n $NGINX_WORKER ]] && break
        alive "$NGINX_MASTER" || die "nginx $1 exited: $(cat "$dir/error.log" 2>/dev/null)"
        sleep 0.05
    done
    [[ -n $NGINX_WORKER ]] || die "nginx $1 started no worker"
    PIDS+=("$NGINX_WORKER")
}

start_upstream() { # name, port
    local dir=$TMP/$1
    mkdir -p "$dir"
    {
        nginx_common "$dir" 4096
        echo "http {"
        nginx_http_common "$dir"
        cat <<EOF
    server {
        listen 127.0.0.1:$2 backlog=4096;
        location / { return 200 "$1\n"; }
    }
}
EOF
    } >"$dir/nginx.conf"
    start_nginx "$1" "$dir/nginx.conf" "${ON_CLIENT_CPU[@]}"
    wait_http "http://127.0.0.1:$2/" 10 || die "upstream $1 does not answer on port $2"
}

start_nginx_proxy() { # worker_connections; sets NGINX_PROXY_MASTER, NGINX_PROXY_PID (worker)
    local dir=$TMP/nginx-proxy
    mkdir -p "$dir"
    {
        nginx_common "$dir" "$1"
        echo "http {"
        nginx_http_common "$dir"
        # The same job as cohort: a 90/10 split on x-user-id, keep-alive upstream pools, Host
        # passed through, X-Forwarded-*, and the variant named upstream and downstream.
        cat <<EOF
    split_clients "\${http_x_user_id}" \$variant {
        10% canary;
        *   stable;
    }
    upstream stable { server 127.0.0.1:$PORT_STABLE; keepalive $NGINX_KEEPALIVE; keepalive_requests 1000000; }
    upstream canary { server 127.0.0.1:$PORT_CANARY; keepalive $NGINX_KEEPALIVE; keepalive_requests 1000000; }
    server {
        listen 127.0.0.1:$PORT_NGINX backlog=4096;
        location / {
            proxy_pass http://\$variant;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$http_host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Forwarded-Host \$host;
            proxy_set_header x-cohort-variant \$variant;
            add_header x-cohort-variant \$variant always;
        }
    }
}
EOF
    } >"$dir/nginx.conf"
    start_nginx nginx-proxy "$dir/nginx.conf" "${ON_PROXY_CPU[@]}"
    NGINX_PROXY_MASTER=$NGINX_MASTER
    NGINX_PROXY_PID=$NGINX_WORKER
    wait_http "http://127.0.0.1:$PORT_NGINX/" 10 || die "the nginx proxy does not answer"
}

stop_nginx_proxy() {
    stop_pids "$NGINX_PROXY_MASTER" "$NGINX_PROXY_PID"
    forget_pids "$NGINX_PROXY_MASTER" "$NGINX_PROXY_PID"
}

start_cohort() { # sets COHORT_PID
    local dir=$TMP/cohort
    mkdir -p "$dir"
    cat >"$dir/cohort.toml" <<EOF
[listen]
address = "127.0.0.1:$PORT_COHORT"
workers = 1
access_log = false

[admin]
address = "127.0.0.1:$PORT_ADMIN"

[[routes]]
name = "default"
path_prefix = "/"
sticky = ["header:x-user-id"]
salt = "checkout-v2"
canary_percent = 10
stable = { endpoints = ["http://127.0.0.1:$PORT_STABLE"] }
canary = { endpoints = ["http://127.0.0.1:$PORT_CANARY"] }
EOF
    if ((${LOAD_SEGMENTS:-0} > 0)); then
        seq -f 'customer-%.0f' 1 "$LOAD_SEGMENTS" >"$dir/customers.txt"
        cat >>"$dir/cohort.toml" <<EOF

[[routes.segments]]
match = "header:x-team"
values = ["qa", "dev"]
variant = "canary"

[[routes.segments]]
match = "key"
values_file = "customers.txt"
variant = "canary"

[[routes.segments]]
match = "ip"
values = ["203.0.113.0/24", "2001:db8::/32"]
variant = "stable"
EOF
    fi
    RUST_LOG=${RUST_LOG:-warn} "${ON_PROXY_CPU[@]}" "${WRAP[@]}" "$COHORT_BIN" run -c "$dir/cohort.toml" \
        >>"$dir/cohort.log" 2>&1 &
    COHORT_PID=$!
    PIDS+=("$COHORT_PID")
    local i
    for ((i = 0; i < 150; i++)); do
        [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://127.0.0.1:$PORT_ADMIN/readyz") == 200 ]] && return 0
        alive "$COHORT_PID" || die "cohort exited: $(tail -n 20 "$dir/cohort.log")"
        sleep 0.1
    done
    die "cohort not ready after 15 s: $(tail -n 20 "$dir/cohort.log")"
}

stop_cohort() {
    stop_pids "$COHORT_PID"
    forget_pids "$COHORT_PID"
}

# One request: prints "status variant-header body" (body without its newline).
probe() { # port, user id
    local hdr=$TMP/probe.headers body status variant
    rm -f "$hdr"
    body=$(curl -s --max-time 5 -D "$hdr" -H "x-user-id: $2" "http://127.0.0.1:$1/") || body=
    status=$(awk 'NR == 1 {print $2}' "$hdr" 2>/dev/null || true)
    variant=$(awk 'tolower($1) == "x-cohort-variant:" {sub(/\r$/, "", $2); print $2}' "$hdr" 2>/dev/null || true)
    echo "${status:-none} ${variant:--} ${body:--}"
}

check_correctness() {
    local got
    # Bucket 868 and 5736 under salt checkout-v2 (README test vectors): canary and stable at 10 %.
    got=$(probe "$PORT_COHORT" alice)
    [[ $got == "200 canary canary" ]] || die "cohort, x-user-id alice: expected '200 canary canary' (status, x-cohort-variant, body), got '$got'"
    got=$(probe "$PORT_COHORT" bob)
    [[ $got == "200 stable stable" ]] || die "cohort, x-user-id bob: expected '200 stable stable', got '$got'"
    got=$(probe "$PORT_NGINX" alice)
    [[ $got =~ ^200\ (stable\ stable|canary\ canary)$ ]] || die "nginx proxy: expected 200 and a matching variant, got '$got'"
    got=$(probe "$PORT_STABLE" x)
    [[ $got == "200 - stable" ]] || die "stable upstream: got '$got'"
    log "correctness: cohort alice→canary, bob→stable with x-cohort-variant; nginx proxy 200"
}

# ---------------------------------------------------------------------------------------
# 4. wrk rounds
# ---------------------------------------------------------------------------------------
cat >"$TMP/random-user.lua" <<'EOF'
-- A random x-user-id per request. The requests are formatted once, in init, for 100,000
-- random ids, and each request draws one at random, so wrk (which shares its core with
-- the upstreams) spends its time on sockets, not on building strings.
local pool, size = {}, 100000

function init(args)
  math.randomseed(os.time())
  for i = 1, size do
    local id = string.format("user-%d-%d", math.random(1, 1000000000), i)
    pool[i] = wrk.format(nil, nil, { ["x-user-id"] = id })
  end
end

function request()
  return pool[math.random(1, size)]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "LOAD_RESULT requests=%d duration_us=%d p50_us=%d p90_us=%d p99_us=%d p999_us=%d max_us=%d connect=%d read=%d write=%d status=%d timeout=%d\n",
    summary.requests, summary.duration,
    math.floor(latency:percentile(50)), math.floor(latency:percentile(90)),
    math.floor(latency:percentile(99)), math.floor(latency:percentile(99.9)),
    math.floor(latency.max),
    e.connect, e.read, e.write, e.status, e.timeout))
end
EOF

run_wrk() { # conns, seconds, url, output file; bounded by timeout(1)
    timeout -k 5 $(($2 + 30)) "${ON_CLIENT_CPU[@]}" \
        wrk -t1 -c"$1" -d"$2"s --timeout 5s -s "$TMP/random-user.lua" "$3" >"$4" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    wait "$pid" || log "wrk exited with status $? (see $4)"
    forget_pids "$pid"
}

field() { # key, LOAD_RESULT line
    local kv
    for kv in $2; do [[ $kv == "$1="* ]] && { echo "${kv#*=}"; return; }; done
    echo 0
}

HWM_RESET=1
# Peak RSS of one round: reset VmHWM (clear_refs 5) before it, read it after.
reset_hwm() { echo 5 >"/proc/$1/clear_refs" 2>/dev/null || HWM_RESET=0; }

printf 'target\tconns\tround\treq_s\tp50_us\tp99_us\tp999_us\terrors\tpeak_rss_kb\tcpu_pct\tuser_us_per_req\tsys_us_per_req\trequests\tproxy_core_busy_pct\tclient_core_busy_pct\tforeign_pct\tupstream_sleeps_per_req\n' >"$TMP/rounds.tsv"

measure() { # target name, pid, port, conns, round
    local name=$1 pid=$2 port=$3 conns=$4 round=$5 out t0 t1 line req dur rps errs hwm p0 p1 c0 c1 w0 w1
    local url="http://127.0.0.1:$port/"
    out=$TMP/wrk-$name-c$conns-r$round.txt
    if ((WARMUP > 0)); then run_wrk "$conns" "$WARMUP" "$url" "$out.warmup"; fi
    reset_hwm "$pid"
    read -r -a t0 <<<"$(cpu_ticks "$pid")"
    read -r -a p0 <<<"$(core_ticks "$PROXY_CPU")"
    read -r -a c0 <<<"$(core_ticks "$CLIENT_CPU")"
    w0=$(upstream_sleeps)
    run_wrk "$conns" "$DURATION" "$url" "$out"
    read -r -a t1 <<<"$(cpu_ticks "$pid")"
    read -r -a p1 <<<"$(core_ticks "$PROXY_CPU")"
    read -r -a c1 <<<"$(core_ticks "$CLIENT_CPU")"
    w1=$(upstream_sleeps)
    hwm=$(hwm_kb "$pid")
    line=$(grep '^LOAD_RESULT' "$out" || true)
    [[ -n $line ]] || die "wrk printed no result for $name c$conns: $(cat "$out")"
    req=$(field requests "$line")
    dur=$(field duration_us "$line")
    errs=$(($(field connect "$line") + $(field read "$line") + $(field write "$line") + $(field status "$line") + $(field timeout "$line")))
    rps=$(awk -v r="$req" -v d="$dur" 'BEGIN {printf "%.0f", r / d * 1e6}')
    awk -v OFS='\t' -v n="$name" -v c="$conns" -v r="$round" -v rps="$rps" \
        -v p50="$(field p50_us "$line")" -v p99="$(field p99_us "$line")" -v p999="$(field p999_us "$line")" \
        -v e="$errs" -v hwm="$hwm" -v u0="${t0[0]}" -v s0="${t0[1]}" -v u1="${t1[0]}" -v s1="${t1[1]}" \
        -v hz="$CLK_TCK" -v d="$dur" -v req="$req" -v w="$((w1 - w0))" \
        -v pb="$(pct "${p0[@]}" "${p1[@]}")" -v cb="$(pct "${c0[@]}" "${c1[@]}")" 'BEGIN {
            u = (u1 - u0) / hz; s = (s1 - s0) / hz
            cpu = (u + s) / (d / 1e6) * 100
            # foreign: how much of the proxy core went to anything but the watched process
            # (builds of other sessions, mostly; about 2-3 % is softirq work on a quiet machine)
            f = pb - cpu; if (f < 0) f = 0
            printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%.0f\t%.2f\t%.2f\t%s\t%s\t%s\t%.0f\t%.3f\n", n, c, r, rps, p50, p99, p999, e, hwm,
                cpu, (req ? u / req * 1e6 : 0), (req ? s / req * 1e6 : 0), req, pb, cb, f, (req ? w / req : 0)
        }' >>"$TMP/rounds.tsv"
    log "$(printf '%-7s c%-4s round %s: %8s req/s  p50 %6s us  p99 %6s us  errors %s' \
        "$name" "$conns" "$round" "$rps" "$(field p50_us "$line")" "$(field p99_us "$line")" "$errs")"
}

# ---------------------------------------------------------------------------------------
# 6. Idle keep-alive connections
# ---------------------------------------------------------------------------------------
cat >"$TMP/idle_clients.py" <<'EOF'
"""Open COUNT keep-alive connections, finish one request on each, hold them idle.

usage: idle_clients.py HOST PORT COUNT MAX_SECONDS READY_FILE
Writes "opened=N failed=F" to READY_FILE once all are open, then waits for SIGUSR1 (or
MAX_SECONDS), prints how many are still open, closes them and exits.
"""
import os
import resource
import signal
import socket
import sys
import time

host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
max_seconds, ready = float(sys.argv[4]), sys.argv[5]
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1, signal.SIGTERM})
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
deadline = time.monotonic() + max_seconds


def read_response(sock):
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the response head")
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    length = None
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    if length is None:  # chunked: read to the last chunk
        while not body.endswith(b"0\r\n\r\n"):
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed inside the body")
            body += chunk
    else:
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed inside the body")
            body += chunk
    return head


socks, failed, errors = [], 0, {}
for i in range(count):
    if time.monotonic() > deadline:
        break
    try:
        s = socket.create_connection((host, port), timeout=5)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(b"GET / HTTP/1.1\r\nHost: %s:%d\r\nx-user-id: idle-%d\r\n\r\n" % (host.encode(), port, i))
        head = read_response(s)
        if not head.startswith(b"HTTP/1.1 200"):
            raise ConnectionError(head.split(b"\r\n")[0].decode(errors="replace"))
        socks.append(s)
    except OSError as e:
        failed += 1
        errors[str(e)] = errors.get(str(e), 0) + 1
        try:
            s.close()
        except Exception:
            pass

tmp = ready + ".tmp"
with open(tmp, "w") as f:
    f.write("opened=%d failed=%d\n" % (len(socks), failed))
os.rename(tmp, ready)
for message, n in sorted(errors.items(), key=lambda kv: -kv[1])[:5]:
    print("error x%d: %s" % (n, message), file=sys.stderr)

signal.sigtimedwait({signal.SIGUSR1, signal.SIGTERM}, max(0.1, deadline - time.monotonic()))
still_open = 0
for s in socks:
    s.setblocking(False)
    try:
        if s.recv(1, socket.MSG_PEEK):
            still_open += 1  # open, though the proxy sent something unasked
    except BlockingIOError:
        still_open += 1
    except OSError:
        pass
    s.close()
print("still_open=%d" % still_open)
EOF

idle_measure() { # name, pid to watch, port; appends to $TMP/idle.tsv
    local name=$1 pid=$2 port=$3 i before after
    local ready=$TMP/idle-$1.ready out=$TMP/idle-$1.out
    local opened failed still fds_before fds_after cpid
    for ((i = 0; i < 20; i++)); do probe "$port" "warm-$i" >/dev/null; done
    sleep 1
    before=$(rss_kb "$pid")
    fds_before=$(fd_count "$pid")
    "${ON_CLIENT_CPU[@]}" python3 "$TMP/idle_clients.py" 127.0.0.1 "$port" "$IDLE_CONNS" 120 "$ready" \
        >"$out" 2>"$out.err" &
    cpid=$!
    PIDS+=("$cpid")
    for ((i = 0; i < 1200; i++)); do
        [[ -e $ready ]] && break
        alive "$cpid" || break
        sleep 0.1
    done
    [[ -e $ready ]] || die "idle clients for $name did not get ready: $(cat "$out.err")"
    sleep 2 # let the proxy settle
    after=$(rss_kb "$pid")
    fds_after=$(fd_count "$pid")
    kill -USR1 "$cpid" 2>/dev/null || true
    wait "$cpid" || true
    forget_pids "$cpid"
    opened=$(sed -n 's/.*opened=\([0-9]*\).*/\1/p' "$ready")
    failed=$(sed -n 's/.*failed=\([0-9]*\).*/\1/p' "$ready")
    still=$(sed -n 's/^still_open=//p' "$out")
    if [[ -s $out.err ]]; then log "idle clients ($name): $(head -c 400 "$out.err")"; fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$IDLE_CONNS" "$opened" "$failed" "${still:-?}" \
        "$before" "$after" "$fds_before" "$fds_after" >>"$TMP/idle.tsv"
    log "idle $name: opened $opened (failed $failed), RSS $before → $after KiB, fds $fds_before → $fds_after, still open at the end ${still:-?}"
}

# ---------------------------------------------------------------------------------------
# Run
# ---------------------------------------------------------------------------------------
# Is someone else using the CPUs? (Shared machine: compilers and test suites distort
# everything.) Wait up to LOAD_WAIT_QUIET seconds for both CPUs to be under 15 % busy.
background_busy() { # sets bg0 and bg1: % busy of the two CPUs over one second
    local q0 q1
    read -r -a q0 <<<"$(core_ticks "$PROXY_CPU") $(core_ticks "$CLIENT_CPU")"
    sleep 1
    read -r -a q1 <<<"$(core_ticks "$PROXY_CPU") $(core_ticks "$CLIENT_CPU")"
    bg0=$(pct "${q0[0]}" "${q0[1]}" "${q1[0]}" "${q1[1]}")
    bg1=$(pct "${q0[2]}" "${q0[3]}" "${q1[2]}" "${q1[3]}")
}
background_busy
waited=0
while ((bg0 > 15 || bg1 > 15)) && ((waited < WAIT_QUIET)); do
    ((waited % 15 == 0)) && log "CPUs busy (${bg0}%, ${bg1}%); waiting up to ${WAIT_QUIET}s for quiet"
    sleep 2
    background_busy
    waited=$((waited + 3))
done
if ((bg0 > 15 || bg1 > 15)); then
    log "warning: the CPUs are busy before the benchmark starts (CPU $PROXY_CPU ${bg0}%, CPU $CLIENT_CPU ${bg1}%): expect noise"
    log "busiest processes: $(ps -eo pcpu=,comm= --sort=-pcpu | head -n 3 | awk '{printf "%s %s%%; ", $2, $1}')"
fi

START=$(date +%s)
RUN_DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)
log "temp dir $TMP; ${DURATION}s runs (+${WARMUP}s warm-up), $ROUNDS rounds, conns ${CONNS[*]}, idle $IDLE_CONNS"

start_upstream stable "$PORT_STABLE"
STABLE_WORKER=$NGINX_WORKER
start_upstream canary "$PORT_CANARY"
CANARY_WORKER=$NGINX_WORKER
start_cohort
start_nginx_proxy 4096
check_correctness
START_RSS_COHORT=$(rss_kb "$COHORT_PID")
START_RSS_NGINX=$(rss_kb "$NGINX_PROXY_PID")

for c in "${CONNS[@]}"; do
    for ((r = 1; r <= ROUNDS; r++)); do
        measure cohort "$COHORT_PID" "$PORT_COHORT" "$c" "$r"
        measure nginx "$NGINX_PROXY_PID" "$PORT_NGINX" "$c" "$r"
    done
done
# 5. The no-proxy ceiling: wrk straight at the stable upstream (RSS/CPU columns: its worker).
for c in "${CONNS[@]}"; do measure direct "$STABLE_WORKER" "$PORT_STABLE" "$c" 1; done

# What cohort counted: every request once, by variant and status.
METRICS=$(curl -s --max-time 5 "http://127.0.0.1:$PORT_ADMIN/metrics" || true)
read -r COHORT_COUNTED COHORT_CANARY COHORT_NON200 <<<"$(awk '
    /^cohort_requests_total\{/ {
        v = $NF + 0; total += v
        if ($0 ~ /variant="canary"/) canary += v
        if ($0 !~ /status="200"/) bad += v
    }
    END {printf "%d %d %d\n", total, canary, bad}' <<<"$METRICS")"
COHORT_BY_STATUS=$(awk '
    /^cohort_requests_total\{/ && match($0, /status="[0-9]+"/) {n[substr($0, RSTART + 8, 3)] += $NF}
    END {for (s in n) printf "%s:%d\n", s, n[s]}' <<<"$METRICS" | sort | paste -sd' ' -)

if ((PROFILE)); then
    PROFILE_CONNS=${CONNS[-1]}
    # Syscall tracepoints that exist on this kernel, for counts by name at low overhead.
    SYSCALL_EVENTS=raw_syscalls:sys_enter,context-switches
    for sc in read recvfrom readv recvmsg write writev sendto sendmsg epoll_wait epoll_pwait epoll_ctl \
        getsockopt setsockopt accept4 connect close shutdown socket futex ioctl mprotect madvise; do
        if [[ -d /sys/kernel/tracing/events/syscalls/sys_enter_$sc ]]; then
            SYSCALL_EVENTS+=",syscalls:sys_enter_$sc"
        fi
    done
    profile_one() { # name, pid, port
        local name=$1 pid=$2 url="http://127.0.0.1:$3/" pp sp wp line rps
        log "profiling $name at $PROFILE_CONNS connections: perf record -g, ${PROFILE_SECONDS}s"
        run_wrk "$PROFILE_CONNS" 2 "$url" "$TMP/prof-$name-warm.txt"
        "${ON_CLIENT_CPU[@]}" timeout -k 5 $((PROFILE_SECONDS + 30)) \
            perf record -g -o "$TMP/perf-$name.data" -p "$pid" -- sleep "$PROFILE_SECONDS" \
            >"$TMP/perf-$name.log" 2>&1 &
        pp=$!
        PIDS+=("$pp")
        run_wrk "$PROFILE_CONNS" "$PROFILE_SECONDS" "$url" "$TMP/prof-$name-wrk.txt"
        wait "$pp" || true
        forget_pids "$pp"
        {
            echo "# perf record -g -p <$name pid>, ${PROFILE_SECONDS}s at $PROFILE_CONNS connections"
            echo "# $(grep '^LOAD_RESULT' "$TMP/prof-$name-wrk.txt" || true)"
            perf report -i "$TMP/perf-$name.data" --no-children --sort symbol -g none --stdio 2>/dev/null |
                grep -v '^#' | grep -v '^$' | sed -E 's/[[:space:]]+-[[:space:]]+-[[:space:]]*$//; s/[[:space:]]+$//' | head -n 60
        } >"$OUT_DIR/perf-$name-symbols.txt" || true
        perf report -i "$TMP/perf-$name.data" --no-children --sort dso -g none --stdio 2>/dev/null |
            grep -v '^#' | grep -v '^$' | sed -E 's/[[:space:]]+$//' | head -n 12 >"$OUT_DIR/perf-$name-dso.txt" || true
        # Syscalls per request: perf stat on the syscall tracepoints (cheap, unlike strace) for
        # 5 s in the middle of a 9 s wrk run; requests in the window = wrk's req/s x 5 s.
        "${ON_CLIENT_CPU[@]}" wrk -t1 -c"$PROFILE_CONNS" -d9s --timeout 5s -s "$TMP/random-user.lua" "$url" \
            >"$TMP/prof-$name-stat.txt" 2>&1 &
        wp=$!
        PIDS+=("$wp")
        sleep 2
        "${ON_CLIENT_CPU[@]}" timeout -k 5 40 perf stat -x, -e "$SYSCALL_EVENTS" -p "$pid" -- sleep 5 \
            >/dev/null 2>"$TMP/perfstat-$name.txt" &
        sp=$!
        PIDS+=("$sp")
        wait "$sp" || true
        wait "$wp" || true
        forget_pids "$sp" "$wp"
        line=$(grep '^LOAD_RESULT' "$TMP/prof-$name-stat.txt" || true)
        rps=$(awk -v r="$(field requests "$line")" -v d="$(field duration_us "$line")" 'BEGIN {print (d ? r / d * 1e6 : 0)}')
        awk -F, -v rps="$rps" -v n="$name" '
            BEGIN {req = rps * 5; printf "%s: syscalls per request (perf stat, 5 s at %.0f req/s):\n", n, rps}
            $3 ~ /^(raw_syscalls|syscalls|context-switches)/ && $1 + 0 > 0 {
                ev = $3; sub(/^syscalls:sys_enter_/, "", ev); sub(/^raw_syscalls:sys_enter/, "all syscalls", ev)
                printf "  %-16s %9d  %6.2f per request\n", ev, $1, (req ? $1 / req : 0)
            }' "$TMP/perfstat-$name.txt" >"$OUT_DIR/syscalls-$name.txt"
    }
    mkdir -p "$OUT_DIR"
    profile_one cohort "$COHORT_PID" "$PORT_COHORT"
    profile_one nginx "$NGINX_PROXY_PID" "$PORT_NGINX"
fi

if ((INSTRUCTIONS)); then
    INSTR_CONNS=${CONNS[0]}
    instructions_one() { # name, pid, port: user-space instructions per request under callgrind
        local name=$1 pid=$2 url="http://127.0.0.1:$3/" line dump i
        log "counting $name's instructions under callgrind at $INSTR_CONNS connections, ${DURATION}s"
        run_wrk "$INSTR_CONNS" 2 "$url" "$TMP/instr-$name-warm.txt"
        callgrind_control -z "$pid" >/dev/null 2>&1 || die "callgrind_control cannot reach $name ($pid)"
        run_wrk "$INSTR_CONNS" "$DURATION" "$url" "$TMP/instr-$name-wrk.txt"
        callgrind_control -d "$pid" >/dev/null 2>&1 || die "callgrind_control cannot reach $name ($pid)"
        line=$(grep '^LOAD_RESULT' "$TMP/instr-$name-wrk.txt" || true)
        dump=$TMP/callgrind.$name.$pid.1
        for ((i = 0; i < 50; i++)); do [[ -s $dump ]] && break; sleep 0.1; done
        [[ -s $dump ]] || die "callgrind wrote no dump for $name ($dump)"
        echo "$name $(field requests "$line") $(awk '/^summary:/ {print $2; exit}' "$dump")" >>"$TMP/instr.txt"
    }
    : >"$TMP/instr.txt"
    stop_cohort
    stop_nginx_proxy
    WRAP=(valgrind -q --tool=callgrind "--callgrind-out-file=$TMP/callgrind.cohort.%p")
    start_cohort
    instructions_one cohort "$COHORT_PID" "$PORT_COHORT"
    stop_cohort
    WRAP=(valgrind -q --tool=callgrind "--callgrind-out-file=$TMP/callgrind.nginx.%p")
    NGINX_MASTER_PROCESS=off
    start_nginx_proxy 4096
    instructions_one nginx "$NGINX_PROXY_PID" "$PORT_NGINX"
    stop_nginx_proxy
    NGINX_MASTER_PROCESS=on
    WRAP=()
fi

: >"$TMP/idle.tsv"
if ((IDLE_CONNS > 0)); then
    # Fresh processes, one at a time, so memory freed after the load rounds cannot absorb
    # the connections and the two proxies' connections do not disturb each other.
    stop_cohort
    stop_nginx_proxy
    start_cohort
    idle_measure cohort "$COHORT_PID" "$PORT_COHORT"
    stop_cohort
    IDLE_WORKER_CONNECTIONS=$((IDLE_CONNS + 4096))
    start_nginx_proxy "$IDLE_WORKER_CONNECTIONS"
    idle_measure nginx "$NGINX_PROXY_PID" "$PORT_NGINX"
    IDLE_START_RSS_NGINX=$(awk -F'\t' '$1 == "nginx" {print $6}' "$TMP/idle.tsv")
    stop_nginx_proxy
fi
ELAPSED=$(($(date +%s) - START))

# ---------------------------------------------------------------------------------------
# 7. Report
# ---------------------------------------------------------------------------------------
mkdir -p "$OUT_DIR"
cp "$TMP/rounds.tsv" "$OUT_DIR/rounds.tsv"
cp "$TMP/idle.tsv" "$OUT_DIR/idle.tsv"

stat_of() { # target, conns, column, how (median|max|min)
    awk -F'\t' -v t="$1" -v c="$2" -v col="$3" 'NR > 1 && $1 == t && $2 == c {print $col}' "$TMP/rounds.tsv" |
        sort -g | awk -v how="$4" '{a[NR] = $1} END {
            if (NR == 0) {print "nan"; exit}
            if (how == "max") print a[NR]; else if (how == "min") print a[1];
            else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}
paired_ratios() { # conns: cohort/nginx req/s per round, sorted
    awk -F'\t' -v c="$1" 'NR > 1 && $2 == c && $1 == "cohort" {a[$3] = $4} NR > 1 && $2 == c && $1 == "nginx" {b[$3] = $4}
        END {for (r in a) if (b[r] > 0) printf "%.3f\n", a[r] / b[r]}' "$TMP/rounds.tsv" | sort -g
}
clean_ratios() { # conns, max foreign %: cohort/nginx req/s of the rounds where neither proxy's core was shared
    awk -F'\t' -v c="$1" -v m="$2" 'NR > 1 && $2 == c && $1 == "cohort" {a[$3] = $4; fa[$3] = $16}
        NR > 1 && $2 == c && $1 == "nginx" {b[$3] = $4; fb[$3] = $16}
        END {for (r in a) if (b[r] > 0 && fa[r] <= m && fb[r] <= m) printf "%.3f\n", a[r] / b[r]}' "$TMP/rounds.tsv" | sort -g
}
median_of() { sort -g | awk 'NF {a[++n] = $1} END {if (n == 0) print "n/a"; else if (n % 2) print a[(n + 1) / 2]; else printf "%.3f\n", (a[n / 2] + a[n / 2 + 1]) / 2}'; }
div() { awk -v a="$1" -v b="$2" 'BEGIN {if (b + 0 == 0) print "nan"; else printf "%.3f", a / b}'; }
f0() { awk -v x="$1" 'BEGIN {if (x == "" || x == "nan") print "-"; else printf "%.0f", x}'; }
f1() { awk -v x="$1" 'BEGIN {if (x == "" || x == "nan") print "-"; else printf "%.1f", x}'; }
f2() { awk -v x="$1" 'BEGIN {if (x == "" || x == "nan") print "-"; else printf "%.2f", x}'; }
ms() { awk -v u="$1" 'BEGIN {printf "%.2f", u / 1000}'; }
mib() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }

SUMMARY=$TMP/summary.txt
TABLE=$TMP/table.txt
S0() { sed -n "s/^$1=//p" "$SUMMARY"; } # reads back what this block has written so far
{
    echo "date=$RUN_DATE"
    echo "command=benches/load.sh $*"
    echo "git_rev=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$REPO" diff --quiet HEAD -- src 2>/dev/null || echo +dirty)"
    echo "kernel=$(uname -r)"
    echo "nginx=$(nginx -v 2>&1 | sed 's/.*nginx\///')"
    echo "duration_s=$DURATION"
    echo "warmup_s=$WARMUP"
    echo "rounds=$ROUNDS"
    echo "conns=${CONNS[*]}"
    echo "proxy_cpu=$PROXY_CPU"
    echo "client_cpu=$CLIENT_CPU"
    echo "client_sched=$CLIENT_SCHED"
    echo "elapsed_s=$ELAPSED"
    echo "nice=$NICE"
    echo "background_busy_pct_before=${bg0} ${bg1}"
    echo "peak_rss_per_round=$([[ $HWM_RESET == 1 ]] && echo VmHWM-reset-per-round || echo VmHWM-since-start)"
    echo "rss_at_start_kb.cohort=$START_RSS_COHORT"
    echo "rss_at_start_kb.nginx=$START_RSS_NGINX"
    for c in "${CONNS[@]}"; do
        for t in cohort nginx direct; do
            echo "$t.c$c.req_s_median=$(stat_of "$t" "$c" 4 median)"
            echo "$t.c$c.req_s_min=$(stat_of "$t" "$c" 4 min)"
            echo "$t.c$c.req_s_max=$(stat_of "$t" "$c" 4 max)"
            echo "$t.c$c.p50_us_median=$(stat_of "$t" "$c" 5 median)"
            echo "$t.c$c.p99_us_median=$(stat_of "$t" "$c" 6 median)"
            echo "$t.c$c.errors_total=$(awk -F'\t' -v t="$t" -v c="$c" 'NR > 1 && $1 == t && $2 == c {s += $8} END {print s + 0}' "$TMP/rounds.tsv")"
            echo "$t.c$c.peak_rss_kb=$(stat_of "$t" "$c" 9 max)"
            echo "$t.c$c.cpu_pct_median=$(stat_of "$t" "$c" 10 median)"
            echo "$t.c$c.user_us_per_req_median=$(stat_of "$t" "$c" 11 median)"
            echo "$t.c$c.sys_us_per_req_median=$(stat_of "$t" "$c" 12 median)"
            echo "$t.c$c.proxy_core_busy_pct_median=$(stat_of "$t" "$c" 14 median)"
            echo "$t.c$c.client_core_busy_pct_median=$(stat_of "$t" "$c" 15 median)"
            echo "$t.c$c.foreign_pct_median=$(stat_of "$t" "$c" 16 median)"
            echo "$t.c$c.upstream_sleeps_per_req_median=$(stat_of "$t" "$c" 17 median)"
            echo "$t.c$c.cpu_us_per_req_median=$(awk -F'\t' -v t="$t" -v c="$c" 'NR > 1 && $1 == t && $2 == c {print $11 + $12}' "$TMP/rounds.tsv" | median_of)"
        done
        pr=$(paired_ratios "$c" | paste -sd' ' -)
        echo "ratio.c$c.req_s_cohort_over_nginx=$(div "$(stat_of cohort "$c" 4 median)" "$(stat_of nginx "$c" 4 median)")"
        echo "ratio.c$c.req_s_cohort_over_nginx_per_round=$pr"
        echo "ratio.c$c.req_s_cohort_over_nginx_per_round_median=$(paired_ratios "$c" | median_of)"
        cr=$(clean_ratios "$c" 10)
        echo "ratio.c$c.clean_rounds=$(grep -c . <<<"$cr" || true)"
        echo "ratio.c$c.req_s_cohort_over_nginx_clean_median=$(median_of <<<"$cr")"
        echo "ratio.c$c.cpu_per_req_cohort_over_nginx=$(div "$(S0 "cohort.c$c.cpu_us_per_req_median")" "$(S0 "nginx.c$c.cpu_us_per_req_median")")"
        echo "ratio.c$c.req_s_ceiling_over_nginx=$(div "$(stat_of direct "$c" 4 median)" "$(stat_of nginx "$c" 4 median)")"
    done
    echo "cohort.counted_requests=$COHORT_COUNTED"
    echo "cohort.counted_canary_share=$(div "$COHORT_CANARY" "$COHORT_COUNTED")"
    echo "cohort.counted_non_200=$COHORT_NON200"
    echo "cohort.counted_by_status=$COHORT_BY_STATUS"
    while IFS=$'\t' read -r name want opened failed still before after fdb fda; do
        echo "idle.$name.wanted=$want"
        echo "idle.$name.opened=$opened"
        echo "idle.$name.failed=$failed"
        echo "idle.$name.still_open_at_end=$still"
        echo "idle.$name.rss_before_kb=$before"
        echo "idle.$name.rss_after_kb=$after"
        echo "idle.$name.fds_before=$fdb"
        echo "idle.$name.fds_after=$fda"
        echo "idle.$name.bytes_per_conn=$(awk -v a="$after" -v b="$before" -v n="$opened" 'BEGIN {printf "%.0f", (n ? (a - b) * 1024 / n : 0)}')"
    done <"$TMP/idle.tsv"
    if [[ -n ${IDLE_WORKER_CONNECTIONS:-} ]]; then
        echo "idle.nginx.worker_connections=$IDLE_WORKER_CONNECTIONS"
        echo "idle.nginx.preallocated_bytes_per_slot=$(awk -v a="${IDLE_START_RSS_NGINX:-0}" -v b="$START_RSS_NGINX" -v n="$((IDLE_WORKER_CONNECTIONS - 4096))" 'BEGIN {printf "%.0f", (n ? (a - b) * 1024 / n : 0)}')"
    fi
    if [[ -s $TMP/instr.txt ]]; then
        while read -r name reqs total; do
            echo "instr.$name.requests=$reqs"
            echo "instr.$name.instructions=$total"
            echo "instr.$name.per_request=$(awk -v t="$total" -v r="$reqs" 'BEGIN {printf "%.0f", (r ? t / r : 0)}')"
        done <"$TMP/instr.txt"
    fi
} >"$SUMMARY"
S() { sed -n "s/^$1=//p" "$SUMMARY"; }

{
    echo "cohort vs NGINX split_clients: $(S date), $(S git_rev), kernel $(S kernel), nginx $(S nginx)"
    echo "wrk -t1, ${DURATION}s per run after ${WARMUP}s warm-up, $ROUNDS rounds interleaved cohort/nginx;"
    echo "proxies on CPU $PROXY_CPU, wrk + two one-worker NGINX upstreams on CPU $CLIENT_CPU (all at nice $NICE,"
    echo "CPU $CLIENT_CPU's processes in scheduling policy SCHED_${CLIENT_SCHED^^});"
    echo "a random x-user-id per request, 90/10 split"
    echo
    printf '%-6s %-9s %8s %15s %7s %7s %8s %5s %5s %5s %6s %7s %7s %6s %6s\n' conns proxy "req/s" "(min-max)" "p50 ms" "p99 ms" "peak MiB" "proc%" "cpu$PROXY_CPU%" "cpu$CLIENT_CPU%" other% "user us" "sys us" "up/req" errors
    for c in "${CONNS[@]}"; do
        for t in cohort nginx direct; do
            label=$t
            [[ $t == direct ]] && label="no proxy"
            printf '%-6s %-9s %8s %15s %7s %7s %8s %5s %5s %5s %6s %7s %7s %6s %6s\n' "$c" "$label" \
                "$(f0 "$(S "$t.c$c.req_s_median")")" "($(S "$t.c$c.req_s_min")-$(S "$t.c$c.req_s_max"))" \
                "$(ms "$(S "$t.c$c.p50_us_median")")" "$(ms "$(S "$t.c$c.p99_us_median")")" \
                "$(mib "$(S "$t.c$c.peak_rss_kb")")" "$(f0 "$(S "$t.c$c.cpu_pct_median")")" \
                "$(f0 "$(S "$t.c$c.proxy_core_busy_pct_median")")" "$(f0 "$(S "$t.c$c.client_core_busy_pct_median")")" \
                "$(if [[ $t == direct ]]; then echo -; else f0 "$(S "$t.c$c.foreign_pct_median")"; fi)" \
                "$(f1 "$(S "$t.c$c.user_us_per_req_median")")" "$(f1 "$(S "$t.c$c.sys_us_per_req_median")")" \
                "$(f2 "$(S "$t.c$c.upstream_sleeps_per_req_median")")" "$(S "$t.c$c.errors_total")"
        done
        printf '%-6s cohort/nginx req/s: %s of medians; per round %s (median %s);\n' "$c" \
            "$(S "ratio.c$c.req_s_cohort_over_nginx")" "$(S "ratio.c$c.req_s_cohort_over_nginx_per_round")" \
            "$(S "ratio.c$c.req_s_cohort_over_nginx_per_round_median")"
        printf '%-6s %s of %s rounds had both cores to themselves (other work <= 10 %%), ratio there %s;\n' "" \
            "$(S "ratio.c$c.clean_rounds")" "$ROUNDS" "$(S "ratio.c$c.req_s_cohort_over_nginx_clean_median")"
        printf '%-6s CPU time per request cohort/nginx: %s (%s vs %s us, user + sys); no-proxy ceiling = %s x nginx\n' "" \
            "$(S "ratio.c$c.cpu_per_req_cohort_over_nginx")" "$(f1 "$(S "cohort.c$c.cpu_us_per_req_median")")" \
            "$(f1 "$(S "nginx.c$c.cpu_us_per_req_median")")" "$(S "ratio.c$c.req_s_ceiling_over_nginx")"
        echo
    done
    echo "Medians over rounds, except peak MiB: the largest VmHWM of a round (nginx: its worker)."
    echo "proc%: the proxy process's CPU time / wall time (100 = its core saturated); cpu$PROXY_CPU%, cpu$CLIENT_CPU%: how busy"
    echo "each core was (anything, ours or not); other%: cpu$PROXY_CPU% - proc%, the proxy core's time spent on other"
    echo "work (about 3 % of softirq when the machine is quiet; more means someone's build shared the core);"
    echo "user/sys us: the proxy's CPU time per request. up/req: times the two upstream workers went to sleep per"
    echo "request (each sleep is a later wake-up on CPU $CLIENT_CPU; fewer = the upstreams answered bigger batches)."
    echo "'no proxy' rows: wrk straight at the stable upstream, one run; proc% etc. of the upstream worker."
    echo "CPUs busy before the run: cpu$PROXY_CPU ${bg0}%, cpu$CLIENT_CPU ${bg1}% (above ~15 % the figures are noisy)."
    echo "cohort counted $(S cohort.counted_requests) requests, canary share $(S cohort.counted_canary_share), by status: $(S cohort.counted_by_status)"
    echo "(a 499 is a request in flight when wrk stopped: at most $(( (WARMUP > 0 ? 2 : 1) * ROUNDS * ($(IFS=+; echo "${CONNS[*]}")) )) here)"
    if [[ -s $TMP/idle.tsv ]]; then
        echo
        echo "idle keep-alive client connections (fresh proxy, each connection finished one request):"
        printf '%-7s %8s %8s %12s %12s %10s %11s %11s\n' proxy opened failed "RSS before" "RSS after" "per conn" "fds after" "still open"
        for t in cohort nginx; do
            [[ -n $(S "idle.$t.opened") ]] || continue
            printf '%-7s %8s %8s %8s MiB %8s MiB %8s B %11s %11s\n' "$t" "$(S "idle.$t.opened")" "$(S "idle.$t.failed")" \
                "$(mib "$(S "idle.$t.rss_before_kb")")" "$(mib "$(S "idle.$t.rss_after_kb")")" \
                "$(S "idle.$t.bytes_per_conn")" "$(S "idle.$t.fds_after")" "$(S "idle.$t.still_open_at_end")"
        done
        echo "per conn = (RSS after - RSS before) / opened. NGINX preallocates its $IDLE_WORKER_CONNECTIONS connection slots"
        echo "at start (about $(S idle.nginx.preallocated_bytes_per_slot) B each, in 'RSS before'), so its delta leaves them out."
    fi
    if [[ -s $TMP/instr.txt ]]; then
        echo
        echo "user-space instructions per request (callgrind, whole process, $INSTR_CONNS connections, ${DURATION}s):"
        echo "cohort $(S instr.cohort.per_request), nginx $(S instr.nginx.per_request)," \
            "cohort/nginx $(div "$(S instr.cohort.per_request)" "$(S instr.nginx.per_request)")" \
            "(requests counted: $(S instr.cohort.requests), $(S instr.nginx.requests))"
    fi
    echo
    echo "elapsed $(S elapsed_s) s; raw rounds: $OUT_DIR/rounds.tsv; summary: $OUT_DIR/summary.txt"
} >"$TABLE"

cp "$SUMMARY" "$OUT_DIR/summary.txt"
cp "$TABLE" "$OUT_DIR/table.txt"
echo
cat "$TABLE"
if ((PROFILE)); then
    echo
    for t in cohort nginx; do
        echo "== $t: perf samples by DSO (top symbols: $OUT_DIR/perf-$t-symbols.txt)"
        head -n 6 "$OUT_DIR/perf-$t-dso.txt" 2>/dev/null || true
        echo "== $t: top symbols"
        sed -n '3,22p' "$OUT_DIR/perf-$t-symbols.txt" 2>/dev/null || true
        cat "$OUT_DIR/syscalls-$t.txt" 2>/dev/null || true
    done
fi
