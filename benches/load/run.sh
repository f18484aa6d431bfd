#!/usr/bin/env bash
# Side-by-side load benchmark: no proxy (direct), weft, nginx and HAProxy in
# front of the same upstream on loopback. See README "Performance".
#
#   bash benches/load/run.sh                 # 3 alternating repeats of 10 s (the default)
#   REPS=1 DUR=3 bash benches/load/run.sh     # quick look while developing
#   ONLY="s1 s4" bash benches/load/run.sh     # some scenarios only (s1..s9)
#
# Each proxy runs one worker pinned to CPU 0 (taskset -c 0); the upstream and
# the load generators are pinned to CPU 1. Candidates run alternately
# (A B C D A B C D ...); the table gives the median and range of the repeats.
# Output: benches/results/latest.md (Markdown, also printed); raw figures in
# benches/results/latest.tsv.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
DUR=${DUR:-10}
REPS=${REPS:-3}
RATE=${RATE:-2000}
ALL="s1 s2 s3 s4 s5 s6 s7 s8 s9"
ONLY=${ONLY:-$ALL}
OUT=${OUT:-$ROOT/benches/results}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}

# Ports (all 127.0.0.1).
P_UP=18081                       # upstream (HTTP/1.1 and h2c)
P_WEFT=18080                     # weft: HTTP/1.1 and h2c on one port
P_WEFT_PLAIN=18082               # weft, plain route (scenario 6)
P_WEFT_HEALTH=18083              # weft, outlier detection + zone-aware (scenario 6)
P_WEFT_TLS=18443                 # weft: TLS (h2 via ALPN) on TCP, HTTP/3 on UDP
P_NGINX=18090 P_NGINX_H2=18091   # nginx 1.22 serves h2c prior knowledge on an `http2` listener only
P_HAPROXY=18100 P_HAPROXY_H2=18101
P_UDP_UP=18201 P_WEFT_UDP=18202 P_NGINX_UDP=18203   # scenario 7 (UDP)
P_NGINX_TLS=18444 P_HAPROXY_TLS=18445                # scenario 5: the peers terminating TLS
P_WEFT_LOG=18084 P_NGINX_LOG=18092                   # scenario 8: access log on

WORK=$(mktemp -d /tmp/weft-bench.XXXXXX)
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  sleep 0.3
  for pid in "${PIDS[@]}"; do
    kill -9 "$pid" 2>/dev/null || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { printf '%s\n' "$*" >&2; }
want() { [[ " $ONLY " == *" $1 "* ]]; }

# ---------------------------------------------------------------- tools
ensure_apt() { # command package
  command -v "$1" >/dev/null 2>&1 && return 0
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    say "installing $2 with apt (missing)"
    if [[ -z ${APT_UPDATED:-} ]]; then apt-get update -qq >&2 || true; APT_UPDATED=1; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >&2 || true
  fi
  command -v "$1" >/dev/null 2>&1
}
ensure_apt wrk wrk || { say "wrk is required (apt-get install wrk)"; exit 1; }
ensure_apt h2load nghttp2-client || { say "h2load is required (apt-get install nghttp2-client)"; exit 1; }
HAVE_NGINX=1 HAVE_HAPROXY=1 HAVE_OHA=1
ensure_apt nginx nginx || { say "nginx unavailable: skipped"; HAVE_NGINX=0; }
ensure_apt haproxy haproxy || { say "HAProxy unavailable: skipped"; HAVE_HAPROXY=0; }
# nginx's stream module (UDP proxying, scenario 7) is a package of its own.
NGINX_STREAM=/usr/lib/nginx/modules/ngx_stream_module.so
if want s7 && [[ $HAVE_NGINX == 1 && ! -e $NGINX_STREAM && $(id -u) -eq 0 ]]; then
  say "installing libnginx-mod-stream with apt (missing)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libnginx-mod-stream >&2 || true
fi
export PATH="$HOME/.cargo/bin:$PATH"
if want s3 && ! command -v oha >/dev/null 2>&1; then
  say "installing oha from crates.io (cargo install oha; cached in ~/.cargo/bin)"
  cargo install --locked oha >&2 || { say "oha unavailable: fixed-rate scenario skipped"; HAVE_OHA=0; }
fi
command -v openssl >/dev/null || { say "openssl is required for the TLS certificates"; exit 1; }

say "building weft and the bench helper (release)"
(cd "$ROOT" && cargo build --release --quiet --bin weft --example benchtool) >&2
WEFT="$ROOT/target/release/weft"
TOOL="$ROOT/target/release/examples/benchtool"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

# ---------------------------------------------------------------- helpers
wait_udp_port() { # port: until a UDP socket is bound there
  local i
  for i in $(seq 100); do
    ss -Huln "sport = :$1" | grep -q . && return 0
    sleep 0.1
  done
  say "nothing is bound to udp 127.0.0.1:$1"
  return 1
}
wait_port() { # port
  local i
  for i in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  say "nothing listens on 127.0.0.1:$1"
  return 1
}
# All processes of a candidate: the main pid and its children (nginx workers).
pids_of() { echo "$1" $(pgrep -P "$1" 2>/dev/null || true); }
cpu_ticks() { # main pid -> utime+stime of it and its children, in clock ticks
  local total=0 p f
  for p in $(pids_of "$1"); do
    f=$(cat "/proc/$p/stat" 2>/dev/null) || continue
    f=${f##*) }   # fields after "(comm) "; utime and stime are fields 14, 15 => 12, 13 here
    set -- $f
    total=$((total + ${12} + ${13}))
  done
  echo "$total"
}
rss_kib() { # main pid -> VmRSS summed over its processes, KiB
  local total=0 p v
  for p in $(pids_of "$1"); do
    v=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
    total=$((total + ${v:-0}))
  done
  echo "$total"
}
HZ=$(getconf CLK_TCK)
RAW="$WORK/raw.tsv"
: >"$RAW"
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$RAW"; } # scenario candidate metric value

# ---------------------------------------------------------------- upstream
taskset -c "$LOAD_CPU" "$TOOL" upstream "127.0.0.1:$P_UP" >"$WORK/upstream.log" 2>&1 &
PIDS+=($!)
wait_port "$P_UP"

# ---------------------------------------------------------------- candidates
declare -A PID PORT PORT_H2
CANDIDATES=(direct)
PORT[direct]=$P_UP PORT_H2[direct]=$P_UP

weft_config() { # port [extra cluster yaml] [node yaml]
  cat <<EOF
admin: { address: 127.0.0.1:0 }
runtime: { worker_threads: 1 }
access_log: { enabled: false }
${3:-}
listeners:
  - name: bench
    address: 127.0.0.1:$1
    routes:
      - { name: all, match: { path_prefix: / }, cluster: up }
clusters:
  - name: up
    protocol: http1
${2:-}
    endpoints: [ { address: 127.0.0.1:$P_UP, zone: zone-a } ]
EOF
}
start_weft() { # name config-file port
  taskset -c "$PROXY_CPU" "$WEFT" run --config "$2" >"$WORK/$1.log" 2>&1 &
  PID[$1]=$!
  PIDS+=($!)
  wait_port "$3"
}
weft_config "$P_WEFT" >"$WORK/weft.yaml"
start_weft weft "$WORK/weft.yaml" "$P_WEFT"
CANDIDATES+=(weft)
PORT[weft]=$P_WEFT PORT_H2[weft]=$P_WEFT

# An nginx configuration (one worker, upstream keep-alive) for directory $1:
# $2 holds the server's `listen` (and other server-level) lines, $3 the
# http-level logging lines (access log off by default).
nginx_config() { # dir server-lines [http-lines]
  local proxy="proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto \$scheme;"
  cat <<EOF
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile 65536;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections 16384; }
http {
  ${3:-access_log off;}
  client_body_temp_path $1/body;
  proxy_temp_path $1/proxy;
  fastcgi_temp_path $1/fastcgi;
  uwsgi_temp_path $1/uwsgi;
  scgi_temp_path $1/scgi;
  keepalive_requests 1000000;
  http2_max_requests 1000000;
  upstream up { server 127.0.0.1:$P_UP; keepalive 256; keepalive_requests 1000000; }
  server {
$2
    location / {
      $proxy
      proxy_buffering on;
    }
    # Scenario 9: 1 MiB bodies streamed both ways, as weft and HAProxy do
    # (nginx's defaults would spool them to temporary files).
    location = /1m {
      $proxy
      proxy_buffering off;
    }
    location = /upload {
      $proxy
      client_max_body_size 2m;
      proxy_request_buffering off;
    }
  }
}
EOF
}
start_nginx() { # name config-dir port
  taskset -c "$PROXY_CPU" nginx -p "$2" -c "$2/nginx.conf" >"$WORK/$1.log" 2>&1 &
  PID[$1]=$!
  PIDS+=($!)
  wait_port "$3" || { say "$1 did not start: skipped ($(cat "$WORK/$1.log"))"; return 1; }
}

if [[ $HAVE_NGINX == 1 ]]; then
  mkdir -p "$WORK/nginx"
  nginx_config "$WORK/nginx" "    listen 127.0.0.1:$P_NGINX;
    listen 127.0.0.1:$P_NGINX_H2 http2;" >"$WORK/nginx/nginx.conf"
  taskset -c "$PROXY_CPU" nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" >"$WORK/nginx.log" 2>&1 &
  PID[nginx]=$!
  PIDS+=($!)
  if wait_port "$P_NGINX"; then
    CANDIDATES+=(nginx)
    PORT[nginx]=$P_NGINX PORT_H2[nginx]=$P_NGINX_H2
  else
    say "nginx did not start: skipped ($(cat "$WORK/nginx.log"))"
  fi
fi

# A HAProxy configuration (one thread, connection reuse) whose frontend
# binds the lines in $1.
haproxy_config() { # bind-lines
  cat <<EOF
global
  nbthread 1
  maxconn 8000
defaults
  mode http
  timeout connect 2s
  timeout client 60s
  timeout server 60s
  timeout http-keep-alive 60s
  http-reuse always
  option forwardfor
frontend h1
$1
  default_backend up
backend up
  server up 127.0.0.1:$P_UP
EOF
}

if [[ $HAVE_HAPROXY == 1 ]]; then
  haproxy_config "  bind 127.0.0.1:$P_HAPROXY
  bind 127.0.0.1:$P_HAPROXY_H2 proto h2" >"$WORK/haproxy.cfg"
  taskset -c "$PROXY_CPU" haproxy -db -f "$WORK/haproxy.cfg" >"$WORK/haproxy.log" 2>&1 &
  PID[haproxy]=$!
  PIDS+=($!)
  if wait_port "$P_HAPROXY"; then
    CANDIDATES+=(haproxy)
    PORT[haproxy]=$P_HAPROXY PORT_H2[haproxy]=$P_HAPROXY_H2
  else
    say "HAProxy did not start: skipped ($(cat "$WORK/haproxy.log"))"
  fi
fi
PROXIES=("${CANDIDATES[@]:1}")
say "candidates: ${CANDIDATES[*]} (proxies on CPU $PROXY_CPU, upstream and load on CPU $LOAD_CPU)"

# Idle memory, before any request.
sleep 1
want s4 && for c in "${PROXIES[@]}"; do record s4 "$c" rss_idle_mib "$(awk -v k="$(rss_kib "${PID[$c]}")" 'BEGIN{printf "%.1f", k/1024}')"; done

load() { taskset -c "$LOAD_CPU" "$@"; }
# Runs a load command for candidate $c and records the proxy's CPU for it.
measure_cpu_start() { [[ $1 == direct ]] && return 0; CPU0=$(cpu_ticks "${PID[$1]}"); }
measure_cpu_end() { # scenario candidate requests [process name, default: candidate]
  [[ $2 == direct ]] && return 0
  local used=$(( $(cpu_ticks "${PID[${4:-$2}]}") - CPU0 ))
  [[ $3 -gt 0 ]] && record "$1" "$2" cpu_s_per_100k "$(awk -v t="$used" -v hz="$HZ" -v n="$3" 'BEGIN{printf "%.3f", t/hz/n*100000}')"
}

# Short warm-up of every candidate on both protocols (connection pools, caches).
for c in "${CANDIDATES[@]}"; do
  load wrk -t1 -c64 -d1s "http://127.0.0.1:${PORT[$c]}/" >/dev/null
  load h2load -c16 -m16 -t1 -D 1 "http://127.0.0.1:${PORT_H2[$c]}/" >/dev/null
done

# One timed HTTP/1.1 run (wrk, 64 connections) against candidate $2, recorded
# under scenario $1: req/s and the proxy's CPU per 100k requests.
wrk_run() { # scenario candidate
  local out n rps errs
  measure_cpu_start "$2"
  out=$(load wrk -t1 -c64 -d"${DUR}s" "http://127.0.0.1:${PORT[$2]}/")
  n=$(awk '/requests in/ {print $1}' <<<"$out")
  rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
  errs=$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out")
  [[ -n $errs ]] && say "  $2: $errs"
  measure_cpu_end "$1" "$2" "${n:-0}"
  record "$1" "$2" rps "$rps"
  say "  $2: $rps req/s"
}

# ---------------------------------------------------------------- scenario 1: HTTP/1.1, 64 connections
if want s1; then
  say "s1: HTTP/1.1 keep-alive, 64 connections, ${REPS}x${DUR}s"
  for r in $(seq "$REPS"); do
    for c in "${CANDIDATES[@]}"; do
      wrk_run s1 "$c"
    done
  done
fi

# ---------------------------------------------------------------- scenario 2: HTTP/2, 16 x 16
h2run() { # url -> sets N and RPS
  local out
  out=$(load h2load -c16 -m16 -t1 -D "$DUR" "$1" 2>&1)
  RPS=$(awk '/^finished in/ {print $4}' <<<"$out")
  N=$(awk '/^requests:/ {print $8}' <<<"$out")
  local failed=$(awk '/^requests:/ {print $10}' <<<"$out")
  [[ ${failed:-0} != 0 ]] && say "  $1: $failed failed"
  return 0
}
if want s2; then
  say "s2: HTTP/2 prior knowledge, 16 connections x 16 streams, ${REPS}x${DUR}s"
  for r in $(seq "$REPS"); do
    for c in "${CANDIDATES[@]}"; do
      measure_cpu_start "$c"
      h2run "http://127.0.0.1:${PORT_H2[$c]}/"
      measure_cpu_end s2 "$c" "${N:-0}"
      record s2 "$c" rps "$RPS"
      say "  $c: $RPS req/s"
    done
  done
fi

# ---------------------------------------------------------------- scenario 3: fixed rate, latency
if want s3 && [[ $HAVE_OHA == 1 ]]; then
  say "s3: HTTP/1.1 at $RATE req/s, latency with coordinated-omission correction (oha), ${REPS}x${DUR}s"
  for r in $(seq "$REPS"); do
    for c in "${CANDIDATES[@]}"; do
      load oha --no-tui --output-format json -z "${DUR}s" -c 32 -q "$RATE" --latency-correction \
        "http://127.0.0.1:${PORT[$c]}/" >"$WORK/oha.json"
      for p in p50 p99 p99.9; do
        record s3 "$c" "${p}_us" "$(jq -r ".latencyPercentiles[\"$p\"] * 1e6 | floor" "$WORK/oha.json")"
      done
      record s3 "$c" rps "$(jq -r '.summary.requestsPerSec | floor' "$WORK/oha.json")"
      say "  $c: p50 $(jq -r '.latencyPercentiles.p50 * 1e6 | floor' "$WORK/oha.json") us, p99 $(jq -r '.latencyPercentiles.p99 * 1e6 | floor' "$WORK/oha.json") us"
    done
  done
fi

# ---------------------------------------------------------------- scenario 4: memory
if want s4; then
  say "s4: resident memory after load and with 1000 idle keep-alive connections"
  for c in "${PROXIES[@]}"; do
    record s4 "$c" rss_after_load_mib "$(awk -v k="$(rss_kib "${PID[$c]}")" 'BEGIN{printf "%.1f", k/1024}')"
  done
  for c in "${PROXIES[@]}"; do
    load "$TOOL" idle "127.0.0.1:${PORT[$c]}" 1000 4 >"$WORK/idle.out" &
    idle=$!
    for i in $(seq 100); do grep -q ready "$WORK/idle.out" && break; sleep 0.1; done
    sleep 0.5
    record s4 "$c" rss_1000_idle_mib "$(awk -v k="$(rss_kib "${PID[$c]}")" 'BEGIN{printf "%.1f", k/1024}')"
    say "  $c: $(cat "$WORK/idle.out") connections answered"
    wait "$idle" || true
  done
  for c in "${PROXIES[@]}"; do
    load "$TOOL" idle-h2 "127.0.0.1:${PORT_H2[$c]}" 1000 4 >"$WORK/idle.out" &
    idle=$!
    for i in $(seq 100); do grep -q ready "$WORK/idle.out" && break; sleep 0.1; done
    sleep 0.5
    record s4 "$c" rss_1000_idle_h2_mib "$(awk -v k="$(rss_kib "${PID[$c]}")" 'BEGIN{printf "%.1f", k/1024}')"
    say "  $c: $(cat "$WORK/idle.out") HTTP/2 connections answered"
    wait "$idle" || true
  done
fi

# ---------------------------------------------------------------- scenario 5: TLS HTTP/2 and HTTP/3 (weft)
if want s5; then
  say "s5: weft over TLS (HTTP/2 via ALPN) and HTTP/3, 16 connections x 16 streams, ${REPS}x${DUR}s"
  bash "$ROOT/config/make-certs.sh" "$WORK/certs" >/dev/null
  cat >"$WORK/weft-tls.yaml" <<EOF
admin: { address: 127.0.0.1:0 }
runtime: { worker_threads: 1 }
access_log: { enabled: false }
listeners:
  - name: tls
    address: 127.0.0.1:$P_WEFT_TLS
    tls: { cert: $WORK/certs/server.pem, key: $WORK/certs/server.key }
    routes: [ { name: all, cluster: up } ]
  - name: quic
    address: 127.0.0.1:$P_WEFT_TLS
    protocol: http3
    tls: { cert: $WORK/certs/server.pem, key: $WORK/certs/server.key }
    limits: { max_concurrent_streams: 256 }
    routes: [ { name: all, cluster: up } ]
clusters:
  - { name: up, protocol: http1, endpoints: [ { address: 127.0.0.1:$P_UP } ] }
EOF
  start_weft weft-tls "$WORK/weft-tls.yaml" "$P_WEFT_TLS"
  # The peers terminate TLS with the same certificate (h2 by ALPN) in front
  # of the same HTTP/1.1 upstream.
  TLS_PEERS=()
  if [[ $HAVE_NGINX == 1 ]]; then
    mkdir -p "$WORK/nginx-tls"
    nginx_config "$WORK/nginx-tls" "    listen 127.0.0.1:$P_NGINX_TLS ssl http2;
    ssl_certificate $WORK/certs/server.pem;
    ssl_certificate_key $WORK/certs/server.key;" >"$WORK/nginx-tls/nginx.conf"
    start_nginx nginx-tls "$WORK/nginx-tls" "$P_NGINX_TLS" && TLS_PEERS+=(nginx)
  fi
  if [[ $HAVE_HAPROXY == 1 ]]; then
    cat "$WORK/certs/server.pem" "$WORK/certs/server.key" >"$WORK/certs/haproxy.pem"
    haproxy_config "  bind 127.0.0.1:$P_HAPROXY_TLS ssl crt $WORK/certs/haproxy.pem alpn h2,http/1.1" \
      >"$WORK/haproxy-tls.cfg"
    taskset -c "$PROXY_CPU" haproxy -db -f "$WORK/haproxy-tls.cfg" >"$WORK/haproxy-tls.log" 2>&1 &
    PID[haproxy-tls]=$!
    PIDS+=($!)
    if wait_port "$P_HAPROXY_TLS"; then
      TLS_PEERS+=(haproxy)
    else
      say "HAProxy (TLS) did not start: skipped ($(cat "$WORK/haproxy-tls.log"))"
    fi
  fi
  declare -A TLS_PORT=([nginx]=$P_NGINX_TLS [haproxy]=$P_HAPROXY_TLS)
  for p in "${TLS_PEERS[@]}"; do # warm-up
    load h2load -c16 -m16 -t1 -D 1 "https://127.0.0.1:${TLS_PORT[$p]}/" >/dev/null
  done
  h3run() { # sets N and RPS
    local out
    out=$(load "$TOOL" h3load "127.0.0.1:$P_WEFT_TLS" "$WORK/certs/ca.pem" 16 16 "$DUR")
    N=$(jq -r .requests <<<"$out")
    RPS=$(jq -r '.rps | floor' <<<"$out")
  }
  h3run >/dev/null 2>&1 || true # warm-up (DUR seconds)
  for r in $(seq "$REPS"); do
    h2run "http://127.0.0.1:$P_UP/"
    record s5 direct-h2c rps "$RPS"
    measure_cpu_start weft-tls
    h2run "https://127.0.0.1:$P_WEFT_TLS/"
    measure_cpu_end s5 weft-tls-h2 "${N:-0}" weft-tls
    record s5 weft-tls-h2 rps "$RPS"
    for p in "${TLS_PEERS[@]}"; do
      measure_cpu_start "$p-tls"
      h2run "https://127.0.0.1:${TLS_PORT[$p]}/"
      measure_cpu_end s5 "$p-tls-h2" "${N:-0}" "$p-tls"
      record s5 "$p-tls-h2" rps "$RPS"
    done
    measure_cpu_start weft-tls
    h3run
    measure_cpu_end s5 weft-h3 "${N:-0}" weft-tls
    record s5 weft-h3 rps "$RPS"
    say "  direct h2c / weft TLS h2 / peers TLS h2 / weft h3: see table"
  done
fi

# ---------------------------------------------------------------- scenario 6: endpoint-health features
if want s6; then
  say "s6: weft plain route vs outlier detection + adaptive concurrency + zone-aware routing, HTTP/1.1 64 connections, ${REPS}x${DUR}s"
  weft_config "$P_WEFT_PLAIN" "    zone_aware: { enabled: false }" >"$WORK/weft-plain.yaml"
  # The limiter runs (samples every response, recomputes the limit each
  # window) but its floor and its minRTT-phase concurrency sit above the 64
  # connections, so it rejects nothing and both candidates serve the same
  # requests. (With the defaults it would, rightly, shed most of this
  # saturating load: latency under 64-way queueing is far above minRTT.)
  weft_config "$P_WEFT_HEALTH" "    outlier_detection: {}
    adaptive_concurrency: { min_concurrency: 100, min_concurrency_limit: 100 }
    zone_aware: { enabled: true, min_cluster_size: 1 }" "node: { zone: zone-a }" >"$WORK/weft-health.yaml"
  start_weft weft-plain "$WORK/weft-plain.yaml" "$P_WEFT_PLAIN"
  start_weft weft-health "$WORK/weft-health.yaml" "$P_WEFT_HEALTH"
  PORT[weft-plain]=$P_WEFT_PLAIN PORT[weft-health]=$P_WEFT_HEALTH
  for c in weft-plain weft-health; do load wrk -t1 -c64 -d1s "http://127.0.0.1:${PORT[$c]}/" >/dev/null; done
  for r in $(seq "$REPS"); do
    for c in weft-plain weft-health; do
      wrk_run s6 "$c"
    done
  done
fi

# ---------------------------------------------------------------- scenario 7: UDP
if want s7; then
  say "s7: UDP echo through direct, weft and nginx (stream module), 16 sessions x 8 in flight, 64-byte datagrams, ${REPS}x${DUR}s"
  taskset -c "$LOAD_CPU" "$TOOL" udp-echo "127.0.0.1:$P_UDP_UP" >"$WORK/udp-echo.log" 2>&1 &
  PIDS+=($!)
  wait_udp_port "$P_UDP_UP"
  declare -A UDP_PORT=([direct]=$P_UDP_UP)
  UDP_CANDIDATES=(direct)
  cat >"$WORK/weft-udp.yaml" <<EOF
admin: { address: 127.0.0.1:0 }
runtime: { worker_threads: 1 }
access_log: { enabled: false }
listeners:
  - { name: udp, address: 127.0.0.1:$P_WEFT_UDP, protocol: udp, cluster: echo, udp: { idle_timeout: 30s } }
clusters:
  - { name: echo, protocol: udp, endpoints: [ { address: 127.0.0.1:$P_UDP_UP } ] }
EOF
  taskset -c "$PROXY_CPU" "$WEFT" run --config "$WORK/weft-udp.yaml" >"$WORK/weft-udp.log" 2>&1 &
  PID[weft-udp]=$!
  PIDS+=($!)
  if wait_udp_port "$P_WEFT_UDP"; then
    UDP_CANDIDATES+=(weft)
    UDP_PORT[weft]=$P_WEFT_UDP
  fi
  if [[ $HAVE_NGINX == 1 && -e $NGINX_STREAM ]]; then
    mkdir -p "$WORK/nginx-udp"
    cat >"$WORK/nginx-udp/nginx.conf" <<EOF
load_module $NGINX_STREAM;
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile 65536;
pid $WORK/nginx-udp/nginx.pid;
error_log $WORK/nginx-udp/error.log warn;
events { worker_connections 16384; }
stream {
  upstream echo { server 127.0.0.1:$P_UDP_UP; }
  server { listen 127.0.0.1:$P_NGINX_UDP udp; proxy_pass echo; proxy_timeout 30s; }
}
EOF
    taskset -c "$PROXY_CPU" nginx -p "$WORK/nginx-udp" -c "$WORK/nginx-udp/nginx.conf" >"$WORK/nginx-udp.log" 2>&1 &
    PID[nginx-udp]=$!
    PIDS+=($!)
    if wait_udp_port "$P_NGINX_UDP"; then
      UDP_CANDIDATES+=(nginx)
      UDP_PORT[nginx]=$P_NGINX_UDP
    else
      say "nginx (stream) did not start: skipped ($(cat "$WORK/nginx-udp.log"))"
    fi
  else
    say "nginx's stream module unavailable (apt-get install libnginx-mod-stream): nginx skipped in s7"
  fi
  udp_run() { # candidate seconds -> sets N, RPS, LOST
    local out
    out=$(load "$TOOL" udpload "127.0.0.1:${UDP_PORT[$1]}" 16 8 64 "$2")
    N=$(jq -r .round_trips <<<"$out") RPS=$(jq -r '.rps | floor' <<<"$out") LOST=$(jq -r .lost <<<"$out")
  }
  for c in "${UDP_CANDIDATES[@]}"; do udp_run "$c" 1; done # warm-up
  for r in $(seq "$REPS"); do
    for c in "${UDP_CANDIDATES[@]}"; do
      [[ $c != direct ]] && CPU0=$(cpu_ticks "${PID[$c-udp]}")
      udp_run "$c" "$DUR"
      if [[ $c != direct && $N -gt 0 ]]; then
        used=$(( $(cpu_ticks "${PID[$c-udp]}") - CPU0 ))
        # Each round trip is two datagrams through the proxy.
        record s7 "$c" udp_cpu_us_per_datagram "$(awk -v t="$used" -v hz="$HZ" -v n="$N" 'BEGIN{printf "%.3f", t/hz/(2*n)*1e6}')"
      fi
      record s7 "$c" udp_rtps "$RPS"
      record s7 "$c" udp_lost "$LOST"
      say "  $c: $RPS round trips/s, $LOST lost"
    done
  done
fi

# ---------------------------------------------------------------- scenario 8: access log + trace context
# weft with its JSON access log on (stdout, redirected to a file) against
# nginx with its access log on (JSON lines to a file); every request carries
# a W3C `traceparent`, which weft parses and propagates with its own span id
# (nginx passes it on unread). Each proxy's overhead is log-on / log-off.
TRACEPARENT="traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
NGINX_JSON_LOG='log_format json escape=json
    '"'"'{"time":"$time_iso8601","method":"$request_method","path":"$request_uri",'"'"'
    '"'"'"protocol":"$server_protocol","status":$status,"bytes":$body_bytes_sent,'"'"'
    '"'"'"duration_s":$request_time,"upstream":"$upstream_addr","peer":"$remote_addr",'"'"'
    '"'"'"traceparent":"$http_traceparent"}'"'"';'
if want s8; then
  say "s8: access log on (+ trace context) vs off, HTTP/1.1 64 connections, ${REPS}x${DUR}s"
  weft_config "$P_WEFT_LOG" | sed 's/^access_log: { enabled: false }$/access_log: { enabled: true }/' \
    >"$WORK/weft-log.yaml"
  start_weft weft-log "$WORK/weft-log.yaml" "$P_WEFT_LOG"
  PORT[weft-log]=$P_WEFT_LOG
  LOG_CANDIDATES=(weft weft-log)
  if [[ $HAVE_NGINX == 1 ]]; then
    mkdir -p "$WORK/nginx-log"
    nginx_config "$WORK/nginx-log" "    listen 127.0.0.1:$P_NGINX_LOG;" "$NGINX_JSON_LOG
  access_log $WORK/nginx-log/access.log json;" >"$WORK/nginx-log/nginx.conf"
    if start_nginx nginx-log "$WORK/nginx-log" "$P_NGINX_LOG"; then
      PORT[nginx-log]=$P_NGINX_LOG
      LOG_CANDIDATES+=(nginx nginx-log)
    fi
  fi
  log_run() { # candidate
    local out n rps errs
    measure_cpu_start "$1"
    out=$(load wrk -t1 -c64 -d"${DUR}s" -H "$TRACEPARENT" "http://127.0.0.1:${PORT[$1]}/")
    n=$(awk '/requests in/ {print $1}' <<<"$out")
    rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
    errs=$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out")
    [[ -n $errs ]] && say "  $1: $errs"
    measure_cpu_end s8 "$1" "${n:-0}"
    record s8 "$1" rps "$rps"
    say "  $1: $rps req/s"
  }
  for c in "${LOG_CANDIDATES[@]}"; do
    load wrk -t1 -c64 -d1s -H "$TRACEPARENT" "http://127.0.0.1:${PORT[$c]}/" >/dev/null
  done
  for r in $(seq "$REPS"); do
    for c in "${LOG_CANDIDATES[@]}"; do
      log_run "$c"
    done
  done
  say "  access log lines: weft $(grep -c '"status"' "$WORK/weft-log.log" || true), nginx $(wc -l <"$WORK/nginx-log/access.log" 2>/dev/null || echo 0)"
fi

# ---------------------------------------------------------------- scenario 9: 1 MiB bodies
# 1 MiB responses (GET /1m) and 1 MiB uploads (POST /upload, answered `ok`)
# over HTTP/1.1, 8 connections (h2load --h1): MiB/s and the proxy's CPU per
# MiB carried (one request carries one MiB).
if want s9; then
  say "s9: 1 MiB responses and 1 MiB uploads, HTTP/1.1 8 connections, ${REPS}x${DUR}s"
  head -c 1048576 /dev/zero | tr '\0' 'x' >"$WORK/1m.bin"
  large_run() { # candidate direction (down|up)
    local out n failed used args=(-D "$DUR") path=/1m
    [[ $2 == up ]] && args+=(-d "$WORK/1m.bin") path=/upload
    measure_cpu_start "$1"
    out=$(load h2load --h1 -c8 -t1 "${args[@]}" "http://127.0.0.1:${PORT[$1]}$path" 2>&1)
    n=$(awk '/^requests:/ {print $8}' <<<"$out")
    failed=$(awk '/^requests:/ {print $10}' <<<"$out")
    [[ ${failed:-0} != 0 ]] && say "  $1 ($2): $failed failed"
    if [[ $1 != direct && ${n:-0} -gt 0 ]]; then
      used=$(( $(cpu_ticks "${PID[$1]}") - CPU0 ))
      record s9 "$1" "${2}_cpu_ms_per_mib" "$(awk -v t="$used" -v hz="$HZ" -v n="$n" 'BEGIN{printf "%.3f", t/hz/n*1000}')"
    fi
    record s9 "$1" "${2}_mibps" "$(awk -v n="${n:-0}" -v d="$DUR" 'BEGIN{printf "%.1f", n/d}')"
    say "  $1 ($2): ${n:-0} MiB in ${DUR}s"
  }
  for c in "${CANDIDATES[@]}"; do
    load h2load --h1 -c8 -t1 -D 1 "http://127.0.0.1:${PORT[$c]}/1m" >/dev/null 2>&1 || true
  done
  for r in $(seq "$REPS"); do
    for d in down up; do
      for c in "${CANDIDATES[@]}"; do
        large_run "$c" "$d"
      done
    done
  done
fi

# ---------------------------------------------------------------- report
mkdir -p "$OUT"
cp "$RAW" "$OUT/latest.tsv"
{
  echo "Machine: $(nproc) CPUs, $(lscpu | awk -F: '/Model name/ {gsub(/^ +/, "", $2); print $2; exit}'); load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)."
  only=""
  [[ $ONLY != "$ALL" ]] && only="ONLY=\"$ONLY\" "
  echo "Command: \`REPS=$REPS DUR=$DUR ${only}bash benches/load/run.sh\` ($(date -u +%Y-%m-%dT%H:%MZ), weft $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?'))."
  echo "Versions: $(nginx -v 2>&1 | sed 's/.*: //' || true), HAProxy $(haproxy -v 2>/dev/null | awk 'NR==1{print $3}'), wrk $(wrk -v 2>&1 | awk 'NR==1{print $2}'), h2load $(h2load --version | awk '{print $2}'), $(oha --version 2>/dev/null || echo 'oha missing')."
  echo
  "$TOOL" report "$RAW"
} >"$OUT/latest.md"
cat "$OUT/latest.md"
