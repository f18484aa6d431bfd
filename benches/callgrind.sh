#!/usr/bin/env bash
# Instructions per proxied request (HTTP/1.1, or h2c on both sides with
# PROTO=h2), counted by callgrind: a figure that does not depend on the
# machine's load, for judging a change to the hot path.
# See README "Performance" ("What the profile showed").
#
#   bash benches/callgrind.sh                       # prints "instructions per request: N"
#   CARGO_TARGET_DIR=/elsewhere bash benches/callgrind.sh   # build (and measure) into another target dir
#   KEEP=/tmp/weft.callgrind bash benches/callgrind.sh      # keep the profile: callgrind_annotate /tmp/weft.callgrind
#   WEFT_SRC=../other CARGO_TARGET_DIR=../other/target bash benches/callgrind.sh  # measure another checkout
#   LOADGEN=oha bash benches/callgrind.sh           # oha -n N -c 16 instead of h2load (needs oha in PATH or ~/.cargo/bin)
#   PROTO=h2 bash benches/callgrind.sh              # HTTP/2 prior knowledge downstream and upstream
#                                                   # (h2load -c 16 -m 16, scenario 2's load; STREAMS=N for -m N)
#
# weft runs under valgrind --tool=callgrind with the benchmark's config
# (benches/load/run.sh: `runtime: { worker_threads: 1 }`, access log off, one
# HTTP/1.1 cluster) in front of `benchtool upstream`. WARMUP requests (2,000)
# fill the connection pool and caches; then weft's counters are zeroed
# (callgrind_control -z), REQUESTS requests (20,000) are sent over CONNS (16)
# keep-alive connections, and the counters are dumped (callgrind_control -d)
# at once. The figure is the dump's instruction total (all of weft's threads,
# user space only) divided by REQUESTS. A run fails if any request fails.
#
# With PROTO=h2 the client speaks HTTP/2 with prior knowledge (h2load
# without --h1, STREAMS (16) concurrent streams per connection) and the
# cluster is `protocol: http2` (one shared h2c connection to the upstream).
#
# The load generator sends an exact number of requests: h2load --h1 from
# Debian's nghttp2-client (installed with apt if missing) by default. Only
# 127.0.0.1 is used; every process started here is killed on exit.
set -euo pipefail

# The weft source tree to build and measure: by default the checkout holding
# this script; WEFT_SRC=/path/to/other/checkout measures another commit.
ROOT=$(cd "${WEFT_SRC:-$(dirname "$0")/..}" && pwd)
REQUESTS=${REQUESTS:-20000}
WARMUP=${WARMUP:-2000}
CONNS=${CONNS:-16}
LOADGEN=${LOADGEN:-h2load}
PROTO=${PROTO:-http1}
STREAMS=${STREAMS:-16}
P_UP=${P_UP:-18281}       # upstream (127.0.0.1)
P_WEFT=${P_WEFT:-18280}   # weft's listener (127.0.0.1)
PROXY_CPU=${PROXY_CPU:-0} # weft on one CPU, upstream and load generator on the other
LOAD_CPU=${LOAD_CPU:-1}

WORK=$(mktemp -d /tmp/weft-callgrind.XXXXXX)
PIDS=()
cleanup() {
  local pid alive
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  # valgrind needs a moment to write its final dump and exit.
  for _ in $(seq 50); do
    alive=0
    for pid in "${PIDS[@]}"; do
      kill -0 "$pid" 2>/dev/null && alive=1
    done
    [[ $alive == 0 ]] && break
    sleep 0.1
  done
  for pid in "${PIDS[@]}"; do
    kill -9 "$pid" 2>/dev/null || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { printf '%s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

# ---------------------------------------------------------------- tools
APT_UPDATED=
ensure_apt() { # command package
  command -v "$1" >/dev/null 2>&1 && return 0
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    say "installing $2 with apt ($1 missing)"
    local apt=(env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -y -qq)
    if ! "${apt[@]}" install "$2" >&2; then
      [[ -z $APT_UPDATED ]] && { "${apt[@]}" update >&2 || true; APT_UPDATED=1; }
      "${apt[@]}" install "$2" >&2 || true
    fi
  fi
  command -v "$1" >/dev/null 2>&1
}
ensure_apt valgrind valgrind || die "valgrind is required (apt-get install valgrind)"
command -v callgrind_control >/dev/null || die "callgrind_control is missing (it comes with valgrind)"
export PATH="$PATH:$HOME/.cargo/bin"
case $LOADGEN in
  h2load) ensure_apt h2load nghttp2-client || die "h2load is required (apt-get install nghttp2-client)" ;;
  oha) command -v oha >/dev/null || die "LOADGEN=oha but oha is not installed (cargo install --locked oha)" ;;
  *) die "LOADGEN must be h2load or oha" ;;
esac
case $PROTO in
  http1) H2LOAD_PROTO=(--h1) CLUSTER_PROTO=http1 ;;
  h2) H2LOAD_PROTO=(-m "$STREAMS") CLUSTER_PROTO=http2 ;;
  *) die "PROTO must be http1 or h2" ;;
esac
[[ $PROTO == h2 && $LOADGEN != h2load ]] && die "PROTO=h2 needs LOADGEN=h2load"
PIN_UP=() PIN_LOAD=()
if command -v taskset >/dev/null && [[ $(nproc) -gt 1 ]]; then
  PIN_UP=(taskset -c "$PROXY_CPU") PIN_LOAD=(taskset -c "$LOAD_CPU")
fi

say "building weft and the bench helper (release)"
(cd "$ROOT" && cargo build --release --quiet --bin weft --example benchtool) >&2
TARGET=$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps |
  sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
[[ -n $TARGET ]] || die "cannot find cargo's target directory"
WEFT="$TARGET/release/weft"
TOOL="$TARGET/release/examples/benchtool"

# ---------------------------------------------------------------- helpers
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() { # port seconds pid
  for _ in $(seq $(($2 * 10))); do
    listening "$1" && return 0
    kill -0 "$3" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}
for p in "$P_UP" "$P_WEFT"; do
  listening "$p" && die "127.0.0.1:$p is in use; choose other ports with P_UP= and P_WEFT="
done

# Sends $1 requests over CONNS connections; fails unless every one got a 2xx.
send() { # requests
  local url="http://127.0.0.1:$P_WEFT/" out ok
  if [[ $LOADGEN == h2load ]]; then
    out=$("${PIN_LOAD[@]}" h2load "${H2LOAD_PROTO[@]}" -n "$1" -c "$CONNS" -t 1 "$url" 2>&1) || { say "$out"; return 1; }
    ok=$(awk '/^status codes:/ {print $3}' <<<"$out")
  else
    out=$("${PIN_LOAD[@]}" oha --no-tui --output-format json -n "$1" -c "$CONNS" "$url" 2>&1) || { say "$out"; return 1; }
    ok=$(jq -r '[.statusCodeDistribution | to_entries[] | select(.key | startswith("2")) | .value] | add // 0' <<<"$out")
  fi
  [[ ${ok:-0} == "$1" ]] || { say "$out"; say "only ${ok:-0} of $1 requests got a 2xx"; return 1; }
}

# ---------------------------------------------------------------- upstream and weft
"${PIN_LOAD[@]}" "$TOOL" upstream "127.0.0.1:$P_UP" >"$WORK/upstream.log" 2>&1 &
PIDS+=($!)
wait_port "$P_UP" 10 $! || die "the upstream did not start: $(cat "$WORK/upstream.log")"

# The weft config of benches/load/run.sh (weft_config).
cat >"$WORK/weft.yaml" <<EOF
admin: { address: 127.0.0.1:0 }
runtime: { worker_threads: 1 }
access_log: { enabled: false }
listeners:
  - name: bench
    address: 127.0.0.1:$P_WEFT
    routes:
      - { name: all, match: { path_prefix: / }, cluster: up }
clusters:
  - name: up
    protocol: $CLUSTER_PROTO
    endpoints: [ { address: 127.0.0.1:$P_UP, zone: zone-a } ]
EOF

"${PIN_UP[@]}" valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind.out" \
  "$WEFT" run --config "$WORK/weft.yaml" >"$WORK/weft.log" 2>&1 &
VG=$!
PIDS+=("$VG")
wait_port "$P_WEFT" 120 "$VG" || die "weft did not start under valgrind: $(cat "$WORK/weft.log")"

say "warm-up: $WARMUP requests ($LOADGEN, $PROTO, $CONNS connections)"
send "$WARMUP" || die "warm-up failed"
# weft trims the heap (src/memory.rs) one to two seconds after requests stop:
# let that happen now, not inside the measured window.
sleep 3
callgrind_control -z "$VG" >"$WORK/control.log" 2>&1 || die "callgrind_control -z failed: $(cat "$WORK/control.log")"

say "measured: $REQUESTS requests ($LOADGEN, $PROTO, $CONNS connections)"
send "$REQUESTS" || die "measured run failed"
callgrind_control -d "$VG" >>"$WORK/control.log" 2>&1 || die "callgrind_control -d failed: $(cat "$WORK/control.log")"

DUMP="$WORK/callgrind.out.1"
for _ in $(seq 100); do
  [[ -s $DUMP ]] && grep -q '^totals:' "$DUMP" && break
  sleep 0.1
done
TOTAL=$(awk '/^totals:/ {print $2; exit}' "$DUMP" 2>/dev/null || true)
[[ $TOTAL =~ ^[0-9]+$ ]] || die "no instruction total in the callgrind dump: $(cat "$WORK/control.log")"
if [[ -n ${KEEP:-} ]]; then
  cp "$DUMP" "$KEEP"
  say "profile kept in $KEEP (callgrind_annotate $KEEP)"
fi
say "weft $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?'), $WEFT; $TOTAL instructions for $REQUESTS requests"
echo "instructions per request: $((TOTAL / REQUESTS))"
