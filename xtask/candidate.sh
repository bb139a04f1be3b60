#!/usr/bin/env bash
# gatewayd as an anchors candidate (see ../shared/bench/README.md, "candidate contract"):
# serve the harness's Gateway API manifests with the requested number of workers, no eBPF,
# in the foreground, so that the harness's SIGTERM to the process group stops it.
#   CANDIDATE_CMD="GATEWAYD_BIN=target/release/gatewayd xtask/candidate.sh" ./anchors
set -euo pipefail
: "${CANDIDATE_CONFIG_DIR:?the anchors harness sets CANDIDATE_CONFIG_DIR}"
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bin=${GATEWAYD_BIN:-$here/../target/release/gatewayd}
exec "$bin" run \
  --config "$CANDIDATE_CONFIG_DIR/resources.yaml" \
  --workers "${BENCH_WORKERS:-1}" \
  --ebpf off \
  --admin "${GATEWAYD_BENCH_ADMIN:-127.0.0.1:18901}" \
  --controller-name example.test/bench-gateway
