"""imgfs on hosts (issue 14): systemd readiness, clean stops, recovery from a
dead mount, and what `meson install` and the Debian package put on a host.

The readiness tests play systemd's part themselves: a Unix datagram socket
named by NOTIFY_SOCKET, read while imgfs -f starts, as sd_notify(3) describes.
"""
import errno
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from conftest import BUILD, ROOT, binary, clean_env, run

MiB = 1 << 20


# ---------------------------------------------------------------- helpers

def unmount(path, lazy=False):
    if lazy or os.path.ismount(path):
        subprocess.run(["fusermount3", "-u" + ("z" if lazy else ""), str(path)],
                       capture_output=True)


def upload(bucket, tmp, dest, size, seed=0):
    data = b"".join(hashlib.sha256(b"%d-%d" % (seed, i)).digest()
                    for i in range(size // 32 + 1))[:size]
    src = Path(tmp) / ("src-" + hashlib.sha256(dest.encode()).hexdigest()[:12])
    src.write_bytes(data)
    run([binary("labctl"), "images", "upload", "--source", src, "--destination", dest],
        env=bucket.env, check=0)
    return data


class Notify:
    """The receiving end of sd_notify(3): a datagram socket in a temporary
    directory; messages() returns what arrived, each split into its lines."""

    def __init__(self, directory):
        self.path = str(Path(directory) / "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.received = []

    def recv(self, timeout):
        """The next message as a list of lines, or None after `timeout` s."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096)
        except socket.timeout:
            return None
        msg = data.decode().split("\n")
        self.received.append(msg)
        return msg

    def wait_for(self, line, proc, timeout=60):
        """Messages up to and including the first that has `line`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = self.recv(0.2)
            if msg and line in msg:
                return msg
            if msg is None and proc.poll() is not None:
                raise AssertionError(f"imgfs exited {proc.returncode} before sending {line}")
        raise AssertionError(f"no {line} within {timeout} s; received {self.received}")

    def drain(self):
        """Every line that arrived and was not read yet."""
        return [line for msg in iter(lambda: self.recv(0.2), None) for line in msg]

    def close(self):
        self.sock.close()


class Daemon:
    """imgfs -f with NOTIFY_SOCKET set, stopped (and unmounted) at teardown."""

    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.procs = []

    def start(self, env, mnt, cache, notify=None, extra=()):
        mnt.mkdir(parents=True, exist_ok=True)
        env = dict(env)
        if notify:
            env["NOTIFY_SOCKET"] = notify.path
        log = open(self.tmp / f"imgfs-{len(self.procs)}.log", "wb")
        proc = subprocess.Popen(
            [binary("imgfs"), "-f", "--cache-dir", str(cache), *map(str, extra), str(mnt)],
            env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        proc.log = Path(log.name)
        log.close()
        proc.mnt = mnt
        self.procs.append(proc)
        return proc

    def log(self, proc):
        return proc.log.read_text(errors="replace")

    def wait_mounted(self, proc, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert proc.poll() is None, "imgfs exited:\n" + self.log(proc)
            # statfs and readdir reach the daemon: a dead mount's cached
            # attributes cannot fool them
            try:
                if (os.path.ismount(proc.mnt) and os.statvfs(proc.mnt)
                        and ".imgstore" in os.listdir(proc.mnt)):
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError("imgfs did not mount:\n" + self.log(proc))

    def stop_all(self):
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            unmount(p.mnt, lazy=True)
        for p in self.procs:  # ASan/UBSan builds report into the log
            text = self.log(p)
            assert "Sanitizer" not in text and "runtime error" not in text, text[-5000:]


@pytest.fixture
def daemon(tmp_path):
    d = Daemon(tmp_path)
    yield d
    d.stop_all()


@pytest.fixture
def notify(tmp_path):
    n = Notify(tmp_path)
    yield n
    n.close()


def status_lines(messages):
    return [line for msg in messages for line in msg if line.startswith("STATUS=")]


# ------------------------------------------------- readiness (sd_notify)

def test_ready_only_once_the_mount_serves_the_first_listing(bucket, tmp_path, daemon, notify):
    upload(bucket, tmp_path, "a/one.raw", 3 * MiB)
    upload(bucket, tmp_path, "two.raw", MiB, seed=1)
    mnt = tmp_path / "mnt"
    proc = daemon.start(bucket.env, mnt, tmp_path / "cache", notify)
    msg = notify.wait_for("READY=1", proc)
    # at the moment READY=1 arrives, the mount is there and lists the images:
    # nothing is polled or retried here
    assert os.path.ismount(mnt)
    assert sorted(os.listdir(mnt)) == [".imgstore", "a", "two.raw"]
    assert os.listdir(mnt / "a") == ["one.raw"]
    assert (mnt / "two.raw").stat().st_size == MiB
    assert "STATUS=serving 2 images" in msg, notify.received
    # before it: only STATUS lines, no READY
    before = [line for m in notify.received[:-1] for line in m]
    assert all(line.startswith("STATUS=") for line in before), notify.received

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0, daemon.log(proc)
    assert notify.drain() == ["STOPPING=1"]
    assert not os.path.ismount(mnt)


def test_status_says_when_the_bucket_is_unreachable_and_cached_data_is_served(
        bucket, tmp_path, daemon, notify):
    data = upload(bucket, tmp_path, "img.raw", 2 * MiB)
    mnt, cache = tmp_path / "mnt", tmp_path / "cache"
    first = daemon.start(bucket.env, mnt, cache)
    daemon.wait_mounted(first)
    assert (mnt / "img.raw").read_bytes() == data  # now cached
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=30) == 0, daemon.log(first)

    # the same cache, a bucket that does not answer: mounted from the cached listing
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    env = dict(bucket.env, E2_ENDPOINT=f"http://127.0.0.1:{dead}", IMGSTORE_RETRY_BUDGET="1")
    proc = daemon.start(env, mnt, cache, notify, extra=["--timeout", "2"])
    msg = notify.wait_for("READY=1", proc)
    assert "STATUS=bucket unreachable, serving cached data (1 image)" in msg, notify.received
    assert (mnt / "img.raw").read_bytes() == data
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 0, daemon.log(proc)


def test_status_follows_the_bucket_after_a_refresh(bucket, tmp_path, daemon, notify):
    upload(bucket, tmp_path, "one.raw", MiB)
    mnt = tmp_path / "mnt"
    proc = daemon.start(bucket.env, mnt, tmp_path / "cache", notify)
    msg = notify.wait_for("READY=1", proc)
    assert "STATUS=serving 1 image" in msg
    upload(bucket, tmp_path, "two.raw", MiB, seed=2)
    proc.send_signal(signal.SIGHUP)
    notify.wait_for("STATUS=serving 2 images", proc, timeout=30)
    assert sorted(os.listdir(mnt)) == [".imgstore", "one.raw", "two.raw"]


def test_without_notify_socket_nothing_is_sent_and_it_still_mounts(bucket, tmp_path, daemon,
                                                                      notify):
    upload(bucket, tmp_path, "one.raw", MiB)
    env = dict(bucket.env)
    env.pop("NOTIFY_SOCKET", None)
    proc = daemon.start(env, tmp_path / "mnt", tmp_path / "cache")
    daemon.wait_mounted(proc)
    assert notify.recv(0.5) is None


def test_failed_start_reports_status_and_exits_1_without_ready(bucket, tmp_path, daemon, notify):
    env = dict(bucket.env, E2_BUCKET="no-such-bucket-" + bucket.name)
    proc = daemon.start(env, tmp_path / "mnt", tmp_path / "cache", notify)
    assert proc.wait(timeout=60) == 1, daemon.log(proc)
    lines = notify.drain()
    assert "READY=1" not in lines, lines
    failed = [line for line in lines if line.startswith("STATUS=failed: ")]
    assert len(failed) == 1 and "no-such-bucket-" in failed[0], lines


# ------------------------------------------------------- stopping cleanly

@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_unmounts_and_exits_0(bucket, tmp_path, daemon, sig):
    upload(bucket, tmp_path, "one.raw", MiB)
    mnt = tmp_path / "mnt"
    proc = daemon.start(bucket.env, mnt, tmp_path / "cache")
    daemon.wait_mounted(proc)
    proc.send_signal(sig)
    assert proc.wait(timeout=30) == 0, daemon.log(proc)
    assert not os.path.ismount(mnt)
    assert "unmounted " + str(mnt) in daemon.log(proc)


# ------------------------------------------------ recovery from a dead mount

def test_a_dead_mount_is_cleared_when_imgfs_starts_again_on_it(bucket, tmp_path, daemon):
    data = upload(bucket, tmp_path, "one.raw", MiB)
    mnt = tmp_path / "mnt"
    first = daemon.start(bucket.env, mnt, tmp_path / "cache")
    daemon.wait_mounted(first)
    first.kill()
    first.wait()
    # what a crash leaves behind: the kernel's mount, nobody answering it
    # (stat() may still be answered from the kernel's attribute cache)
    for probe in (os.listdir, os.statvfs):
        with pytest.raises(OSError) as exc:
            probe(mnt)
        assert exc.value.errno == errno.ENOTCONN

    again = daemon.start(bucket.env, mnt, tmp_path / "cache")
    daemon.wait_mounted(again)
    assert (mnt / "one.raw").read_bytes() == data
    assert f"{mnt}: Transport endpoint is not connected" in daemon.log(again)
    again.send_signal(signal.SIGTERM)
    assert again.wait(timeout=30) == 0, daemon.log(again)
    # only the new mount was there; nothing dead is left below it
    assert not os.path.ismount(mnt)
    assert os.listdir(mnt) == []


def test_a_live_mount_is_not_taken_over(bucket, tmp_path, daemon):
    upload(bucket, tmp_path, "one.raw", MiB)
    mnt = tmp_path / "mnt"
    first = daemon.start(bucket.env, mnt, tmp_path / "cache")
    daemon.wait_mounted(first)
    second = daemon.start(bucket.env, mnt, tmp_path / "cache2")
    assert second.wait(timeout=60) == 1
    assert "Transport endpoint" not in daemon.log(second)
    assert first.poll() is None and os.listdir(mnt) == [".imgstore", "one.raw"]
