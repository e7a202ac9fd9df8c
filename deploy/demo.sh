#!/bin/bash
# The local demo: everything imgstore does, on one machine, with real parts.
#
#   deploy/demo.sh          set up, build, then: start an S3 server (Swift) and an
#                           HTTPS source server on loopback, sync a sample manifest,
#                           mount the bucket with imgfs, list and read through it,
#                           create a qcow2 overlay on a base in the mount
#   deploy/demo.sh stop     unmount and stop the servers
#
# Environment: IMGSTORE_DEMO_DIR (default /var/tmp/imgstore-demo),
# IMGSTORE_DEMO_PORT (default 18080; the S3 server uses PORT..PORT+4, the
# HTTPS source server PORT+10).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DEMO=${IMGSTORE_DEMO_DIR:-/var/tmp/imgstore-demo}
PORT=${IMGSTORE_DEMO_PORT:-18080}
HTTPS_PORT=$((PORT + 10))
LABCTL=$ROOT/build/sync/labctl
IMGFS=$ROOT/build/fs/imgfs

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
show() {
	printf '$ %s\n' "$*"
	"$@"
}

stop() {
	if mountpoint -q "$DEMO/mnt" 2>/dev/null; then fusermount3 -u "$DEMO/mnt" || umount -l "$DEMO/mnt"; fi
	if [ -f "$DEMO/https.pid" ]; then
		kill "$(cat "$DEMO/https.pid")" 2>/dev/null || true
		rm -f "$DEMO/https.pid"
	fi
	[ -d "$DEMO/s3" ] && deploy/local-s3.sh stop "$DEMO/s3" >/dev/null
	return 0
}

case ${1:-} in
stop)
	stop
	echo "demo stopped (data kept in $DEMO)"
	exit 0
	;;
-h | --help)
	sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
	exit 0
	;;
"") ;;
*)
	echo "demo.sh: unknown argument '$1' (see --help)" >&2
	exit 2
	;;
esac

step "Install packages and build (deploy/setup.sh)"
deploy/setup.sh
stop

step "Sample source images, served over HTTPS with a throw-away CA"
mkdir -p "$DEMO"/{www,repo/images,repo/packer,mnt,overlays,certs}
# imgfs makes the cache directory itself, mode 0700
rm -rf "$DEMO/overlays"/* "$DEMO/cache"
cd "$DEMO/www"
if [ ! -f base.qcow2.gz ]; then
	# a small qcow2 "base image" with known contents, and a raw disk
	qemu-img create -q -f qcow2 base.qcow2 64M
	qemu-io -f qcow2 -c 'write -q -P 0x5a 0 4M' -c 'write -q -P 0xa5 32M 2M' base.qcow2 >/dev/null
	gzip -kn9 base.qcow2
	head -c 24M /dev/urandom >disk.raw
	xz -kT2 -3 disk.raw
	zstd -q -k disk.raw -o disk2.raw.zst
	printf 'imgstore demo ISO stand-in\n' >tools.iso
	truncate -s 3M tools.iso
fi
sum() { sha256sum "$1" | cut -d' ' -f1; }
cat >"$DEMO/repo/images/images.yaml" <<Y
apiVersion: images.lab.gilman.io/v1alpha1
kind: ImageManifest
metadata:
  name: demo-lab
spec:
  images:
    - name: alpine-base
      source:
        url: https://127.0.0.1:$HTTPS_PORT/base.qcow2.gz
        checksum: sha256:$(sum base.qcow2.gz)
        decompress: gzip
      destination: alpine/base.qcow2
      validation:
        algorithm: sha256
        expected: sha256:$(sum base.qcow2)
      updateFile:
        path: packer/alpine.pkr.hcl
        replacements:
          - pattern: 'base_checksum\s*=\s*"[^"]*"'
            value: 'base_checksum = "{{ .Source.Checksum }}"'
    - name: scratch-disk
      source:
        url: https://127.0.0.1:$HTTPS_PORT/disk.raw.xz
        checksum: sha256:$(sum disk.raw.xz)
        decompress: xz
      destination: disks/scratch.raw
      validation:
        algorithm: sha256
        expected: sha256:$(sum disk.raw)
    - name: scratch-disk-zstd
      source:
        url: https://127.0.0.1:$HTTPS_PORT/disk2.raw.zst
        checksum: sha256:$(sum disk2.raw.zst)
        decompress: zstd
      destination: disks/scratch-zstd.raw
      validation:
        algorithm: sha256
        expected: sha256:$(sum disk.raw)
    - name: tools-iso
      source:
        url: https://127.0.0.1:$HTTPS_PORT/tools.iso
        checksum: sha256:$(sum tools.iso)
      destination: iso/tools.iso
  overlays:
    - name: alpine-wireguard
      base: alpine/base.qcow2
      output: alpine-wireguard.qcow2
      variant: wireguard
      packages: [wireguard-tools]
      services: [wireguard]
Y
printf 'base_checksum = "sha256:0000"\n' >"$DEMO/repo/packer/alpine.pkr.hcl"
setsid /usr/bin/python3 "$ROOT/tests/integration/https_server.py" --dir "$DEMO/www" \
	--cert-dir "$DEMO/certs" --port "$HTTPS_PORT" >"$DEMO/https.log" 2>&1 &
echo $! >"$DEMO/https.pid"
for _ in $(seq 1 50); do
	grep -q READY "$DEMO/https.log" && break
	sleep 0.1
done
grep READY "$DEMO/https.log"
CA=$DEMO/certs/ca.pem
cd "$DEMO/repo"

step "A real S3 server on loopback (OpenStack Swift + s3api)"
"$ROOT/deploy/local-s3.sh" start "$DEMO/s3" "$PORT" demo
eval "$("$ROOT/deploy/local-s3.sh" env "$DEMO/s3")"

step "labctl: validate the manifest, sync it, list the bucket"
show "$LABCTL" images validate --manifest images/images.yaml --ca-bundle "$CA"
show "$LABCTL" images sync --manifest images/images.yaml --ca-bundle "$CA"
show cat packer/alpine.pkr.hcl
show "$LABCTL" images sync --manifest images/images.yaml --ca-bundle "$CA"
show "$LABCTL" images list

step "imgfs: mount the bucket read-only, list and read through it"
show "$IMGFS" --cache-dir "$DEMO/cache" --cache-size 1G "$DEMO/mnt"
show ls -la "$DEMO/mnt" "$DEMO/mnt/alpine" "$DEMO/mnt/disks"
show sha256sum "$DEMO/mnt/disks/scratch.raw" "$DEMO/www/disk.raw"
show qemu-img info "$DEMO/mnt/alpine/base.qcow2"
show getfattr -d "$DEMO/mnt/alpine/base.qcow2"
show cat "$DEMO/mnt/.imgstore/stats"
echo

step "labctl: a qcow2 overlay on the base in the mount"
show "$LABCTL" images overlay --mount "$DEMO/mnt" --overlay-dir "$DEMO/overlays" --manifest images/images.yaml
show qemu-img info "$DEMO/overlays/alpine-wireguard.qcow2"
show cat "$DEMO/overlays/alpine-wireguard-provenance.json"

if command -v qemu-system-x86_64 >/dev/null; then
	step "QEMU boots from the overlay; the base is read through imgfs"
	# a Debian kernel (apt-get download, not installed) and a busybox initramfs
	# whose /init hashes the first 4 MiB of the disk and writes a marker; under
	# KVM only if a probe guest ran under it (vmkit.accel), else TCG
	export PYTHONPATH=$ROOT/tests/integration
	/usr/bin/python3 -m vmkit initramfs "$DEMO/initrd.img" >/dev/null
	expect=$(head -c 4M /dev/zero | tr '\0' '\132' | sha256sum | cut -d' ' -f1)
	show /usr/bin/python3 -m vmkit boot --initrd "$DEMO/initrd.img" \
		--drive "file=$DEMO/overlays/alpine-wireguard.qcow2,format=qcow2,if=virtio" \
		--off 0 --len $((4 << 20)) --expect "$expect" --marker DEMO-MARKER \
		--marker-off $((40 << 20)) --log "$DEMO/boot.log" --json
	echo "(the guest's write is in the overlay; the base in the bucket is unchanged)"
fi

step "Done"
cat <<T
The mount stays up at $DEMO/mnt (S3 at $E2_ENDPOINT, bucket $E2_BUCKET).
Try:  ls -la $DEMO/mnt;  cat $DEMO/mnt/.imgstore/stats
Stop: bash deploy/demo.sh stop
T
