#!/bin/bash
# Benchmark: warm 4 KiB random reads of one image while another is read cold.
#
# What a NAS does when VMs run from cached bases while a new image is read
# for the first time: the cold read's blocks are committed to the block
# cache every few MiB, and a commit locks the cache's readers out while it
# writes.  Measured side by side in one run, on one mount: fio 4 KiB random
# O_DIRECT reads (4 jobs) of a cached image A alone, then the same during a
# cold sequential read (dd bs=1M) of image B.  Reported: IOPS, mean and p99
# latency of both, and the ratio during/alone; the cold read's rate.
#
#   sudo tests/bench/mixed.sh [SIZE_MIB] [ROUNDS]   defaults: 1024 MiB (B; A is a quarter), 2 rounds
# Environment: IMGSTORE_BUILD (default ./build), BENCH_PORT (default 23800;
# uses PORT..PORT+4), BENCH_RUNTIME (fio seconds, default 8; the cold read
# must last longer), IMGFS_OPTS (extra imgfs flags).  Needs root (drop_caches).
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=tests/bench/lib.sh
. tests/bench/lib.sh
SIZE_MIB=${1:-1024}
ROUNDS=${2:-2}
BUILD=${IMGSTORE_BUILD:-$PWD/build}
PORT=${BENCH_PORT:-23800}
RUNTIME=${BENCH_RUNTIME:-8}
PY=/usr/bin/python3
for b in "$BUILD/fs/imgfs" "$BUILD/sync/labctl"; do
	[ -x "$b" ] || { echo "mixed.sh: $b is not built (ninja -C $BUILD)" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "mixed.sh: needs root (drop_caches)" >&2; exit 1; }
command -v fio >/dev/null || { echo "mixed.sh: needs fio (deploy/setup.sh installs it)" >&2; exit 1; }

W=$(mktemp -d /tmp/imgstore-bench-mixed.XXXXXX)
S3DIR=$W/s3
MNT=$W/mnt
MPID=
cleanup() {
	set +e
	stop_all
	rm -rf "$W"
}
trap cleanup EXIT

deploy/local-s3.sh start "$S3DIR" "$PORT" bench >/dev/null
eval "$(deploy/local-s3.sh env "$S3DIR")"
export IMGSTORE_LOG=warn
echo "mixed.sh: uploading A ($((SIZE_MIB / 4)) MiB) and B ($SIZE_MIB MiB) of random bytes"
head -c $((SIZE_MIB * 1048576 / 4)) /dev/urandom >"$W/x.raw"
"$BUILD/sync/labctl" images upload --source "$W/x.raw" --destination bench/a.raw >/dev/null
head -c $((SIZE_MIB * 1048576)) /dev/urandom >"$W/x.raw"
"$BUILD/sync/labctl" images upload --source "$W/x.raw" --destination bench/b.raw >/dev/null
rm -f "$W/x.raw"

calc() { awk "BEGIN { printf \"%.2f\", ($1) }"; }
# "IOPS mean_us p99_us" of 4 KiB random reads of $1
randread() {
	fio --name=rand --filename="$1" --rw=randread --bs=4k --direct=1 --numjobs=4 \
		--ioengine=psync --time_based --runtime="$RUNTIME" --group_reporting \
		--output-format=json 2>/dev/null |
		$PY -c 'import json, sys
r = json.load(sys.stdin)["jobs"][0]["read"]
print("%d %.0f %.0f" % (r["iops"], r["clat_ns"]["mean"] / 1e3, r["clat_ns"]["percentile"]["99.000000"] / 1e3))'
}

for r in $(seq 1 "$ROUNDS"); do
	rm -rf "$W/cache"
	mkdir -p "$MNT"
	# shellcheck disable=SC2086
	"$BUILD/fs/imgfs" -f --cache-dir "$W/cache" ${IMGFS_OPTS:-} "$MNT" >"$W/imgfs.log" 2>&1 &
	MPID=$!
	for _ in $(seq 1 100); do mountpoint -q "$MNT" && break; sleep 0.1; done
	mountpoint -q "$MNT" || { cat "$W/imgfs.log" >&2; exit 1; }
	A=$MNT/bench/a.raw
	B=$MNT/bench/b.raw
	cat "$A" >/dev/null
	wait_cache
	drop_caches
	read -r i1 m1 p1 < <(randread "$A")
	drop_caches
	t0=$(date +%s.%N)
	dd if="$B" of=/dev/null bs=1M status=none &
	dd_pid=$!
	sleep 0.5
	read -r i2 m2 p2 < <(randread "$A")
	wait "$dd_pid"
	t1=$(date +%s.%N)
	printf 'round %d: A alone %d IOPS (mean %d us, p99 %d us); during the cold read of B %d IOPS (mean %d us, p99 %d us): %s of alone; B cold %.1f MB/s (load %s)\n' \
		"$r" "$i1" "$m1" "$p1" "$i2" "$m2" "$p2" "$(calc "$i2 / $i1")" \
		"$(calc "$SIZE_MIB * 1048576 / ($t1 - $t0) / 1e6")" "$(load)"
	fusermount3 -u "$MNT"
	wait "$MPID" 2>/dev/null || true
	MPID=
done
