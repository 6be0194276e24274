#!/usr/bin/env bash
# Start / stop a Ray cluster by hand (no autoscaler): a head here, workers elsewhere.
#   infra/ray-local-cluster.sh head             # head on this machine (GCS 6379, client server 10001)
#   infra/ray-local-cluster.sh worker HEAD_IP   # on each worker machine (same repository path + environment)
#   infra/ray-local-cluster.sh stop
# Then run the grid on it: RAY_ADDRESS=HEAD_IP:6379 make run   (or --ray-address ray://HEAD_IP:10001)
set -euo pipefail
HERE="$(cd "$(dirname "$0")/.." && pwd)"
RAY="$HERE/.venv/bin/ray"
export RAY_USAGE_STATS_ENABLED=0
case "${1:-}" in
  head) exec "$RAY" start --head --port=6379 --ray-client-server-port=10001 --dashboard-host=127.0.0.1 \
          ${RAY_NUM_CPUS:+--num-cpus=$RAY_NUM_CPUS} ${RAY_NUM_GPUS:+--num-gpus=$RAY_NUM_GPUS} ;;
  worker) exec "$RAY" start --address="${2:?head ip}:6379" ${RAY_NUM_GPUS:+--num-gpus=$RAY_NUM_GPUS} ;;
  stop) exec "$RAY" stop ;;
  *) echo "usage: $0 head|worker HEAD_IP|stop" >&2; exit 2 ;;
esac
