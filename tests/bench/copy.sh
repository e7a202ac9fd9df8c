#!/bin/bash
# Benchmark: what keeping a previous version costs.  The server-side copy
# (CopyObject, as labctl makes it before replacing an image) of a SIZE_MIB
# object against a plain single PUT of the same bytes from this host, on the
# same local S3 server, in the same run; then the requests labctl makes for
# a first upload and for a replacement of the same destination (counted by
# tests/integration/faultproxy.py in front of the server).
#
#   tests/bench/copy.sh [SIZE_MIB] [ROUNDS]      defaults: 1024 MiB, 3 rounds
# Environment: IMGSTORE_BUILD (default ./build), BENCH_PORT (default 24100).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
SIZE_MIB=${1:-1024}
ROUNDS=${2:-3}
BUILD=${IMGSTORE_BUILD:-$ROOT/build}
PORT=${BENCH_PORT:-24100}
[ -x "$BUILD/sync/labctl" ] || { echo "copy.sh: $BUILD/sync/labctl is not built" >&2; exit 1; }
BENCH_DIR=$(mktemp -d /tmp/imgstore-bench-copy.XXXXXX)
cleanup() {
	deploy/local-s3.sh stop "$BENCH_DIR/s3" >/dev/null 2>&1 || true
	rm -rf "$BENCH_DIR"
}
trap cleanup EXIT
deploy/local-s3.sh start "$BENCH_DIR/s3" "$PORT" bench >/dev/null
eval "$(deploy/local-s3.sh env "$BENCH_DIR/s3")"
export IMGSTORE_LOG=warn
head -c $((SIZE_MIB << 20)) /dev/urandom >"$BENCH_DIR/a.raw"
head -c 4M /dev/urandom >"$BENCH_DIR/v1.raw"
head -c 4M /dev/urandom >"$BENCH_DIR/v2.raw"

LABCTL=$BUILD/sync/labctl BENCH_DIR=$BENCH_DIR ROUNDS=$ROUNDS \
	PYTHONPATH=$ROOT/tests/integration /usr/bin/python3 - <<'PY'
import os, subprocess, time
import boto3
from botocore.config import Config
from faultproxy import FaultProxy

ep, bucket = os.environ["E2_ENDPOINT"], os.environ["E2_BUCKET"]
s3 = boto3.client("s3", endpoint_url=ep, aws_access_key_id=os.environ["E2_ACCESS_KEY"],
                  aws_secret_access_key=os.environ["E2_SECRET_KEY"], region_name="us-east-1",
                  config=Config(s3={"addressing_style": "path"}))
d = os.environ["BENCH_DIR"]
src = os.path.join(d, "a.raw")
size = os.path.getsize(src)
puts, copies = [], []
for r in range(int(os.environ["ROUNDS"])):
    t = time.monotonic()
    with open(src, "rb") as f:
        s3.put_object(Bucket=bucket, Key="bench/a.raw", Body=f)
    puts.append(time.monotonic() - t)
    t = time.monotonic()
    s3.copy_object(Bucket=bucket, Key=f"bench/copy{r}", CopySource={"Bucket": bucket,
                   "Key": "bench/a.raw"})
    copies.append(time.monotonic() - t)
mib = size / 2**20
print(f"{mib:.0f} MiB: single PUT {min(puts):.2f} s (best of {len(puts)}; all "
      f"{', '.join(f'{x:.2f}' for x in puts)}), server-side copy {min(copies):.2f} s "
      f"(all {', '.join(f'{x:.2f}' for x in copies)}), ratio {min(copies) / min(puts):.2f}")

port = int(ep.rsplit(":", 1)[1])
proxy = FaultProxy(port).start()
env = dict(os.environ, E2_ENDPOINT=proxy.endpoint, IMGSTORE_RECORD_INDEX="off")
counts = []
for v in ("v1", "v2"):
    n = len(proxy.log)
    subprocess.run([os.environ["LABCTL"], "images", "upload", "--source",
                    os.path.join(d, v + ".raw"), "--destination", "bench/v.raw"],
                   env=env, check=True, capture_output=True)
    reqs = proxy.log[n:]
    counts.append(len(reqs))
    print(f"upload {v}: {len(reqs)} requests: " +
          ", ".join(f"{x.method} {x.key}{'?' + '&'.join(x.query) if x.query else ''}"
                    for x in reqs))
proxy.stop()
print(f"a replacement costs {counts[1] - counts[0]} requests more than a first upload")
PY
