#!/bin/bash
# Benchmark: imgfs side by side with curl GET of the same object (the limit)
# and with the mounts users would pick instead, s3fs (-o use_cache) and
# rclone mount (--vfs-cache-mode full), in one run against one local S3
# server.  Prints every figure and a table of ratios against the goals of
# issue 16 (performance), and the CPU seconds each mount spent per GiB of the
# cold and of the warm read (utime + stime of its process).
#
#   tests/bench/mount.sh [SIZE_MIB] [NFILES]        defaults: 1024 MiB, 10000 objects
# Environment: IMGSTORE_BUILD (default ./build), BENCH_PORT (default 23000;
# uses PORT..PORT+4), BENCH_DIR (work dir, default a fresh /tmp dir, removed
# afterwards), BENCH_RUNTIME (seconds per fio run, default 10),
# BENCH_WARM_READS (warm reads per mount, default 2: the best counts),
# BENCH_PEERS (default "s3fs rclone"; empty or blank for imgfs and curl
# alone; sudo drops variables set before it: `sudo BENCH_PEERS= mount.sh`),
# IMGSTORE_S3_SERVER=radosgw for Ceph's radosgw instead of Swift (uses
# PORT..PORT+9; deploy/setup.sh --radosgw).  Needs root (drop_caches,
# mounts); installs s3fs, rclone and fio from apt when they are missing.
#
# Figures, per mount, on a SIZE_MIB object of random bytes:
#   cold   sequential read (dd bs=1M) with an empty cache and no page cache
#   warm   the same read again after dropping the page cache (from the mount's
#          own cache: its slot file for imgfs, cache files for the peers),
#          BENCH_WARM_READS times, the page cache dropped before each; the
#          fastest counts, and its CPU.  On this kind of VM the same copies
#          out of the page cache cost a plain dd three to four times as much
#          from one read to the next (tests/bench/README.md), so one read
#          says more about the VM than about the mount
#   rand   4 KiB random reads, O_DIRECT, 4 jobs (fio, psync), warm
#   ls     the first `ls -la` of a directory of NFILES objects on a fresh mount
#          (for imgfs also the mount itself, which lists the bucket and reads
#          the checksum records, from the record index that `labctl images
#          index` writes after the upload: it is done before the mount appears)
#   CPU    per GiB of the cold read (until the mount's cache is written) and
#          of the warm one: utime + stime of the mount's process.  And the
#          machine's: every core's busy time from /proc/stat less the S3
#          server's processes, from the cold read until `sync` returns, so
#          that the kernel's writeback of the mount's cache counts whichever
#          thread does it (imgfs commits with fdatasync, and the flush is
#          charged to it; s3fs and rclone leave it to the kernel's flusher
#          threads); the reading dd and the kernel's side of FUSE are in it
#          for every mount alike
#   RSS    peak resident memory of the mount's process over all of the above
#   WAN    imgfs cold sequential read against one curl GET, both through
#          tests/integration/vmkit/delayproxy.py modelling a long-haul path
#          to a cloud endpoint: BENCH_WAN_DELAY_MS (default 10) each way, so
#          20 ms added round trip, and BENCH_WAN_RATE_MBPS (default 40) MB/s
#          per TCP connection and direction (what one stream's window over
#          that round trip gets), with no cap on the connections together.
#          imgfs can beat one stream only with parallel ranged GETs.
#          BENCH_WAN_RATE_MBPS=0 skips it.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=tests/bench/lib.sh
. tests/bench/lib.sh
ROOT=$PWD
SIZE_MIB=${1:-1024}
NFILES=${2:-10000}
BUILD=${IMGSTORE_BUILD:-$ROOT/build}
PORT=${BENCH_PORT:-23000}
RUNTIME=${BENCH_RUNTIME:-10}
WARM_READS=${BENCH_WARM_READS:-2}
# word-split once: a blank value means no peers, like an empty one
read -r -a peer_list <<<"${BENCH_PEERS-s3fs rclone}" || true
PEERS="${peer_list[*]}"
IMGFS=$BUILD/fs/imgfs
LABCTL=$BUILD/sync/labctl
PY=/usr/bin/python3
WAN_DELAY=${BENCH_WAN_DELAY_MS:-10}
WAN_RATE=${BENCH_WAN_RATE_MBPS:-40}
export PYTHONPATH=$ROOT/tests/integration${PYTHONPATH:+:$PYTHONPATH}
for b in "$IMGFS" "$LABCTL"; do
	[ -x "$b" ] || { echo "mount.sh: $b is not built (ninja -C $BUILD)" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "mount.sh: needs root (drop_caches, FUSE mounts)" >&2; exit 1; }

need=()
command -v fio >/dev/null || need+=(fio)
for p in $PEERS; do command -v "$p" >/dev/null || need+=("$p"); done
if [ ${#need[@]} -gt 0 ]; then
	echo "mount.sh: installing ${need[*]}"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null
fi

own_dir=0
if [ -z "${BENCH_DIR:-}" ]; then
	BENCH_DIR=$(mktemp -d /tmp/imgstore-bench-mount.XXXXXX)
	own_dir=1
fi
S3DIR=$BENCH_DIR/s3
PIDS=()
MOUNTS=()
cleanup() {
	set +e
	for m in "${MOUNTS[@]}"; do fusermount3 -uz "$m" 2>/dev/null; done
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
	deploy/local-s3.sh stop "$S3DIR" >/dev/null 2>&1
	[ $own_dir = 1 ] && rm -rf "$BENCH_DIR"
}
trap cleanup EXIT

deploy/local-s3.sh start "$S3DIR" "$PORT" bench >/dev/null
echo "mount.sh: S3 server $(cat "$S3DIR/server") on 127.0.0.1:$PORT"
eval "$(deploy/local-s3.sh env "$S3DIR")"
export IMGSTORE_LOG=warn
unset AWS_CA_BUNDLE # rclone refuses an empty/foreign one
BUCKET=$E2_BUCKET
LSBUCKET=benchls
KEY=images/bench/image.raw
SIZE=$((SIZE_MIB * 1048576))

now() { date +%s.%N; }
calc() { awk "BEGIN { printf \"%.6f\", ($1) }"; }

# ---- data: one big object (labctl: image + record), NFILES small ones
FILE=$BENCH_DIR/image.raw
echo "mount.sh: writing and uploading a ${SIZE_MIB} MiB object"
head -c "$SIZE" /dev/urandom >"$FILE"
"$LABCTL" images upload --source "$FILE" --destination bench/image.raw >/dev/null
rm -f "$FILE"

echo "mount.sh: uploading $NFILES small objects with records to bucket $LSBUCKET"
$PY - "$LSBUCKET" "$NFILES" <<'EOF'
import hashlib, json, os, sys
from concurrent.futures import ThreadPoolExecutor
import boto3
from botocore.config import Config
bucket, n = sys.argv[1], int(sys.argv[2])
cfg = Config(s3={"addressing_style": "path"}, max_pool_connections=16,
             retries={"max_attempts": 5, "mode": "standard"})
s3 = boto3.client("s3", endpoint_url=os.environ["E2_ENDPOINT"],
                  aws_access_key_id=os.environ["E2_ACCESS_KEY"],
                  aws_secret_access_key=os.environ["E2_SECRET_KEY"],
                  region_name="us-east-1", config=cfg)
s3.create_bucket(Bucket=bucket)
def put(i):
    dest = f"many/f{i:05d}.raw"
    data = b"%d\n" % i
    etag = s3.put_object(Bucket=bucket, Key="images/" + dest, Body=data)["ETag"]
    rec = {"name": dest, "checksum": "sha256:" + hashlib.sha256(data).hexdigest(),
           "size": len(data), "uploadedAt": "2024-12-20T10:00:00Z", "etag": etag,
           "blocks": {"size": 1048576, "algorithm": "sha256",
                      "hashes": [hashlib.sha256(data).hexdigest()]}}
    s3.put_object(Bucket=bucket, Key=f"metadata/{dest}.json", Body=json.dumps(rec).encode())
with ThreadPoolExecutor(16) as ex:
    list(ex.map(put, range(n)))
EOF

# imgfs reads every record from the record index (one GET) when it is there:
# build it as labctl sync/upload would have
echo "mount.sh: building the record index of $LSBUCKET (labctl images index)"
t0=$(now)
E2_BUCKET=$LSBUCKET "$LABCTL" images index >/dev/null
t1=$(now)
echo "  record index of $NFILES records built in $(printf %.2f "$(calc "$t1 - $t0")") s"

# ---- the limit: curl GET of the same object
# (Swift's s3api wants x-amz-content-sha256; the key has a ':', so a netrc)
NETRC=$BENCH_DIR/netrc
(umask 077 && printf 'machine 127.0.0.1 login %s password %s\n' "$E2_ACCESS_KEY" \
	"$E2_SECRET_KEY" >"$NETRC")
curl_get() { # [ENDPOINT]
	curl -sS -f -o /dev/null --aws-sigv4 "aws:amz:${E2_REGION}:s3" --netrc-file "$NETRC" \
		-H "x-amz-content-sha256: UNSIGNED-PAYLOAD" "${1:-$E2_ENDPOINT}/$BUCKET/$KEY"
}
best_curl=0
for r in 1 2; do
	t0=$(now)
	curl_get
	t1=$(now)
	c=$(calc "$SIZE / ($t1 - $t0) / 1000000")
	echo "curl GET round $r: $c MB/s"
	best_curl=$(calc "$c > $best_curl ? $c : $best_curl")
done

# ---- mounts
# start_mount TOOL MNT CACHE BUCKET: mounts, sets MPID
start_mount() {
	local tool=$1 mnt=$2 cache=$3 bucket=$4 log
	log=$BENCH_DIR/$1-$(basename "$2").log
	mkdir -p "$mnt" "$cache"
	case $tool in
	imgfs)
		E2_BUCKET=$bucket E2_ENDPOINT=${MOUNT_ENDPOINT:-$E2_ENDPOINT} \
			"$IMGFS" -f --cache-dir "$cache" "$mnt" >"$log" 2>&1 &
		;;
	s3fs)
		AWSACCESSKEYID=$E2_ACCESS_KEY AWSSECRETACCESSKEY=$E2_SECRET_KEY \
			s3fs "$bucket" "$mnt" -f -o url="$E2_ENDPOINT" -o use_path_request_style \
			-o endpoint="$E2_REGION" -o use_cache="$cache" -o del_cache >"$log" 2>&1 &
		;;
	rclone)
		RCLONE_CONFIG_B_TYPE=s3 RCLONE_CONFIG_B_PROVIDER=Other \
			RCLONE_CONFIG_B_ACCESS_KEY_ID=$E2_ACCESS_KEY \
			RCLONE_CONFIG_B_SECRET_ACCESS_KEY=$E2_SECRET_KEY \
			RCLONE_CONFIG_B_ENDPOINT=$E2_ENDPOINT RCLONE_CONFIG_B_REGION=$E2_REGION \
			RCLONE_CONFIG_B_FORCE_PATH_STYLE=true \
			rclone mount "b:$bucket" "$mnt" --vfs-cache-mode full --cache-dir "$cache" \
			--config /dev/null >"$log" 2>&1 &
		;;
	esac
	MPID=$!
	PIDS+=("$MPID")
	MOUNTS+=("$mnt")
	for _ in $(seq 1 600); do
		mountpoint -q "$mnt" && return 0
		kill -0 "$MPID" 2>/dev/null || break
		sleep 0.1
	done
	echo "mount.sh: $tool did not mount:" >&2
	cat "$log" >&2
	exit 1
}

stop_mount() { # TOOL MNT PID
	fusermount3 -u "$2" 2>/dev/null || fusermount3 -uz "$2"
	for _ in $(seq 1 300); do kill -0 "$3" 2>/dev/null || return 0; sleep 0.1; done
	kill "$3" 2>/dev/null || true
}

peak_rss_mib() { awk '/VmHWM/ { printf "%d", $2 / 1024 }' "/proc/$1/status"; }

read_rate() { # FILE -> MB/s
	local t0 t1
	t0=$(now)
	dd if="$1" of=/dev/null bs=1M status=none
	t1=$(now)
	calc "$SIZE / ($t1 - $t0) / 1000000"
}

fio_iops() { # FILE -> IOPS
	fio --name=rand --filename="$1" --rw=randread --bs=4k --direct=1 --numjobs=4 \
		--ioengine=psync --time_based --runtime="$RUNTIME" --group_reporting \
		--output-format=json 2>/dev/null |
		$PY -c 'import json,sys; print(round(json.load(sys.stdin)["jobs"][0]["read"]["iops"]))'
}

# imgfs: cache inserts run behind the reads; "warm" means they are done
wait_imgfs_cache() { # MNT
	local last=-1 cur
	for _ in $(seq 1 120); do
		cur=$($PY -c 'import json,sys; print(json.load(open(sys.argv[1]))["cache_bytes"])' \
			"$1/.imgstore/stats")
		[ "$cur" = "$last" ] && return 0
		last=$cur
		sleep 0.5
	done
}

declare -A COLD WARM RAND LS MOUNT RSS CPU_COLD CPU_WARM CPU_MACHINE CPU_SERVER
for tool in imgfs $PEERS; do
	mnt=$BENCH_DIR/mnt-$tool
	echo "mount.sh: $tool"
	start_mount "$tool" "$mnt" "$BENCH_DIR/cache-$tool" "$BUCKET"
	pid=$MPID
	path=$mnt/$KEY
	[ "$tool" = imgfs ] && path=$mnt/bench/image.raw
	drop_caches
	c0=$(cpu_s "$pid") m0=$(machine_s) s0=$(server_s)
	COLD[$tool]=$(read_rate "$path")
	[ "$tool" = imgfs ] && wait_imgfs_cache "$mnt"
	c1=$(cpu_s "$pid")
	sync
	m1=$(machine_s) s1=$(server_s)
	CPU_MACHINE[$tool]=$(calc "(($m1 - $m0) - ($s1 - $s0)) * 1024 / $SIZE_MIB")
	# what the mount's requests cost the server: on two cores the cold rate
	# depends on it as much as on the mount's own CPU
	CPU_SERVER[$tool]=$(calc "($s1 - $s0) * 1024 / $SIZE_MIB")
	CPU_COLD[$tool]=$(calc "($c1 - $c0) * 1024 / $SIZE_MIB")
	WARM[$tool]=0 rates=""
	for _ in $(seq 1 "$WARM_READS"); do
		drop_caches
		w0=$(cpu_s "$pid")
		rate=$(read_rate "$path")
		cpu=$(calc "($(cpu_s "$pid") - $w0) * 1024 / $SIZE_MIB")
		rates="$rates ${rate%.*}"
		if awk "BEGIN { exit !($rate > ${WARM[$tool]}) }"; then
			WARM[$tool]=$rate CPU_WARM[$tool]=$cpu
		fi
	done
	echo "  warm reads (MB/s):$rates"
	echo "  CPU s per GiB: cold $(printf %.2f "${CPU_COLD[$tool]}") (until its cache is written), warm $(printf %.2f "${CPU_WARM[$tool]}"); machine less the S3 server, cold until sync: $(printf %.2f "${CPU_MACHINE[$tool]}"); the S3 server: $(printf %.2f "${CPU_SERVER[$tool]}")"
	drop_caches
	RAND[$tool]=$(fio_iops "$path")
	echo "  cold ${COLD[$tool]} MB/s, warm ${WARM[$tool]} MB/s, rand ${RAND[$tool]} IOPS"
	if [ "$tool" = imgfs ]; then
		$PY -c 'import json,sys; s=json.load(open(sys.argv[1])); print("  imgfs stats:", {k: s[k] for k in ["cache_hits","cache_misses","bytes_fetched","cache_bytes","cache_dropped","verify_failures","readahead_blocks","gets"]})' "$mnt/.imgstore/stats"
	fi
	RSS[$tool]=$(peak_rss_mib "$pid")
	stop_mount "$tool" "$mnt" "$pid"

	lmnt=$BENCH_DIR/ls-$tool
	dir=$lmnt/images/many
	[ "$tool" = imgfs ] && dir=$lmnt/many
	drop_caches
	t0=$(now)
	start_mount "$tool" "$lmnt" "$BENCH_DIR/lscache-$tool" "$LSBUCKET"
	lpid=$MPID
	t1=$(now)
	# shellcheck disable=SC2012 # the bench times what users run: ls -la
	n=$(ls -la "$dir" | wc -l)
	t2=$(now)
	MOUNT[$tool]=$(calc "$t1 - $t0")
	LS[$tool]=$(calc "$t2 - $t1")
	echo "  mount $(printf %.2f "${MOUNT[$tool]}") s, first ls -la $(printf %.2f "${LS[$tool]}") s ($((n - 3)) entries)"
	l=$(peak_rss_mib "$lpid")
	((l > RSS[$tool])) && RSS[$tool]=$l
	stop_mount "$tool" "$lmnt" "$lpid"
	echo "  peak RSS ${RSS[$tool]} MiB"
done

# ---- WAN: through the delay proxy (see the top for the model)
WAN_CURL="" WAN_IMGFS=""
if [ "$WAN_RATE" != 0 ]; then
	echo "mount.sh: WAN case, +$((2 * WAN_DELAY)) ms round trip, $WAN_RATE MB/s per connection"
	coproc PROXY { exec $PY -m vmkit.delayproxy --target "${E2_ENDPOINT#http://}" \
		--delay-ms "$WAN_DELAY" --rate-mbps "$WAN_RATE"; }
	PIDS+=("$PROXY_PID")
	read -r ready wport <&"${PROXY[0]}"
	[ "$ready" = READY ] || { echo "mount.sh: the delay proxy did not start" >&2; exit 1; }
	t0=$(now)
	curl_get "http://127.0.0.1:$wport"
	t1=$(now)
	WAN_CURL=$(calc "$SIZE / ($t1 - $t0) / 1000000")
	mnt=$BENCH_DIR/mnt-wan
	MOUNT_ENDPOINT=http://127.0.0.1:$wport start_mount imgfs "$mnt" "$BENCH_DIR/cache-wan" "$BUCKET"
	wpid=$MPID
	drop_caches
	WAN_IMGFS=$(read_rate "$mnt/bench/image.raw")
	stop_mount imgfs "$mnt" "$wpid"
	echo "  curl GET $WAN_CURL MB/s, imgfs cold $WAN_IMGFS MB/s"
fi

# ---- table
best_peer() { # ARRAYNAME max|min
	local -n a=$1
	local best="" v
	for p in $PEERS; do
		v=${a[$p]}
		if [ -z "$best" ]; then
			best=$v
		elif [ "$2" = max ]; then
			best=$(calc "$v > $best ? $v : $best")
		else
			best=$(calc "$v < $best ? $v : $best")
		fi
	done
	echo "${best:-0}"
}
verdict() { [ "$(calc "$1")" = "1.000000" ] && echo yes || echo NO; }
row() { # LABEL CURL ARRAYNAME RATIO_TEXT GOAL_TEXT MET
	local -n a=$3
	printf '%-36s %8s %8.1f' "$1" "$2" "${a[imgfs]}"
	for p in $PEERS; do printf ' %8.1f' "${a[$p]}"; done
	printf '  %-24s %-10s %s\n' "$4" "$5" "$6"
}
echo
printf '%-36s %8s %8s' "" curl imgfs
for p in $PEERS; do printf ' %8s' "$p"; done
printf '  %-24s %-10s %s\n' ratio goal met
# curl hashes and caches nothing, and on a small machine the loopback server
# takes the cores the client does not: the cold goal is against the peers
# that do the same work (curl's figure is shown for scale)
if [ -n "$PEERS" ]; then
	r=$(calc "${COLD[imgfs]} / $(best_peer COLD max)")
	row "cold sequential read (MB/s)" "$(printf %.1f "$best_curl")" COLD \
		"$(printf 'imgfs/best peer %.2f' "$r")" ">= 1.0" "$(verdict "$r >= 1.0")"
else
	r=$(calc "${COLD[imgfs]} / $best_curl")
	row "cold sequential read (MB/s)" "$(printf %.1f "$best_curl")" COLD \
		"$(printf 'imgfs/curl %.2f' "$r")" "" ""
fi
if [[ " $PEERS " == *" s3fs "* ]]; then
	r=$(calc "${WARM[imgfs]} / ${WARM[s3fs]}")
	row "warm re-read, no page cache (MB/s)" - WARM "$(printf 'imgfs/s3fs %.2f' "$r")" \
		">= 1.5" "$(verdict "$r >= 1.5")"
fi
if [ -n "$PEERS" ]; then
	r=$(calc "${RAND[imgfs]} / $(best_peer RAND max)")
	row "4 KiB random, O_DIRECT, 4 jobs (IOPS)" - RAND "$(printf 'imgfs/best peer %.2f' "$r")" \
		">= 1.3" "$(verdict "$r >= 1.3")"
else
	row "4 KiB random, O_DIRECT, 4 jobs (IOPS)" - RAND "" "" ""
fi
# imgfs reads the listing and the records before the mount appears, the
# peers when ls asks: compare mount + first ls, not ls alone
declare -A MLS
for t in imgfs $PEERS; do MLS[$t]=$(calc "${MOUNT[$t]} + ${LS[$t]}"); done
if [ -n "$PEERS" ]; then
	r=$(calc "$(best_peer MLS min) / ${MLS[imgfs]}")
	row "mount + first ls -la, $NFILES obj (s)" - MLS "$(printf 'best peer/imgfs %.1f' "$r")" \
		">= 10" "$(verdict "$r >= 10")"
else
	row "mount + first ls -la, $NFILES obj (s)" - MLS "" "" ""
fi
row "  of which mount, fresh cache (s)" - MOUNT "(imgfs: listing + records)" "" ""
row "  of which first ls -la (s)" - LS "" "" ""
row "mount CPU s per cold GiB" - CPU_COLD "$(printf 'imgfs %.2f s' "${CPU_COLD[imgfs]}")" \
	"<= 1.5" "$(verdict "${CPU_COLD[imgfs]} <= 1.5")"
row "mount CPU s per warm GiB" - CPU_WARM "" "" ""
if [[ " $PEERS " == *" s3fs "* ]]; then
	row "machine CPU s per cold GiB, no server" - CPU_MACHINE \
		"$(printf 'imgfs/s3fs %.2f' "$(calc "${CPU_MACHINE[imgfs]} / ${CPU_MACHINE[s3fs]}")")" "" ""
else
	row "machine CPU s per cold GiB, no server" - CPU_MACHINE "" "" ""
fi
row "S3 server CPU s per cold GiB" - CPU_SERVER "" "" ""
row "peak RSS (MiB)" - RSS "$(printf 'imgfs %d MiB' "${RSS[imgfs]}")" "< 64" \
	"$(verdict "${RSS[imgfs]} < 64")"
if [ -n "$WAN_IMGFS" ]; then
	r=$(calc "$WAN_IMGFS / $WAN_CURL")
	printf '%-36s %8.1f %8.1f  %-24s %-10s %s\n' \
		"WAN cold seq, +$((2 * WAN_DELAY)) ms, $WAN_RATE MB/s/conn" "$WAN_CURL" "$WAN_IMGFS" \
		"$(printf 'imgfs/curl %.2f' "$r")" ">= 2.0" "$(verdict "$r >= 2.0")"
fi
page_cost
