#!/bin/bash
# Benchmark: `labctl images sync` of a 1 GiB image served xz-compressed over
# HTTPS (tests/integration/https_server.py, test CA) into the local S3 server,
# against, in the same run and from the same servers:
#   (a) curl URL | xz -dc > /dev/null       the decompression-bound limit
#   (b) the sequential pipeline of the spec's workflow: curl to a file,
#       sha256sum, xz -d, sha256sum, upload with boto3 (upload_file)
# Goals: labctl within 1.15x of (a), at least 2x faster than (b), peak RSS
# under 128 MiB.
#
#   tests/bench/sync.sh [SIZE_MIB] [ROUNDS]      defaults: 1024 MiB, 2 rounds
# Environment: IMGSTORE_BUILD (default ./build), BENCH_PORT (default 24000;
# the S3 server uses PORT..PORT+4), BENCH_CACHE (where the test image and its
# .xz are kept between runs; default /tmp/imgstore-bench-cache), XZ_THREADS
# (threads used to compress the test image, default 2: multi-block .xz like
# xz 5.4 -T makes; 1 gives one block), BENCH_SYNC_ARGS (extra labctl sync
# options, e.g. "--xz-threads 1" for liblzma's single-threaded decoder).
#
# The image is made of real files (a tar of /usr/lib and /usr/share) and
# zeros, like a disk image: that decides how fast xz decompresses.
set -euo pipefail
# extra labctl options, split into words as a shell would
read -r -a SYNC_ARGS <<<"${BENCH_SYNC_ARGS:-}"
cd "$(dirname "$0")/../.."
ROOT=$PWD
SIZE_MIB=${1:-1024}
ROUNDS=${2:-2}
BUILD=${IMGSTORE_BUILD:-$ROOT/build}
PORT=${BENCH_PORT:-24000}
CACHE=${BENCH_CACHE:-/tmp/imgstore-bench-cache}
XZ_THREADS=${XZ_THREADS:-2}
LABCTL=$BUILD/sync/labctl
PY=/usr/bin/python3
[ -x "$LABCTL" ] || { echo "sync.sh: $LABCTL is not built (ninja -C $BUILD)" >&2; exit 1; }

WORK=$(mktemp -d /tmp/imgstore-bench-sync.XXXXXX)
S3DIR=$WORK/s3
HTTPS_PID=
cleanup() {
	if [ -n "$HTTPS_PID" ]; then kill "$HTTPS_PID" 2>/dev/null || true; fi
	deploy/local-s3.sh stop "$S3DIR" >/dev/null 2>&1 || true
	rm -rf "$WORK"
}
trap cleanup EXIT

# --- the test image, cached --------------------------------------------------
mkdir -p "$CACHE"
IMG=$CACHE/image-${SIZE_MIB}m.raw
XZ=$IMG.t$XZ_THREADS.xz
if [ ! -s "$IMG" ]; then
	echo "sync.sh: making a ${SIZE_MIB} MiB image from /usr/lib, /usr/share and zeros"
	{
		tar cf - --ignore-failed-read /usr/share /usr/lib 2>/dev/null | head -c $((SIZE_MIB * 1024 * 1024 * 6 / 10)) || true
		head -c $((SIZE_MIB * 1024 * 1024)) /dev/zero
	} | head -c $((SIZE_MIB * 1024 * 1024)) >"$IMG.tmp" || true # SIGPIPE upstream
	[ "$(stat -c %s "$IMG.tmp")" = $((SIZE_MIB * 1024 * 1024)) ] ||
		{ echo "sync.sh: could not make the test image" >&2; exit 1; }
	mv "$IMG.tmp" "$IMG"
fi
if [ ! -s "$XZ" ]; then
	echo "sync.sh: compressing it with xz -6 -T$XZ_THREADS (once; cached in $CACHE)"
	xz -6 -T"$XZ_THREADS" -c "$IMG" >"$XZ.tmp"
	mv "$XZ.tmp" "$XZ"
fi
RAW_SHA=$(sha256sum "$IMG" | cut -d' ' -f1)
XZ_SHA=$(sha256sum "$XZ" | cut -d' ' -f1)

# --- servers -------------------------------------------------------------------
deploy/local-s3.sh start "$S3DIR" "$PORT" bench >/dev/null
eval "$(deploy/local-s3.sh env "$S3DIR")"
export IMGSTORE_LOG=warn
mkdir -p "$WORK/www"
ln "$XZ" "$WORK/www/image.raw.xz" 2>/dev/null || cp "$XZ" "$WORK/www/image.raw.xz"
$PY tests/integration/https_server.py --dir "$WORK/www" --cert-dir "$WORK/certs" >"$WORK/https.out" 2>&1 &
HTTPS_PID=$!
for _ in $(seq 1 100); do grep -q READY "$WORK/https.out" 2>/dev/null && break; sleep 0.1; done
BASE=$(sed -n 's/^READY //p' "$WORK/https.out")
[ -n "$BASE" ] || { echo "sync.sh: the HTTPS server did not start" >&2; cat "$WORK/https.out" >&2; exit 1; }
URL=$BASE/image.raw.xz
CA=$WORK/certs/ca.pem
cat "$XZ" >/dev/null # page cache: every contender starts warm

# --- the manifest --------------------------------------------------------------
mkdir -p "$WORK/repo/images"
write_manifest() {
	cat >"$WORK/repo/images/images.yaml" <<M
apiVersion: images.lab.gilman.io/v1alpha1
kind: ImageManifest
metadata:
  name: bench
spec:
  images:
    - name: bench-$1
      source:
        url: '$URL'
        checksum: 'sha256:$XZ_SHA'
        decompress: xz
      destination: 'bench/image-$1.raw'
      validation:
        algorithm: sha256
        expected: 'sha256:$RAW_SHA'
M
}

now() { date +%s.%N; }
# flush what the previous contender left dirty (its files, the server's objects)
# so that its writeback does not land in the next one's time
settle() {
	sync
	sleep 1
}
calc() { awk "BEGIN { printf \"%.6f\", $1 }"; }
min() { calc "$1 < $2 ? $1 : $2"; }

best_a=999999 best_b=999999 best_l=999999 rss=0
for r in $(seq 1 "$ROUNDS"); do
	# (a) download + decompress only
	settle
	t0=$(now)
	curl -sS -f --cacert "$CA" "$URL" | xz -dc >/dev/null
	t1=$(now)
	a=$(calc "$t1 - $t0")

	# (b) the sequential pipeline
	rm -f "$WORK/seq.raw" "$WORK/seq.raw.xz"
	settle
	t0=$(now)
	curl -sS -f --cacert "$CA" -o "$WORK/seq.raw.xz" "$URL"
	echo "$XZ_SHA  $WORK/seq.raw.xz" | sha256sum -c --quiet
	xz -d "$WORK/seq.raw.xz"
	echo "$RAW_SHA  $WORK/seq.raw" | sha256sum -c --quiet
	$PY - "$WORK/seq.raw" "seq/image-$r.raw" <<'P'
import os, sys, boto3
from botocore.config import Config
s3 = boto3.client("s3", endpoint_url=os.environ["E2_ENDPOINT"],
                  aws_access_key_id=os.environ["E2_ACCESS_KEY"],
                  aws_secret_access_key=os.environ["E2_SECRET_KEY"],
                  region_name=os.environ["E2_REGION"],
                  config=Config(s3={"addressing_style": "path"}))
s3.upload_file(sys.argv[1], os.environ["E2_BUCKET"], "images/" + sys.argv[2])
P
	t1=$(now)
	b=$(calc "$t1 - $t0")
	rm -f "$WORK/seq.raw"

	# labctl
	write_manifest "$r"
	settle
	t0=$(now)
	(cd "$WORK/repo" && /usr/bin/time -f '%M %U %S' -o "$WORK/time.out" "$LABCTL" images sync --ca-bundle "$CA" "${SYNC_ARGS[@]}" >"$WORK/sync.out")
	t1=$(now)
	l=$(calc "$t1 - $t0")
	read -r m lu ls < <(tail -n1 "$WORK/time.out")
	grep -q "1 uploaded" "$WORK/sync.out" || { cat "$WORK/sync.out" >&2; exit 1; }
	printf 'round %d: (a) curl|xz -dc %.2f s   (b) sequential %.2f s   labctl sync %.2f s (peak RSS %d MiB, %.2f CPU s, load %s)\n' \
		"$r" "$a" "$b" "$l" $((m / 1024)) "$(calc "$lu + $ls")" "$(cut -d' ' -f1 /proc/loadavg)"
	best_a=$(min "$a" "$best_a")
	best_b=$(min "$b" "$best_b")
	best_l=$(min "$l" "$best_l")
	((m > rss)) && rss=$m
done

# labctl's result is real: the record is complete and holds the expected checksum
(cd "$WORK/repo" && "$LABCTL" images list --json) | $PY -c '
import json, sys
items = [i for i in json.load(sys.stdin) if i["destination"].startswith("bench/")]
assert items and all(i["complete"] and i["checksum"] == "sha256:" + sys.argv[1] for i in items), items
' "$RAW_SHA"

mb=$((SIZE_MIB * 1048576))
xzmb=$(stat -c %s "$XZ")
echo
printf 'image: %d MiB raw, %.0f MiB xz (%s threads, %s)\n' "$SIZE_MIB" "$(calc "$xzmb / 1048576")" "$XZ_THREADS" \
	"$(xz --robot -lv "$XZ" | awk '$1 == "totals" { print $3 " blocks" }')"
printf '%-36s %8s %10s\n' "" "best s" "MB/s raw"
printf '%-36s %8.2f %10.1f\n' "(a) curl | xz -dc > /dev/null" "$best_a" "$(calc "$mb / $best_a / 1e6")"
printf '%-36s %8.2f %10.1f\n' "(b) curl, sha256sum, xz -d, boto3" "$best_b" "$(calc "$mb / $best_b / 1e6")"
printf '%-36s %8.2f %10.1f\n' "labctl images sync" "$best_l" "$(calc "$mb / $best_l / 1e6")"
printf 'labctl / (a) = %.2f (goal <= 1.15)   (b) / labctl = %.2f (goal >= 2)   peak RSS %d MiB (goal < 128)\n' \
	"$(calc "$best_l / $best_a")" "$(calc "$best_b / $best_l")" $((rss / 1024))
