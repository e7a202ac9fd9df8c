#!/bin/bash
# A real S3 server on loopback, from Debian packages (see deploy/setup.sh):
# single-node OpenStack Swift with the s3api middleware (the default), or
# Ceph's radosgw on one monitor and one OSD (IMGSTORE_S3_SERVER=radosgw).
#
#   deploy/local-s3.sh start DIR [PORT] [BUCKET]   configure (first time), start, wait, create bucket
#   deploy/local-s3.sh stop  DIR                   stop the processes recorded in DIR/etc/pids
#   deploy/local-s3.sh env   DIR                   print the E2_* exports for it
#   deploy/local-s3.sh status DIR                  exit 0 when the server answers
#
# IMGSTORE_S3_SERVER=swift|radosgw picks the server when DIR is new (unset:
# swift); DIR remembers it, so stop, env and status need no variable.
# Every port derives from PORT (default 8080) so that several servers (tests,
# demo) can run side by side.  Swift: proxy PORT, object PORT+1, container
# PORT+2, account PORT+3, memcached PORT+4.  radosgw: S3 PORT, monitor
# PORT+1, OSD PORT+2..PORT+9.  Everything listens on 127.0.0.1 only.
# Credentials on both: access key "test:tester", secret "testing".
set -euo pipefail

PY=/usr/bin/python3 # Debian's python, which has the swift modules

usage() {
	sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'
	exit 2
}

cmd=${1:-}
[ "$cmd" = "-h" ] || [ "$cmd" = "--help" ] && usage
[ $# -ge 2 ] || usage
DIR=$(realpath -m "$2")
ETC=$DIR/etc
DATA=$DIR/data

swift_write_config() {
	local port=$1 obj=$(($1 + 1)) cont=$(($1 + 2)) acct=$(($1 + 3)) memc=$(($1 + 4))
	mkdir -p "$ETC/run" "$DATA/srv/d1"
	cat >"$ETC/swift.conf" <<C
[swift-hash]
swift_hash_path_suffix = imgstore-local-suffix
swift_hash_path_prefix = imgstore-local-prefix
[storage-policy:0]
name = Policy-0
default = yes
[swift-constraints]
max_file_size = 5368709122
C
	local kind p w
	for kind in object:$obj:2 container:$cont:1 account:$acct:1; do
		IFS=: read -r n p w <<<"$kind"
		cat >"$ETC/$n-server.conf" <<C
[DEFAULT]
swift_dir = $ETC
devices = $DATA/srv
mount_check = false
disable_fallocate = true
bind_ip = 127.0.0.1
bind_port = $p
workers = $w
log_level = WARNING
log_name = $n-server
user = root
[pipeline:main]
pipeline = $n-server
[app:$n-server]
use = egg:swift#$n
C
		# the replicators/updaters are not run: one replica, one node
	done
	cat >"$ETC/proxy-server.conf" <<C
[DEFAULT]
swift_dir = $ETC
bind_ip = 127.0.0.1
bind_port = $port
workers = 2
log_level = WARNING
log_name = proxy-server
user = root
[pipeline:main]
pipeline = catch_errors gatekeeper healthcheck proxy-logging cache listing_formats bulk s3api tempauth copy slo dlo proxy-logging proxy-server
[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true
allow_account_management = true
[filter:catch_errors]
use = egg:swift#catch_errors
[filter:gatekeeper]
use = egg:swift#gatekeeper
[filter:healthcheck]
use = egg:swift#healthcheck
[filter:proxy-logging]
use = egg:swift#proxy_logging
[filter:cache]
use = egg:swift#memcache
memcache_servers = 127.0.0.1:$memc
[filter:listing_formats]
use = egg:swift#listing_formats
[filter:bulk]
use = egg:swift#bulk
[filter:s3api]
use = egg:swift#s3api
location = us-east-1
[filter:tempauth]
use = egg:swift#tempauth
user_admin_admin = admin .admin .reseller_admin
user_test_tester = testing .admin
[filter:copy]
use = egg:swift#copy
[filter:slo]
use = egg:swift#slo
[filter:dlo]
use = egg:swift#dlo
C
	(
		cd "$ETC"
		for t in object:$obj container:$cont account:$acct; do
			n=${t%%:*} p=${t##*:}
			rm -f "$n.builder" "$n.ring.gz"
			swift-ring-builder "$n.builder" create 8 1 1 >/dev/null
			swift-ring-builder "$n.builder" add --region 1 --zone 1 --ip 127.0.0.1 --port "$p" --device d1 --weight 100 >/dev/null
			swift-ring-builder "$n.builder" rebalance >/dev/null || true
		done
	)
	echo "$port" >"$ETC/port"
}

swift_is_up() { curl -sf -o /dev/null --max-time 2 "http://127.0.0.1:$1/healthcheck"; }

swift_start() {
	local port=${1:-8080} bucket=${2:-imgstore}
	if [ -f "$ETC/port" ] && [ "$(cat "$ETC/port")" != "$port" ]; then
		rm -rf "$ETC" # reconfigure for the new port; data stays
	fi
	[ -f "$ETC/proxy-server.conf" ] || swift_write_config "$port"
	if [ -f "$ETC/pids" ] && swift_is_up "$port"; then
		echo "local S3 already running on 127.0.0.1:$port"
	else
		stop_procs
		if swift_is_up "$port"; then
			# someone else's server: ours would fail to bind and go unnoticed
			echo "127.0.0.1:$port is already served by another process (another" \
				"local S3? deploy/local-s3.sh stop ITS_DIR), or pick another PORT" >&2
			exit 1
		fi
		: >"$ETC/pids"
		/usr/bin/memcached -l 127.0.0.1 -p $((port + 4)) -U 0 -u root -m 64 >"$ETC/run/memcached.log" 2>&1 &
		echo "memcached $!" >>"$ETC/pids"
		local s
		for s in account container object proxy; do
			setsid $PY /usr/bin/swift-$s-server "$ETC/$s-server.conf" ${SWIFT_VERBOSE:+-v} >"$ETC/run/$s.log" 2>&1 &
			echo "$s $!" >>"$ETC/pids"
		done
		for _ in $(seq 1 150); do
			swift_is_up "$port" && break
			sleep 0.2
		done
		if ! swift_is_up "$port"; then
			echo "local S3 did not come up on 127.0.0.1:$port; logs in $ETC/run/" >&2
			tail -n 20 "$ETC"/run/*.log >&2 || true
			exit 1
		fi
	fi
	# create the bucket through Swift's own API (tempauth), so no S3 client is needed here
	local hdrs token url code
	hdrs=$(curl -sf -D - -o /dev/null -H 'X-Auth-User: test:tester' -H 'X-Auth-Key: testing' "http://127.0.0.1:$port/auth/v1.0")
	token=$(sed -n 's/^[Xx]-[Aa]uth-[Tt]oken: *\([^[:space:]]*\).*/\1/p' <<<"$hdrs")
	url=$(sed -n 's/^[Xx]-[Ss]torage-[Uu]rl: *\([^[:space:]]*\).*/\1/p' <<<"$hdrs")
	for _ in $(seq 1 20); do
		code=$(curl -s -o /dev/null -w '%{http_code}' -X PUT -H "X-Auth-Token: $token" "$url/$bucket") || code=000
		case $code in 201 | 202 | 204) break ;; esac
		sleep 0.3
	done
	case $code in 201 | 202 | 204) ;; *)
		echo "could not create bucket $bucket (HTTP $code)" >&2
		exit 1
		;;
	esac
	echo "$bucket" >"$ETC/bucket"
	echo "local S3 ready: http://127.0.0.1:$port bucket $bucket (dir $DIR)"
}

stop_procs() {
	[ -f "$ETC/pids" ] || return 0
	local name pid
	while read -r name pid; do
		# swift servers fork workers into the same process group (setsid above)
		kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
	done <"$ETC/pids"
	for _ in $(seq 1 50); do
		local alive=0
		while read -r name pid; do kill -0 "$pid" 2>/dev/null && alive=1; done <"$ETC/pids"
		[ $alive = 0 ] && break
		sleep 0.1
	done
	while read -r name pid; do kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true; done <"$ETC/pids"
	rm -f "$ETC/pids"
}

# ---------------------------------------------------------------- radosgw
# One monitor, one BlueStore OSD on a sparse file (DATA/osd0/block; memstore
# would hold every object in RAM), no manager, no cephx ("auth none": only
# loopback can reach it).  S3 users are radosgw's own, made with radosgw-admin.

RGW_BLOCK_GIB=${IMGSTORE_RADOSGW_BLOCK_GIB:-64} # sparse: takes what is written

# (no manager runs: a command that needs one would wait for ever)
ceph_() { timeout 120 ceph -c "$ETC/ceph.conf" --connect-timeout 60 "$@"; }

rgw_write_config() {
	local port=$1 mon=$(($1 + 1)) fsid
	mkdir -p "$ETC/run" "$DATA/mon" "$DATA/osd0" "$DATA/rgw" "$DATA/crash"
	[ -f "$DATA/fsid" ] || cat /proc/sys/kernel/random/uuid >"$DATA/fsid"
	fsid=$(cat "$DATA/fsid")
	cat >"$ETC/ceph.conf" <<C
[global]
fsid = $fsid
mon host = v2:127.0.0.1:$mon
mon initial members = a
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind msgr1 = false
ms bind port min = $((port + 2))
ms bind port max = $((port + 9))
auth cluster required = none
auth service required = none
auth client required = none
ms mon client mode = crc
ms client mode = crc
keyring = /dev/null
run dir = $ETC/run
admin socket = $ETC/run/\$name.asok
log file = $ETC/run/\$name.log
crash dir = $DATA/crash
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon warn on pool no redundancy = false
mon max pg per osd = 1000
mon data avail warn = 2
mon data avail crit = 1
[mon.a]
mon data = $DATA/mon
[osd]
osd data = $DATA/osd\$id
osd objectstore = bluestore
bluestore block create = true
bluestore block size = $((RGW_BLOCK_GIB << 30))
osd memory target = 1073741824
[client.rgw.a]
rgw frontends = beast endpoint=127.0.0.1:$port tcp_nodelay=1
rgw data = $DATA/rgw
rgw thread pool size = 64
C
	echo "$port" >"$ETC/port"
}

radosgw_is_up() { curl -sf -o /dev/null --max-time 2 "http://127.0.0.1:$1/"; }

# 0 when something accepts connections on 127.0.0.1:$1
port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

rgw_spawn() { # NAME COMMAND...: run in the foreground of its own group, record the PID
	local name=$1
	shift
	setsid "$@" >"$ETC/run/$name.out" 2>&1 &
	echo "$name $!" >>"$ETC/pids"
}

rgw_fail() {
	echo "local S3 (radosgw): $1; logs in $ETC/run/" >&2
	tail -n 20 "$ETC"/run/*.out "$ETC/run/client.rgw.a.log" >&2 2>/dev/null || true
	stop_procs
	exit 1
}

radosgw_start() {
	local port=${1:-8080} bucket=${2:-imgstore} mon=$((${1:-8080} + 1)) p id uuid code
	if [ -f "$ETC/port" ] && [ "$(cat "$ETC/port")" != "$port" ]; then
		stop_procs
		rm -rf "$ETC" # reconfigure for the new ports; data stays
	fi
	[ -f "$ETC/ceph.conf" ] || rgw_write_config "$port"
	if [ -f "$ETC/pids" ] && radosgw_is_up "$port"; then
		echo "local S3 already running on 127.0.0.1:$port"
	else
		stop_procs
		for p in $(seq "$port" $((port + 9))); do
			if port_taken "$p"; then
				echo "127.0.0.1:$p is already in use by another process (another local S3?" \
					"deploy/local-s3.sh stop ITS_DIR); radosgw needs PORT..PORT+9 free:" \
					"pick another PORT" >&2
				exit 1
			fi
		done
		: >"$ETC/pids"
		if [ ! -d "$DATA/mon/store.db" ]; then
			monmaptool --create --addv a "[v2:127.0.0.1:$mon]" --fsid "$(cat "$DATA/fsid")" \
				"$ETC/monmap" >/dev/null
			ceph-mon --mkfs -i a --monmap "$ETC/monmap" -c "$ETC/ceph.conf" ||
				rgw_fail "creating the monitor failed"
		elif [ ! -f "$DATA/mon/port" ] || [ "$(cat "$DATA/mon/port")" != "$mon" ]; then
			# the monitor's address is in its store: move it to the new port
			{ ceph-mon -i a -c "$ETC/ceph.conf" --extract-monmap "$ETC/monmap" &&
				monmaptool --rm a "$ETC/monmap" &&
				monmaptool --addv a "[v2:127.0.0.1:$mon]" "$ETC/monmap" &&
				ceph-mon -i a -c "$ETC/ceph.conf" --inject-monmap "$ETC/monmap"; } \
				>"$ETC/run/monmap.out" 2>&1 || rgw_fail "moving the monitor to port $mon failed"
		fi
		echo "$mon" >"$DATA/mon/port"
		rgw_spawn mon ceph-mon -f -i a -c "$ETC/ceph.conf"
		if [ ! -f "$DATA/osd0/ready" ]; then
			rm -rf "$DATA/osd0" && mkdir -p "$DATA/osd0"
			uuid=$(cat /proc/sys/kernel/random/uuid)
			# an earlier start that failed half-way may have registered osd.0
			ceph_ osd rm 0 >/dev/null 2>&1 || true
			id=$(ceph_ osd new "$uuid" 0 2>"$ETC/run/osd-new.out") || rgw_fail "ceph osd new failed"
			[ "$id" = 0 ] || rgw_fail "ceph osd new gave id $id, not 0"
			ceph-osd -i 0 --mkfs --osd-uuid "$uuid" -c "$ETC/ceph.conf" >"$ETC/run/osd-mkfs.out" 2>&1 ||
				rgw_fail "creating the OSD failed"
		fi
		rgw_spawn osd ceph-osd -f -i 0 -c "$ETC/ceph.conf"
		rgw_spawn radosgw radosgw -f -n client.rgw.a -c "$ETC/ceph.conf"
		# the first start creates radosgw's pools: give it time on a busy machine
		for _ in $(seq 1 900); do
			radosgw_is_up "$port" && break
			while read -r p id; do
				kill -0 "$id" 2>/dev/null || rgw_fail "$p exited"
			done <"$ETC/pids"
			sleep 0.2
		done
		radosgw_is_up "$port" || rgw_fail "radosgw did not come up on 127.0.0.1:$port"
	fi
	if [ ! -f "$DATA/rgw/user" ]; then
		timeout 120 radosgw-admin -c "$ETC/ceph.conf" user create --uid=test --display-name=test \
			--access-key=test:tester --secret-key=testing >"$ETC/run/user.out" 2>&1 ||
			rgw_fail "radosgw-admin user create failed"
		touch "$DATA/rgw/user"
	fi
	# S3 CreateBucket, signed by curl (the access key has a ':': a netrc)
	(umask 077 && printf 'machine 127.0.0.1 login test:tester password testing\n' >"$ETC/netrc")
	for _ in $(seq 1 20); do
		code=$(curl -s -o "$ETC/run/bucket.out" -w '%{http_code}' -X PUT --netrc-file "$ETC/netrc" \
			--aws-sigv4 aws:amz:us-east-1:s3 -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" \
			"http://127.0.0.1:$port/$bucket") || code=000
		[ "$code" = 409 ] && grep -q BucketAlreadyOwnedByYou "$ETC/run/bucket.out" && code=200
		[ "$code" = 200 ] && break
		sleep 0.5
	done
	[ "$code" = 200 ] || rgw_fail "could not create bucket $bucket (HTTP $code)"
	echo "$bucket" >"$ETC/bucket"
	echo "local S3 (radosgw) ready: http://127.0.0.1:$port bucket $bucket (dir $DIR)"
}

# ------------------------------------------------------------------ common

# The server DIR holds (swift for a DIR made before it was recorded).
dir_server() {
	if [ -f "$DIR/server" ]; then
		cat "$DIR/server"
	elif [ -d "$ETC" ] || [ -d "$DATA" ]; then
		echo swift
	fi
}

start() {
	local have want
	have=$(dir_server)
	want=${IMGSTORE_S3_SERVER:-${have:-swift}}
	case $want in
	swift | radosgw) ;;
	*)
		echo "IMGSTORE_S3_SERVER=$want: unknown server (swift or radosgw)" >&2
		exit 2
		;;
	esac
	if [ -n "$have" ] && [ "$have" != "$want" ]; then
		echo "$DIR holds a $have server, not $want: use another DIR" >&2
		exit 1
	fi
	if [ "$want" = radosgw ] && ! command -v radosgw >/dev/null; then
		echo "radosgw is not installed: deploy/setup.sh --radosgw" >&2
		exit 1
	fi
	mkdir -p "$DIR"
	echo "$want" >"$DIR/server"
	"${want}_start" "$@"
}

case $cmd in
start) start "${3:-8080}" "${4:-imgstore}" ;;
stop) stop_procs ;;
status)
	server=$(dir_server)
	"${server:-swift}_is_up" "$(cat "$ETC/port" 2>/dev/null || echo 8080)"
	;;
env)
	port=$(cat "$ETC/port" 2>/dev/null) || {
		echo "no local S3 configured in $DIR" >&2
		exit 1
	}
	echo "export E2_ENDPOINT=http://127.0.0.1:$port"
	echo "export E2_BUCKET=$(cat "$ETC/bucket" 2>/dev/null || echo imgstore)"
	echo "export E2_ACCESS_KEY=test:tester"
	echo "export E2_SECRET_KEY=testing"
	echo "export E2_REGION=us-east-1"
	;;
*) usage ;;
esac
