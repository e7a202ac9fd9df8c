#!/bin/bash
# A real S3 server on loopback: single-node OpenStack Swift with the s3api
# middleware, from Debian packages (see deploy/setup.sh).
#
#   deploy/local-s3.sh start DIR [PORT] [BUCKET]   configure (first time), start, wait, create bucket
#   deploy/local-s3.sh stop  DIR                   stop the processes recorded in DIR/pids
#   deploy/local-s3.sh env   DIR                   print the E2_* exports for it
#   deploy/local-s3.sh status DIR                  exit 0 when the server answers
#
# Every port derives from PORT (default 8080) so that several servers (tests,
# demo) can run side by side: proxy PORT, object PORT+1, container PORT+2,
# account PORT+3, memcached PORT+4.  Listens on 127.0.0.1 only.
# Credentials (Swift tempauth): access key "test:tester", secret "testing".
set -euo pipefail

PY=/usr/bin/python3 # Debian's python, which has the swift modules

usage() {
	sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
	exit 2
}

cmd=${1:-}
[ "$cmd" = "-h" ] || [ "$cmd" = "--help" ] && usage
[ $# -ge 2 ] || usage
DIR=$(realpath -m "$2")
ETC=$DIR/etc
DATA=$DIR/data

write_config() {
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

is_up() { curl -sf -o /dev/null --max-time 2 "http://127.0.0.1:$1/healthcheck"; }

start() {
	local port=${1:-8080} bucket=${2:-imgstore}
	if [ -f "$ETC/port" ] && [ "$(cat "$ETC/port")" != "$port" ]; then
		rm -rf "$ETC" # reconfigure for the new port; data stays
	fi
	[ -f "$ETC/proxy-server.conf" ] || write_config "$port"
	if [ -f "$ETC/pids" ] && is_up "$port"; then
		echo "local S3 already running on 127.0.0.1:$port"
	else
		stop_procs
		if is_up "$port"; then
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
		local i
		for i in $(seq 1 150); do
			is_up "$port" && break
			sleep 0.2
		done
		if ! is_up "$port"; then
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
	for i in $(seq 1 20); do
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
	for i in $(seq 1 50); do
		local alive=0
		while read -r name pid; do kill -0 "$pid" 2>/dev/null && alive=1; done <"$ETC/pids"
		[ $alive = 0 ] && break
		sleep 0.1
	done
	while read -r name pid; do kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true; done <"$ETC/pids"
	rm -f "$ETC/pids"
}

case $cmd in
start) start "${3:-8080}" "${4:-imgstore}" ;;
stop) stop_procs ;;
status) is_up "$(cat "$ETC/port" 2>/dev/null || echo 8080)" ;;
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
