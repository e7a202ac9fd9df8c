"""Remainders of issue 14: labctl's help names --endpoint/--bucket where they
take effect, and imgfs says so in its log when the bucket answers again."""
import mmap
import os
import re

import pytest

from conftest import binary, clean_env, run
from test_imgfs import MiB, Proxy, imgfs, pattern, put_raw, wait_for  # noqa: F401 (fixture)

BUCKET_COMMANDS = ["sync", "list", "prune", "upload", "overlay", "index"]


@pytest.mark.parametrize("sub", BUCKET_COMMANDS)
def test_help_lists_endpoint_and_bucket(sub):
    p = run([binary("labctl"), "images", sub, "--help"], env=clean_env(), check=0)
    lines = p.stdout.splitlines()
    assert any(re.match(r"  --endpoint URL +S3 endpoint \(else E2_ENDPOINT", x) for x in lines), \
        p.stdout
    assert any(re.match(r"  --bucket NAME +bucket \(else E2_BUCKET", x) for x in lines), p.stdout


@pytest.mark.parametrize("sub", ["list", "index"])
def test_endpoint_and_bucket_are_used(sub):
    env = clean_env()
    env.update(E2_ACCESS_KEY="a", E2_SECRET_KEY="b")
    p = run([binary("labctl"), "images", sub, "--endpoint", "ftp://x", "--bucket", "b"],
            env=env, check=2)
    assert "the endpoint must start with https:// or http://" in p.stderr


def test_validate_help_has_no_bucket_flags():
    """validate never reaches the bucket (it ignores the two flags)."""
    p = run([binary("labctl"), "images", "validate", "--help"], env=clean_env(), check=0)
    assert "--endpoint" not in p.stdout and "--bucket" not in p.stdout


def test_log_says_when_the_bucket_answers_again(bucket, tmp_path, imgfs):
    data = pattern(MiB, seed=61)
    put_raw(bucket, "a.raw", data)
    proxy = Proxy(int(bucket.server.endpoint.rsplit(":", 1)[1]))
    env = bucket.env
    env["E2_ENDPOINT"] = proxy.endpoint
    try:
        m = imgfs(["--refresh", "1", "--timeout", "2"], env=env)
        assert "answers again" not in m.logtext()
        proxy.set_mode("reset")
        wait_for(lambda: m.stats()["refresh_errors"] >= 1, timeout=30, what="a failed refresh")
        assert m.stats()["bucket_reachable"] is False
        proxy.set_mode("up")
        line = f"imgfs: the bucket {bucket.name} answers again: the listing is refreshed"
        wait_for(lambda: line in m.logtext(), timeout=30, what="the answers-again line")
        assert m.stats()["bucket_reachable"] is True
        assert m.logtext().count("answers again") == 1
        assert (m.path / "a.raw").read_bytes() == data
    finally:
        proxy.close()


def test_log_says_when_reads_reach_the_bucket_again(bucket, tmp_path, imgfs):
    """Without refreshes (--refresh 0) only reads notice the bucket: after an
    uncached read failed for want of the bucket, the first one that gets
    through says so, once."""
    data = pattern(3 * MiB, seed=62)
    put_raw(bucket, "b.raw", data)
    proxy = Proxy(int(bucket.server.endpoint.rsplit(":", 1)[1]))
    env = bucket.env
    env["E2_ENDPOINT"] = proxy.endpoint
    path = None
    try:
        m = imgfs(["--refresh", "0", "--timeout", "2"], env=env)
        path = m.path / "b.raw"
        proxy.set_mode("reset")
        with pytest.raises(OSError):
            path.read_bytes()
        wait_for(lambda: "uncached reads fail until the bucket answers" in m.logtext(),
                 what="the warning")
        proxy.set_mode("up")
        got = []

        def read_ok():
            try:
                got.append(direct_read(path))
                return True
            except OSError:
                return False
        wait_for(read_ok, timeout=30, what="a read through")
        assert got[-1] == data
        line = "imgfs: reading images/b.raw: the bucket answers again"
        wait_for(lambda: line in m.logtext(), timeout=10, what="the answers-again line")
        assert m.logtext().count("answers again") == 1
    finally:
        proxy.close()


def direct_read(path):
    """The whole file, past the kernel's page cache."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        size = os.fstat(fd).st_size
        buf = mmap.mmap(-1, (size + 4095) // 4096 * 4096)
        n = os.preadv(fd, [buf], 0)
        return bytes(buf[:n])
    finally:
        os.close(fd)
