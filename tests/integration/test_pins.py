"""imgfs pins (issue 15): --pin, --pin-file, --prefetch-rate against the real
local S3 server and real FUSE mounts.

A pinned image is fetched whole in the background (no read needed), its
blocks are never evicted, it reads exactly with the bucket cut off (a TCP
proxy in front of the server, test_imgfs.Proxy) and after a restart, and a
new version costs only its changed blocks.
"""
import errno
import os
import subprocess
import sys
import time

import pytest

from conftest import binary, run
from test_imgfs import (MiB, Proxy, imgfs, pattern, sha256, sparse,  # noqa: F401 (fixture)
                        upload, wait_for)


def stats_whole(m, images=1, nbytes=None):
    s = m.stats()
    if s["pinned_images"] != images or s["pinned_bytes"] == 0:
        return False
    if nbytes is not None and s["pinned_bytes"] != nbytes:
        return False
    return s["pinned_cached_bytes"] == s["pinned_bytes"]


def wait_whole(m, images=1, nbytes=None, timeout=60):
    try:
        wait_for(lambda: stats_whole(m, images, nbytes), timeout=timeout,
                 what="the pinned images to be whole")
    except AssertionError:
        raise AssertionError(f"{m.stats()}\n{m.logtext()}")


def direct(path):
    """The file through imgfs, not the kernel's page cache."""
    return subprocess.run(["dd", f"if={path}", "iflag=direct", "bs=1M", "status=none"],
                          capture_output=True, check=True).stdout


def xattr(path, name):
    return os.getxattr(path, "user.imgstore." + name).decode()


def nonzero_bytes(data, bs=MiB):
    return sum(len(data[i:i + bs]) for i in range(0, len(data), bs)
               if data[i:i + bs].count(0) != len(data[i:i + bs]))


def test_pin_whole_offline_and_after_restart(bucket, s3server, tmp_path, imgfs):
    a = sparse(6 * MiB + 4096, 1)   # all-zero blocks are never fetched, nor cached
    b = pattern(3 * MiB, 2)
    upload(bucket, tmp_path, "lab/a.raw", a)
    upload(bucket, tmp_path, "b.raw", b)
    proxy = Proxy(s3server.port)
    env = dict(bucket.env, E2_ENDPOINT=proxy.endpoint)
    try:
        m = imgfs(env=env, extra=["--pin", "lab/*", "--refresh", "0", "--timeout", "3"])
        wait_whole(m, nbytes=len(a))
        s = m.stats()
        assert s["bytes_fetched"] == nonzero_bytes(a)  # the pin, and nothing else
        assert xattr(m.path / "lab/a.raw", "pinned") == "1"
        assert xattr(m.path / "b.raw", "pinned") == "0"
        assert xattr(m.path / "lab/a.raw", "cached_bytes") == str(len(a))
        assert "user.imgstore.pinned" in os.listxattr(m.path / "b.raw")
        wait_for(lambda: f"pinned lab/a.raw is whole: {len(a)} bytes cached" in m.logtext(),
                 what="the log line")

        proxy.set_mode("reset")
        assert direct(m.path / "lab/a.raw") == a
        with pytest.raises(subprocess.CalledProcessError):
            direct(m.path / "b.raw")  # the bucket is really gone
        m.stop()

        # a restart while the bucket is unreachable: saved listing, cached pins
        m2 = imgfs(env=env, extra=["--pin", "lab/*", "--refresh", "0", "--timeout", "3"],
                   name="mnt2")
        assert direct(m2.path / "lab/a.raw") == a
        wait_whole(m2, nbytes=len(a))
        assert m2.stats()["bytes_fetched"] == 0
        assert xattr(m2.path / "lab/a.raw", "pinned") == "1"
    finally:
        proxy.close()


def test_pin_survives_an_lru_flood(bucket, s3server, tmp_path, imgfs):
    pinned = pattern(4 * MiB, 3)
    flood = [pattern(8 * MiB, 10 + i) for i in range(3)]  # 24 MiB through a 16 MiB cache
    upload(bucket, tmp_path, "pinned.raw", pinned)
    for i, d in enumerate(flood):
        upload(bucket, tmp_path, f"flood{i}.raw", d)
    proxy = Proxy(s3server.port)
    env = dict(bucket.env, E2_ENDPOINT=proxy.endpoint)
    try:
        m = imgfs(env=env, extra=["--pin", "pinned.raw", "--cache-size", "16M", "--refresh",
                                  "0", "--timeout", "3"])
        wait_whole(m, nbytes=len(pinned))
        # the pinned blocks are now the least recently used ones
        for _ in range(2):
            for i, d in enumerate(flood):
                assert direct(m.path / f"flood{i}.raw") == d
        s = m.stats()
        assert s["cache_evictions"] > 0, s
        assert s["cache_bytes"] <= 16 * MiB
        proxy.set_mode("reset")
        assert direct(m.path / "pinned.raw") == pinned
        assert m.stats()["bytes_fetched"] == s["bytes_fetched"]
    finally:
        proxy.close()


def test_pin_file_reread_on_sighup(bucket, tmp_path, imgfs):
    a, b = pattern(2 * MiB, 4), pattern(3 * MiB, 5)
    upload(bucket, tmp_path, "a.raw", a)
    upload(bucket, tmp_path, "dir/b.raw", b)
    pins = tmp_path / "pins"
    pins.write_text("# pinned images, one glob a line\n\n  a.raw  \n")
    m = imgfs(extra=["--pin-file", pins, "--refresh", "0"])
    wait_whole(m, nbytes=len(a))
    assert xattr(m.path / "dir/b.raw", "pinned") == "0"

    pins.write_text("# now b only\n/dir/*.raw\n")
    m.sighup()
    wait_whole(m, nbytes=len(b))
    assert xattr(m.path / "dir/b.raw", "pinned") == "1"
    assert xattr(m.path / "a.raw", "pinned") == "0"
    assert m.stats()["bytes_fetched"] == len(a) + len(b)

    # an unreadable pin file keeps the pins it had
    pins.unlink()
    m.sighup()
    wait_for(lambda: "keeping the pins it had" in m.logtext(), what="the warning")
    assert xattr(m.path / "dir/b.raw", "pinned") == "1"
    assert m.stats()["pinned_images"] == 1


# stats, metrics and the listing of .imgstore, from three threads, for the
# given seconds: each stat asks imgfs for the attributes (a stats node's
# are never cached), and its size is the length of a fresh snapshot
STAT_LOOP = """
import os, sys, threading, time
ctl, end = sys.argv[1], time.monotonic() + float(sys.argv[2])
def loop(f):
    while time.monotonic() < end:
        f()
threads = [threading.Thread(target=loop, args=(f,)) for f in (
    lambda: os.stat(ctl + "/stats"),
    lambda: os.stat(ctl + "/metrics"),
    lambda: [os.stat(ctl + "/" + n) for n in os.listdir(ctl)])]
for t in threads:
    t.start()
for t in threads:
    t.join()
"""


def test_stats_during_refreshes_never_deadlock(bucket, tmp_path, imgfs):
    """A refresh holds the pins' lock while it waits for the tree's lock as a
    writer; a stat of a stats file used to hold the tree's lock while it
    asked for the pins' one (the size of a snapshot). The two at once hung
    the mount for good (seen in CI). Here stats are taken without a pause
    while refreshes follow one another."""
    upload(bucket, tmp_path, "a.raw", pattern(2 * MiB, 6))
    m = imgfs(extra=["--pin", "a.raw", "--refresh", "0"])
    wait_whole(m)
    before = m.stats()["refreshes"]
    ctl = m.path / ".imgstore"
    loop = subprocess.Popen([sys.executable, "-c", STAT_LOOP, ctl, "5"])
    deadline = time.monotonic() + 35
    while loop.poll() is None and time.monotonic() < deadline:
        m.sighup()
        time.sleep(0.002)
    # a request that imgfs has read and never answers keeps its caller in
    # the kernel, unkillable, until the mount's process is gone
    probe = subprocess.Popen(["stat", ctl / "stats"], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while loop.poll() is not None and probe.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if loop.poll() is None or probe.poll() is None:
        m.kill9()
        for p in (loop, probe):
            p.kill()
            p.wait()
        pytest.fail("the mount stopped answering while it refreshed:\n" + m.logtext())
    assert (loop.returncode, probe.returncode) == (0, 0)
    assert m.stats()["refreshes"] > before + 10


def test_new_version_fetches_only_changed_blocks(bucket, s3server, tmp_path, imgfs):
    v1 = pattern(8 * MiB, 6)
    changed = [0, 3, 7]
    v2 = bytearray(v1)
    for i in changed:
        v2[i * MiB:(i + 1) * MiB] = pattern(MiB, 100 + i)
    v2 = bytes(v2)
    upload(bucket, tmp_path, "base.raw", v1)
    proxy = Proxy(s3server.port)
    env = dict(bucket.env, E2_ENDPOINT=proxy.endpoint)
    try:
        m = imgfs(env=env, extra=["--pin", "base.raw", "--refresh", "0", "--timeout", "3"])
        wait_whole(m, nbytes=len(v1))
        before = m.stats()["bytes_fetched"]
        assert before == len(v1)

        upload(bucket, tmp_path, "base.raw", v2)  # keeps v1 as a previous version
        m.sighup()
        # whole again without a read: v2, plus v1 kept under by-sha256
        wait_whole(m, nbytes=len(v1) + len(v2))
        assert xattr(m.path / "base.raw", "checksum") == "sha256:" + sha256(v2)
        assert m.stats()["bytes_fetched"] - before == len(changed) * MiB
        line = f"pinned base.raw is whole: {len(v2)} bytes cached ({len(changed) * MiB} fetched"
        wait_for(lambda: line in m.logtext(), what="the log line")

        proxy.set_mode("reset")
        assert direct(m.path / "base.raw") == v2
        old = m.path / ".imgstore/by-sha256" / sha256(v1)
        assert xattr(old, "pinned") == "1"
        assert direct(old) == v1
    finally:
        proxy.close()


def test_oversize_pin_set_logs_the_excess_and_serves(bucket, tmp_path, imgfs):
    a, b = pattern(4 * MiB, 7), pattern(3 * MiB, 8)
    upload(bucket, tmp_path, "a.raw", a)
    upload(bucket, tmp_path, "b.raw", b)
    m = imgfs(extra=["--pin", "*.raw", "--cache-size", "5M", "--refresh", "0"])
    want = ("pinned images do not fit in the cache: their blocks take 7340032 bytes, "
            "--cache-size is 5242880: 2097152 bytes (2.0 MiB) too many; raise --cache-size "
            "or pin fewer images")
    wait_for(lambda: want in m.logtext(), what="the error")
    assert m.logtext().count(want) == 1
    assert (m.path / "a.raw").read_bytes() == a
    assert (m.path / "b.raw").read_bytes() == b
    s = m.stats()
    assert s["pinned_images"] == 2 and s["pinned_bytes"] == len(a) + len(b)
    assert s["cache_bytes"] <= 5 * MiB


def test_prefetch_rate_is_bounded(bucket, tmp_path, imgfs):
    rate = 2 * MiB
    a = pattern(10 * MiB, 9)  # ~5 s at 2 MiB/s, in GETs of 1 MiB
    upload(bucket, tmp_path, "a.raw", a)
    m = imgfs(extra=["-o", "pin=a.raw,prefetch_rate=2M", "--refresh", "0"])
    samples = []  # (time, bytes_fetched) from the first block to the last
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        n = m.stats()["bytes_fetched"]
        if n:
            samples.append((time.monotonic(), n))
        if n == len(a):
            break
        time.sleep(0.05)
    (t0, b0), (t1, b1) = samples[0], samples[-1]
    assert b1 == len(a), samples
    got = (b1 - b0) / (t1 - t0)
    assert 0.8 * rate <= got <= 1.2 * rate, (got / MiB, samples)
    wait_whole(m, nbytes=len(a))


def test_reads_do_not_wait_behind_the_prefetch(bucket, tmp_path, imgfs):
    """At 256 KiB/s the prefetch of the pinned image would take 32 s; reads of
    it and of another image are not held to that rate, nothing is fetched
    twice, and the pin is whole as soon as the reads have cached it."""
    pinned, other = pattern(8 * MiB, 20), pattern(4 * MiB, 21)
    upload(bucket, tmp_path, "pinned.raw", pinned)
    upload(bucket, tmp_path, "other.raw", other)
    m = imgfs(extra=["--pin", "pinned.raw", "--prefetch-rate", "256K", "--refresh", "0"])
    t0 = time.monotonic()
    assert direct(m.path / "other.raw") == other
    assert direct(m.path / "pinned.raw") == pinned
    assert time.monotonic() - t0 < 15
    wait_whole(m, nbytes=len(pinned), timeout=20)
    assert m.stats()["bytes_fetched"] == len(pinned) + len(other)


@pytest.mark.parametrize("args,named", [
    (["--prefetch-rate", "0"], "--prefetch-rate"),
    (["--prefetch-rate", "fast"], "--prefetch-rate"),
    (["--pin", ""], "--pin"),
    (["-o", "prefetch_rate="], "prefetch_rate"),
])
def test_pin_usage_errors_exit_2(bucket, tmp_path, args, named):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    p = run([binary("imgfs"), "-f", "--cache-dir", tmp_path / "c", *args, mnt],
            env=bucket.env, timeout=60)
    assert p.returncode == 2, p.stderr
    assert named in p.stderr
    assert not os.path.ismount(mnt)


def test_missing_pin_file_exits_2(bucket, tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    upload(bucket, tmp_path, "a.raw", pattern(MiB, 1))
    p = run([binary("imgfs"), "-f", "--cache-dir", tmp_path / "c", "--pin-file",
             tmp_path / "nope", mnt], env=bucket.env, timeout=60)
    assert p.returncode == 2, p.stderr
    assert f"--pin-file: reading the pin file {tmp_path / 'nope'}: " \
           f"{os.strerror(errno.ENOENT)}" in p.stderr
    assert not os.path.ismount(mnt)
