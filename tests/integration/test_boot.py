"""QEMU boots straight from the imgfs mount (issue 5).

A Debian kernel (linux-image-*-amd64 via apt-get download + dpkg -x, cached by
vmkit) and a busybox-static initramfs whose /init hashes a known region of
/dev/vda, prints the sum on the serial console, writes a marker and powers
off.  The base qcow2 is made by the test, so its bytes are known.
"""
import hashlib
import json
import shutil
import uuid

import pytest

import vmkit
from conftest import binary, run
from https_server import HTTPSServer
from vmkit.lab import ImgfsMount, write_manifest

MiB = 1 << 20
BASE = "alpine/base.qcow2"
BOOT_TIMEOUT = 180

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None,
                       reason="qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)"),
]


@pytest.fixture(scope="module")
def guest(tmp_path_factory):
    """(kernel, initrd, base) shared by the boot tests."""
    d = tmp_path_factory.mktemp("vm")
    kern = vmkit.kernel()
    initrd = vmkit.initramfs(d / "initrd.img", kern)
    base = vmkit.base_image(d / "base.qcow2")  # 64 MiB, 16 MiB known region at 1 MiB
    return kern, initrd, base


def labctl(*args):
    return [binary("labctl"), *args]


def boot(guest, drive, log, marker=None, marker_off=None, **kw):
    kern, initrd, base = guest
    r = vmkit.boot(kern, initrd, drive, timeout=BOOT_TIMEOUT, log_path=log,
                   region=(base.region_off, base.region_len), marker=marker,
                   marker_off=marker_off, **kw)
    assert not r.timed_out, f"QEMU did not finish within {BOOT_TIMEOUT}s:\n{r.log[-3000:]}"
    assert r.ok, f"guest failed ({r.failures}):\n{r.log[-3000:]}"
    return r


def test_boot_overlay_on_mount(guest, bucket, tmp_path):
    """sync -> mount -> overlay -> boot: the guest reads the base through the
    overlay and the mount, and its write lands in the overlay only."""
    kern, initrd, base = guest
    base_sha = vmkit.sha256_file(base.path)

    # sync the base from a local HTTPS server, as CI would
    src = tmp_path / "www"
    src.mkdir()
    shutil.copy(base.path, src / "base.qcow2")
    srv = HTTPSServer(src, tmp_path / "certs").start()
    try:
        repo = tmp_path / "repo"
        manifest = write_manifest(
            repo / "images" / "images.yaml",
            [{"name": "alpine-base", "url": srv.url("base.qcow2"),
              "checksum": "sha256:" + base_sha, "destination": BASE}],
            [{"name": "alpine-wireguard", "base": BASE, "output": "alpine-wireguard.qcow2",
              "variant": "wireguard", "packages": ["wireguard-tools"],
              "services": ["wireguard"]}])
        run(labctl("images", "sync", "--manifest", manifest, "--ca-bundle", srv.ca),
            env=bucket.env, check=0)
    finally:
        srv.stop()
    rec = json.loads(bucket.get(f"metadata/{BASE}.json"))
    assert rec["checksum"] == "sha256:" + base_sha

    with ImgfsMount(binary("imgfs"), tmp_path / "mnt", bucket.env, tmp_path / "cache") as mnt:
        outdir = tmp_path / "overlays"
        run(labctl("images", "overlay", "--mount", mnt.path, "--overlay-dir", outdir,
                   "--manifest", manifest), env=bucket.env, check=0)
        overlay = outdir / "alpine-wireguard.qcow2"
        prov = json.loads((outdir / "alpine-wireguard-provenance.json").read_text())
        assert prov["base_image"]["sha256"] == base_sha

        marker = "IMGSTORE-MARKER-" + uuid.uuid4().hex[:16]
        r = boot(guest, f"file={overlay},format=qcow2,if=virtio", tmp_path / "serial.log",
                 marker=marker, marker_off=base.marker_off)
        assert r.sha256 == base.region_sha256, "the guest read other bytes than the base's"
        assert r.marker == marker and r.marker_off == base.marker_off

        # the marker is in the overlay ...
        assert vmkit.read_guest(overlay, base.marker_off, len(marker)) == marker.encode()
        # ... and not in the base: not on the mount, not in the bucket
        on_mount = mnt.path / ".imgstore" / "by-sha256" / base_sha
        assert vmkit.read_guest(on_mount, base.marker_off, len(marker)) == b"\0" * len(marker)
        assert vmkit.sha256_file(on_mount) == base_sha
        st = mnt.stats()
        assert st["verify_failures"] == 0
    assert hashlib.sha256(bucket.get(f"images/{BASE}")).hexdigest() == base_sha
    assert json.loads(bucket.get(f"metadata/{BASE}.json"))["checksum"] == "sha256:" + base_sha


@pytest.mark.parametrize("cache", ["writeback", "none"])
def test_boot_base_read_only_on_mount(guest, bucket, tmp_path, cache):
    """The base opened directly from the mount: read-only, with image locking
    on, with and without O_DIRECT (cache=none)."""
    kern, initrd, base = guest
    base_sha = vmkit.sha256_file(base.path)
    run(labctl("images", "upload", "--source", base.path, "--destination", BASE),
        env=bucket.env, check=0)
    with ImgfsMount(binary("imgfs"), tmp_path / "mnt", bucket.env, tmp_path / "cache") as mnt:
        path = mnt.path / ".imgstore" / "by-sha256" / base_sha
        drive = (f"file.filename={path},file.driver=file,file.locking=on,driver=qcow2,"
                 f"if=virtio,read-only=on,cache={cache}")
        r = boot(guest, drive, tmp_path / "serial.log", direct_read=(cache == "none"))
        assert r.sha256 == base.region_sha256
        assert r.marker is None
