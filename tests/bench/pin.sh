#!/bin/bash
# Benchmark (issue 15): a pinned host that holds version 1 of an image
# refreshes to version 2, which differs in CHANGE_PCT % of its blocks,
# scattered.  imgfs fetches only the changed blocks (the cache is keyed by
# block SHA-256); the reference is a full re-download of version 2 with curl
# from the same server in the same run.  Prints both and their ratios against
# the goals (<= 0.07x the bytes, <= 0.15x the time), with the load average.
#
#   tests/bench/pin.sh [SIZE_MIB] [CHANGE_PCT]        defaults: 1024 MiB, 5 %
# Environment: IMGSTORE_BUILD (default ./build), BENCH_PORT (default 23100;
# uses PORT..PORT+4), BENCH_DIR (work dir, default a fresh /tmp dir, removed
# afterwards).  Needs FUSE (fusermount3) and room for 3 x SIZE_MIB in /tmp.
#
# Time of the refresh: from SIGHUP (re-read the listing now) until the stats
# say the pinned image is whole again, polled every 10 ms: the listing, the
# ranged GETs of the changed blocks, their checks and their cache inserts.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
SIZE_MIB=${1:-1024}
PCT=${2:-5}
BUILD=${IMGSTORE_BUILD:-$ROOT/build}
PORT=${BENCH_PORT:-23100}
IMGFS=$BUILD/fs/imgfs
LABCTL=$BUILD/sync/labctl
PY=/usr/bin/python3
for b in "$IMGFS" "$LABCTL"; do
	[ -x "$b" ] || { echo "pin.sh: $b is not built (ninja -C $BUILD)" >&2; exit 1; }
done

own_dir=0
if [ -z "${BENCH_DIR:-}" ]; then
	BENCH_DIR=$(mktemp -d /tmp/imgstore-bench-pin.XXXXXX)
	own_dir=1
fi
S3DIR=$BENCH_DIR/s3
MNT=$BENCH_DIR/mnt
IPID=
cleanup() {
	set +e
	fusermount3 -uz "$MNT" 2>/dev/null
	[ -n "$IPID" ] && kill "$IPID" 2>/dev/null && wait "$IPID" 2>/dev/null
	deploy/local-s3.sh stop "$S3DIR" >/dev/null 2>&1
	[ $own_dir = 1 ] && rm -rf "$BENCH_DIR"
}
trap cleanup EXIT

deploy/local-s3.sh start "$S3DIR" "$PORT" bench >/dev/null
echo "pin.sh: S3 server $(cat "$S3DIR/server") on 127.0.0.1:$PORT"
eval "$(deploy/local-s3.sh env "$S3DIR")"
export IMGSTORE_LOG=warn
DEST=bench/image.raw
SIZE=$((SIZE_MIB * 1048576))

now() { date +%s.%N; }
calc() { awk "BEGIN { printf \"%.6f\", ($1) }"; }
stat_of() { $PY -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' \
	"$MNT/.imgstore/stats" "$1"; }
whole() {
	$PY -c 'import json,sys; s=json.load(open(sys.argv[1]))
sys.exit(0 if s["pinned_images"] == 1 and s["pinned_cached_bytes"] == s["pinned_bytes"] else 1)' \
		"$MNT/.imgstore/stats"
}

# ---- version 1 and version 2: CHANGE_PCT % of the 1 MiB blocks rewritten, scattered
head -c "$SIZE" /dev/urandom >"$BENCH_DIR/v1"
NCHANGED=$($PY - "$BENCH_DIR/v1" "$BENCH_DIR/v2" "$PCT" <<'EOF'
import os, random, shutil, sys
src, dst, pct = sys.argv[1], sys.argv[2], float(sys.argv[3])
shutil.copyfile(src, dst)
nblocks = (os.path.getsize(src) + (1 << 20) - 1) >> 20
changed = sorted(random.Random(15).sample(range(nblocks), max(1, round(nblocks * pct / 100))))
with open(dst, "r+b") as f:
    for b in changed:
        f.seek(b << 20)
        f.write(os.urandom(min(1 << 20, os.path.getsize(src) - (b << 20))))
print(len(changed))
EOF
)
echo "pin.sh: $SIZE_MIB MiB, $NCHANGED blocks of 1 MiB changed in version 2"
"$LABCTL" images upload --source "$BENCH_DIR/v1" --destination "$DEST" >/dev/null
V2SUM=sha256:$(sha256sum "$BENCH_DIR/v2" | cut -d' ' -f1)

# ---- the pinned host holds version 1
mkdir -p "$MNT"
t0=$(now)
IMGSTORE_LOG=info "$IMGFS" -f --cache-dir "$BENCH_DIR/cache" --cache-size $((3 * SIZE_MIB + 64))M \
	--refresh 0 --pin "$DEST" "$MNT" 2>"$BENCH_DIR/imgfs.log" &
IPID=$!
until [ -e "$MNT/.imgstore/stats" ]; do sleep 0.05; done
until whole; do sleep 0.1; done
t1=$(now)
echo "pin.sh: version 1 whole in $(printf %.1f "$(calc "$t1 - $t0")") s ($(stat_of bytes_fetched) bytes fetched)"

# ---- version 2 in the bucket; the host refreshes
"$LABCTL" images upload --source "$BENCH_DIR/v2" --destination "$DEST" >/dev/null
# SIGHUP, then poll the stats and the checksum attribute in one process
read -r PIN_T PIN_B PIN_G < <($PY - "$MNT" "$DEST" "$V2SUM" "$IPID" <<'EOF'
import json, os, signal, sys, time
mnt, dest, want, pid = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
def stats():
    with open(os.path.join(mnt, ".imgstore/stats")) as f:
        return json.load(f)
s0 = stats()
t0 = time.monotonic()
os.kill(pid, signal.SIGHUP)
while True:
    # the checksum first: stats read after the new tree wait for its pins
    if os.getxattr(os.path.join(mnt, dest), "user.imgstore.checksum").decode() == want:
        s = stats()
        if s["pinned_images"] == 1 and s["pinned_cached_bytes"] == s["pinned_bytes"]:
            break
    time.sleep(0.01)
t1 = time.monotonic()
print(f"{t1 - t0:.3f} {s['bytes_fetched'] - s0['bytes_fetched']} {s['gets'] - s0['gets']}")
EOF
)
cmp "$MNT/$DEST" "$BENCH_DIR/v2" && echo "pin.sh: version 2 reads back exactly"

# ---- the reference: curl GET of version 2, twice, the better one
# (Swift's s3api wants x-amz-content-sha256; the key has a ':', so a netrc)
NETRC=$BENCH_DIR/netrc
(umask 077 && printf 'machine 127.0.0.1 login %s password %s\n' "$E2_ACCESS_KEY" \
	"$E2_SECRET_KEY" >"$NETRC")
CURL_T=
for r in 1 2; do
	t0=$(now)
	CURL_B=$(curl -sS -f -o /dev/null -w '%{size_download}' --aws-sigv4 \
		"aws:amz:${E2_REGION}:s3" --netrc-file "$NETRC" \
		-H "x-amz-content-sha256: UNSIGNED-PAYLOAD" "$E2_ENDPOINT/$E2_BUCKET/images/$DEST")
	t1=$(now)
	t=$(calc "$t1 - $t0")
	echo "curl GET round $r: $t s"
	if [ -z "$CURL_T" ] || [ "$(calc "$t < $CURL_T")" = "1.000000" ]; then CURL_T=$t; fi
done

verdict() { [ "$(calc "$1")" = "1.000000" ] && echo yes || echo NO; }
RB=$(calc "$PIN_B / $CURL_B")
RT=$(calc "$PIN_T / $CURL_T")
echo
printf '%-28s %14s %14s %8s %6s %s\n' "" "pinned imgfs" "curl (full)" ratio goal met
printf '%-28s %14d %14d %8.3f %6s %s\n' "bytes fetched for version 2" "$PIN_B" "$CURL_B" "$RB" \
	"<=0.07" "$(verdict "$RB <= 0.07")"
printf '%-28s %14.3f %14.3f %8.3f %6s %s\n' "time (s)" "$PIN_T" "$CURL_T" "$RT" "<=0.15" \
	"$(verdict "$RT <= 0.15")"
echo "imgfs: $PIN_G ranged GETs for $NCHANGED changed blocks; load average: $(cut -d' ' -f1-3 /proc/loadavg)"
grep "is whole" "$BENCH_DIR/imgfs.log" || true
if grep -v "^$" "$BENCH_DIR/imgfs.log" | grep -v "is whole" | grep -qv "imgfs: mounted"; then
	echo "--- imgfs log"
	cat "$BENCH_DIR/imgfs.log"
fi
