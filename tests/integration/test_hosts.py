"""imgfs and labctl on hosts (issue 14, CLI.md "Added in the second wave"):
the fstab form, logging flags and journald prefixes, --version everywhere,
the AWS environment names, a saved listing per bucket, /.imgstore/metrics."""
import os
import subprocess
import time
from pathlib import Path

import pytest

from conftest import binary, clean_env, run
from test_imgfs import MiB, Mount, pattern, put_raw, unmount, wait_for


def in_mount_namespace(tmp_path, script, env, timeout=120):
    """Run a shell script in a private mount namespace in which the built imgfs
    is /usr/local/sbin/imgfs: mount(8) drops PATH before mount.fuse3 runs
    `imgfs` through /bin/sh, so the command must be on sh's default PATH, and
    the host's /usr/local/sbin stays untouched."""
    d = tmp_path / "sbin"
    d.mkdir(exist_ok=True)
    (d / "imgfs").symlink_to(binary("imgfs"))
    body = f"set -u\nmount --bind {d} /usr/local/sbin || exit 99\n" + script
    return run(["unshare", "-m", "--propagation", "private", "/bin/sh", "-c", body],
               env=env, timeout=timeout)


def wait_mounted(path, timeout=30):
    wait_for(lambda: os.path.ismount(path) and (Path(path) / ".imgstore").is_dir(),
             timeout=timeout, what=f"{path} mounted")


def umount(path):
    if run(["umount", path]).returncode:
        unmount(path, lazy=True)


# The part of a namespace script that waits for the mount, reads, unmounts.
def read_and_umount(mnt, rel, out):
    return f"""
i=0; while [ ! -d {mnt}/.imgstore ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
grep " {mnt} " /proc/self/mounts > {out}.mounts
cp {mnt}/{rel} {out}
echo x > {mnt}/new 2>/dev/null && echo WRITABLE
umount {mnt} || umount -l {mnt}
i=0; while pgrep -f "imgfs .* {mnt}" >/dev/null && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
grep -q " {mnt} " /proc/self/mounts && echo STILL_MOUNTED
exit $rc
"""


# ---------------------------------------------------------------- fstab form

def test_mount_t_fuse_imgfs_source_names_the_bucket(bucket, tmp_path):
    data = pattern(3 * MiB, seed=14)
    put_raw(bucket, "lab/a.raw", data)
    env = bucket.env
    env["E2_BUCKET"] = "no-such-bucket"  # SOURCE wins over E2_BUCKET
    mnt, out = tmp_path / "mnt", tmp_path / "out"
    mnt.mkdir()
    opts = (f"cache_size=64M,cache_dir={tmp_path / 'cache'},refresh=0,timeout=5,"
            "_netdev,nofail,rw,nodev,nosuid,noatime,x-systemd.automount,allow_other")
    p = in_mount_namespace(tmp_path, f"mount -t fuse.imgfs {bucket.name} {mnt} -o {opts}\n"
                           "rc=$?\n" + read_and_umount(mnt, "lab/a.raw", out), env)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "WRITABLE" not in p.stdout and "STILL_MOUNTED" not in p.stdout
    assert out.read_bytes() == data
    fields = out.with_suffix(".mounts").read_text().split()
    assert fields[0] == f"imgfs:{bucket.name}" and fields[2] == "fuse.imgfs"
    opts = fields[3].split(",")
    assert "ro" in opts and "rw" not in opts  # read-only whatever -o says
    assert "allow_other" in opts              # a FUSE option reaches libfuse
    assert (tmp_path / "cache").is_dir()      # cache_dir= was used


def test_fstab_line_through_mount_T(bucket, tmp_path):
    data = pattern(2 * MiB, seed=15)
    put_raw(bucket, "b.raw", data)
    env = bucket.env
    del env["E2_BUCKET"]
    mnt, out = tmp_path / "mnt", tmp_path / "out"
    mnt.mkdir()
    fstab = tmp_path / "fstab"
    fstab.write_text(
        "# an imgfs line as in the README\n"
        f"{bucket.name} {mnt} fuse.imgfs _netdev,nofail,cache_size=64M,"
        f"cache_dir={tmp_path / 'cache'},refresh=0,allow_other 0 0\n")
    p = in_mount_namespace(tmp_path, f"mount -T {fstab} {mnt}\nrc=$?\n"
                           + read_and_umount(mnt, "b.raw", out), env)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "WRITABLE" not in p.stdout and "STILL_MOUNTED" not in p.stdout
    assert out.read_bytes() == data


def test_source_imgfs_takes_the_bucket_from_the_configuration(bucket, tmp_path):
    data = pattern(MiB, seed=16)
    put_raw(bucket, "c.raw", data)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    p = run([binary("imgfs"), "imgfs", mnt, "-o",
             f"cache_dir={tmp_path / 'cache'},refresh=0,log_level=warn"],
            env=bucket.env, timeout=60)
    try:
        assert p.returncode == 0, p.stderr
        assert p.stderr == ""  # log_level=warn: no "mounted" line
        wait_mounted(mnt)
        assert (mnt / "c.raw").read_bytes() == data
    finally:
        umount(mnt)


@pytest.mark.parametrize("opts,named", [
    ("cache_size=64M,cache_sise=1G", "cache_sise=1G"),
    ("cache_size=", "cache_size"),
    ("cache_size=lots", "cache_size"),
    ("refresh", "refresh"),
    ("allow_unverified=yes", "allow_unverified"),
    ("=x", "=x"),
])
def test_unknown_or_malformed_option_exits_2_and_names_it(bucket, tmp_path, opts, named):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    p = run([binary("imgfs"), bucket.name, mnt, "-o", opts], env=bucket.env, timeout=60)
    assert p.returncode == 2, p.stderr
    assert named in p.stderr
    assert not os.path.ismount(mnt)


def test_mount_t_unknown_option_fails_and_names_it(bucket, tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    p = in_mount_namespace(
        tmp_path, f"mount -t fuse.imgfs {bucket.name} {mnt} -o cache_size=64M,bogus_opt\n"
        f"rc=$?\ngrep -q ' {mnt} ' /proc/self/mounts && umount -l {mnt}\nexit $rc\n",
        bucket.env)
    assert p.returncode not in (0, 99), p.stderr
    assert "bogus_opt" in p.stderr


# ---------------------------------------------------------------- --version

LABCTL_COMMANDS = [[], ["images"], ["credentials"]] + [
    ["images", c] for c in ("validate", "sync", "list", "prune", "upload", "overlay", "index")
] + [["credentials", c] for c in ("encrypt", "check")]


@pytest.mark.parametrize("cmd", LABCTL_COMMANDS, ids=lambda c: " ".join(c) or "labctl")
def test_version_on_every_labctl_command(cmd):
    p = run([binary("labctl"), *cmd, "--version"], env=clean_env(), check=0)
    assert p.stdout.startswith("labctl ") and p.stdout.count("\n") == 1, p.stdout
    assert p.stderr == ""


def test_version_imgfs():
    p = run([binary("imgfs"), "--version"], env=clean_env(), check=0)
    assert p.stdout.startswith("imgfs ") and p.stdout.count("\n") == 1


# ---------------------------------------------------------------- logging

def test_labctl_log_flags_global_and_per_subcommand(bucket):
    env = bucket.env
    del env["IMGSTORE_LOG"]
    base = run([binary("labctl"), "images", "list"], env=env, check=0)
    for args in (["-v", "images", "list"], ["images", "list", "-v"],
                 ["--log-level", "debug", "images", "list"],
                 ["images", "list", "--log-level=debug"], ["--verbose", "images", "list"]):
        p = run([binary("labctl"), *args], env=env, check=0)
        assert "labctl: debug: " in p.stderr, (args, p.stderr)
    assert "debug" not in base.stderr
    for args in (["--log-level", "loud", "images", "list"],
                 ["images", "list", "--log-level", "loud"]):
        p = run([binary("labctl"), *args], env=env, check=2)
        assert "'loud'" in p.stderr


def journald_run(tmp_path, args, env, match=True):
    """Run with stderr to a file; JOURNAL_STREAM names that file (systemd's
    <st_dev>:<st_ino>) or, with match=False, another one."""
    log = tmp_path / "stderr.log"
    other = tmp_path / "other"
    other.write_text("")
    with open(log, "wb") as f:
        st = os.fstat(f.fileno()) if match else os.stat(other)
        env = dict(env, JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}")
        p = subprocess.run([str(a) for a in args], env=env, stderr=f, stdout=subprocess.PIPE,
                           timeout=120)
    return p.returncode, log.read_text().splitlines()


def test_journald_priority_prefixes(bucket, tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    env = bucket.env
    env["E2_ENDPOINT"] = "http://127.0.0.1:1"  # nobody answers: an error (<3>)
    args = [binary("imgfs"), "-f", "-v", "--timeout", "1", "--cache-dir", tmp_path / "c",
            mnt]
    code, lines = journald_run(tmp_path, args, env)
    assert code == 1
    assert lines and all(l[:3] in ("<3>", "<4>", "<6>", "<7>") for l in lines), lines
    assert any(l.startswith("<3>imgfs: ") for l in lines), lines
    # labctl: info lines are <6>, warnings <4>
    env = bucket.env
    env["E2_ENDPOINT"] = env["E2_ENDPOINT"].replace("127.0.0.1", "localhost")
    code, lines = journald_run(tmp_path, [binary("labctl"), "-v", "images", "list"], env)
    assert code == 0
    assert any(l.startswith("<7>") for l in lines), lines
    assert all(l[:3] in ("<3>", "<4>", "<6>", "<7>") for l in lines), lines
    # not our stream: no prefix
    code, lines = journald_run(tmp_path, args, dict(bucket.env, E2_ENDPOINT="http://127.0.0.1:1"),
                               match=False)
    assert code == 1 and lines and not any(l.startswith("<") for l in lines), lines


# ---------------------------------------------------------------- AWS names

def aws_env(bucket, **extra):
    env = bucket.env
    for k in ("E2_ENDPOINT", "E2_ACCESS_KEY", "E2_SECRET_KEY", "E2_REGION"):
        del env[k]
    env.update(AWS_ENDPOINT_URL=bucket.server.endpoint, AWS_ACCESS_KEY_ID="test:tester",
               AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    env.update(extra)
    return env


def test_aws_variables_alone_work(bucket, tmp_path):
    data = pattern(MiB, seed=17)
    put_raw(bucket, "aws.raw", data)
    env = aws_env(bucket)
    p = run([binary("labctl"), "images", "list", "--json"], env=env, check=0)
    assert "aws.raw" in p.stdout
    # --endpoint / --bucket on labctl
    env2 = dict(env, AWS_ENDPOINT_URL="http://127.0.0.1:1")
    del env2["E2_BUCKET"]
    p = run([binary("labctl"), "images", "list", "--json", "--endpoint",
             bucket.server.endpoint, "--bucket", bucket.name], env=env2, check=0)
    assert "aws.raw" in p.stdout
    # E2_* wins over its AWS twin
    p = run([binary("labctl"), "images", "list"],
            env=dict(env, AWS_SECRET_ACCESS_KEY="wrong", E2_SECRET_KEY="testing"), check=0)
    p = run([binary("labctl"), "images", "list"],
            env=dict(env, E2_SECRET_KEY="wrong"), check=1)
    with Mount(env, tmp_path / "mnt", tmp_path / "cache") as m:
        assert (m.path / "aws.raw").read_bytes() == data


class RecordingProxy:
    """HTTP on loopback in front of the local server: records each request's
    headers and forwards the request unchanged."""

    def __init__(self, upstream):
        import http.server
        import threading
        import urllib.request
        self.seen = []
        proxy = self

        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                proxy.seen.append(dict(self.headers.items()))
                req = urllib.request.Request(upstream + self.path, method="GET",
                                             headers=dict(self.headers.items()))
                try:
                    with urllib.request.urlopen(req) as r:
                        body, code, hdrs = r.read(), r.status, r.headers
                except urllib.error.HTTPError as e:
                    body, code, hdrs = e.read(), e.code, e.headers
                self.send_response(code)
                for k, v in hdrs.items():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.srv.server_address[1]}"
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def close(self):
        self.srv.shutdown()
        self.srv.server_close()


def test_session_token_is_a_signed_header(bucket):
    proxy = RecordingProxy(bucket.server.endpoint)
    try:
        env = aws_env(bucket, AWS_ENDPOINT_URL=proxy.url, AWS_SESSION_TOKEN="tok/en+=42")
        p = run([binary("labctl"), "images", "list"], env=env)
        assert proxy.seen, p.stderr
        for h in proxy.seen:
            h = {k.lower(): v for k, v in h.items()}
            assert h["x-amz-security-token"] == "tok/en+=42"
            signed = h["authorization"].split("SignedHeaders=")[1].split(",")[0].split(";")
            assert "x-amz-security-token" in signed, h["authorization"]
        # the local server has no STS: it either ignores the token or refuses it
        print("exit", p.returncode, p.stderr)
        # an E2_ACCESS_KEY means the E2 keys: the AWS token does not go with them
        proxy.seen.clear()
        env["E2_ACCESS_KEY"], env["E2_SECRET_KEY"] = "test:tester", "testing"
        run([binary("labctl"), "images", "list"], env=env, check=0)
        assert proxy.seen and not any("X-Amz-Security-Token" in h for h in proxy.seen)
    finally:
        proxy.close()


# ---------------------------------------------------------------- saved listing

def test_saved_listing_is_per_bucket(bucket, s3server, tmp_path):
    from conftest import Bucket
    other = Bucket(s3server)
    put_raw(bucket, "only-in-a.raw", pattern(MiB, seed=18))
    put_raw(other, "only-in-b.raw", pattern(MiB, seed=19))
    cache = tmp_path / "cache"  # shared, like the default cache directory
    proxy = RecordingProxy(s3server.endpoint)
    envs = {}
    try:
        for name, b in (("a", bucket), ("b", other)):
            envs[name] = dict(b.env, E2_ENDPOINT=proxy.url)
            with Mount(envs[name], tmp_path / f"mnt-{name}", cache, ["--refresh", "0"]) as m:
                assert sorted(os.listdir(m.path)) == [".imgstore", f"only-in-{name}.raw"]
    finally:
        proxy.close()
    # the endpoint no longer answers: each bucket gets its own saved listing
    for name in ("a", "b"):
        with Mount(envs[name], tmp_path / f"off-{name}", cache,
                   ["--refresh", "0", "--timeout", "2"]) as m:
            assert sorted(os.listdir(m.path)) == [".imgstore", f"only-in-{name}.raw"]
            assert "serving the listing cached" in m.logtext()
