#!/bin/bash
# Benchmark: boot the vmkit test guest (Debian kernel + busybox initramfs, the
# guest hashes a region of its disk, writes a marker, powers off) on a fresh
# local qcow2 overlay whose base is
#   (a) a local copy of the base                      (the reference)
#   (b) the base on an imgfs mount with an empty cache (remounted, new cache dir)
#   (c) the base on an imgfs mount after a remount with the cache warm
# all in one run against one local S3 server, and prints the median times and
# the ratios b/a and c/a.  Goals (issue 5): c/a <= 1.1, b/a <= 1.5 at 0 ms.
#
#   tests/bench/boot.sh [--rounds N] [--read-mib N] [--netem "10 50"]
#
#   --rounds N      boots per case (default 3; the median is reported)
#   --read-mib N    the known region the guest reads (default 64 MiB of a
#                   base of N+64 MiB)
#   --netem LIST    also run the three cases with that many ms of delay added
#                   to the S3 connection (tc netem on the loopback device of a
#                   network namespace of their own, so each packet waits that
#                   long; the round trip is twice that).  Needs root.  Where
#                   the kernel has no sch_netem, a userspace proxy between
#                   imgfs and S3 adds the same one-way delay instead
#                   (tests/integration/vmkit/delayproxy.py; marked "proxy").
# Environment: IMGSTORE_BUILD (default ./build), BENCH_PORT (default 25000;
# ports PORT..PORT+4, and PORT+10.. for the netem runs), BENCH_DIR (work dir,
# default a fresh /tmp dir, removed afterwards), IMGSTORE_VMKIT_CACHE (kernel
# cache and KVM verdict), IMGSTORE_VMKIT_ACCEL (kvm or tcg: skip the KVM
# probe; see tests/integration/vmkit).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
BUILD=${IMGSTORE_BUILD:-$ROOT/build}
PORT=${BENCH_PORT:-25000}
ROUNDS=3 READ_MIB=64 NETEM="" INNER=""
while [ $# -gt 0 ]; do
	case $1 in
	--rounds) ROUNDS=$2; shift 2 ;;
	--read-mib) READ_MIB=$2; shift 2 ;;
	--netem) NETEM=$2; shift 2 ;;
	--inner) INNER=$2; shift 2 ;; # internal: run the suite at this delay (ms) here
	-h | --help) sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) echo "boot.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
	esac
done
LABCTL=$BUILD/sync/labctl IMGFS=$BUILD/fs/imgfs
for b in "$LABCTL" "$IMGFS"; do
	[ -x "$b" ] || { echo "boot.sh: $b is not built (ninja -C $BUILD)" >&2; exit 1; }
done
command -v qemu-system-x86_64 >/dev/null || { echo "boot.sh: qemu-system-x86_64 missing" >&2; exit 1; }
PY=/usr/bin/python3
export PYTHONPATH=$ROOT/tests/integration${PYTHONPATH:+:$PYTHONPATH}
export IMGSTORE_LOG=warn

own_dir=0
if [ -z "${BENCH_DIR:-}" ]; then
	BENCH_DIR=$(mktemp -d /tmp/imgstore-bench-boot.XXXXXX)
	own_dir=1
fi
export BENCH_DIR
RESULTS=$BENCH_DIR/results.tsv

# ------------------------------------------------------------------ one suite
# run_suite LABEL PORT [PROXY_DELAY_MS]: (a), (b), (c) ROUNDS times each;
# appends "label round case seconds guest-seconds" lines to $RESULTS.  With PROXY_DELAY_MS, imgfs
# talks to S3 through delayproxy.py.
imgfs_pid="" mnt="" s3dir="" proxy_pid=""
stop_mount() {
	if [ -n "$imgfs_pid" ]; then
		fusermount3 -u "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null || true
		wait "$imgfs_pid" 2>/dev/null || true
		imgfs_pid=""
	fi
}
suite_cleanup() {
	stop_mount
	if [ -n "$proxy_pid" ]; then
		kill "$proxy_pid" 2>/dev/null || true
		wait "$proxy_pid" 2>/dev/null || true
		proxy_pid=""
	fi
	[ -z "$s3dir" ] || deploy/local-s3.sh stop "$s3dir" >/dev/null 2>&1 || true
	s3dir=""
}
run_suite() {
	local delay=$1 port=$2 pdelay=${3:-} d=$BENCH_DIR/suite-$1
	local cache=$d/cache endpoint
	mnt=$d/mnt s3dir=$d/s3
	mkdir -p "$d" "$mnt"
	start_mount() { # start_mount CACHE_DIR
		E2_ENDPOINT=$endpoint "$IMGFS" -f --cache-dir "$1" "$mnt" 2>>"$d/imgfs.log" &
		imgfs_pid=$!
		for _ in $(seq 1 300); do
			[ -d "$mnt/.imgstore" ] && return 0
			sleep 0.05
		done
		echo "boot.sh: imgfs did not mount (see $d/imgfs.log)" >&2
		return 1
	}
	deploy/local-s3.sh start "$s3dir" "$port" bench >/dev/null
	eval "$(deploy/local-s3.sh env "$s3dir")"
	"$LABCTL" images upload --source "$BASE" --destination bench/base.qcow2 >/dev/null
	endpoint=$E2_ENDPOINT
	if [ -n "$pdelay" ]; then
		coproc PROXY { exec $PY -m vmkit.delayproxy --target "${E2_ENDPOINT#http://}" \
			--delay-ms "$pdelay"; }
		# shellcheck disable=SC2153 # PROXY_PID: set by coproc
		proxy_pid=$PROXY_PID
		local ready
		read -r ready _port <&"${PROXY[0]}"
		[ "$ready" = READY ] || { echo "boot.sh: the delay proxy did not start" >&2; return 1; }
		endpoint=http://127.0.0.1:$_port
	fi

	boot_once() { # boot_once LABEL BACKING
		local ov=$d/overlay.qcow2 out
		rm -f "$ov"
		qemu-img create -q -f qcow2 -b "$2" -F qcow2 "$ov"
		out=$($PY -m vmkit boot --drive "file=$ov,format=qcow2,if=virtio" --initrd "$INITRD" \
			--off $((1 << 20)) --len $((READ_MIB << 20)) --expect "$REGION_SHA" \
			--marker "BENCH-$1-$RANDOM" --marker-off $(((READ_MIB + 8) << 20)) \
			--timeout 600 --log "$d/serial-$1.log" --json) || {
			echo "boot.sh: the $1 boot failed: $out (log: $d/serial-$1.log)" >&2
			return 1
		}
		$PY -c 'import json,sys; r = json.loads(sys.argv[1])
print(r["seconds"], round(r["guest_done"] - r["guest_start"], 3))' "$out"
	}
	local r t
	for r in $(seq 1 "$ROUNDS"); do
		# (a) local copy (page cache warm after the first round, as on a host)
		t=$(boot_once local "$LOCAL_BASE")
		echo "$delay $r local $t" >>"$RESULTS"
		# (b) cold: a fresh cache and a fresh mount, page cache dropped
		stop_mount
		rm -rf "$cache"
		sync
		echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
		start_mount "$cache"
		t=$(boot_once cold "$mnt/.imgstore/by-sha256/$BASE_SHA")
		echo "$delay $r cold $t" >>"$RESULTS"
		echo "$delay cold $(tr -d '\n' <"$mnt/.imgstore/stats")" >>"$BENCH_DIR/stats.txt"
		# (c) warm: remount on the same cache
		stop_mount
		sync
		echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
		start_mount "$cache"
		t=$(boot_once warm "$mnt/.imgstore/by-sha256/$BASE_SHA")
		echo "$delay $r warm $t" >>"$RESULTS"
		echo "$delay warm $(tr -d '\n' <"$mnt/.imgstore/stats")" >>"$BENCH_DIR/stats.txt"
		printf 'boot.sh: %3s ms round %d done\n' "$delay" "$r" >&2
	done
	suite_cleanup
}

if [ -n "$INNER" ]; then
	# inside our own network namespace: loopback up, with the delay on it
	trap suite_cleanup EXIT
	ip link set lo up
	tc qdisc add dev lo root netem delay "${INNER}ms"
	run_suite "$INNER" "$PORT"
	exit 0
fi

cleanup() {
	suite_cleanup
	for ns in "${NAMESPACES[@]:-}"; do
		if [ -n "$ns" ]; then ip netns del "$ns" 2>/dev/null || true; fi
	done
	[ $own_dir = 1 ] && rm -rf "$BENCH_DIR"
}
NAMESPACES=()
trap cleanup EXIT

# ------------------------------------------------------------------ the guest
echo "boot.sh: preparing the guest (kernel, initramfs, a base with ${READ_MIB} MiB to read)" >&2
$PY -m vmkit kernel >/dev/null
# every boot below is a `vmkit boot` process of its own: settle KVM or TCG
# once, here (a KVM probe on the first run after a host boot; cached after)
echo "boot.sh: guests run under $($PY -m vmkit accel)" >&2
export INITRD=$BENCH_DIR/initrd.img
$PY -m vmkit initramfs "$INITRD"
export LOCAL_BASE=$BENCH_DIR/base.qcow2
info=$($PY -m vmkit base "$LOCAL_BASE" --size $((READ_MIB + 64)) --off 1 --len "$READ_MIB" \
	--marker-off $((READ_MIB + 8)))
REGION_SHA=$($PY -c 'import json,sys; print(json.loads(sys.argv[1])["region_sha256"])' "$info")
export BASE=$LOCAL_BASE
BASE_SHA=$(sha256sum "$LOCAL_BASE" | cut -d' ' -f1)
export REGION_SHA BASE_SHA
export ROUNDS READ_MIB
: >"$RESULTS"

run_suite 0 "$PORT"
netem=""
if [ -n "$NETEM" ]; then
	[ "$(id -u)" = 0 ] || { echo "boot.sh: --netem needs root" >&2; exit 1; }
	ns=imgstore-boot-$$-probe
	if ip netns add "$ns" 2>/dev/null; then
		ip netns exec "$ns" tc qdisc add dev lo root netem delay 1ms 2>/dev/null && netem=1
		ip netns del "$ns"
	fi
	[ -n "$netem" ] || echo "boot.sh: no tc netem here (sch_netem missing): adding the delay" \
		"with a userspace proxy between imgfs and S3 instead" >&2
fi
i=1
for delay in $NETEM; do
	if [ -n "$netem" ]; then
		ns=imgstore-boot-$$-$delay
		ip netns add "$ns"
		NAMESPACES+=("$ns")
		ip netns exec "$ns" bash "$0" --inner "$delay" --rounds "$ROUNDS" --read-mib "$READ_MIB"
		ip netns del "$ns"
	else
		run_suite "${delay}-proxy" $((PORT + 10 * i)) "$delay"
	fi
	i=$((i + 1))
done

# ------------------------------------------------------------------ the table
$PY - "$RESULTS" "$ROUNDS" "$READ_MIB" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
def key(label):
    ms, _, how = label.partition("-")
    return (int(ms), how)
t, g = {}, {}
for label, rnd, case, secs, guest in rows:
    t[(key(label), rnd, case)] = float(secs)
    g[(key(label), rnd, case)] = float(guest)
def med(d, lat, case):
    return statistics.median(v for (l, _, c), v in d.items() if l == lat and c == case)
def ratio(d, lat, case):  # median over rounds of the per-round ratio (same-round reference)
    rs = {r for (l, r, _) in d if l == lat}
    return statistics.median(d[(lat, r, case)] / d[(lat, r, "local")] for r in rs)
print(f"\nboot-and-read of {sys.argv[3]} MiB: medians of {sys.argv[2]} rounds; ratios are the"
      "\nmedian of per-round ratios against (a) of the same round.  'boot' = QEMU start to"
      "\nexit; 'guest' = /init start to done inside the guest (the disk read + marker write)")
print(f"{'added latency':>14} | {'boot (a)':>8} {'(b) cold':>8} {'(c) warm':>8} {'b/a':>5} {'c/a':>5} |"
      f" {'guest (a)':>9} {'(b)':>6} {'(c)':>6} {'b/a':>5} {'c/a':>5}")
for lat in sorted({l for (l, _, _) in t}):
    name = f"{lat[0]} ms" + (f" ({lat[1]})" if lat[1] else "")
    print(f"{name:>14} | {med(t, lat, 'local'):7.2f}s {med(t, lat, 'cold'):7.2f}s "
          f"{med(t, lat, 'warm'):7.2f}s {ratio(t, lat, 'cold'):5.2f} {ratio(t, lat, 'warm'):5.2f} |"
          f" {med(g, lat, 'local'):8.2f}s {med(g, lat, 'cold'):5.2f}s {med(g, lat, 'warm'):5.2f}s"
          f" {ratio(g, lat, 'cold'):5.2f} {ratio(g, lat, 'warm'):5.2f}")
print("goals at 0 ms: b/a <= 1.5, c/a <= 1.1")
import json, os
st = os.path.join(os.path.dirname(sys.argv[1]), "stats.txt")
if os.path.exists(st):
    fetched = {}
    for line in open(st):
        label, case, js = line.split(" ", 2)
        fetched.setdefault((label, case), []).append(json.loads(js).get("bytes_fetched", 0))
    print("imgfs bytes_fetched per boot (MiB): " + ", ".join(
        f"{l} {c} {statistics.median(v) / 1048576:.1f}" for (l, c), v in sorted(fetched.items())))
PY
