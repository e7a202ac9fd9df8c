#!/bin/bash
# Benchmark: `labctl images upload` of a 1 GiB file against `curl -T` (one
# single PUT, no hashing) of the same file to the same local S3 server, in the
# same run.  Prints both times, rates, labctl's peak RSS and the ratio
# (labctl time / curl time; below 1.0 means labctl is faster).
#
#   tests/bench/upload.sh [SIZE_MIB] [ROUNDS]      defaults: 1024 MiB, 3 rounds
# Environment: IMGSTORE_BUILD (default ./build), BENCH_PORT (default 24000),
# BENCH_DIR (work dir, default a fresh /tmp dir, removed afterwards),
# BENCH_UPLOAD_ARGS (extra labctl upload options, e.g. "--part-size 64M").
#
# WAN case (after the rounds): the same two uploads once more through
# tests/integration/vmkit/delayproxy.py, modelling a long-haul path to a
# cloud endpoint as mount.sh does: BENCH_WAN_DELAY_MS (default 10) each way,
# so 20 ms added round trip, and BENCH_WAN_RATE_MBPS (default 40) MB/s per
# TCP connection and direction (what one stream's window over that round
# trip gets), with no cap on the connections together.  labctl can beat
# curl's one stream only with parallel parts.  BENCH_WAN_RATE_MBPS=0 skips it.
#
# curl 7.88's --aws-sigv4 sends no x-amz-content-sha256 header, which Swift's
# s3api requires; passing `x-amz-content-sha256: UNSIGNED-PAYLOAD` ourselves
# works (curl signs it with the other headers).  The access key "test:tester"
# contains ':', so the key pair goes through a netrc file, not --user.
set -euo pipefail
# extra labctl options, split into words as a shell would
read -r -a UPLOAD_ARGS <<<"${BENCH_UPLOAD_ARGS:-}"
cd "$(dirname "$0")/../.."
ROOT=$PWD
SIZE_MIB=${1:-1024}
ROUNDS=${2:-3}
BUILD=${IMGSTORE_BUILD:-$ROOT/build}
PORT=${BENCH_PORT:-24000}
WAN_DELAY=${BENCH_WAN_DELAY_MS:-10}
WAN_RATE=${BENCH_WAN_RATE_MBPS:-40}
PY=/usr/bin/python3
export PYTHONPATH=$ROOT/tests/integration${PYTHONPATH:+:$PYTHONPATH}
LABCTL=$BUILD/sync/labctl
[ -x "$LABCTL" ] || { echo "upload.sh: $LABCTL is not built (ninja -C $BUILD)" >&2; exit 1; }

own_dir=0
if [ -z "${BENCH_DIR:-}" ]; then
	BENCH_DIR=$(mktemp -d /tmp/imgstore-bench-upload.XXXXXX)
	own_dir=1
fi
S3DIR=$BENCH_DIR/s3
PROXY_PID=""
cleanup() {
	[ -n "$PROXY_PID" ] && kill "$PROXY_PID" 2>/dev/null
	deploy/local-s3.sh stop "$S3DIR" >/dev/null 2>&1 || true
	[ $own_dir = 1 ] && rm -rf "$BENCH_DIR"
}
trap cleanup EXIT

deploy/local-s3.sh start "$S3DIR" "$PORT" bench >/dev/null
eval "$(deploy/local-s3.sh env "$S3DIR")"
export IMGSTORE_LOG=warn

FILE=$BENCH_DIR/image.raw
echo "upload.sh: writing a ${SIZE_MIB} MiB test file"
# random data (incompressible, no zero blocks): the worst case for nobody
head -c $((SIZE_MIB * 1024 * 1024)) /dev/urandom >"$FILE"
cat "$FILE" >/dev/null # page cache: both readers start warm

NETRC=$BENCH_DIR/netrc
umask 077
printf 'machine 127.0.0.1 login %s password %s\n' "$E2_ACCESS_KEY" "$E2_SECRET_KEY" >"$NETRC"
umask 022

now() { date +%s.%N; }
# curl -T: the file in one signed PUT with an unsigned body; add the URL
CURL_PUT=(curl -sS -f -o /dev/null --aws-sigv4 "aws:amz:${E2_REGION}:s3" --netrc-file "$NETRC"
	-H "x-amz-content-sha256: UNSIGNED-PAYLOAD" -T "$FILE")
# flush what the previous contender left dirty (its files, the server's objects)
# so that its writeback does not land in the next one's time
settle() {
	sync
	sleep 1
}
calc() { awk "BEGIN { printf \"%.6f\", $1 }"; }
# CPU seconds used so far by every process of the local S3 server (the server
# shares this machine's cores with the client: what one contender makes it
# do, e.g. hash a signed payload, is time the other does not have)
HZ=$(getconf CLK_TCK)
server_cpu() {
	local pgs
	pgs=" $(awk '{ printf "%s ", $2 }' "$S3DIR/etc/pids")"
	# a process that exits between the glob and cat is no error
	{ cat /proc/[0-9]*/stat 2>/dev/null || true; } |
		awk -v pgs="$pgs" -v hz="$HZ" 'index(pgs, " " $5 " ") { t += $14 + $15 }
			END { printf "%.2f", t / hz }'
}

best_labctl=999999 best_curl=999999 rss=0
for r in $(seq 1 "$ROUNDS"); do
	settle
	s0=$(server_cpu)
	t0=$(now)
	/usr/bin/time -f '%U %S' -o "$BENCH_DIR/curl.time" "${CURL_PUT[@]}" "$E2_ENDPOINT/$E2_BUCKET/curl/image-$r.raw"
	t1=$(now)
	s1=$(server_cpu)
	settle
	s2=$(server_cpu)
	t2=$(now)
	/usr/bin/time -f '%U %S %M' -o "$BENCH_DIR/time.out" "$LABCTL" images upload \
		--source "$FILE" --destination "labctl/image-$r.raw" "${UPLOAD_ARGS[@]}" >/dev/null
	t3=$(now)
	s3=$(server_cpu)
	c=$(calc "$t1 - $t0")
	l=$(calc "$t3 - $t2")
	read -r lu ls m < <(tail -n1 "$BENCH_DIR/time.out")
	read -r cu cs < <(tail -n1 "$BENCH_DIR/curl.time")
	printf 'round %d: curl -T %.2f s, labctl upload %.2f s (peak RSS %d MiB)\n' "$r" "$c" "$l" $((m / 1024))
	printf '         CPU s: curl %.2f + server %.2f;  labctl %.2f + server %.2f\n' \
		"$(calc "$cu + $cs")" "$(calc "$s1 - $s0")" "$(calc "$lu + $ls")" "$(calc "$s3 - $s2")"
	sum_lcpu=$(calc "${sum_lcpu:-0} + $lu + $ls")
	sum_lsrv=$(calc "${sum_lsrv:-0} + $s3 - $s2")
	sum_csrv=$(calc "${sum_csrv:-0} + $s1 - $s0")
	best_curl=$(calc "$c < $best_curl ? $c : $best_curl")
	best_labctl=$(calc "$l < $best_labctl ? $l : $best_labctl")
	((m > rss)) && rss=$m
done

# ---- WAN: through the delay proxy (see the top for the model)
WAN_CURL="" WAN_LABCTL=""
if [ "$WAN_RATE" != 0 ]; then
	echo "upload.sh: WAN case, +$((2 * WAN_DELAY)) ms round trip, $WAN_RATE MB/s per connection"
	coproc PROXY { exec $PY -m vmkit.delayproxy --target "${E2_ENDPOINT#http://}" \
		--delay-ms "$WAN_DELAY" --rate-mbps "$WAN_RATE"; }
	read -r ready wport <&"${PROXY[0]}"
	[ "$ready" = READY ] || { echo "upload.sh: the delay proxy did not start" >&2; exit 1; }
	settle
	t0=$(now)
	"${CURL_PUT[@]}" "http://127.0.0.1:$wport/$E2_BUCKET/curl/image-wan.raw"
	t1=$(now)
	settle
	t2=$(now)
	"$LABCTL" images upload --endpoint "http://127.0.0.1:$wport" --source "$FILE" \
		--destination labctl/image-wan.raw "${UPLOAD_ARGS[@]}" >/dev/null
	t3=$(now)
	WAN_CURL=$(calc "$t1 - $t0")
	WAN_LABCTL=$(calc "$t3 - $t2")
	printf '  curl -T %.2f s, labctl upload %.2f s\n' "$WAN_CURL" "$WAN_LABCTL"
fi

# the uploads are real: same size on the server, labctl's record complete
"$LABCTL" images list --json | /usr/bin/python3 -c '
import json, sys
items = [i for i in json.load(sys.stdin) if i["destination"].startswith("labctl/")]
assert items and all(i["complete"] for i in items), items
'

mb=$((SIZE_MIB * 1048576))
echo
printf '%-28s %8s %10s\n' "" "best s" "MB/s"
printf '%-28s %8.2f %10.1f\n' "curl -T (single PUT)" "$best_curl" "$(calc "$mb / $best_curl / 1000000")"
printf '%-28s %8.2f %10.1f\n' "labctl images upload" "$best_labctl" "$(calc "$mb / $best_labctl / 1000000")"
printf 'ratio labctl/curl: %.2f  (goal <= 1.00)   labctl peak RSS: %d MiB (goal < 64)\n' \
	"$(calc "$best_labctl / $best_curl")" $((rss / 1024))
gib=$(calc "$SIZE_MIB / 1024 * $ROUNDS")
printf 'labctl CPU per GiB: %.2f s (goal <= 1.2); server CPU per GiB: labctl %.2f s, curl %.2f s (labctl/curl %.2f)\n' \
	"$(calc "$sum_lcpu / $gib")" "$(calc "$sum_lsrv / $gib")" "$(calc "$sum_csrv / $gib")" \
	"$(calc "$sum_lsrv / $sum_csrv")"
if [ -n "$WAN_CURL" ]; then
	printf 'WAN (+%d ms, %s MB/s per connection): curl -T %.1f MB/s, labctl %.1f MB/s, labctl/curl speed %.2f (goal >= 1.5)\n' \
		$((2 * WAN_DELAY)) "$WAN_RATE" "$(calc "$mb / $WAN_CURL / 1000000")" \
		"$(calc "$mb / $WAN_LABCTL / 1000000")" "$(calc "$WAN_CURL / $WAN_LABCTL")"
fi
