"""Command line for vmkit (used by tests/bench/boot.sh and by hand):

  PYTHONPATH=tests/integration python3 -m vmkit kernel
  PYTHONPATH=tests/integration python3 -m vmkit accel
  PYTHONPATH=tests/integration python3 -m vmkit initramfs OUT
  PYTHONPATH=tests/integration python3 -m vmkit base OUT.qcow2 [--size MiB --len MiB]
  PYTHONPATH=tests/integration python3 -m vmkit boot --drive OPTS --initrd F [--expect HEX]
        [--marker S --marker-off N] [--off N --len N] [--timeout S] [--log F] [--json]

`accel` prints the accelerator boot will use (kvm or tcg), probing KVM if no
verdict is cached for this boot of the host yet.  `boot` exits 0 when the
guest finished (and printed --expect when given).
"""
import argparse
import json
import sys

from . import MiB, VmkitError, accel, base_image, boot, initramfs, kernel


def main(argv=None):
    ap = argparse.ArgumentParser(prog="vmkit")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("kernel", help="fetch (or find in the cache) the kernel; print its paths")
    sub.add_parser("accel", help="print the accelerator guests get (kvm or tcg)")
    p = sub.add_parser("initramfs", help="build the test initramfs")
    p.add_argument("out")
    p = sub.add_parser("base", help="build a base qcow2 with known contents")
    p.add_argument("out")
    p.add_argument("--size", type=int, default=64, help="virtual size, MiB")
    p.add_argument("--off", type=int, default=1, help="region offset, MiB")
    p.add_argument("--len", type=int, default=16, help="region length, MiB")
    p.add_argument("--marker-off", type=int, default=48, help="marker offset, MiB")
    p = sub.add_parser("boot", help="boot the test guest on a drive")
    p.add_argument("--drive", required=True, help="the -drive option value")
    p.add_argument("--initrd", required=True)
    p.add_argument("--off", type=int, default=1 * MiB)
    p.add_argument("--len", type=int, default=16 * MiB)
    p.add_argument("--marker")
    p.add_argument("--marker-off", type=int, default=48 * MiB)
    p.add_argument("--expect", help="the sha256 the guest must print")
    p.add_argument("--timeout", type=float, default=120)
    p.add_argument("--log")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    a = ap.parse_args(argv)
    try:
        if a.cmd == "kernel":
            k = kernel(log=lambda m: print(m, file=sys.stderr))
            print(json.dumps({"package": k.package, "version": k.version,
                              "vmlinuz": str(k.vmlinuz),
                              "modules": [str(m) for m in k.modules]}, indent=2))
        elif a.cmd == "accel":
            print(accel())
        elif a.cmd == "initramfs":
            initramfs(a.out, kernel(log=lambda m: print(m, file=sys.stderr)))
        elif a.cmd == "base":
            b = base_image(a.out, a.size * MiB, a.off * MiB, a.len * MiB, a.marker_off * MiB)
            print(json.dumps({"path": str(b.path), "region_off": b.region_off,
                              "region_len": b.region_len, "region_sha256": b.region_sha256,
                              "marker_off": b.marker_off}))
        else:
            k = kernel(log=lambda m: print(m, file=sys.stderr))
            r = boot(k, a.initrd, a.drive, timeout=a.timeout, log_path=a.log,
                     region=(a.off, a.len), marker=a.marker, marker_off=a.marker_off)
            ok = r.ok and (a.expect is None or r.sha256 == a.expect) and \
                (a.marker is None or r.marker == a.marker)
            if a.json:
                print(json.dumps({"ok": ok, "seconds": round(r.seconds, 3),
                                  "guest_start": r.guest_start, "guest_done": r.guest_done,
                                  "sha256": r.sha256, "marker": r.marker,
                                  "timed_out": r.timed_out, "failures": r.failures}))
            elif not ok:
                sys.stderr.write(r.log[-4000:])
            return 0 if ok else 1
    except VmkitError as e:
        print(f"vmkit: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
