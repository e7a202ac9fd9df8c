# Sourced by the benchmarks that mount imgfs (cold.sh, mixed.sh), which run
# from the top of the tree.  They set MNT (the mount point), MPID (imgfs's
# pid, or empty), S3DIR (the local S3 server's directory) and PY (a python3).
# shellcheck shell=bash

load() { cut -d' ' -f1 /proc/loadavg; }
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }

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
