"""Image history end to end (issue 13): a running guest keeps reading its
base through a sync that replaces it and a prune with default retention.

sync (v1) -> mount -> `labctl images overlay` -> boot a guest from the
overlay (its backing file: /.imgstore/by-sha256/<v1> on the mount).  The
guest hashes region A of its disk and waits on the serial console.  The host
syncs v2 (other bytes, same destination), lets imgfs see it, runs prune with
the manifest's default retention (keepVersions 1), then tells the guest to go
on: it hashes region B, which nobody had read before.  Those blocks now come
from versions/<v1> (images/<dest> holds v2's bytes): the guest must print the
hash of v1's region B, not an I/O error and not v2's bytes.

The base's host file keeps A and B far apart (a 20 MiB filler between them,
more than imgfs's 16 MiB readahead), so reading A never fetches B; the mount
starts with an empty cache, and bytes_fetched shows B came from the bucket
after the replacement.
"""
import hashlib
import json
import queue
import re
import shutil
import subprocess
import threading
import time

import pytest

import vmkit
from conftest import binary, run
from vmkit.lab import ImgfsMount, write_manifest

MiB = 1 << 20
KiB = 1 << 10
BASE = "alpine/base.qcow2"
SIZE = 32 * MiB
A_OFF, A_LEN = 1 * MiB, 256 * KiB             # read before the replacement
FILL_OFF, FILL_LEN = 2 * MiB, 20 * MiB         # never read: keeps B out of readahead
B_OFF, B_LEN = 24 * MiB, 2 * MiB               # read only after replacement + prune
BOOT_DEADLINE = 300                            # TCG on a loaded 2-core host
STEP_DEADLINE = 180

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None,
                       reason="qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)"),
]

# /init: hash A, wait for a line on the console, hash B (O_DIRECT, so the
# guest's page cache cannot answer), power off.  Lines start with E2E-.
INIT = b"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
for arg in $(cat /proc/cmdline); do
	case $arg in
	e2e.a=*) a=${arg#*=} ;;
	e2e.b=*) b=${arg#*=} ;;
	esac
done
while read -r mod; do insmod "/lib/modules/$mod.ko"; done </lib/modules/order
i=0
while [ ! -b /dev/vda ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
hash() {
	dd if=/dev/vda of=/tmp/r bs=256k skip=${1%,*} count=${1#*,} \\
		iflag=skip_bytes,count_bytes,fullblock,direct 2>/tmp/err
	rc=$?
	why=
	[ $rc = 0 ] || why=$(tr '\\n' ' ' </tmp/err)
	echo "E2E-$2 rc=$rc $(sha256sum </tmp/r | cut -d' ' -f1) $why"
	rm -f /tmp/r
}
hash "$a" A
echo E2E-WAIT
read -r go
hash "$b" B
echo E2E-DONE
poweroff -f
sleep 5
"""


def labctl(*args):
    return [binary("labctl"), *args]


def base_image(path, seed):
    """A qcow2 of SIZE: pattern in A, the filler and B, zeros elsewhere.
    Returns (sha256 of the file, guest bytes of A, guest bytes of B)."""
    raw = path.with_name(path.name + ".raw")
    a, fill, b = (vmkit.pattern(n, seed + tag) for n, tag in
                  ((A_LEN, b"A"), (FILL_LEN, b"F"), (B_LEN, b"B")))
    with open(raw, "wb") as f:
        f.truncate(SIZE)
        for off, data in ((A_OFF, a), (FILL_OFF, fill), (B_OFF, b)):
            f.seek(off)
            f.write(data)
    run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, path], check=0)
    raw.unlink()
    return vmkit.sha256_file(path), a, b


class Guest:
    """QEMU with the serial console on pipes: lines read by a thread."""

    def __init__(self, args, log_path):
        self.log_path = log_path
        self.lines = []
        self.q = queue.Queue()
        self.p = vmkit.popen_qemu(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT)
        self.t = threading.Thread(target=self._read, daemon=True)
        self.t.start()

    def _read(self):
        for raw in self.p.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            self.lines.append(line)
            self.q.put(line)
        self.q.put(None)

    def log(self):
        return "\n".join(self.lines[-60:])

    def expect(self, pattern, deadline):
        end = time.monotonic() + deadline
        while True:
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {pattern!r} from the guest in {deadline}s:\n{self.log()}")
            try:
                line = self.q.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"QEMU ended before {pattern!r}:\n{self.log()}")
            m = re.search(pattern, line)
            if m:
                return m

    def send(self, text):
        self.p.stdin.write(text.encode())
        self.p.stdin.flush()

    def close(self, finished):
        """Wait for the guest's poweroff when it finished, else kill it."""
        if self.p.poll() is None:
            try:
                self.p.wait(timeout=60 if finished else 0.1)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.t.join(timeout=10)
        self.log_path.write_text("\n".join(self.lines) + "\n")


def test_guest_reads_its_base_through_replacement_and_prune(bucket, https, tmp_path):
    kern = vmkit.kernel()
    initrd = vmkit._write_initramfs(tmp_path / "initrd.img", INIT, kern.modules)
    v1_sha, v1_a, v1_b = base_image(tmp_path / "v1.qcow2", b"e2e-v1")
    v2_sha, _, v2_b = base_image(tmp_path / "v2.qcow2", b"e2e-v2")
    assert v1_sha != v2_sha and v1_b != v2_b
    for v in ("v1", "v2"):
        shutil.copy(tmp_path / f"{v}.qcow2", https.root / f"{tmp_path.name}-{v}.qcow2")

    repo = tmp_path / "repo"
    manifest = repo / "images" / "images.yaml"
    overlays = [{"name": "e2e", "base": BASE, "output": "e2e.qcow2", "variant": "e2e",
                 "packages": [], "services": []}]

    def sync(v, sha):
        write_manifest(manifest, [{"name": "base",
                                   "url": https.url(f"{tmp_path.name}-{v}.qcow2"),
                                   "checksum": "sha256:" + sha, "destination": BASE}],
                       overlays)
        run(labctl("images", "sync", "--manifest", manifest, "--ca-bundle", https.ca),
            env=bucket.env, check=0)

    sync("v1", v1_sha)
    # a fresh cache: every block the guest reads comes from the bucket
    mnt = ImgfsMount(binary("imgfs"), tmp_path / "mnt", bucket.env, tmp_path / "cache",
                     extra=["--refresh", "3600", "--cache-size", "64M"]).start()
    guest, finished = None, False
    try:
        outdir = tmp_path / "overlays"
        run(labctl("images", "overlay", "--mount", mnt.path, "--overlay-dir", outdir,
                   "--manifest", manifest), env=bucket.env, check=0)
        overlay = outdir / "e2e.qcow2"
        backing = mnt.path.resolve() / ".imgstore" / "by-sha256" / v1_sha
        info = json.loads(run(["qemu-img", "info", "-U", "--output=json", overlay],
                              check=0).stdout)
        assert info.get("full-backing-filename", info.get("backing-filename")) == str(backing)

        args = vmkit.qemu_command(kern, initrd, f"file={overlay},format=qcow2,if=virtio",
                                  extra_append=f"e2e.a={A_OFF},{A_LEN} e2e.b={B_OFF},{B_LEN}")
        guest = Guest(args, tmp_path / "serial.log")
        m = guest.expect(r"E2E-A rc=(\d+) ([0-9a-f]{64})", BOOT_DEADLINE)
        assert (m.group(1), m.group(2)) == ("0", hashlib.sha256(v1_a).hexdigest()), guest.log()
        guest.expect(r"E2E-WAIT", STEP_DEADLINE)
        before = mnt.stats()
        # region B is 20 MiB past anything read so far: not fetched yet
        assert before["bytes_fetched"] < FILL_LEN, before

        # (1) the base replaced by other bytes; v1 kept as a version
        sync("v2", v2_sha)
        assert hashlib.sha256(bucket.get(f"images/{BASE}")).hexdigest() == v2_sha
        mnt.refresh(want=f".imgstore/by-sha256/{v2_sha}", timeout=60)
        # (2) prune with the default retention: keeps one previous version
        p = run(labctl("images", "prune", "--manifest", manifest), env=bucket.env, check=0)
        keys = bucket.keys()
        assert f"versions/{v1_sha}" in keys and f"metadata/versions/{v1_sha}.json" in keys, \
            (keys, p.stdout, p.stderr)
        mnt.refresh(want=f".imgstore/by-sha256/{v1_sha}", timeout=60)

        guest.send("go\n")
        m = guest.expect(r"E2E-B rc=(\d+) ([0-9a-f]{64})(.*)", STEP_DEADLINE)
        assert m.group(1) == "0", f"the guest's read of region B failed: {m.group(3)}\n" \
            f"{guest.log()}\n--- imgfs\n{mnt.log.read_text(errors='replace')[-3000:]}"
        assert m.group(2) != hashlib.sha256(v2_b).hexdigest(), "the guest read the new base"
        assert m.group(2) == hashlib.sha256(v1_b).hexdigest(), guest.log()
        guest.expect(r"E2E-DONE", STEP_DEADLINE)
        finished = True
        after = mnt.stats()
        # B really came from the bucket, after the replacement
        assert after["bytes_fetched"] - before["bytes_fetched"] >= B_LEN, (before, after)
        assert after["verify_failures"] == 0, after
    finally:
        if guest:
            guest.close(finished)
        mnt.stop()
    assert guest.p.returncode == 0, guest.log()
