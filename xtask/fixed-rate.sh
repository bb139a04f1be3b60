#!/usr/bin/env bash
# Latency at fixed request rates, HAProxy next to gatewayd (mode http, keep-alive).
#
# The anchors harness (../shared/bench) runs a closed loop: wrk keeps 64 requests in
# flight, so a faster proxy also pushes more requests per second through the client and
# the backend, which share one CPU, and its latency figures come from a busier machine.
# This script offers every proxy the same load instead: h2load (--h1, -c CONNS, --rps)
# sends RATE requests per second in total, and the latency percentiles come from its
# per-request log. Same setup as the harness: the harness's own configs (it is run once,
# briefly, with KEEP_TMP=1 to write them), the nginx backend and the load on CPU 1, the
# proxy alone on CPU 0, everything at nice -10.
#
#   xtask/fixed-rate.sh                          # RATES="40000 70000 90000", once each
#   RATES="80000 95000" ROUNDS=3 GATEWAYD_BIN=target/pgo/use/.../gatewayd xtask/fixed-rate.sh
#
# Rows: proxy, target rate, achieved req/s, p50 / p99 / p99.9 / max latency (ms), the
# proxy's CPU (% of CPU 0), CPU 1's busy %, and how often per second the proxy's threads
# went to sleep (voluntary context switches: each is a wake-up later). A row whose achieved rate is under 97 % of
# the target says `saturated`: the rate was more than that setup could carry.
# LOG_DIR=DIR keeps h2load's per-request log of each row as DIR/PROXY-RATE-ROUND.tsv (start time in
# microseconds since the epoch, status, latency in microseconds), e.g. to see when the slow requests came.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bench=${BENCH_DIR:-$here/../../shared/bench}
bin=${GATEWAYD_BIN:-$here/../target/release/gatewayd}
RATES=${RATES:-"40000 70000 90000"}
ROUNDS=${ROUNDS:-1}
CONNS=${CONNS:-64}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
PROXIES=${PROXIES:-"haproxy gatewayd"}
LOG_DIR=${LOG_DIR:-}
NICE=${BENCH_NICE:--10}
for tool in h2load haproxy nginx taskset setsid sort; do
  command -v "$tool" >/dev/null || { echo "fixed-rate: $tool is missing (cargo xtask bench --anchors installs it)" >&2; exit 1; }
done
[[ -x $bin ]] || { echo "fixed-rate: no gatewayd at $bin (GATEWAYD_BIN)" >&2; exit 1; }

work=$(mktemp -d)
pgids=()
stop_all() { # TERM, up to 5 s, then KILL; returns when every group is gone
  local g _
  for g in "${pgids[@]}"; do kill -TERM -- "-$g" 2>/dev/null || true; done
  for g in "${pgids[@]}"; do
    for _ in $(seq 1 50); do kill -0 -- "-$g" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$g" 2>/dev/null || true
    wait "$g" 2>/dev/null || true
  done
  pgids=()
}
harness_tmp=""
cleanup() {
  stop_all
  rm -rf "$work"
  [[ -n $harness_tmp ]] && rm -rf "$harness_tmp"
}
trap cleanup EXIT

# The harness writes its configs, certificates and manifests for mode http.
harness_ok=1
KEEP_TMP=1 PROXIES=haproxy MODES=http SCENARIOS=ka DURATION=1 WARMUP=1 RESULTS_DIR="$work/res" \
  QUIET_MAX=5 "$bench/anchors" >"$work/anchors.log" 2>&1 || harness_ok=0
harness_tmp=$(sed -n 's/.*temp dir \([^;]*\);.*/\1/p' "$work/anchors.log" | head -n 1)
if [[ $harness_ok == 0 || ! -d $harness_tmp ]]; then
  echo "fixed-rate: the anchors harness failed to set up mode http:" >&2
  cat "$work/anchors.log" >&2
  exit 1
fi
"$bench/anchors" manifests "$work/manifests" >/dev/null 2>&1

start() { # start CPU LOG CMD... -> pgid in $started
  setsid taskset -c "$1" nice -n "$NICE" "${@:3}" >"$2" 2>&1 </dev/null &
  started=$!
  pgids+=("$started")
}
wait_port() {
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "fixed-rate: nothing listens on $1" >&2
  return 1
}
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
# Times the proxy's threads went to sleep (voluntary context switches), all threads.
sleeps() { cat /proc/"$1"/task/*/status 2>/dev/null | awk '/^voluntary_ctxt_switches/ { n += $2 } END { print n + 0 }'; }
cpu1() { awk '/^cpu1 / { print $2 + $3 + $4 + $7 + $8, $2 + $3 + $4 + $5 + $6 + $7 + $8 }' /proc/stat; }
hz=$(getconf CLK_TCK)

printf '%-9s %7s %9s %7s %7s %7s %7s %6s %6s %8s %s\n' proxy rate req/s p50_ms p99_ms p999_ms max_ms cpu0% cpu1% sleeps/s notes
for round in $(seq 1 "$ROUNDS"); do
  for rate in $RATES; do
    for p in $PROXIES; do
      start 1 "$work/backend.out" nginx -c "$harness_tmp/backend/backend-backend.conf"
      wait_port 18080
      case $p in
        haproxy) start 0 "$work/proxy.out" haproxy -db -f "$harness_tmp/haproxy/haproxy-http-on.cfg" ;;
        gatewayd) start 0 "$work/proxy.out" env CANDIDATE_CONFIG_DIR="$work/manifests/http" \
          GATEWAYD_BIN="$bin" "$here/candidate.sh" ;;
        *) echo "fixed-rate: unknown proxy $p" >&2; exit 1 ;;
      esac
      pid=$started
      wait_port 18200
      per_conn=$(((rate + CONNS - 1) / CONNS))
      load() { # load SECONDS LOGFILE
        taskset -c 1 nice -n "$NICE" h2load --h1 -t1 "-c$CONNS" "--rps=$per_conn" -D "$1" \
          --connect-to 127.0.0.1:18200 --log-file "$2" http://gw.example.test/ >"$work/h2load.out" 2>&1
      }
      rm -f "$work/warmup.tsv" "$work/lat.tsv"
      load "$WARMUP" "$work/warmup.tsv" || { echo "fixed-rate: h2load failed:" >&2; cat "$work/h2load.out" >&2; exit 1; }
      t0=$(ticks "$pid"); w0=$(sleeps "$pid"); read -r b0 a0 < <(cpu1); s0=$(date +%s.%N)
      load "$DURATION" "$work/lat.tsv" || { echo "fixed-rate: h2load failed:" >&2; cat "$work/h2load.out" >&2; exit 1; }
      kill -0 "$pid" 2>/dev/null || { echo "fixed-rate: $p exited during the run:" >&2; cat "$work/proxy.out" >&2; exit 1; }
      s1=$(date +%s.%N); read -r b1 a1 < <(cpu1); t1=$(ticks "$pid"); w1=$(sleeps "$pid")
      stop_all
      if [[ -n $LOG_DIR ]]; then mkdir -p "$LOG_DIR" && cp "$work/lat.tsv" "$LOG_DIR/$p-$rate-$round.tsv"; fi
      awk -F'\t' '$2 >= 200 && $2 < 400 { print $3 }' "$work/lat.tsv" | sort -n >"$work/sorted"
      bad=$(awk -F'\t' '$2 < 200 || $2 >= 400 { n++ } END { print n + 0 }' "$work/lat.tsv")
      awk -v p="$p" -v rate="$rate" -v s0="$s0" -v s1="$s1" -v t0="$t0" -v t1="$t1" -v hz="$hz" \
        -v b0="$b0" -v b1="$b1" -v a0="$a0" -v a1="$a1" -v bad="$bad" -v w0="$w0" -v w1="$w1" '
        { v[++n] = $1 }
        END {
          if (n == 0) { printf "%-9s %7d no answers\n", p, rate; exit }
          secs = s1 - s0
          i50 = int(n * 0.50); i99 = int(n * 0.99); i999 = int(n * 0.999)
          if (i50 < 1) i50 = 1; if (i99 < 1) i99 = 1; if (i999 < 1) i999 = 1
          got = n / secs
          note = (got < rate * 0.97) ? "saturated" : ""
          if (bad > 0) note = note " errors=" bad
          printf "%-9s %7d %9d %7.3f %7.3f %7.3f %7.3f %6.1f %6.1f %8d %s\n", p, rate, got,
            v[i50] / 1000, v[i99] / 1000, v[i999] / 1000, v[n] / 1000,
            (t1 - t0) * 100 / hz / secs, (b1 - b0) * 100 / (a1 - a0), (w1 - w0) / secs, note
        }' "$work/sorted"
    done
  done
done
