"""labctl images overlay (issue 5): qcow2 overlays on bases read through a
real imgfs mount of the real local S3 server; provenance; refusal and
--rebase; the error cases; qemu-io through an overlay and on the base."""
import hashlib
import json
import os
import re
import subprocess
import time
from datetime import datetime, timezone

import pytest

import vmkit
from conftest import binary, run
from vmkit.lab import ImgfsMount, image_info, qemu_io, write_manifest

MiB = 1 << 20
BASE = "alpine/base.qcow2"


def labctl(*args):
    return [binary("labctl"), *args]


def make_base(path, seed=b"overlay-test"):
    """A small qcow2 with known guest bytes: 8 MiB, pattern in [1, 5) MiB."""
    return vmkit.base_image(path, size=8 * MiB, region_off=1 * MiB, region_len=4 * MiB,
                            marker_off=6 * MiB, seed=seed)


def upload(bucket, src, dest):
    run(labctl("images", "upload", "--source", src, "--destination", dest),
        env=bucket.env, check=0)


class Lab:
    """A repo with images/images.yaml, a bucket with the base, a mount."""

    def __init__(self, bucket, tmp, git=True):
        self.bucket = bucket
        self.tmp = tmp
        self.repo = tmp / "repo"
        self.manifest = self.repo / "images" / "images.yaml"
        self.outdir = tmp / "overlays"
        self.base = make_base(tmp / "base.qcow2")
        self.base_sha = vmkit.sha256_file(self.base.path)
        self.images = [self.image_entry("alpine-base", BASE, self.base_sha)]
        self.overlays = [
            {"name": "alpine-wireguard", "base": BASE, "output": "alpine-wireguard.qcow2",
             "variant": "wireguard", "packages": ["wireguard-tools"],
             "services": ["wireguard"]},
            {"name": "alpine-novpn", "base": BASE, "output": "alpine-novpn.qcow2",
             "variant": "no-vpn", "packages": [], "services": []},
        ]
        self.write()
        self.git_sha = None
        if git:
            env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.org",
                       GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.org")
            for a in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", "images"]):
                subprocess.run(["git", "-C", str(self.repo), *a], check=True, env=env,
                               capture_output=True)
            self.git_sha = subprocess.run(["git", "-C", str(self.repo), "rev-parse", "HEAD"],
                                          check=True, capture_output=True,
                                          text=True).stdout.strip()
        upload(bucket, self.base.path, BASE)
        self.mount = ImgfsMount(binary("imgfs"), tmp / "mnt", bucket.env, tmp / "cache",
                                extra=["--refresh", "1"]).start()

    @staticmethod
    def image_entry(name, dest, sha):
        return {"name": name, "url": f"https://images.example.org/{dest}",
                "checksum": "sha256:" + sha, "destination": dest}

    def write(self):
        write_manifest(self.manifest, self.images, self.overlays)

    def overlay(self, *extra, check=0):
        return run(labctl("images", "overlay", "--mount", self.mount.path, "--overlay-dir",
                          self.outdir, "--manifest", self.manifest, *extra),
                   env=self.bucket.env, check=check)

    def backing(self, sha):
        return str(self.mount.path.resolve() / ".imgstore" / "by-sha256" / sha)

    def close(self):
        self.mount.stop()


@pytest.fixture
def lab(bucket, tmp_path):
    lab = Lab(bucket, tmp_path)
    yield lab
    lab.close()


def provenance(lab, stem):
    return json.loads((lab.outdir / f"{stem}-provenance.json").read_text())


def assert_overlay_on(path, backing):
    info = image_info(path)
    assert info["format"] == "qcow2"
    assert info.get("full-backing-filename", info.get("backing-filename")) == backing
    assert info["backing-filename-format"] == "qcow2"


# ------------------------------------------------------------------ creation


def test_create_overlays_and_provenance(lab):
    before = datetime.now(timezone.utc).replace(microsecond=0)
    p = lab.overlay()
    after = datetime.now(timezone.utc)
    assert "created" in p.stdout
    for o in lab.overlays:
        out = lab.outdir / o["output"]
        assert_overlay_on(out, lab.backing(lab.base_sha))
        assert out.stat().st_size < 1 * MiB  # a delta, not a copy
        prov = provenance(lab, o["output"][:-len(".qcow2")])
        assert prov["format_version"] == "1.0"
        assert prov["build_type"] == "alpine-variant"
        assert prov["variant"] == o["variant"]
        assert prov["base_image"]["path"] == BASE
        assert prov["base_image"]["sha256"] == lab.base_sha
        assert prov["source"]["git_sha"] == lab.git_sha
        date = prov["source"]["build_date"]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", date), date
        when = datetime.strptime(date, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
        assert before <= when <= after
        assert prov["packages"] == o["packages"]
        assert prov["services"] == o["services"]
    # nothing else was left in the output directory (no temporary files)
    assert sorted(p.name for p in lab.outdir.iterdir()) == sorted(
        [o["output"] for o in lab.overlays] +
        [o["output"][:-6] + "-provenance.json" for o in lab.overlays])


def test_overlay_reads_base_bytes(lab):
    lab.overlay()
    out = lab.outdir / "alpine-wireguard.qcow2"
    expected = lab.base.expected_raw()
    assert vmkit.read_guest(out, 0, len(expected)) == expected


def test_idempotent(lab):
    lab.overlay()
    files = sorted(lab.outdir.iterdir())
    state = {f.name: (f.stat().st_mtime_ns, f.stat().st_ino, f.read_bytes()) for f in files}
    time.sleep(1.1)  # a rewrite would show in the build_date and mtime
    p = lab.overlay()
    assert "created" not in p.stdout
    assert {f.name: (f.stat().st_mtime_ns, f.stat().st_ino, f.read_bytes())
            for f in sorted(lab.outdir.iterdir())} == state


def test_only(lab):
    lab.overlay("--only", "alpine-novpn")
    assert (lab.outdir / "alpine-novpn.qcow2").exists()
    assert not (lab.outdir / "alpine-wireguard.qcow2").exists()
    p = lab.overlay("--only", "nope", check=2)
    assert "nope" in p.stderr


def test_provenance_updated_when_manifest_changes(lab):
    lab.overlay()
    lab.overlays[0]["packages"] = ["wireguard-tools", "iptables"]
    lab.write()
    lab.overlay()
    assert provenance(lab, "alpine-wireguard")["packages"] == ["wireguard-tools", "iptables"]


def test_git_sha_null_outside_git(bucket, tmp_path):
    lab = Lab(bucket, tmp_path, git=False)
    try:
        lab.overlay("--only", "alpine-novpn")
        assert provenance(lab, "alpine-novpn")["source"]["git_sha"] is None
    finally:
        lab.close()


# ------------------------------------------------------------------ another base


def test_refuse_other_backing_then_rebase(lab):
    lab.overlay("--only", "alpine-wireguard")
    out = lab.outdir / "alpine-wireguard.qcow2"
    # the guest writes something into the overlay
    qemu_io(["-f", "qcow2", "-c", "write -P 0x5a 2M 64k", out])
    view_before = vmkit.read_guest(out, 0, 8 * MiB)

    # a new base version, kept next to the old one so both stay readable
    v2 = vmkit.base_image(lab.tmp / "base-v2.qcow2", size=8 * MiB, region_off=1 * MiB,
                          region_len=4 * MiB, marker_off=6 * MiB, seed=b"v2")
    v2_sha = vmkit.sha256_file(v2.path)
    upload(lab.bucket, v2.path, "alpine/base-v2.qcow2")
    lab.mount.refresh(want="alpine/base-v2.qcow2")
    lab.images.append(lab.image_entry("alpine-base-v2", "alpine/base-v2.qcow2", v2_sha))
    lab.overlays[0]["base"] = "alpine/base-v2.qcow2"
    lab.write()

    raw_before = out.read_bytes()
    p = lab.overlay("--only", "alpine-wireguard", check=1)
    assert "--rebase" in p.stderr and "another backing file" in p.stderr
    assert out.read_bytes() == raw_before  # untouched
    assert provenance(lab, "alpine-wireguard")["base_image"]["sha256"] == lab.base_sha

    p = lab.overlay("--only", "alpine-wireguard", "--rebase")
    assert "rebased" in p.stdout
    assert_overlay_on(out, lab.backing(v2_sha))
    # a safe rebase keeps what the guest sees
    assert vmkit.read_guest(out, 0, 8 * MiB) == view_before
    prov = provenance(lab, "alpine-wireguard")
    assert prov["base_image"] == {**prov["base_image"], "path": "alpine/base-v2.qcow2",
                                  "sha256": v2_sha}
    # and it is idempotent again
    lab.overlay("--only", "alpine-wireguard")
    assert_overlay_on(out, lab.backing(v2_sha))


def test_rebase_refused_when_old_base_is_gone(lab):
    lab.overlay("--only", "alpine-wireguard")
    out = lab.outdir / "alpine-wireguard.qcow2"
    # the base re-uploaded under the same name, and its kept version let go
    # (as prune does once retention allows): the old bytes are gone
    v2 = vmkit.base_image(lab.tmp / "base-v2.qcow2", size=8 * MiB, region_off=1 * MiB,
                          region_len=4 * MiB, marker_off=6 * MiB, seed=b"v2")
    v2_sha = vmkit.sha256_file(v2.path)
    upload(lab.bucket, v2.path, BASE)
    for k in (f"versions/{lab.base_sha}", f"metadata/versions/{lab.base_sha}.json"):
        lab.bucket.s3.delete_object(Bucket=lab.bucket.name, Key=k)
    lab.mount.refresh(want=f".imgstore/by-sha256/{v2_sha}",
                      gone=f".imgstore/by-sha256/{lab.base_sha}")
    lab.images[0]["checksum"] = "sha256:" + v2_sha
    lab.write()
    raw_before = out.read_bytes()
    p = lab.overlay("--only", "alpine-wireguard", check=1)
    assert "--rebase" in p.stderr
    p = lab.overlay("--only", "alpine-wireguard", "--rebase", check=1)
    assert "not readable" in p.stderr
    assert out.read_bytes() == raw_before
    assert_overlay_on(out, lab.backing(lab.base_sha))


# ------------------------------------------------------------------ errors


def test_usage_errors(lab):
    run(labctl("images", "overlay", "--overlay-dir", lab.outdir, "--manifest", lab.manifest),
        env=lab.bucket.env, check=2)
    run(labctl("images", "overlay", "--mount", lab.mount.path, "--manifest", lab.manifest),
        env=lab.bucket.env, check=2)
    p = run(labctl("images", "overlay", "--help"), check=0)
    assert "--overlay-dir" in p.stdout and "--rebase" in p.stdout


def test_invalid_manifest_is_exit_2(lab):
    lab.manifest.write_text(lab.manifest.read_text().replace("kind: ImageManifest",
                                                             "kind: ImageManifset"))
    lab.overlay(check=2)
    assert not lab.outdir.exists() or not any(lab.outdir.iterdir())


def test_base_not_in_manifest_is_exit_2(lab):
    lab.overlays[1]["base"] = "alpine/missing.qcow2"
    lab.write()
    p = lab.overlay("--only", "alpine-novpn", check=2)
    assert "alpine/missing.qcow2" in p.stderr


def test_base_not_synced(lab):
    lab.images.append(lab.image_entry("other", "other/base.qcow2", "0" * 64))
    lab.overlays[1]["base"] = "other/base.qcow2"
    lab.write()
    p = lab.overlay(check=1)
    assert "other/base.qcow2" in p.stderr and "not synced" in p.stderr
    assert "sync --only other" in p.stderr
    # the other overlay was still made
    assert (lab.outdir / "alpine-wireguard.qcow2").exists()
    assert not (lab.outdir / "alpine-novpn.qcow2").exists()


def test_base_synced_but_not_yet_on_the_mount(lab, tmp_path):
    lab.mount.stop()
    lab.mount = ImgfsMount(binary("imgfs"), tmp_path / "mnt2", lab.bucket.env,
                           tmp_path / "cache2", extra=["--refresh", "3600"]).start()
    other = make_base(tmp_path / "other.qcow2", seed=b"other")
    sha = vmkit.sha256_file(other.path)
    upload(lab.bucket, other.path, "other/base.qcow2")
    lab.images.append(lab.image_entry("other", "other/base.qcow2", sha))
    lab.overlays[1]["base"] = "other/base.qcow2"
    lab.write()
    p = lab.overlay("--only", "alpine-novpn", check=1)
    assert "not visible on the mount" in p.stderr and "SIGHUP" in p.stderr
    lab.mount.refresh(want="other/base.qcow2")
    lab.overlay("--only", "alpine-novpn")
    assert_overlay_on(lab.outdir / "alpine-novpn.qcow2", lab.backing(sha))


def test_bucket_base_differs_from_manifest(lab):
    lab.images[0]["checksum"] = "sha256:" + "ab" * 32
    lab.write()
    p = lab.overlay(check=1)
    assert "labctl images sync" in p.stderr
    assert not (lab.outdir / "alpine-wireguard.qcow2").exists()


def test_base_not_qcow2(lab, tmp_path):
    raw = tmp_path / "disk.raw"
    raw.write_bytes(vmkit.pattern(2 * MiB, b"raw"))
    upload(lab.bucket, raw, "raw/disk.qcow2")
    lab.mount.refresh(want="raw/disk.qcow2")
    lab.images.append(lab.image_entry("raw", "raw/disk.qcow2", vmkit.sha256_file(raw)))
    lab.overlays[1]["base"] = "raw/disk.qcow2"
    lab.write()
    p = lab.overlay("--only", "alpine-novpn", check=1)
    assert "not qcow2" in p.stderr


def test_mount_is_not_imgfs(lab, tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    p = run(labctl("images", "overlay", "--mount", plain, "--overlay-dir", lab.outdir,
                   "--manifest", lab.manifest), env=lab.bucket.env, check=1)
    assert "not an imgfs mount" in p.stderr


def test_existing_file_not_an_overlay(lab):
    lab.outdir.mkdir()
    f = lab.outdir / "alpine-novpn.qcow2"
    f.write_bytes(b"precious data\n")
    p = lab.overlay(check=1)
    assert "not a qcow2 overlay" in p.stderr
    assert f.read_bytes() == b"precious data\n"
    assert (lab.outdir / "alpine-wireguard.qcow2").exists()


# ------------------------------------------------------------------ data path


def test_qemu_io_writes_land_in_overlay_only(lab):
    lab.overlay("--only", "alpine-wireguard")
    out = lab.outdir / "alpine-wireguard.qcow2"
    expected = bytearray(lab.base.expected_raw())
    # reads through the overlay are the base's bytes
    assert vmkit.read_guest(out, 0, len(expected)) == bytes(expected)
    # writes go into the overlay
    qemu_io(["-f", "qcow2", "-c", "write -P 0xab 2M 128k", "-c", "write -P 0xcd 7M 4k", out])
    qemu_io(["-f", "qcow2", "-c", "read -P 0xab 2M 128k", "-c", "read -P 0xcd 7M 4k", out])
    expected[2 * MiB:2 * MiB + 128 * 1024] = b"\xab" * (128 * 1024)
    expected[7 * MiB:7 * MiB + 4096] = b"\xcd" * 4096
    assert vmkit.read_guest(out, 0, len(expected)) == bytes(expected)
    # the base is unchanged: in the bucket, its record, and on the mount
    assert hashlib.sha256(lab.bucket.get(f"images/{BASE}")).hexdigest() == lab.base_sha
    rec = json.loads(lab.bucket.get(f"metadata/{BASE}.json"))
    assert rec["checksum"] == "sha256:" + lab.base_sha
    assert vmkit.sha256_file(lab.mount.path / BASE) == lab.base_sha
    assert vmkit.read_guest(lab.backing(lab.base_sha), 0, 8 * MiB) == lab.base.expected_raw()


@pytest.mark.parametrize("opts", [
    "file.locking=on",
    "cache.direct=on,file.locking=on",
    "cache.direct=on,file.aio=native,file.locking=on",
])
def test_qemu_opens_base_on_mount_read_only(lab, opts):
    """QEMU's block layer on the mount as a lab host uses it: read-only,
    O_DIRECT (cache=none) and image locking (OFD locks) on."""
    path = lab.backing(lab.base_sha)
    io = ["-r", "--image-opts",
          f"driver=qcow2,file.driver=file,file.filename={path},{opts}"]
    # aligned and unaligned reads, large and small, across the pattern's edges
    data = lab.base.expected_raw()
    for off, length in ((0, 65536), (1 * MiB - 512, 4096), (1 * MiB + 12345, 777),
                        (3 * MiB, 256 * 1024), (5 * MiB - 100, 300)):
        p = qemu_io([*io, "-c", f"read -v {off} {length}"])
        got = bytearray()
        for line in p.stdout.splitlines():
            m = re.match(r"^[0-9a-f]{8}:\s+((?:[0-9a-f]{2} ){1,16})", line)
            if m:
                got += bytes.fromhex(m.group(1).replace(" ", ""))
        assert bytes(got) == data[off:off + length], (off, length)
    # the whole image through the same options
    assert vmkit.read_guest(None, 0, len(data), opts=f"driver=qcow2,file.driver=file,"
                            f"file.filename={path},{opts}") == data
    # a writer is refused: the mount is read-only
    p = qemu_io(["--image-opts", f"driver=qcow2,file.driver=file,file.filename={path},{opts}",
                 "-c", "write 0 512"], check=False)
    assert p.returncode != 0 or "error" in (p.stdout + p.stderr).lower() \
        or "read-only" in (p.stdout + p.stderr).lower()
    assert hashlib.sha256(lab.bucket.get(f"images/{BASE}")).hexdigest() == lab.base_sha


def test_qemu_img_compare_through_mount(lab):
    p = subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "qcow2",
                        lab.base.path, str(lab.mount.path / BASE)],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr


def test_mount_system_calls_qemu_makes(lab):
    """What QEMU's file driver does to a base on the mount: O_DIRECT opens
    with aligned, unaligned and large reads, fsync/fdatasync of a read-only
    descriptor (a flush), OFD byte-range locks (image locking), and write
    opens that must fail with EROFS."""
    import errno
    import fcntl
    import mmap
    import struct
    path = lab.backing(lab.base_sha)
    data = lab.base.path.read_bytes()
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        buf = mmap.mmap(-1, 4 * MiB)  # page-aligned, as O_DIRECT wants
        assert os.preadv(fd, [memoryview(buf)[:4096]], 0) == 4096
        assert bytes(buf[:4096]) == data[:4096]
        n = os.preadv(fd, [buf], 1 * MiB)
        assert bytes(buf[:n]) == data[1 * MiB:1 * MiB + n]
        assert os.pread(fd, 777, 12345) == data[12345:12345 + 777]
        assert os.pread(fd, 4096, len(data) - 100) == data[-100:]
        os.fsync(fd)
        os.fdatasync(fd)
        F_OFD_GETLK, F_OFD_SETLK = 36, 37
        lock = struct.pack("hhqqi4x", fcntl.F_RDLCK, os.SEEK_SET, 100, 1, 0)
        fcntl.fcntl(fd, F_OFD_SETLK, lock)
        probe = struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, 100, 1, 0)
        fd2 = os.open(path, os.O_RDONLY)
        try:
            # another open file description sees the shared lock
            assert struct.unpack("hhqqi4x", fcntl.fcntl(fd2, F_OFD_GETLK, probe))[0] == \
                fcntl.F_RDLCK
        finally:
            os.close(fd2)
    finally:
        os.close(fd)
    for flags in (os.O_RDWR, os.O_WRONLY, os.O_RDWR | os.O_DIRECT):
        with pytest.raises(OSError) as exc:
            os.close(os.open(path, flags))
        assert exc.value.errno == errno.EROFS


def test_base_named_by_image_name(lab):
    """spec.overlays[].base may name the image instead of its destination."""
    lab.overlays[1]["base"] = "alpine-base"
    lab.write()
    lab.overlay("--only", "alpine-novpn")
    assert_overlay_on(lab.outdir / "alpine-novpn.qcow2", lab.backing(lab.base_sha))
    assert provenance(lab, "alpine-novpn")["base_image"]["path"] == BASE
