#!/usr/bin/env bash
# A local S3-compatible server for development: moto's server on 127.0.0.1, in memory (its objects are
# gone when it stops). It creates a bucket, prints the settings argen needs, and stays in the
# foreground until Ctrl-C (or SIGTERM), which stops the server.
#
#   infra/s3_local.sh [PORT] [BUCKET]          # defaults: 9000 and argen-dev
#
# moto accepts any credentials; the dummy ones printed below are only there because boto3 wants some.
# Use it with  storage=s3_compatible storage.endpoint_url=http://127.0.0.1:PORT  (path-style, checksums
# only when required), e.g.  argen generate output.uri=s3://argen-dev/run1 storage=s3_compatible ...
set -euo pipefail

PORT="${1:-${ARGEN_S3_PORT:-9000}}"
BUCKET="${2:-${ARGEN_S3_BUCKET:-argen-dev}}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  if [[ -x "$HERE/.venv/bin/python" ]]; then PY="$HERE/.venv/bin/python"; else PY="python3"; fi
fi
if ! [[ "$PORT" =~ ^[0-9]+$ ]] || (( PORT < 1 || PORT > 65535 )); then
  echo "s3_local.sh: port '$PORT' is not a TCP port number (1-65535)" >&2; exit 2
fi
if ! [[ "$BUCKET" =~ ^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$ ]]; then
  echo "s3_local.sh: bucket '$BUCKET' is not a valid S3 bucket name (3-63 of a-z 0-9 . -)" >&2; exit 2
fi
if ! "$PY" -c "import moto.server, boto3" 2>/dev/null; then
  echo "s3_local.sh: $PY lacks moto[server] and boto3; run 'make setup' (or pip install 'moto[server]' boto3)" >&2
  exit 2
fi

CREDS="export AWS_ACCESS_KEY_ID=argen-dev-key AWS_SECRET_ACCESS_KEY=argen-dev-secret AWS_DEFAULT_REGION=us-east-1"
if [[ -n "${AWS_ACCESS_KEY_ID:-}" || -n "${AWS_PROFILE:-}" ]]; then
  CREDS="# your current AWS credentials work too (moto accepts any; they are never printed)"
fi
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-argen-dev-key}"
export AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-argen-dev-secret}"
export AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-us-east-1}"
ENDPOINT="http://127.0.0.1:$PORT"

"$PY" -m moto.server -H 127.0.0.1 -p "$PORT" >/dev/null 2>&1 &
SERVER=$!
stop() { kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; }
trap 'stop; exit 0' INT TERM
trap stop EXIT

"$PY" - "$ENDPOINT" "$BUCKET" <<'PYEOF'
import sys, time
import boto3
from botocore.exceptions import EndpointConnectionError, ClientError
endpoint, bucket = sys.argv[1], sys.argv[2]
client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
deadline = time.monotonic() + 30
while True:
    try:
        client.list_buckets()
        break
    except EndpointConnectionError:
        if time.monotonic() > deadline:
            sys.exit(f"s3_local.sh: no S3 server answered at {endpoint} in 30 s (is the port taken?)")
        time.sleep(0.2)
try:
    client.create_bucket(Bucket=bucket)
except ClientError as e:
    if e.response["Error"]["Code"] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
        raise
PYEOF

cat <<INFO
S3 server ready at $ENDPOINT (moto, in memory), bucket $BUCKET
In another shell:
  $CREDS
  argen generate output.uri=s3://$BUCKET/run1 storage=s3_compatible storage.endpoint_url=$ENDPOINT
  argen verify output.uri=s3://$BUCKET/run1 storage=s3_compatible storage.endpoint_url=$ENDPOINT
Ctrl-C stops the server.
INFO
wait "$SERVER"
