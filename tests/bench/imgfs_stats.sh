# Sourced by the benchmark scripts: the mount's counters.  Needs MNT (the
# mount point) and PY (a python3).
# shellcheck shell=bash

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
