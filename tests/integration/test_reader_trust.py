"""Issue 12, "the bucket is input, not trust": the verified reader and the
block cache against crafted records and an altered cache, through the real
local S3 server and a real imgfs mount.

- a record that gives two blocks of different lengths one hash (block 0
  claims the hash of the short tail) must never hand out the tail's buffer
  for block 0 (it was a heap over-read);
- block sizes outside what labctl writes are refused, and the block memory
  budget holds with many parallel readers;
- a block altered inside cache.db is never served: fetched again, or EIO
  when the bucket is unreachable, and counted;
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
