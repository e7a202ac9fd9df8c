#!/bin/busybox sh
# /init of the vmkit test initramfs (busybox-static).  Everything it does is
# reported on the serial console as lines starting with "VMKIT-", so the host
# can check it from the log.  Parameters come from the kernel command line:
#   vmkit.disk=/dev/vda        the disk to test
#   vmkit.off=N vmkit.len=N    the region to hash (bytes)
#   vmkit.moff=N vmkit.marker=STRING   where and what to write (empty: no write)
#   vmkit.direct=1             read the region with O_DIRECT
/bin/busybox --install -s /bin
export PATH=/bin

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null

say() { echo "VMKIT-$*"; }
fail() {
	say "FAIL $*"
	poweroff -f
	sleep 5
}

say "START uptime=$(cut -d' ' -f1 /proc/uptime)"

disk=/dev/vda off=0 len=1048576 moff= marker= direct=0
for arg in $(cat /proc/cmdline); do
	case $arg in
	vmkit.disk=*) disk=${arg#*=} ;;
	vmkit.off=*) off=${arg#*=} ;;
	vmkit.len=*) len=${arg#*=} ;;
	vmkit.moff=*) moff=${arg#*=} ;;
	vmkit.marker=*) marker=${arg#*=} ;;
	vmkit.direct=*) direct=${arg#*=} ;;
	esac
done

# Debian's kernel has the virtio drivers as modules: load them in the order
# the host computed from their dependencies.
if [ -f /lib/modules/order ]; then
	while read -r mod; do
		insmod "/lib/modules/$mod.ko" || say "WARN insmod $mod failed"
	done </lib/modules/order
fi

i=0
while [ ! -b "$disk" ] && [ $i -lt 100 ]; do
	sleep 0.1
	i=$((i + 1))
done
[ -b "$disk" ] || fail "no block device $disk"
say "DISK $disk size=$(blockdev --getsize64 "$disk")"

iflag=skip_bytes,count_bytes,fullblock
[ "$direct" = 1 ] && iflag=$iflag,direct
sum=$(dd if="$disk" bs=1M skip="$off" count="$len" iflag=$iflag 2>/dev/null | sha256sum | cut -d' ' -f1)
[ -n "$sum" ] || fail "reading $disk"
say "SHA256 off=$off len=$len $sum"

if [ -n "$marker" ] && [ -n "$moff" ]; then
	printf '%s' "$marker" | dd of="$disk" bs=512 seek="$moff" oflag=seek_bytes conv=notrunc,fsync 2>/dev/null ||
		fail "writing the marker"
	sync
	echo 3 >/proc/sys/vm/drop_caches
	back=$(dd if="$disk" bs=${#marker} skip="$moff" count=1 iflag=skip_bytes 2>/dev/null)
	if [ "$back" = "$marker" ]; then
		say "MARKER off=$moff $marker"
	else
		fail "marker read back as '$back'"
	fi
fi

say "DONE uptime=$(cut -d' ' -f1 /proc/uptime)"
poweroff -f
sleep 5
