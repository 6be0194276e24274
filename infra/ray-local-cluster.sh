#!/usr/bin/env bash
# Start / stop a Ray cluster by hand (no autoscaler): a head here, workers elsewhere. A cluster is the user's explicit
# choice: the pipeline itself only starts a loopback-only local Ray (flows/engines.py). See infra/README.md.
#   infra/ray-local-cluster.sh token                          # create the cluster token if there is none (mode 600)
#   infra/ray-local-cluster.sh head [RAY START ARGS]          # head on this machine
#   infra/ray-local-cluster.sh worker HEAD_IP [RAY START ARGS] # on each worker machine (same repository path + env)
#   infra/ray-local-cluster.sh stop                           # `ray stop`: every Ray of this user on this machine
# Then run the grid on it: RAY_AUTH_MODE=token RAY_ADDRESS=HEAD_IP:6379 make run  (or --ray-address ray://HEAD_IP:10001)
# Environment:
#   RAY_AUTH_MODE=token (default here) | disabled   token: every Ray gRPC / HTTP call must carry the cluster token
#   RAY_AUTH_TOKEN_PATH=FILE (default ~/.ray/auth_token) or RAY_AUTH_TOKEN=VALUE   where the token is (Ray reads
#                        RAY_AUTH_TOKEN, then RAY_AUTH_TOKEN_PATH, then ~/.ray/auth_token)
#   RAY_NODE_IP=IP       this node's address on the cluster network (--node-ip-address); the servers Ray 2.60 lets
#                        bind to it do (client server, runtime-env agent, dashboard agent HTTP); RAY_NODE_IP=127.0.0.1
#                        on the head makes a single-machine Ray with every port on loopback (no workers can join)
#   RAY_NUM_CPUS, RAY_NUM_GPUS
# Fixed ports, for a firewall that admits only the cluster's machines (later RAY START ARGS override them): GCS 6379,
# client server 10001, raylet 6380, object manager 6381, dashboard agent HTTP 52365 / gRPC 6382, runtime-env agent
# 6383, metrics 6384, workers 10002-19999; dashboard 8265 on 127.0.0.1 (head only).
set -euo pipefail
HERE="$(cd "$(dirname "$0")/.." && pwd)"
RAY="$HERE/.venv/bin/ray"
export RAY_USAGE_STATS_ENABLED=0
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"
PORTS=(--node-manager-port=6380 --object-manager-port=6381 --dashboard-agent-listen-port=52365
  --dashboard-agent-grpc-port=6382 --runtime-env-agent-port=6383 --metrics-export-port=6384
  --min-worker-port=10002 --max-worker-port=19999)
NODE=(${RAY_NODE_IP:+--node-ip-address=$RAY_NODE_IP} ${RAY_NUM_CPUS:+--num-cpus=$RAY_NUM_CPUS}
  ${RAY_NUM_GPUS:+--num-gpus=$RAY_NUM_GPUS})
if [ "${RAY_NODE_IP:-}" = 127.0.0.1 ] || [ "${RAY_NODE_IP:-}" = ::1 ] || [ "${RAY_NODE_IP:-}" = localhost ]; then
  # Ray's single-machine mode: otherwise ray start replaces a loopback --node-ip-address by the machine's address
  # (ray/_private/services.py resolve_ip_for_localhost) and its servers listen on every interface.
  export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
fi

die() { echo "ray-local-cluster: error: $*" >&2; exit 2; }

has_token() { "$RAY" get-auth-token >/dev/null 2>&1; }  # stdout would be the token itself

need_token() {
  [ "$RAY_AUTH_MODE" = token ] || return 0
  has_token || die "RAY_AUTH_MODE=token but no token: $1 (or opt out with RAY_AUTH_MODE=disabled)"
}

make_token() {
  has_token && { echo "ray-local-cluster: token exists (${RAY_AUTH_TOKEN_PATH:-~/.ray/auth_token})" >&2; return 0; }
  [ -z "${RAY_AUTH_TOKEN_PATH:-}" ] || die "RAY_AUTH_TOKEN_PATH=$RAY_AUTH_TOKEN_PATH: no such file (or it is empty)"
  # Ray writes ~/.ray/auth_token with the default umask: keep it readable by this user only.
  (umask 077 && "$RAY" get-auth-token --generate >/dev/null)
  chmod 600 "$HOME/.ray/auth_token"
  echo "ray-local-cluster: token written to $HOME/.ray/auth_token; copy it (mode 600) to every worker and driver" >&2
}

case "${1:-}" in
  token) make_token ;;
  head)
    shift
    [ "$RAY_AUTH_MODE" != token ] || make_token
    exec "$RAY" start --head --port=6379 --ray-client-server-port=10001 --dashboard-host=127.0.0.1 \
      --dashboard-port=8265 "${PORTS[@]}" "${NODE[@]}" "$@" ;;
  worker)
    head_ip="${2:?usage: $0 worker HEAD_IP}"
    shift 2
    need_token "copy the head's ~/.ray/auth_token here (mode 600) or set RAY_AUTH_TOKEN_PATH"
    exec "$RAY" start --address="$head_ip:6379" "${PORTS[@]}" "${NODE[@]}" "$@" ;;
  stop) exec "$RAY" stop ;;
  *) echo "usage: $0 token|head|worker HEAD_IP|stop" >&2; exit 2 ;;
esac
