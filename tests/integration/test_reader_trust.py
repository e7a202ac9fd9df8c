"""Issue 12, "the bucket is input, not trust": the verified reader and the
block cache against crafted records and an altered cache, through the real
local S3 server and a real imgfs mount.

- a record that gives two blocks of different lengths one hash (block 0
  claims the hash of the short tail) must never hand out the tail's buffer
  for block 0 (it was a heap over-read);
- block sizes outside what labctl writes are refused, and the block memory
  budget holds with many parallel readers;
- a block altered in the cache (cache.db or blocks.dat) is never served:
  fetched again, or EIO when the bucket is unreachable, and counted;
- everything in --cache-dir stays within --cache-size + 8 MiB.
"""
import errno
import hashlib
import json
import os
import random
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import binary
from test_imgfs import (MiB, Proxy, direct_read, imgfs, pattern,  # noqa: F401 (fixture)
                        put_raw, record_for, wait_for)

KiB = 1 << 10


def asan_build():
    out = subprocess.run(["ldd", binary("imgfs")], capture_output=True, text=True).stdout
    return "libasan" in out


# ---------------------------------------------------------------- finding 1

@pytest.mark.parametrize("bs", [64 * KiB, MiB])
def test_two_blocks_claiming_one_hash_never_share_a_buffer(bucket, imgfs, bs):
    data = pattern(2 * bs + 1000, 40)
    etag = bucket.put("images/f.raw", data)["ETag"]
    rec = record_for(data, etag, "f.raw", bs)
    hashes = rec["blocks"]["hashes"]
    hashes[0] = hashes[-1]  # block 0 claims the true hash of the 1000-byte tail
    bucket.put("metadata/f.raw.json", json.dumps(rec).encode())

    m = imgfs()
    fd = os.open(m.path / "f.raw", os.O_RDONLY)
    try:
        assert os.pread(fd, 1000, 2 * bs) == data[2 * bs:]  # the tail, in memory now
        for length in (4096, bs):
            with pytest.raises(OSError) as ei:
                os.pread(fd, length, 0)
            assert ei.value.errno == errno.EIO
        assert os.pread(fd, bs, bs) == data[bs:2 * bs]
        assert os.pread(fd, 1000, 2 * bs) == data[2 * bs:]
    finally:
        os.close(fd)
    s = m.stats()
    assert s["verify_failures"] >= 1
    assert "f.raw block 0" in m.logtext()


# ---------------------------------------------------------------- finding 5

@pytest.mark.parametrize("bs,shown", [
    (64 * MiB, False), (8 * MiB, False), (32 * KiB, False), (4 * KiB, False),
    (64 * KiB, True), (MiB, True), (4 * MiB, True),
])
def test_only_block_sizes_labctl_can_write(bucket, imgfs, bs, shown):
    data = pattern(300 * 1000, 41)
    put_raw(bucket, "b.raw", data, bs=bs)
    m = imgfs()
    if shown:
        assert sorted(os.listdir(m.path)) == [".imgstore", "b.raw"]
        assert (m.path / "b.raw").read_bytes() == data
    else:
        assert sorted(os.listdir(m.path)) == [".imgstore"]
        assert "b.raw: invalid checksum record" in m.logtext()
        assert "blocks.size" in m.logtext()


def vm_kib(pid, field):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(field)


def test_parallel_readers_stay_within_the_memory_budget(bucket, imgfs):
    bs, nblocks, budget = 4 * MiB, 32, 8 * MiB
    data = pattern(nblocks * bs, 44)
    put_raw(bucket, "m.raw", data, bs=bs)
    env = dict(bucket.env, IMGFS_MEM_MIB=str(budget // MiB))
    m = imgfs(env=env)
    assert m.stats()["memory_limit_bytes"] == budget
    base = vm_kib(m.proc.pid, "VmRSS")
    go = threading.Barrier(nblocks)
    bad = []

    def one(i):
        go.wait()
        off = i * bs + 8192
        if direct_read(m.path / "m.raw", off, 4096) != data[off:off + 4096]:
            bad.append(i)

    th = [threading.Thread(target=one, args=(i,)) for i in range(nblocks)]
    for t in th:
        t.start()
    for t in th:
        t.join()
    assert bad == []
    s = m.stats()
    assert s["cache_misses"] == nblocks
    if not asan_build():  # ASan keeps freed memory in quarantine
        grew = (vm_kib(m.proc.pid, "VmHWM") - base) * KiB
        # 32 blocks of 4 MiB at once would be 128 MiB; the budget is 8
        assert grew < budget + 24 * MiB, grew / MiB
    assert s["memory_peak_bytes"] <= budget


# ---------------------------------------------------------------- finding 8

def corrupt_cached(cache_dir, block, where=12345):
    """Flip a byte of the cached copy of `block` (a row of cache.db, through
    SQLite, or its slot in blocks.dat), as a damaged disk or a local user
    would leave it: same length."""
    key = hashlib.sha256(block).digest()
    db = sqlite3.connect(Path(cache_dir) / "cache.db", timeout=30)
    bad = bytearray(block)
    bad[where] ^= 0x55
    try:
        row = db.execute("SELECT id, len, slot FROM idx WHERE key = ?", (key,)).fetchone()
        assert row is not None and row[1] == len(block)
        if row[2] is not None:
            with open(Path(cache_dir) / "blocks.dat", "r+b") as f:
                f.seek(row[2] * MiB)
                assert f.read(len(block)) == block
                f.seek(row[2] * MiB + where)
                f.write(bytes([bad[where]]))
        else:
            db.execute("UPDATE blocks SET data = ? WHERE id = ?", (bytes(bad), row[0]))
            db.commit()
    finally:
        db.close()
    return bytes(bad)


def read_all_direct(path, size, chunk):
    out = bytearray()
    for off in range(0, size, chunk):
        out += direct_read(path, off, chunk)
    return bytes(out)


def test_altered_cache_block_is_fetched_again(bucket, tmp_path, imgfs):
    data = pattern(4 * MiB + 5000, 42)
    put_raw(bucket, "c.raw", data)
    m = imgfs()
    assert (m.path / "c.raw").read_bytes() == data
    m.stop()  # every block is in cache.db now
    corrupt_cached(tmp_path / "cache", data[MiB:2 * MiB])
    corrupt_cached(tmp_path / "cache", data[2 * MiB:3 * MiB])

    m2 = imgfs(name="mnt2")
    p = m2.path / "c.raw"
    # a piece of an altered block, then a whole altered block
    assert direct_read(p, 2 * MiB + 8192, 8192) == data[2 * MiB + 8192:2 * MiB + 16384]
    assert direct_read(p, MiB, MiB) == data[MiB:2 * MiB]
    assert read_all_direct(p, len(data), 64 * KiB)[:len(data)] == data
    s = m2.stats()
    assert s["cache_verify_failures"] == 2, s
    assert s["bytes_fetched"] == 2 * MiB, s
    assert s["verify_failures"] == 0
    m2.stop()

    # fetched again and cached again: a third mount reads it all from the cache
    m3 = imgfs(name="mnt3")
    assert read_all_direct(m3.path / "c.raw", len(data), 128 * KiB)[:len(data)] == data
    s = m3.stats()
    assert s["cache_verify_failures"] == 0 and s["bytes_fetched"] == 0, s


def test_cache_block_altered_while_mounted_before_first_read(bucket, tmp_path, imgfs):
    data = pattern(3 * MiB, 45)
    put_raw(bucket, "w.raw", data)
    m = imgfs()
    assert (m.path / "w.raw").read_bytes() == data
    m.stop()
    m2 = imgfs(name="mnt2")
    corrupt_cached(tmp_path / "cache", data[:MiB], where=100)
    for off in (0, 4096, 512 * KiB):
        assert direct_read(m2.path / "w.raw", off, 4096) == data[off:off + 4096]
    assert m2.stats()["cache_verify_failures"] == 1


def test_altered_cache_block_with_the_bucket_down_is_eio(bucket, s3server, tmp_path, imgfs):
    data = pattern(3 * MiB + 777, 46)
    put_raw(bucket, "d.raw", data)
    proxy = Proxy(s3server.port)
    env = dict(bucket.env, E2_ENDPOINT=proxy.endpoint)
    try:
        m = imgfs(env=env, extra=["--timeout", "2"])
        assert (m.path / "d.raw").read_bytes() == data
        m.stop()
        corrupt_cached(tmp_path / "cache", data[MiB:2 * MiB])
        proxy.set_mode("reset")
        m2 = imgfs(env=env, extra=["--timeout", "2"], name="mnt2")
        p = m2.path / "d.raw"
        for off, length in ((MiB + 8192, 4096), (MiB, MiB), (MiB + 12288, 64 * KiB)):
            with pytest.raises(OSError) as ei:  # never the altered bytes
                direct_read(p, off, length)
            assert ei.value.errno == errno.EIO
        # the other blocks are intact and served
        assert direct_read(p, 0, MiB) == data[:MiB]
        assert direct_read(p, 2 * MiB, 2 * MiB)[:MiB + 777] == data[2 * MiB:]
        assert m2.stats()["cache_verify_failures"] >= 1
    finally:
        proxy.close()


# ---------------------------------------------------------------- finding 9

def du_sb(d):
    out = subprocess.run(["du", "-sb", str(d)], capture_output=True, text=True).stdout
    return int(out.split()[0]) if out else 0


class Sampler:
    """The largest `du -sb` of a directory, sampled while something runs."""

    def __init__(self, d):
        self.d, self.max, self.stop_ev = d, 0, threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        while not self.stop_ev.is_set():
            self.max = max(self.max, du_sb(self.d))
            time.sleep(0.02)

    def stop(self):
        self.stop_ev.set()
        self.t.join()
        self.max = max(self.max, du_sb(self.d))
        return self.max


@pytest.mark.parametrize("size_opt,limit,image", [
    ("8M", 8 * MiB, 64 * MiB), ("48M", 48 * MiB, 160 * MiB)])
def test_cache_dir_within_cache_size_plus_8mib(bucket, tmp_path, imgfs, size_opt, limit, image):
    data = pattern(image, 47)
    put_raw(bucket, "big.raw", data)
    m = imgfs(extra=["--cache-size", size_opt])
    cache = tmp_path / "cache"
    sampler = Sampler(cache)
    try:
        assert (m.path / "big.raw").read_bytes() == data  # sequential
        rnd = random.Random(48)
        for _ in range(150):  # random, O_DIRECT: past the page cache
            off = rnd.randrange(0, image // 4096) * 4096
            n = rnd.choice([4096, 64 * KiB, MiB])
            assert direct_read(m.path / "big.raw", off, n) == data[off:off + n]
        last = -1
        for _ in range(100):  # until the cache writer is done
            cur = m.stats()["cache_inserts"]
            if cur == last:
                break
            last = cur
            time.sleep(0.3)
        s = m.stats()
        assert s["cache_bytes"] <= limit
    finally:
        during = sampler.stop()
    m.stop()
    after = du_sb(cache)
    print(f"--cache-size {size_opt}: cache_bytes {s['cache_bytes'] / MiB:.1f} MiB, du -sb "
          f"at most {during / MiB:.1f} MiB while reading, {after / MiB:.1f} MiB after")
    assert during <= limit + 8 * MiB, (during / MiB, sorted(os.listdir(cache)))
    assert after <= limit + 8 * MiB, after / MiB
