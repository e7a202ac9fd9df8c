#!/bin/bash
# Benchmark: what a cold sequential read costs imgfs itself, in figures that
# a loaded machine does not distort (unlike MB/s): CPU seconds of the imgfs
# process per GiB read, bytes it wrote to disk per GiB cached, its peak RSS
# by phase, the same CPU figure for a warm re-read, and 4 KiB random reads.
# The load average is printed with every figure.
#
#   sudo tests/bench/cold.sh [SIZE_MIB] [ROUNDS]     defaults: 1024 MiB, 2 rounds
# Environment: IMGSTORE_BUILD (default ./build), BENCH_PORT (default 23600;
# uses PORT..PORT+4), BENCH_RUNTIME (fio seconds, default 10), BENCH_DIR
# (work dir, default a fresh /tmp dir, removed afterwards), IMGFS_OPTS (extra
# imgfs flags), BENCH_PERF (a path: `perf record -g` of imgfs during each
# cold read into PATH.ROUND and the first warm read into PATH.ROUND.warm,
# for `perf report -i PATH.1 --no-children --sort dso`), BENCH_FULL_CACHE=1
# (the measured read goes into a full cache: a second object of SIZE_MIB is
# read first, with --cache-size SIZE_MIB M, so that the measured read evicts
# it and reuses its pages; "after mounting" is then after that fill),
# BENCH_WARM_READS=N (N warm reads, each after dropping the page cache, each
# one's CPU printed; the figure in the summary stays the first one's, unlike
# mount.sh, which counts the best: here the first read's page costs are the
# point).  Needs root (drop_caches).
#
# Counts that do not depend on how busy the host is: the block device's
# write requests and cache flushes per cached GiB (from
# /sys/dev/block/DEV/stat of the disk under the cache: the whole device, so
# run it on an otherwise idle machine).  And a reference in the same run: the
# CPU seconds of `dd oflag=dsync bs=4M` writing as many bytes as imgfs wrote,
# on the cache's file system (one flush per 4 MiB, as a disk cache that
# commits every 4 MiB must pay at least), because on this kind of VM the
# kernel's share of any write, imgfs's or dd's, varies several-fold from run
# to run (tests/bench/README.md, "What a CPU second is on this VM").
#
# Each round mounts a fresh imgfs with an empty cache, reads the object with
# dd bs=1M (no page cache), waits until the cache writer is done, drops the
# page cache and reads it again (warm), then runs 4 KiB random O_DIRECT reads
# (fio, 4 jobs, BENCH_RUNTIME seconds, default 10; skipped without fio) and
# reports IOPS and imgfs CPU microseconds per read, then unmounts.  CPU and write_bytes
# are read from /proc/PID/stat and /proc/PID/io before and after each read
# (the cold write_bytes include the writer finishing after dd).  The cold
# read's CPU is also split by thread: the readahead fetchers, the cache
# writer, and the rest (FUSE request threads: replies, and the GETs of blocks
# that readahead had not asked for yet); and the whole machine's CPU less the
# S3 server's (/proc/stat) is printed next to imgfs's, for what kernel
# threads do on imgfs's behalf (page cache writeback).
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=tests/bench/lib.sh
. tests/bench/lib.sh
ROOT=$PWD
SIZE_MIB=${1:-1024}
ROUNDS=${2:-2}
BUILD=${IMGSTORE_BUILD:-$ROOT/build}
PORT=${BENCH_PORT:-23600}
IMGFS=$BUILD/fs/imgfs
LABCTL=$BUILD/sync/labctl
PY=/usr/bin/python3
for b in "$IMGFS" "$LABCTL"; do
	[ -x "$b" ] || { echo "cold.sh: $b is not built (ninja -C $BUILD)" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "cold.sh: needs root (drop_caches)" >&2; exit 1; }

# BENCH_PERF: perf record of imgfs into $BENCH_PERF.$1, until perf_stop.
perf_pid=
perf_start() {
	[ -n "${BENCH_PERF:-}" ] || return 0
	perf record -q -F 2000 -g -p "$MPID" -o "$BENCH_PERF.$1" 2>/dev/null &
	perf_pid=$!
	sleep 1 # perf attaches to every thread
}
perf_stop() {
	[ -n "$perf_pid" ] || return 0
	kill -INT "$perf_pid"
	wait "$perf_pid" || true
	perf_pid=
}

own_dir=0
if [ -z "${BENCH_DIR:-}" ]; then
	BENCH_DIR=$(mktemp -d /tmp/imgstore-bench-cold.XXXXXX)
	own_dir=1
fi
S3DIR=$BENCH_DIR/s3
MNT=$BENCH_DIR/mnt
MPID=
cleanup() {
	set +e
	stop_all
	[ $own_dir = 1 ] && rm -rf "$BENCH_DIR"
}
trap cleanup EXIT

deploy/local-s3.sh start "$S3DIR" "$PORT" bench >/dev/null
eval "$(deploy/local-s3.sh env "$S3DIR")"
export IMGSTORE_LOG=warn
SIZE=$((SIZE_MIB * 1048576))
calc() { awk "BEGIN { printf \"%.3f\", ($1) }"; }
# CPU seconds so far of the threads named $2 (imgfs-fetch: readahead's GETs,
# TLS, hashing and copies into block buffers; cache-writer: storing blocks).
# Both kinds live as long as the mount; the FUSE threads come and go, so
# their share is the process's total less these.
cpu_of() {
	awk -v hz="$HZ" -v name="$2" '{ c = $0; sub(/^[0-9]+ \(/, "", c); sub(/\) .*/, "", c);
		sub(/.*\) /, ""); if (c == name) s += $12 + $13 } END { printf "%.2f", s / hz }' \
		/proc/"$1"/task/*/stat 2>/dev/null
}
wbytes() { awk '/^write_bytes/ { print $2 }' "/proc/$1/io"; }
# "write requests, sectors written, flushes" of the device under $BENCH_DIR
# (flushes: "-" when the kernel does not count them for it)
DEVSTAT=/sys/dev/block/$(stat -c '%Hd:%Ld' "$BENCH_DIR")/stat
devio() { awk '{ print $5, $7, (NF >= 17 ? $16 : "-") }' "$DEVSTAT" 2>/dev/null || echo "- - -"; }
# "requests MiB flushes" per cached GiB between two devio readings
devio_per_gib() {
	awk -v a="$1" -v b="$2" -v g="$3" 'BEGIN {
		split(a, x, " "); split(b, y, " ")
		if (x[1] == "-" || g <= 0) { print "- - -"; exit }
		printf "%.0f %.0f %s\n", (y[1] - x[1]) / g, (y[2] - x[2]) / 2048 / g,
			(x[3] == "-" ? "-" : sprintf("%.0f", (y[3] - x[3]) / g)) }'
}
# CPU seconds (user + system) of dd writing $1 bytes into $2 in 4 MiB
# synchronous writes: this run's price of the disk writes alone
ref_write_cpu() {
	/usr/bin/time -f '%U %S' -o "$BENCH_DIR/ref.time" \
		dd if=/dev/zero of="$2" bs=4M count=$((($1 + 4194303) / 4194304)) oflag=dsync status=none
	rm -f "$2"
	awk '{ printf "%.2f", $1 + $2 }' "$BENCH_DIR/ref.time"
}
BEST_COLD="" BEST_USER=""

echo "cold.sh: uploading a ${SIZE_MIB} MiB object of random bytes"
head -c "$SIZE" /dev/urandom >"$BENCH_DIR/image.raw"
"$LABCTL" images upload --source "$BENCH_DIR/image.raw" --destination bench/image.raw >/dev/null
if [ "${BENCH_FULL_CACHE:-0}" = 1 ]; then
	head -c "$SIZE" /dev/urandom >"$BENCH_DIR/image.raw"
	"$LABCTL" images upload --source "$BENCH_DIR/image.raw" --destination bench/filler.raw >/dev/null
fi
rm -f "$BENCH_DIR/image.raw"
gib=$(calc "$SIZE / 1073741824")

for r in $(seq 1 "$ROUNDS"); do
	rm -rf "$BENCH_DIR/cache"
	mkdir -p "$MNT"
	full=
	[ "${BENCH_FULL_CACHE:-0}" = 1 ] && full="--cache-size ${SIZE_MIB}M"
	# shellcheck disable=SC2086
	"$IMGFS" -f --cache-dir "$BENCH_DIR/cache" $full ${IMGFS_OPTS:-} "$MNT" >"$BENCH_DIR/imgfs.log" 2>&1 &
	MPID=$!
	for _ in $(seq 1 300); do mountpoint -q "$MNT" && break; sleep 0.1; done
	mountpoint -q "$MNT" || { cat "$BENCH_DIR/imgfs.log" >&2; exit 1; }
	f=$MNT/bench/image.raw
	if [ -n "$full" ]; then
		# fill the cache with the other object: the measured read then
		# evicts its blocks and reuses their pages, as a cache that has
		# been in use for a while does
		dd if="$MNT/bench/filler.raw" of=/dev/null bs=1M status=none
		wait_cache
	fi
	rss_mount=$(awk '/VmHWM/ { printf "%d", $2 / 1024 }' "/proc/$MPID/status")
	drop_caches
	perf_start "$r"
	f0=$(cpu_of "$MPID" imgfs-fetch) k0=$(cpu_of "$MPID" cache-writer) m0=$(machine_s) s0=$(server_s)
	c0=$(cpu_s "$MPID") u0=$(cpu_s "$MPID" user) w0=$(wbytes "$MPID") d0=$(devio) l0=$(load) t0=$(date +%s.%N)
	/usr/bin/time -f '%U %S' -o "$BENCH_DIR/dd.cpu" dd if="$f" of=/dev/null bs=1M status=none
	t1=$(date +%s.%N) c1=$(cpu_s "$MPID") u1=$(cpu_s "$MPID" user) l1=$(load)
	perf_stop
	wait_cache
	c2=$(cpu_s "$MPID") w2=$(wbytes "$MPID") d2=$(devio)
	f2=$(cpu_of "$MPID" imgfs-fetch) k2=$(cpu_of "$MPID" cache-writer) m2=$(machine_s) s2=$(server_s)
	cached=$(stat_of cache_bytes) dropped=$(stat_of cache_dropped)
	rss_cold=$(awk '/VmHWM/ { printf "%d", $2 / 1024 }' "/proc/$MPID/status")
	drop_caches
	perf_start "$r.warm"
	c3=$(cpu_s "$MPID")
	dd if="$f" of=/dev/null bs=1M status=none
	c4=$(cpu_s "$MPID") l4=$(load)
	perf_stop
	# later warm reads: on a VM that gives memory back to its host, the
	# first one pays for the page-cache pages it takes (tests/bench/README.md)
	for k in $(seq 2 "${BENCH_WARM_READS:-1}"); do
		drop_caches
		w3=$(cpu_s "$MPID")
		dd if="$f" of=/dev/null bs=1M status=none
		echo "         warm read $k: imgfs CPU s/GiB $(calc "($(cpu_s "$MPID") - $w3) / $gib")"
	done
	rand=""
	if command -v fio >/dev/null; then
		c5=$(cpu_s "$MPID")
		iops=$(fio --name=rand --filename="$f" --rw=randread --bs=4k --direct=1 --numjobs=4 \
			--ioengine=psync --time_based --runtime="${BENCH_RUNTIME:-10}" --group_reporting \
			--output-format=json 2>/dev/null |
			$PY -c 'import json,sys; print(round(json.load(sys.stdin)["jobs"][0]["read"]["iops"]))')
		c6=$(cpu_s "$MPID")
		rand=$(printf '4 KiB random: %s IOPS, imgfs %s CPU us per read (load %s)' "$iops" \
			"$(calc "($c6 - $c5) * 1000000 / ($iops * ${BENCH_RUNTIME:-10})")" "$(load)")
	fi
	rss=$(awk '/VmHWM/ { printf "%d", $2 / 1024 }' "/proc/$MPID/status")
	cgib=$(calc "$cached / 1073741824")
	read -r dreq dmib dflush <<<"$(devio_per_gib "$d0" "$d2" "$cgib")"
	ref_bytes=$((w2 - w0))
	ref_cpu=$(ref_write_cpu "$ref_bytes" "$BENCH_DIR/reference-write")
	cold=$(calc "($c1 - $c0) / $gib") user=$(calc "($u1 - $u0) / $gib")
	if [ -z "$BEST_COLD" ] || awk "BEGIN { exit !($cold < $BEST_COLD) }"; then
		BEST_COLD=$cold BEST_USER=$user
	fi
	printf 'round %d: cold %.1f MB/s (load %s->%s); imgfs CPU s/GiB cold %s (user %s; with the writer finishing %s), warm %s (load %s)\n' \
		"$r" "$(calc "$SIZE / ($t1 - $t0) / 1000000")" "$l0" "$l1" \
		"$cold" "$user" "$(calc "($c2 - $c0) / $gib")" \
		"$(calc "($c4 - $c3) / $gib")" "$l4"
	printf '         written to disk per cached GiB %s GiB (%s GiB cached, %s blocks dropped); peak RSS %s MiB after mounting, %s after the cold read, %s after the warm one\n' \
		"$(calc "$cgib > 0 ? ($w2 - $w0) / 1073741824 / $cgib : 0")" "$cgib" "$dropped" "$rss_mount" "$rss_cold" "$rss"
	printf '         disk per cached GiB: %s write requests, %s MiB, %s flushes; reference dd of the same %s MiB in 4 MiB dsync writes: %s CPU s (imgfs, cold read until its cache was written: %s CPU s)\n' \
		"$dreq" "$dmib" "$dflush" "$((ref_bytes / 1048576))" "$ref_cpu" "$(calc "$c2 - $c0")"
	printf '         CPU s/GiB by thread, cold read until its cache was written: fetch %s, cache writer %s, FUSE and the rest %s\n' \
		"$(calc "($f2 - $f0) / $gib")" "$(calc "($k2 - $k0) / $gib")" \
		"$(calc "(($c2 - $c0) - ($f2 - $f0) - ($k2 - $k0)) / $gib")"
	ddcpu=$(awk '{ printf "%.2f", $1 + $2 }' "$BENCH_DIR/dd.cpu")
	printf '         machine CPU s/GiB less the S3 server, the same span: %s (imgfs %s, dd %s; the rest: kernel threads such as page cache writeback, and anything else running)\n' \
		"$(calc "(($m2 - $m0) - ($s2 - $s0)) / $gib")" "$(calc "($c2 - $c0) / $gib")" "$(calc "$ddcpu / $gib")"
	[ -n "$rand" ] && echo "         $rand"
	fusermount3 -u "$MNT"
	wait "$MPID" || true
	MPID=
done
if [ "$ROUNDS" -gt 1 ]; then
	printf 'best of %d rounds: imgfs CPU s/GiB cold %s (user %s)\n' "$ROUNDS" "$BEST_COLD" "$BEST_USER"
fi
page_cost
