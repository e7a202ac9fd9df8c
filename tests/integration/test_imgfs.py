"""imgfs (issue 4): a real mount of the real local S3 server.

Images go into the bucket with `labctl images upload` (image + checksum
record); the cases that need a record labctl would never write (a tampered
object, a wrong size) write it from Python.
"""
import errno
import fcntl
import hashlib
import json
import os
import random
import select
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import binary, clean_env, run

MiB = 1 << 20
BLOCK = MiB


# ---------------------------------------------------------------- helpers

def pattern(size, seed=0):
    """Deterministic bytes, different in every block, quick to make."""
    out = bytearray()
    i = 0
    while len(out) < size:
        out += hashlib.sha256(b"%d-%d" % (seed, i)).digest() * (MiB // 32 // 16)
        i += 1
    return bytes(out[:size])


def sparse(size, seed=0):
    """Data with all-zero blocks in between (what raw images look like)."""
    data = bytearray(pattern(size, seed))
    for b in range(1, size // BLOCK, 3):
        data[b * BLOCK:(b + 1) * BLOCK] = bytes(BLOCK)
    return bytes(data)


def labctl(*args):
    return [binary("labctl"), *args]


def upload(bucket, tmp, dest, data):
    src = Path(tmp) / ("src-" + hashlib.sha256(dest.encode()).hexdigest()[:12])
    src.write_bytes(data)
    run(labctl("images", "upload", "--source", src, "--destination", dest),
        env=bucket.env, check=0)
    return src


def record_for(data, etag, name="x", bs=BLOCK):
    return {
        "name": name,
        "checksum": "sha256:" + hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "uploadedAt": "2024-12-20T10:00:00Z",
        "source": {"url": "https://example.org/" + name},
        "etag": etag,
        "blocks": {"size": bs, "algorithm": "sha256",
                   "hashes": [hashlib.sha256(data[i:i + bs]).hexdigest()
                              for i in range(0, len(data), bs)]},
    }


def put_raw(bucket, dest, data, record=True, bs=BLOCK):
    """The object and (unless record=False) a record written from Python."""
    etag = bucket.put(f"images/{dest}", data)["ETag"]
    if record:
        rec = record_for(data, etag, dest, bs)
        bucket.put(f"metadata/{dest}.json", json.dumps(rec).encode())
    return etag


def sha256(data):
    return hashlib.sha256(data).hexdigest()


class Mount:
    """`imgfs -f` in the background for the length of a test; always
    unmounted (and the process reaped) on stop()."""

    def __init__(self, env, mountpoint, cache_dir, extra=(), log=None):
        self.env = env
        self.path = Path(mountpoint)
        self.cache_dir = Path(cache_dir)
        self.extra = [str(a) for a in extra]
        self.log = Path(log or f"{self.path}.log")
        self.proc = None

    def start(self, timeout=60):
        self.path.mkdir(parents=True, exist_ok=True)
        args = [binary("imgfs"), "-f", "--cache-dir", str(self.cache_dir), *self.extra,
                str(self.path)]
        self._logf = open(self.log, "ab")
        self.proc = subprocess.Popen(args, env=self.env, stdin=subprocess.DEVNULL,
                                     stdout=self._logf, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._logf.close()
                self.proc = None
                raise RuntimeError("imgfs exited before mounting:\n" + self.logtext())
            if os.path.ismount(self.path):
                try:
                    if (self.path / ".imgstore").is_dir():
                        return self
                except OSError:
                    pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("imgfs did not mount in time:\n" + self.logtext())

    def logtext(self):
        return self.log.read_text(errors="replace")[-5000:]

    def stop(self):
        if self.proc is None:
            unmount(self.path)
            return
        unmount(self.path)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        unmount(self.path, lazy=True)
        self._logf.close()
        code, self.proc = self.proc.returncode, None
        return code

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self._logf.close()
        self.proc = None
        unmount(self.path, lazy=True)

    def sighup(self):
        self.proc.send_signal(signal.SIGHUP)

    def stats(self):
        return json.loads((self.path / ".imgstore" / "stats").read_text())

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def unmount(path, lazy=False):
    if os.path.ismount(path) or lazy:
        subprocess.run(["fusermount3", "-u" + ("z" if lazy else ""), str(path)],
                       capture_output=True)


@pytest.fixture
def imgfs(bucket, tmp_path):
    """Factory: imgfs(extra=..., cache=..., env=...) -> a started Mount,
    stopped at teardown."""
    mounts = []

    def make(extra=(), cache=None, env=None, name="mnt", start=True):
        m = Mount(env or bucket.env, tmp_path / name, cache or tmp_path / "cache", extra)
        mounts.append(m)
        return m.start() if start else m

    yield make
    for m in mounts:
        m.stop()
    for m in mounts:  # ASan/UBSan builds report into the log
        if m.log.exists():
            text = m.log.read_text(errors="replace")
            assert "Sanitizer" not in text and "runtime error" not in text, text[-5000:]


def wait_for(pred, timeout=20, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def read_chunks(path, chunk=64 * 1024):
    """[(offset, bytes | OSError)] of the whole file, read with pread."""
    out = []
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        for off in range(0, size, chunk):
            try:
                out.append((off, os.pread(fd, chunk, off)))
            except OSError as e:
                out.append((off, e))
    finally:
        os.close(fd)
    return out


class Proxy:
    """A TCP forwarder in front of the S3 server, to take the bucket away
    without touching the server the other tests share: mode "up" forwards,
    "reset" accepts and closes at once (like a stopped server), "hang"
    accepts and never answers (like a black hole).  Leaving "up" drops the
    connections in use."""

    def __init__(self, port):
        self.target = ("127.0.0.1", port)
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(64)
        self.port = self.lsock.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.conns = []
        self.mode = "up"
        self.closed = False
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closed:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            with self.lock:
                mode = self.mode
                if mode == "hang":
                    self.conns.append(c)
                    continue
            if mode == "reset":
                c.close()
                continue
            try:
                u = socket.create_connection(self.target)
            except OSError:
                c.close()
                continue
            with self.lock:
                self.conns += [c, u]
            threading.Thread(target=self._pump, args=(c, u), daemon=True).start()

    def _pump(self, a, b):
        try:
            while True:
                r, _, _ = select.select([a, b], [], [], 1.0)
                for s in r:
                    data = s.recv(1 << 16)
                    if not data:
                        raise OSError
                    (b if s is a else a).sendall(data)
        except (OSError, ValueError):
            pass
        finally:
            a.close()
            b.close()

    def set_mode(self, mode):
        with self.lock:
            self.mode = mode
            conns, self.conns = self.conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self):
        self.closed = True
        self.set_mode("reset")
        self.lsock.close()


# ---------------------------------------------------------------- command line

def test_help_and_version():
    p = run([binary("imgfs"), "--help"], env=clean_env(), check=0)
    for flag in ["--endpoint", "--bucket", "--credentials", "--sops-age-key-file", "--cache-dir",
                 "--cache-size", "--refresh", "--timeout", "--allow-unverified", "-f", "-o",
                 "--ca-bundle", "MOUNTPOINT"]:
        assert flag in p.stdout
    p = run([binary("imgfs"), "--version"], env=clean_env(), check=0)
    assert p.stdout.startswith("imgfs ")


@pytest.mark.parametrize("args", [
    ["--cache-size", "lots"], ["--cache-size", "-5G"], ["--cache-size", "10X"],
    ["--cache-size", ""], ["--timeout", "soon"], ["--timeout", "-1"], ["--timeout", "1.5"],
    ["--timeout", "0"], ["--refresh", "often"], ["--refresh", "10s"], ["--bogus"], [],
    ["a", "b", "c"],  # two are the fstab form: SOURCE MOUNTPOINT
])
def test_usage_errors_exit_2(bucket, tmp_path, args):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    p = run([binary("imgfs"), *args] + ([str(mnt)] if args and args != ["a", "b", "c"] else []),
            env=bucket.env, check=2)
    assert "imgfs" in p.stderr and p.stderr.strip()
    assert not os.path.ismount(mnt)


def test_unreachable_bucket_without_cache_exit_1(bucket, tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    env = dict(bucket.env, E2_ENDPOINT="http://127.0.0.1:9")
    t0 = time.monotonic()
    p = run([binary("imgfs"), "--timeout", "2", "--cache-dir", tmp_path / "c", mnt], env=env,
            check=1)
    assert time.monotonic() - t0 < 30
    assert "127.0.0.1:9" in p.stderr
    assert not os.path.ismount(mnt)


def test_missing_credentials_exit_2(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    p = run([binary("imgfs"), "--cache-dir", tmp_path / "c", mnt], env=clean_env(), check=2)
    assert "E2_ENDPOINT" in p.stderr or "endpoint" in p.stderr


def test_daemon_mode_mounts_and_unmounts(bucket, tmp_path):
    put_raw(bucket, "d.raw", pattern(300_000, 9))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    p = run([binary("imgfs"), "--cache-dir", tmp_path / "c", mnt], env=bucket.env, check=0,
            timeout=120)
    try:
        assert os.path.ismount(mnt)
        assert (mnt / "d.raw").read_bytes() == pattern(300_000, 9)
        assert oct((tmp_path / "c").stat().st_mode & 0o777) == "0o700"
    finally:
        unmount(mnt)
    wait_for(lambda: not os.path.ismount(mnt), what="unmount")
    assert p.stderr.count("error") == 0


# ---------------------------------------------------------------- contents

def test_every_image_byte_equal(bucket, tmp_path, imgfs):
    images = {
        "empty.raw": b"",
        "one.raw": b"x",
        "small.raw": pattern(100_000, 1),
        "lab/exact.raw": pattern(4 * MiB, 2),
        "lab/odd.qcow2": pattern(5 * MiB + 12345, 3),
        "lab/deep/er/sparse.raw": sparse(9 * MiB + 1, 4),
    }
    srcs = {d: upload(bucket, tmp_path, d, data) for d, data in images.items()}
    m = imgfs()
    assert sorted(os.listdir(m.path)) == [".imgstore", "empty.raw", "lab", "one.raw",
                                          "small.raw"]
    assert sorted(os.listdir(m.path / "lab")) == ["deep", "exact.raw", "odd.qcow2"]
    for dest, src in srcs.items():
        st = os.stat(m.path / dest)
        assert st.st_size == len(images[dest])
        assert st.st_mode & 0o777 == 0o444
        run(["cmp", src, m.path / dest], check=0)
    s = m.stats()
    assert s["verify_failures"] == 0
    assert s["zero_blocks"] >= 3  # the sparse blocks were not fetched
    assert s["bytes_fetched"] <= sum(len(d) for d in images.values()) - 3 * MiB


def test_random_preads(bucket, tmp_path, imgfs):
    data = sparse(24 * MiB + 777, 5)
    upload(bucket, tmp_path, "r.raw", data)
    m = imgfs()
    rnd = random.Random(42)
    fd = os.open(m.path / "r.raw", os.O_RDONLY)
    try:
        for i in range(400):
            off = rnd.randrange(0, len(data) + 10)
            ln = rnd.choice([1, 511, 4096, 65536, 131072 + 3, MiB, 3 * MiB + 5])
            assert os.pread(fd, ln, off) == data[off:off + ln], (off, ln)
    finally:
        os.close(fd)
    # the same through O_DIRECT (QEMU's cache=none), 4 KiB aligned
    for skip in [0, 1, 255, 256, 257, 4000, len(data) // 4096 - 2]:
        p = subprocess.run(["dd", f"if={m.path / 'r.raw'}", "iflag=direct", "bs=4k",
                            f"skip={skip}", "count=300", "status=none"], capture_output=True,
                           check=True)
        assert p.stdout == data[skip * 4096:(skip + 300) * 4096]


def test_qemu_img_through_the_mount(bucket, tmp_path, imgfs):
    raw = tmp_path / "disk.raw"
    raw.write_bytes(sparse(16 * MiB, 6))
    q = tmp_path / "disk.qcow2"
    run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, q], check=0)
    upload(bucket, tmp_path, "vm/disk.qcow2", q.read_bytes())
    upload(bucket, tmp_path, "vm/disk.raw", raw.read_bytes())
    m = imgfs()
    info = json.loads(run(["qemu-img", "info", "--output=json", m.path / "vm/disk.qcow2"],
                          check=0).stdout)
    assert info["format"] == "qcow2" and info["virtual-size"] == 16 * MiB
    run(["qemu-img", "compare", m.path / "vm/disk.qcow2", raw], check=0)
    run(["qemu-img", "compare", "-f", "raw", "-F", "raw", m.path / "vm/disk.raw", raw], check=0)
    # QEMU's way of opening: O_DIRECT (cache=none), image locking, fsync
    run(["qemu-img", "compare", "-T", "none", m.path / "vm/disk.qcow2", raw], check=0)
    fd = os.open(m.path / "vm/disk.raw", os.O_RDONLY | os.O_DIRECT)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        fcntl.lockf(fd, fcntl.LOCK_SH)
        os.fsync(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
    # SEEK_HOLE/SEEK_DATA: the all-zero blocks are holes
    fd = os.open(m.path / "vm/disk.raw", os.O_RDONLY)
    try:
        assert os.lseek(fd, 0, os.SEEK_DATA) == 0
        assert os.lseek(fd, 0, os.SEEK_HOLE) == 1 * MiB
        assert os.lseek(fd, 1 * MiB, os.SEEK_DATA) == 2 * MiB
    finally:
        os.close(fd)


def test_xattrs_stats_and_by_sha256(bucket, tmp_path, imgfs):
    data = pattern(3 * MiB + 5, 7)
    upload(bucket, tmp_path, "x/img.raw", data)
    rec = json.loads(bucket.get("metadata/x/img.raw.json"))
    m = imgfs()
    p = m.path / "x/img.raw"
    names = os.listxattr(p)
    for n in ["checksum", "uploaded_at", "cached_bytes"]:
        assert "user.imgstore." + n in names
    assert os.getxattr(p, "user.imgstore.checksum").decode() == "sha256:" + sha256(data)
    assert os.getxattr(p, "user.imgstore.uploaded_at").decode() == rec["uploadedAt"]
    if rec.get("source", {}).get("url"):
        assert os.getxattr(p, "user.imgstore.source_url").decode() == rec["source"]["url"]
    assert int(os.getxattr(p, "user.imgstore.cached_bytes")) == 0
    with pytest.raises(OSError) as ei:
        os.getxattr(p, "user.imgstore.nope")
    assert ei.value.errno == errno.ENODATA

    before = m.stats()
    for k in ["cache_hits", "cache_misses", "bytes_fetched", "verify_failures", "cache_bytes",
              "cache_limit_bytes"]:
        assert isinstance(before[k], int), k
    assert before["cache_limit_bytes"] == 10 << 30

    by = m.path / ".imgstore" / "by-sha256" / sha256(data)
    assert by.read_bytes() == data
    assert os.getxattr(by, "user.imgstore.checksum").decode() == "sha256:" + sha256(data)
    assert p.read_bytes() == data
    wait_for(lambda: int(os.getxattr(p, "user.imgstore.cached_bytes")) == len(data),
             what="cached_bytes to reach the size")
    after = m.stats()
    assert after["bytes_fetched"] - before["bytes_fetched"] == len(data)
    assert after["cache_misses"] >= 4
    wait_for(lambda: m.stats()["cache_bytes"] >= len(data), what="cache_bytes")

    # a private copy with custom values: a record without source url
    data2 = pattern(10_000, 8)
    put_raw(bucket, "y.raw", data2)
    r2 = json.loads(bucket.get("metadata/y.raw.json"))
    del r2["source"]
    bucket.put("metadata/y.raw.json", json.dumps(r2).encode())
    m.sighup()
    wait_for(lambda: (m.path / "y.raw").exists(), what="y.raw after SIGHUP")
    assert "user.imgstore.source_url" not in os.listxattr(m.path / "y.raw")
    assert os.listxattr(m.path / "x") == []


def test_erofs_on_every_write(bucket, tmp_path, imgfs):
    upload(bucket, tmp_path, "w/a.raw", pattern(10_000, 9))
    for extra in [(), ("-o", "rw")]:  # the kernel's ro check, then imgfs's own
        m = imgfs(extra=extra, name="mnt-" + "-".join(extra).strip("-"))
        a, d = m.path / "w/a.raw", m.path / "w"
        ops = {
            "open O_WRONLY": lambda: os.open(a, os.O_WRONLY),
            "open O_RDWR": lambda: os.open(a, os.O_RDWR),
            "open O_TRUNC": lambda: os.open(a, os.O_RDONLY | os.O_TRUNC),
            "create": lambda: os.open(d / "new", os.O_WRONLY | os.O_CREAT, 0o644),
            "mkdir": lambda: os.mkdir(d / "sub"),
            "rmdir": lambda: os.rmdir(d),
            "unlink": lambda: os.unlink(a),
            "rename": lambda: os.rename(a, d / "b.raw"),
            "truncate": lambda: os.truncate(a, 0),
            "chmod": lambda: os.chmod(a, 0o666),
            "chown": lambda: os.chown(a, 1, 1),
            "utime": lambda: os.utime(a, (1, 1)),
            "setxattr": lambda: os.setxattr(a, "user.foo", b"1"),
            "removexattr": lambda: os.removexattr(a, "user.imgstore.checksum"),
            "symlink": lambda: os.symlink("a.raw", d / "l"),
            "link": lambda: os.link(a, d / "h"),
            "mkfifo": lambda: os.mkfifo(d / "f"),
            "stats write": lambda: os.open(m.path / ".imgstore" / "stats", os.O_WRONLY),
        }
        for what, op in ops.items():
            with pytest.raises(OSError) as ei:
                op()
            assert ei.value.errno == errno.EROFS, (extra, what, ei.value)
        assert not os.access(a, os.W_OK)
        assert a.read_bytes() == pattern(10_000, 9)


def test_stable_inodes_across_refresh_and_remount(bucket, tmp_path, imgfs):
    upload(bucket, tmp_path, "i/a.raw", pattern(1000, 1))
    upload(bucket, tmp_path, "i/b.raw", pattern(1000, 2))
    m = imgfs()
    paths = ["i", "i/a.raw", "i/b.raw", ".imgstore", ".imgstore/stats"]
    inos = {p: os.stat(m.path / p).st_ino for p in paths}
    assert len(set(inos.values())) == len(inos)
    put_raw(bucket, "i/c.raw", pattern(1000, 3))
    m.sighup()
    wait_for(lambda: (m.path / "i/c.raw").exists(), what="c.raw")
    assert {p: os.stat(m.path / p).st_ino for p in paths} == inos
    c_ino = os.stat(m.path / "i/c.raw").st_ino
    m.stop()
    m2 = imgfs(cache=tmp_path / "other-cache", name="mnt2")
    assert {p: os.stat(m2.path / p).st_ino for p in paths} == inos
    assert os.stat(m2.path / "i/c.raw").st_ino == c_ino


def test_paths_file_dir_conflicts_and_odd_keys(bucket, tmp_path, imgfs):
    put_raw(bucket, "a", pattern(100, 1))         # "a" is an image ...
    put_raw(bucket, "a/b.raw", pattern(100, 2))   # ... and a directory: the directory wins
    put_raw(bucket, "sp ace/ü.raw", pattern(100, 3))
    put_raw(bucket, ".imgstore/x.raw", pattern(100, 4))  # the control directory is ours
    put_raw(bucket, "x", pattern(100, 5))
    bucket.put("images/dir-marker/", b"")
    m = imgfs(extra=["--refresh", "0"])
    assert sorted(os.listdir(m.path)) == [".imgstore", "a", "sp ace", "x"]
    assert (m.path / "a").is_dir() and (m.path / "a/b.raw").read_bytes() == pattern(100, 2)
    assert (m.path / "sp ace/ü.raw").read_bytes() == pattern(100, 3)
    assert sorted(os.listdir(m.path / ".imgstore")) == ["by-sha256", "metrics", "stats"]
    # x turns from an image into a directory: a new inode, the old one gone
    x_ino = os.stat(m.path / "x").st_ino
    bucket.s3.delete_object(Bucket=bucket.name, Key="images/x")
    bucket.s3.delete_object(Bucket=bucket.name, Key="metadata/x.json")
    put_raw(bucket, "x/y.raw", pattern(100, 6))
    m.sighup()
    wait_for(lambda: (m.path / "x/y.raw").exists(), what="x/y.raw")
    assert (m.path / "x").is_dir() and os.stat(m.path / "x").st_ino != x_ino
    assert (m.path / "x/y.raw").read_bytes() == pattern(100, 6)


def test_only_images_with_a_valid_record(bucket, tmp_path, imgfs):
    good = pattern(2 * MiB, 1)
    put_raw(bucket, "good.raw", good)
    put_raw(bucket, "norecord.raw", pattern(1000, 2), record=False)
    etag = bucket.put("images/badsize.raw", pattern(1000, 3))["ETag"]
    rec = record_for(pattern(1001, 3), etag, "badsize")
    bucket.put("metadata/badsize.raw.json", json.dumps(rec).encode())
    bucket.put("images/badjson.raw", b"abc")
    bucket.put("metadata/badjson.raw.json", b"{not json")
    m = imgfs()
    assert sorted(os.listdir(m.path)) == [".imgstore", "good.raw"]
    assert m.stats()["images"] == 1
    m.stop()
    u = imgfs(extra=["--allow-unverified"], name="mnt-u", cache=tmp_path / "cu")
    assert sorted(os.listdir(u.path)) == [".imgstore", "badjson.raw", "badsize.raw",
                                          "good.raw", "norecord.raw"]
    assert (u.path / "norecord.raw").read_bytes() == pattern(1000, 2)
    assert (u.path / "badjson.raw").read_bytes() == b"abc"
    assert (u.path / "good.raw").read_bytes() == good
    assert "user.imgstore.checksum" not in os.listxattr(u.path / "norecord.raw")
    assert os.listdir(u.path / ".imgstore" / "by-sha256") == [sha256(good)]
    assert u.stats()["unverified_images"] == 3


def test_periodic_refresh(bucket, tmp_path, imgfs):
    put_raw(bucket, "p1.raw", pattern(1000, 1))
    m = imgfs(extra=["--refresh", "1"])
    put_raw(bucket, "p2.raw", pattern(1000, 2))
    wait_for(lambda: (m.path / "p2.raw").exists(), timeout=15, what="p2.raw without SIGHUP")
    assert (m.path / "p2.raw").read_bytes() == pattern(1000, 2)
    # the tree changes before the refresh has saved the listing and counted
    # itself: on a quick server (radosgw) the test gets here in between
    wait_for(lambda: m.stats()["refreshes"] >= 2, timeout=10, what="the refresh counted")


def direct_read(path, off, length):
    """One O_DIRECT pread (4 KiB aligned), bypassing the kernel page cache."""
    import mmap
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        buf = mmap.mmap(-1, length)
        n = os.preadv(fd, [buf], off)
        return bytes(buf[:n])
    finally:
        os.close(fd)


def test_concurrent_readers_share_one_fetch(bucket, tmp_path, imgfs):
    data = pattern(8 * MiB, 20)
    upload(bucket, tmp_path, "s.raw", data)
    m = imgfs()
    results = []

    def reader(i):
        off = 3 * MiB + (i % 16) * 65536
        results.append(direct_read(m.path / "s.raw", off, 65536) == data[off:off + 65536])

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [True] * 16
    s = m.stats()
    assert s["bytes_fetched"] == MiB and s["gets"] == 1, s


def test_readahead_only_for_sequential_reads(bucket, tmp_path, imgfs):
    data = pattern(64 * MiB, 21)
    upload(bucket, tmp_path, "ra.raw", data)
    m = imgfs()
    rnd = random.Random(7)
    blocks = rnd.sample(range(64), 12)
    for b in blocks:  # random: exactly the blocks asked for
        off = b * MiB + 4096 * rnd.randrange(0, 200)
        assert direct_read(m.path / "ra.raw", off, 4096) == data[off:off + 4096]
    s = m.stats()
    assert s["readahead_blocks"] == 0 and s["bytes_fetched"] == 12 * MiB, s
    # sequential on one handle: the window grows ahead of the reader
    import mmap
    fd = os.open(m.path / "ra.raw", os.O_RDONLY | os.O_DIRECT)
    try:
        buf = mmap.mmap(-1, 256 * 1024)
        for off in range(0, 8 * MiB, 256 * 1024):
            assert os.preadv(fd, [buf], off) == 256 * 1024
            assert bytes(buf) == data[off:off + 256 * 1024]
    finally:
        os.close(fd)
    wait_for(lambda: m.stats()["readahead_blocks"] >= 8, what="readahead")
    s = m.stats()
    assert s["bytes_fetched"] > 8 * MiB, s


def test_fuse_readahead_raised_when_root(bucket, tmp_path, imgfs):
    if os.geteuid() != 0:
        pytest.skip("only root can raise the bdi readahead")
    put_raw(bucket, "z.raw", pattern(1000, 1))
    m = imgfs()
    dev = os.stat(m.path).st_dev
    ra = Path(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb")
    assert int(ra.read_text()) >= 1024


# ---------------------------------------------------------------- verification

def test_tampered_object_gives_eio_never_wrong_bytes(bucket, tmp_path, imgfs):
    data = pattern(6 * MiB, 10)
    upload(bucket, tmp_path, "t.raw", data)
    rec = json.loads(bucket.get("metadata/t.raw.json"))
    bad = bytearray(data)
    bad[2 * MiB + 100:2 * MiB + 110] = b"X" * 10  # block 2
    etag = bucket.put("images/t.raw", bytes(bad))["ETag"]
    rec["etag"] = etag  # the record now "describes" the object, but its hashes do not
    bucket.put("metadata/t.raw.json", json.dumps(rec).encode())

    m = imgfs()
    p = m.path / "t.raw"
    for _ in range(2):  # the bad block is not cached: the second pass fails again
        with pytest.raises(OSError) as ei:
            p.read_bytes()
        assert ei.value.errno == errno.EIO
    chunks = read_chunks(p)
    for off, got in chunks:
        if isinstance(got, OSError):
            assert got.errno == errno.EIO
            assert 2 * MiB <= off < 3 * MiB, off
        else:
            assert got == data[off:off + len(got)], off
    assert any(isinstance(g, OSError) for _, g in chunks)
    assert all(not isinstance(g, OSError) for o, g in chunks if not 2 * MiB <= o < 3 * MiB)
    p2 = subprocess.run(["dd", f"if={p}", "iflag=direct", "bs=4k", f"skip={512 + 1}",
                         "count=1", "status=none"], capture_output=True)
    assert p2.returncode != 0 and p2.stdout == b""
    s = m.stats()
    assert s["verify_failures"] >= 2
    assert "t.raw block 2" in m.logtext()


def test_changed_object_new_version(bucket, tmp_path, imgfs):
    old = pattern(4 * MiB, 11)
    new = pattern(5 * MiB, 12)
    upload(bucket, tmp_path, "v.raw", old)
    m = imgfs(extra=["--refresh", "0"])
    p = m.path / "v.raw"
    ino = os.stat(p).st_ino
    f_old = open(p, "rb")
    assert f_old.read(MiB) == old[:MiB]  # block 0 of the old version is cached
    upload(bucket, tmp_path, "v.raw", new)
    m.sighup()
    wait_for(lambda: os.stat(p).st_size == len(new), what="the new size")
    assert os.stat(p).st_ino == ino
    with open(p, "rb") as f_new:
        assert f_new.read() == new
    # the old handle: old bytes or EIO, never the new version's
    for off in range(0, 4 * MiB, 256 * 1024):
        try:
            got = os.pread(f_old.fileno(), 256 * 1024, off)
        except OSError as e:
            assert e.errno == errno.EIO
            continue
        assert got == old[off:off + len(got)], off
    f_old.close()
    assert os.getxattr(p, "user.imgstore.checksum").decode() == "sha256:" + sha256(new)
    assert (m.path / ".imgstore/by-sha256" / sha256(new)).exists()
    # the replaced bytes were kept as a version: still there by their checksum
    assert (m.path / ".imgstore/by-sha256" / sha256(old)).read_bytes() == old
    bucket.s3.delete_object(Bucket=bucket.name, Key="metadata/v.raw.json")
    m.sighup()
    wait_for(lambda: not p.exists(), what="v.raw to go")


# ---------------------------------------------------------------- cache

def test_remount_second_read_without_gets(bucket, tmp_path, imgfs):
    data = sparse(20 * MiB + 3, 13)
    src = upload(bucket, tmp_path, "c.raw", data)
    m = imgfs()
    run(["cmp", src, m.path / "c.raw"], check=0)
    assert m.stats()["bytes_fetched"] > 0
    m.stop()
    m2 = imgfs(name="mnt2")
    run(["cmp", src, m2.path / "c.raw"], check=0)
    s = m2.stats()
    assert s["bytes_fetched"] == 0 and s["gets"] == 0 and s["cache_misses"] == 0, s
    assert s["cache_hits"] > 0


def cache_dir_bytes(d):
    return sum(f.stat().st_size for f in Path(d).iterdir() if f.is_file())


def test_small_cache_stays_near_its_limit(bucket, tmp_path, imgfs):
    data = pattern(64 * MiB, 14)
    src = upload(bucket, tmp_path, "big.raw", data)
    m = imgfs(extra=["--cache-size", "8M"])
    run(["cmp", src, m.path / "big.raw"], check=0)
    with open(m.path / "big.raw", "rb") as f:  # the tail again: fine after eviction
        f.seek(60 * MiB)
        assert f.read() == data[60 * MiB:]
    s = m.stats()
    assert s["cache_limit_bytes"] == 8 * MiB
    assert s["cache_bytes"] <= 8 * MiB
    m.stop()
    assert cache_dir_bytes(tmp_path / "cache") <= 12 * MiB  # the DB near its limit


def test_kill9_during_read_then_remount(bucket, tmp_path, imgfs):
    data = pattern(48 * MiB, 15)
    src = upload(bucket, tmp_path, "k.raw", data)
    m = imgfs()
    reader = subprocess.Popen(["cat", str(m.path / "k.raw")], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    wait_for(lambda: m.stats()["bytes_fetched"] >= 8 * MiB, what="the read to be under way")
    m.kill9()
    reader.wait(timeout=60)
    m2 = imgfs(name="mnt2")
    run(["cmp", src, m2.path / "k.raw"], check=0)
    assert m2.stats()["verify_failures"] == 0


@pytest.mark.parametrize("mode", ["reset", "hang"])
def test_bucket_down_cached_served_uncached_eio(bucket, s3server, tmp_path, imgfs, mode):
    a, b = pattern(3 * MiB, 16), pattern(3 * MiB, 17)
    upload(bucket, tmp_path, "a.raw", a)
    upload(bucket, tmp_path, "b.raw", b)
    proxy = Proxy(s3server.port)
    env = dict(bucket.env, E2_ENDPOINT=proxy.endpoint)
    timeout = 3
    slack = 3  # process start, one connect timeout rounding, the kernel's retry
    try:
        m = imgfs(env=env, extra=["--timeout", str(timeout)])
        assert (m.path / "a.raw").read_bytes() == a
        proxy.set_mode(mode)
        # the kernel page cache would hide the point: O_DIRECT goes to imgfs
        got = subprocess.run(["dd", f"if={m.path / 'a.raw'}", "iflag=direct", "bs=64k",
                              "status=none"], capture_output=True, check=True).stdout
        assert got == a
        for _ in range(3):  # each uncached read fails within the timeout
            t0 = time.monotonic()
            with pytest.raises(OSError) as ei:
                (m.path / "b.raw").read_bytes()
            elapsed = time.monotonic() - t0
            assert ei.value.errno == errno.EIO
            assert elapsed < timeout + slack, elapsed
        assert m.stats()["bucket_reachable"] is False
        assert (m.path / "a.raw").read_bytes() == a
        # back: reads work again within a few seconds
        proxy.set_mode("up")
        def b_readable():
            try:
                return (m.path / "b.raw").read_bytes() == b
            except OSError:
                return False
        wait_for(b_readable, timeout=timeout + 10, what="b.raw once the bucket is back")
        m.stop()

        # remount while the bucket is unreachable: the cached listing
        proxy.set_mode(mode)
        t0 = time.monotonic()
        m2 = imgfs(env=env, extra=["--timeout", str(timeout)], name="mnt2")
        assert time.monotonic() - t0 < timeout + slack + 5
        assert sorted(os.listdir(m2.path)) == [".imgstore", "a.raw", "b.raw"]
        assert (m2.path / "a.raw").read_bytes() == a
        assert (m2.path / "b.raw").read_bytes() == b
        upload(bucket, tmp_path, "c.raw", pattern(3 * MiB, 18))
        t0 = time.monotonic()
        m2.sighup()  # a refresh that fails keeps the tree
        time.sleep(1)
        assert sorted(os.listdir(m2.path)) == [".imgstore", "a.raw", "b.raw"]
        assert m2.stats()["refresh_errors"] >= 0
    finally:
        proxy.close()
