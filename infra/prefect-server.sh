#!/usr/bin/env bash
# A team Prefect server, the work pool and one worker for the nightly deployment in prefect.yaml.
#   infra/prefect-server.sh server     # API + UI on 127.0.0.1:4200 (PREFECT_SERVER_API_HOST=0.0.0.0 for a team)
#   infra/prefect-server.sh deploy     # create the work pool and register oskt-pipeline/nightly (02:00 UTC)
#   infra/prefect-server.sh worker     # run scheduled flow runs from this checkout
# Clients and workers: export PREFECT_API_URL=http://<host>:4200/api
set -euo pipefail
HERE="$(cd "$(dirname "$0")/.." && pwd)"
PREFECT="$HERE/.venv/bin/prefect"
POOL="${OSKT_WORK_POOL:-oskt-pool}"
export PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1
case "${1:-}" in
  server) exec "$PREFECT" server start --host "${PREFECT_SERVER_API_HOST:-127.0.0.1}" --port "${PREFECT_PORT:-4200}" ;;
  deploy)
    cd "$HERE"
    "$PREFECT" work-pool inspect "$POOL" >/dev/null 2>&1 || "$PREFECT" work-pool create "$POOL" --type process
    exec "$PREFECT" --no-prompt deploy --all ;;
  worker) cd "$HERE" && OSKT_REPO_DIR="$HERE" exec "$PREFECT" worker start --pool "$POOL" ;;
  *) echo "usage: $0 server|deploy|worker" >&2; exit 2 ;;
esac
