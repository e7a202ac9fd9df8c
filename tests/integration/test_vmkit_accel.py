"""vmkit's choice of accelerator and the lifetime of its QEMU (issue 10).

This host has no /dev/kvm, so a KVM host is simulated: a regular file stands
in for the device (it opens, as /dev/kvm does on the hosts in question) and a
wrapper stands in for qemu-system-x86_64.  Under `-accel kvm` the "hang"
wrapper prints what SeaBIOS prints there and then nothing, forever; the
"works" wrapper runs the guest under TCG instead.  Every other invocation
execs the real QEMU.  The wrapper logs each command line and its pid.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import vmkit
from conftest import ROOT, run

HANG_SECONDS = 3        # the probe deadline in these tests
BOOT_TIMEOUT = 180

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None,
                       reason="qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)"),
]

WRAPPER = r"""#!/bin/bash
echo "$$ $*" >>"{calls}"
args=() prev=
for a in "$@"; do
	if [ "$prev" = -accel ] && [ "$a" = kvm ]; then
		if [ {mode} = hang ]; then
			printf 'SeaBIOS (version 1.16.2-debian-1.16.2-1)\nBooting from ROM..\n'
			exec sleep 600
		fi
		a=tcg
	fi
	[ "$prev" = -cpu ] && [ "$a" = host ] && a=max
	args+=("$a") prev=$a
done
exec qemu-system-x86_64 "${{args[@]}}"
"""


class FakeKvm:
    """A KVM device that opens and a QEMU wrapper (mode 'hang' or 'works')."""

    def __init__(self, d, mode):
        self.device = d / "kvm"
        self.device.write_text("")
        self.calls_file = d / "calls"
        self.calls_file.write_text("")
        self.qemu = d / f"qemu-{mode}"
        self.qemu.write_text(WRAPPER.format(calls=self.calls_file, mode=mode))
        self.qemu.chmod(0o755)

    def calls(self):
        """[(pid, accel)] of every invocation so far."""
        out = []
        for line in self.calls_file.read_text().splitlines():
            pid, *args = line.split()
            out.append((int(pid), args[args.index("-accel") + 1]))
        return out


@pytest.fixture(scope="module")
def guest(tmp_path_factory):
    """(kernel, initrd, base): a small base, so that TCG boots stay short."""
    d = tmp_path_factory.mktemp("vm")
    kern = vmkit.kernel()
    initrd = vmkit.initramfs(d / "initrd.img", kern)
    base = vmkit.base_image(d / "base.qcow2", size=8 * vmkit.MiB, region_off=vmkit.MiB,
                            region_len=vmkit.MiB, marker_off=4 * vmkit.MiB)
    return kern, initrd, base


@pytest.fixture
def vmcache(guest, tmp_path, monkeypatch):
    """A cache dir of the test's own (holding the cached kernel), no forced
    accelerator and no verdicts remembered by this process."""
    kern = guest[0]
    d = tmp_path / "vmkit-cache"
    d.mkdir()
    (d / kern.vmlinuz.parent.name).symlink_to(kern.vmlinuz.parent)
    monkeypatch.setenv("IMGSTORE_VMKIT_CACHE", str(d))
    monkeypatch.delenv("IMGSTORE_VMKIT_ACCEL", raising=False)
    monkeypatch.setattr(vmkit, "_ACCEL", {})
    return d


def alive(pid):
    """True while `pid` runs (a zombie has exited: its files are closed)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def overlay(base, path):
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", base.path, "-F", "qcow2", path],
        check=0)
    return f"file={path},format=qcow2,if=virtio"


def test_hanging_kvm_falls_back_to_tcg(guest, vmcache, tmp_path, monkeypatch):
    """The probe gives up on a KVM guest that prints nothing after
    HANG_SECONDS (not the boot timeout), says why once, kills it, and the
    verdict holds for this process and for the next one (the CLI that the
    demo and tests/bench/boot.sh run), whose boots then run under TCG."""
    kern, initrd, base = guest
    fake = FakeKvm(tmp_path, "hang")
    monkeypatch.setenv("IMGSTORE_VMKIT_QEMU", str(fake.qemu))
    monkeypatch.setenv("IMGSTORE_VMKIT_KVM_DEVICE", str(fake.device))
    logs = []

    t0 = time.monotonic()
    assert vmkit.accel(kern, deadline=HANG_SECONDS, log=logs.append) == "tcg"
    took = time.monotonic() - t0
    assert HANG_SECONDS <= took < HANG_SECONDS + 5, f"the probe took {took:.1f}s"
    assert logs == [f"vmkit: {fake.device} opens but a KVM guest printed nothing from its"
                    f" /init in {HANG_SECONDS}s; using TCG"]
    [(probe_pid, probe_accel)] = fake.calls()
    assert probe_accel == "kvm"
    assert not alive(probe_pid), "the hung probe QEMU was left running"

    cached = json.loads(vmkit.accel_cache_file(str(fake.qemu), str(fake.device)).read_text())
    assert cached["accel"] == "tcg"
    assert cached["boot_id"] == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert cached["reason"] == f"a KVM guest printed nothing from its /init in {HANG_SECONDS}s"

    # remembered: no second probe in this process ...
    t0 = time.monotonic()
    assert vmkit.accel(kern, deadline=HANG_SECONDS, log=logs.append) == "tcg"
    assert time.monotonic() - t0 < 1
    assert len(logs) == 1
    # ... and a boot with the defaults gets TCG through the wrapper
    r = vmkit.boot(kern, initrd, overlay(base, tmp_path / "a.qcow2"), timeout=BOOT_TIMEOUT,
                   log_path=tmp_path / "a.log", region=(base.region_off, base.region_len))
    assert r.ok, f"guest failed ({r.failures}, timed out: {r.timed_out}):\n{r.log[-3000:]}"
    assert r.sha256 == base.region_sha256
    assert [a for _, a in fake.calls()] == ["kvm", "tcg"]

    # another process reads the verdict from the cache file: no probe, no message
    env = dict(os.environ, PYTHONPATH=str(ROOT / "tests" / "integration"))
    p = run([sys.executable, "-m", "vmkit", "boot", "--initrd", initrd,
             "--drive", overlay(base, tmp_path / "b.qcow2"), "--off", base.region_off,
             "--len", base.region_len, "--expect", base.region_sha256,
             "--timeout", BOOT_TIMEOUT, "--json"], env=env, check=0)
    assert json.loads(p.stdout)["ok"] is True
    assert "vmkit:" not in p.stderr
    assert [a for _, a in fake.calls()] == ["kvm", "tcg", "tcg"]


def test_working_kvm_is_kept(guest, vmcache, tmp_path):
    """A KVM guest that reaches its /init within the deadline keeps KVM (the
    'works' wrapper runs it under TCG, hence the generous deadline)."""
    kern = guest[0]
    fake = FakeKvm(tmp_path, "works")
    logs = []
    assert vmkit.accel(kern, qemu=str(fake.qemu), kvm_dev=str(fake.device), deadline=60,
                       log=logs.append) == "kvm"
    assert logs == []
    assert [a for _, a in fake.calls()] == ["kvm"]
    cached = json.loads(vmkit.accel_cache_file(str(fake.qemu), str(fake.device)).read_text())
    assert (cached["accel"], cached["reason"]) == ("kvm", None)


def test_no_probe_without_device_or_when_forced(guest, vmcache, tmp_path, monkeypatch):
    """No KVM device: TCG at once.  IMGSTORE_VMKIT_ACCEL: that, at once.
    Neither starts QEMU nor writes a verdict."""
    kern = guest[0]
    fake = FakeKvm(tmp_path, "hang")
    assert vmkit.accel(kern, qemu=str(fake.qemu), kvm_dev=str(tmp_path / "none")) == "tcg"
    monkeypatch.setenv("IMGSTORE_VMKIT_ACCEL", "kvm")
    assert vmkit.accel(kern, qemu=str(fake.qemu), kvm_dev=str(fake.device)) == "kvm"
    assert fake.calls() == []
    assert list(vmcache.glob("accel-*")) == []


CHILD = """
import sys, vmkit
# /bin/sh as init waits on the console forever: this guest never ends
vmkit.boot(vmkit.kernel(), sys.argv[1], sys.argv[2], timeout=3600, extra_append="rdinit=/bin/sh")
"""


def qemu_child_of(pid):
    """The pid of the qemu-system-x86_64 whose parent is `pid`, or None."""
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            argv0 = (d / "cmdline").read_bytes().split(b"\0")[0]
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid and argv0.endswith(b"qemu-system-x86_64"):
            return int(d.name)
    return None


def locked(image):
    """True while another process holds the image's lock."""
    p = run(["qemu-img", "info", image])
    return p.returncode != 0 and "lock" in p.stderr


def test_qemu_dies_with_the_process_that_started_it(guest, tmp_path):
    """SIGKILL to the Python process running vmkit.boot() takes its QEMU down
    too (PR_SET_PDEATHSIG), and with it the image lock."""
    kern, initrd, base = guest
    image = tmp_path / "held.qcow2"
    drive = overlay(base, image)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "tests" / "integration"))
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(initrd), drive], env=env)
    qemu = None
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (qemu and locked(image)):
            assert child.poll() is None, f"the child exited {child.returncode}"
            qemu = qemu or qemu_child_of(child.pid)
            time.sleep(0.2)
        assert qemu, "no QEMU started within 60s"
        assert locked(image), "QEMU did not lock its image within 60s"
        assert os.getsid(qemu) == qemu, "QEMU is not in a session of its own"

        child.kill()
        assert child.wait(10) == -signal.SIGKILL
        gone_by = time.monotonic() + 5
        while alive(qemu) and time.monotonic() < gone_by:
            time.sleep(0.05)
        assert not alive(qemu), "QEMU outlived the process that started it"
        assert not locked(image)
    finally:
        child.kill()
        child.wait()
        if qemu and alive(qemu):
            os.kill(qemu, signal.SIGKILL)
