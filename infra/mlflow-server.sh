#!/usr/bin/env bash
# A team MLflow tracking server: SQLite (or PostgreSQL) backend, artifacts proxied to a folder or S3.
#   infra/mlflow-server.sh                                  # 127.0.0.1:5000, ./mlflow-server/{mlflow.db,artifacts}
#   MLFLOW_HOST=0.0.0.0 MLFLOW_ARTIFACTS=s3://team-bucket/mlflow infra/mlflow-server.sh
# Clients: export MLFLOW_TRACKING_URI=http://<host>:5000 (wins over tracking.uri in params.yaml).
set -euo pipefail
HERE="$(cd "$(dirname "$0")/.." && pwd)"
DATA="${MLFLOW_DATA:-$HERE/mlflow-server}"
mkdir -p "$DATA"
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"
exec "$HERE/.venv/bin/mlflow" server \
  --backend-store-uri "${MLFLOW_BACKEND:-sqlite:///$DATA/mlflow.db}" \
  --artifacts-destination "${MLFLOW_ARTIFACTS:-$DATA/artifacts}" \
  --host "${MLFLOW_HOST:-127.0.0.1}" --port "${MLFLOW_PORT:-5000}" --workers "${MLFLOW_WORKERS:-2}"
