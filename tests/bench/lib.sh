# Sourced by the benchmarks that mount imgfs (cold.sh, mixed.sh, mount.sh),
# which run from the top of the tree.  They set S3DIR (the local S3 server's
# directory) and, for stat_of, wait_cache and stop_all, MNT (the mount
# point), MPID (imgfs's pid, or empty) and PY (a python3).
# shellcheck shell=bash

load() { cut -d' ' -f1 /proc/loadavg; }
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }

HZ=$(getconf CLK_TCK)
# CPU seconds so far of process $1 and its threads, user + system; with
# "user" as $2, user alone: what its own code costs, without the kernel's
# copies, which vary most from run to run on a shared host.
cpu_s() {
	awk -v hz="$HZ" -v user="${2:-}" '{ sub(/.*\) /, ""); printf "%.2f", (user ? $12 : $12 + $13) / hz }' "/proc/$1/stat"
}
# Busy seconds of all cores so far (user, nice, system, irq, softirq): with
# the server's taken out, what a read cost the machine, kernel threads (page
# cache writeback) included.
machine_s() { awk -v hz="$HZ" '/^cpu / { printf "%.2f", ($2 + $3 + $4 + $7 + $8) / hz }' /proc/stat; }
# CPU seconds so far of the S3 server: the process groups local-s3.sh recorded.
server_s() {
	local groups
	groups=" $(awk '{ printf "%s ", $2 }' "$S3DIR/etc/pids")"
	awk -v hz="$HZ" -v g="$groups" '{ sub(/^.*\) /, ""); if (index(g, " " $3 " ")) s += $12 + $13 }
		END { printf "%.2f", s / hz }' /proc/[0-9]*/stat 2>/dev/null
}

# What a page the kernel hands out costs on this machine (tests/bench/
# page_touch.c), printed after the figures it explains: every page-cache page
# a read fills is one, and on a VM whose host takes freed memory back, a
# fresh one costs several times one touched before.  Needs BUILD.
page_cost() {
	if [ -x "$BUILD/tests/bench/page_touch" ]; then
		"$BUILD/tests/bench/page_touch" 512
	else
		echo "page_touch: not built ($BUILD/tests/bench/page_touch)"
	fi
}

# One counter of $MNT/.imgstore/stats.
stat_of() { $PY -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$MNT/.imgstore/stats" "$1"; }

# Until the cache writer has stored what was read (cache_bytes stops moving;
# at most 2 minutes).
wait_cache() {
	local last=-1 cur
	for _ in $(seq 1 240); do
		cur=$(stat_of cache_bytes)
		[ "$cur" = "$last" ] && return 0
		last=$cur
		sleep 0.5
	done
}

# For the exit trap: the mount (lazily, if a reader is stuck), imgfs, the
# S3 server.
stop_all() {
	mountpoint -q "$MNT" && fusermount3 -uz "$MNT"
	[ -n "$MPID" ] && kill "$MPID" 2>/dev/null
	deploy/local-s3.sh stop "$S3DIR" >/dev/null 2>&1
}
