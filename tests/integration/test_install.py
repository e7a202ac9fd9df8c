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

    def start(self, env, mnt, cache, notify=None, extra=(), argv=None):
        """imgfs -f --cache-dir CACHE EXTRA... MNT, or `argv` as it is."""
        mnt.mkdir(parents=True, exist_ok=True)
        env = dict(env)
        if notify:
            env["NOTIFY_SOCKET"] = notify.path
        log = open(self.tmp / f"imgfs-{len(self.procs)}.log", "wb")
        argv = argv or [binary("imgfs"), "-f", "--cache-dir", cache, *extra, mnt]
        proc = subprocess.Popen(
            [str(a) for a in argv],
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
    from faultproxy import FaultProxy
    data = upload(bucket, tmp_path, "img.raw", 2 * MiB)
    mnt, cache = tmp_path / "mnt", tmp_path / "cache"
    # through a proxy that can go away: the saved listing belongs to the
    # endpoint and bucket, so the second start must name the same endpoint
    proxy = FaultProxy(bucket.server.port).start()
    env = dict(bucket.env, E2_ENDPOINT=proxy.endpoint)
    first = daemon.start(env, mnt, cache)
    daemon.wait_mounted(first)
    assert (mnt / "img.raw").read_bytes() == data  # now cached
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=30) == 0, daemon.log(first)

    # the same cache, a bucket that does not answer: mounted from the cached listing
    proxy.stop()
    env["IMGSTORE_RETRY_BUDGET"] = "1"
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


# ------------------------------------------------------------ meson install

def build_options():
    out = run(["meson", "introspect", BUILD, "--buildoptions"], check=0).stdout
    return {o["name"]: o["value"] for o in __import__("json").loads(out)}


def pkg_config(*args):
    p = run(["pkg-config", *args])
    return p.stdout.strip() if p.returncode == 0 else None


def install_dirs():
    """Where `meson install` of BUILD puts things, from its options and the
    .pc files the build consulted (the rules of deploy/systemd and
    completions/meson.build)."""
    o = build_options()
    prefix = o["prefix"]

    def under(d):
        return os.path.join(prefix, d)
    unitdir = (o["systemdunitdir"] or pkg_config("--variable=systemdsystemunitdir", "systemd")
               or under("lib/systemd/system"))
    bashdir = (o["bashcompletiondir"]
               or pkg_config(f"--define-variable=datadir={under(o['datadir'])}",
                             "--variable=completionsdir", "bash-completion")
               or under(os.path.join(o["datadir"], "bash-completion/completions")))
    return {"bin": under(o["bindir"]), "sysconf": under(o["sysconfdir"]),
            "man": under(o["mandir"]), "data": under(o["datadir"]),
            "unit": unitdir, "bashcomp": bashdir}


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """`meson install --destdir` of the build under test (no rebuild)."""
    dest = tmp_path_factory.mktemp("destdir")
    run(["meson", "install", "-C", BUILD, "--destdir", dest, "--no-rebuild", "--quiet"],
        check=0)
    return dest


def files_under(root):
    return sorted("/" + str(p.relative_to(root)) for p in Path(root).rglob("*")
                  if not p.is_dir())


def test_meson_install_puts_exactly_these_files(installed):
    d = install_dirs()
    assert files_under(installed) == sorted([
        f"{d['bin']}/imgfs",
        f"{d['bin']}/labctl",
        f"{d['unit']}/imgfs@.service",
        f"{d['man']}/man1/labctl.1",
        f"{d['man']}/man8/imgfs.8",
        f"{d['bashcomp']}/imgfs",
        f"{d['bashcomp']}/labctl",
        f"{d['data']}/doc/imgstore/examples/imgfs.env",
    ])
    if build_options()["prefix"] == "/usr/local" and d["unit"] == "/lib/systemd/system":
        # Debian 12 with the default prefix, spelled out
        assert files_under(installed) == [
            "/lib/systemd/system/imgfs@.service",
            "/usr/local/bin/imgfs",
            "/usr/local/bin/labctl",
            "/usr/local/share/bash-completion/completions/imgfs",
            "/usr/local/share/bash-completion/completions/labctl",
            "/usr/local/share/doc/imgstore/examples/imgfs.env",
            "/usr/local/share/man/man1/labctl.1",
            "/usr/local/share/man/man8/imgfs.8",
        ]
    for prog in ("imgfs", "labctl"):
        p = run([f"{installed}{d['bin']}/{prog}", "--version"], check=0)
        assert p.stdout == f"{prog} 0.1.0\n"


def test_installed_unit_names_this_installation_s_paths(installed):
    d = install_dirs()
    unit = (installed / d["unit"].lstrip("/") / "imgfs@.service").read_text()
    assert "@" + "BINDIR@" not in unit and not __import__("re").search(r"@[A-Z_]+@", unit)
    execstart = [l for l in unit.splitlines() if l.startswith("ExecStart=")]
    assert execstart == [f"ExecStart={d['bin']}/imgfs -f --cache-dir %C/imgfs/%i "
                         "--cache-size ${CACHE_SIZE} \\"]
    for line in ("Type=notify",
                 f"EnvironmentFile=-{d['sysconf']}/imgstore/imgfs.env",
                 f"EnvironmentFile=-{d['sysconf']}/imgstore/imgfs@%i.env",
                 f"Environment=CREDENTIALS={d['sysconf']}/imgstore/e2.sops.yaml",
                 "CacheDirectory=imgfs/%i",
                 "Restart=on-failure",
                 "WantedBy=remote-fs.target",
                 "After=network-online.target",
                 "Before=remote-fs.target libvirtd.service pve-guests.service"):
        assert line in unit.splitlines(), line
    env = (installed / d["data"].lstrip("/") / "doc/imgstore/examples/imgfs.env").read_text()
    assert f"#   {d['sysconf']}/imgstore/imgfs@srv-images.env" in env
    assert "CACHE_SIZE=10G\n" in env


def verify_unit(unit_text, tmp, manpath):
    (tmp / "imgfs@.service").write_text(unit_text)
    env = dict(clean_env(), MANPATH=str(manpath), SYSTEMD_LOG_COLOR="0")
    return run(["systemd-analyze", "verify", "--man=yes", str(tmp / "imgfs@.service")],
               env=env, cwd=tmp)


def test_systemd_analyze_verifies_the_installed_unit(installed, tmp_path):
    """systemd-analyze runs offline: every directive known, every command an
    executable (the unit's imgfs, found in the destdir) and Documentation=
    a man page that exists (the installed imgfs(8))."""
    d = install_dirs()
    unit = (installed / d["unit"].lstrip("/") / "imgfs@.service").read_text()
    here = unit.replace(f"{d['bin']}/imgfs", f"{installed}{d['bin']}/imgfs")
    assert here != unit
    p = verify_unit(here, tmp_path, f"{installed}{d['man']}")
    assert (p.returncode, p.stdout, p.stderr) == (0, "", "")

    # and it would notice: the unit's binary missing, a misspelt directive
    p = verify_unit(unit.replace(f"{d['bin']}/imgfs", "/nonexistent/imgfs"), tmp_path,
                    f"{installed}{d['man']}")
    assert p.returncode != 0 and "/nonexistent/imgfs is not executable" in p.stderr
    p = verify_unit(here.replace("RestartSec=", "RestartSek="), tmp_path,
                    f"{installed}{d['man']}")
    assert "Unknown key 'RestartSek' in section [Service]" in p.stderr


# ------------------------------------- the unit's command line, as systemd runs it

def unit_service(unit_text):
    """[Service] settings of a unit: {key: [values]}, continuation lines joined."""
    out, section, pending = {}, None, ""
    for raw in unit_text.splitlines():
        line = pending + raw.strip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]":
            k, v = line.split("=", 1)
            out.setdefault(k, []).append(v)
    return out


def expand(cmdline, specifiers, env):
    """systemd.service(5) "Command lines": %-specifiers, ${VAR} as one word,
    $VAR split at white space (no quoting in our unit)."""
    words = []
    for word in cmdline.split():
        for k, v in specifiers.items():
            word = word.replace("%" + k, v)
        if word.startswith("${") and word.endswith("}"):
            words.append(env.get(word[2:-1], ""))
        elif word.startswith("$"):
            words += env.get(word[1:], "").split()
        else:
            words.append(word)
    return words


def read_env_file(path):
    env = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                k, v = line.split("=", 1)
                env[k.strip()] = v
    return env


def test_the_unit_s_command_line_mounts_with_its_settings_file(
        installed, bucket, tmp_path, daemon, notify):
    """The installed unit's ExecStart, expanded as systemd would for an
    instance whose mount point is in tmp_path, with an imgfs@INSTANCE.env
    (in a stand-in sysconfdir): it mounts, reports READY=1, and the settings
    arrive (cache size; IMGFS_OPTS split into options)."""
    d = install_dirs()
    data = upload(bucket, tmp_path, "debian/one.raw", MiB)
    bucket.put("images/loose.raw", b"no record")
    mnt = tmp_path / "srv" / "images"
    instance = run(["systemd-escape", "--path", mnt], check=0).stdout.strip()
    assert run(["systemd-escape", "--unescape", "--path", instance], check=0).stdout.strip() \
        == str(mnt)
    etc = tmp_path / "etc"
    (etc / "imgstore").mkdir(parents=True)
    (etc / "imgstore" / "imgfs.env").write_text("CACHE_SIZE=32M\n")
    (etc / "imgstore" / f"imgfs@{instance}.env").write_text(
        "# this mount only\nCACHE_SIZE=64M\nIMGFS_OPTS=--refresh 5 --allow-unverified\n")

    unit = (installed / d["unit"].lstrip("/") / "imgfs@.service").read_text()
    svc = unit_service(unit)
    env = {}
    for assignment in svc["Environment"]:
        k, v = assignment.split("=", 1)
        env[k] = v
    for f in svc["EnvironmentFile"]:
        assert f.startswith("-" + d["sysconf"] + "/imgstore/")  # optional, in sysconfdir
        f = f[1:].replace(d["sysconf"], str(etc)).replace("%i", instance)
        env.update(read_env_file(Path(f)))
    assert env["CACHE_SIZE"] == "64M"  # the instance's file is read after the shared one
    cmd = expand(svc["ExecStart"][0], {"i": instance, "f": str(mnt), "C": str(tmp_path / "cache")},
                 env)
    assert cmd[0] == f"{d['bin']}/imgfs"
    assert cmd[1:] == ["-f", "--cache-dir", f"{tmp_path}/cache/imgfs/{instance}",
                       "--cache-size", "64M", "--credentials", f"{d['sysconf']}/imgstore/e2.sops.yaml",
                       "-o", "allow_other", "--refresh", "5", "--allow-unverified", str(mnt)]
    for pre in svc["ExecStartPre"]:  # "-/bin/mkdir -p %f"
        run(expand(pre.lstrip("-"), {"f": str(mnt)}, env), check=0)
    assert mnt.is_dir()
    (tmp_path / "cache" / "imgfs" / instance).mkdir(parents=True)  # CacheDirectory=

    # the E2_* settings in the environment: the SOPS file is never opened
    proc_env = dict(bucket.env, **{k: v for k, v in env.items() if k != "CREDENTIALS"})
    proc = daemon.start(proc_env, mnt, tmp_path / "unused", notify,
                        argv=[f"{installed}{cmd[0]}", *cmd[1:]])
    notify.wait_for("READY=1", proc)
    assert sorted(os.listdir(mnt)) == [".imgstore", "debian", "loose.raw"]
    assert (mnt / "debian" / "one.raw").read_bytes() == data
    stats = __import__("json").loads((mnt / ".imgstore" / "stats").read_text())
    assert stats["cache_limit_bytes"] == 64 * MiB and stats["unverified_images"] == 1
    assert os.stat(mnt).st_dev != os.stat(mnt.parent).st_dev
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0, daemon.log(proc)


# ------------------------------------------------------------- man pages

MAN_PAGES = [ROOT / "man" / "labctl.1", ROOT / "man" / "imgfs.8"]


@pytest.mark.parametrize("page", MAN_PAGES, ids=lambda p: p.name)
def test_man_page_renders_without_warnings(page):
    p = run(["groff", "-man", "-Tutf8", "-ww", "-z", page])
    assert (p.returncode, p.stderr) == (0, "")
    env = dict(clean_env(), MANWIDTH="80", LC_ALL="C.UTF-8")
    p = run(["man", "-l", page], env=env, check=0)
    assert p.stderr == ""
    text = p.stdout
    name = page.stem
    assert text.startswith(name.upper() + "(" + page.suffix[1:] + ")")
    assert "\nNAME\n       " + name + " - " in text
    p = run(["lexgrog", page], check=0)
    assert p.stdout.startswith(f'{page}: "{name} - ')


def help_options(text):
    return set(__import__("re").findall(r"(?<![\w-])(--[a-z][a-z0-9-]+)", text))


def man_text(page):
    env = dict(clean_env(), MANWIDTH="200", LC_ALL="C.UTF-8")
    return run(["man", "-l", page], env=env, check=0).stdout


def test_imgfs_man_page_documents_every_option_of_its_help():
    help_text = run([binary("imgfs"), "--help"], check=0).stdout
    opts = help_options(help_text)
    assert {"--cache-size", "--allow-unverified"} <= opts
    text = man_text(ROOT / "man" / "imgfs.8")
    assert sorted(o for o in opts if o not in text) == []


LABCTL_COMMANDS = [("images", "validate"), ("images", "sync"), ("images", "list"),
                   ("images", "prune"), ("images", "upload"), ("images", "overlay"),
                   ("images", "index"), ("credentials", "encrypt"), ("credentials", "check")]


def test_labctl_man_page_documents_every_command_and_option_of_its_help():
    text = man_text(ROOT / "man" / "labctl.1")
    missing = []
    for cmd in LABCTL_COMMANDS:
        assert f"labctl {cmd[0]} {cmd[1]}" in text
        help_text = run([binary("labctl"), *cmd, "--help"], check=0).stdout
        missing += [f"{' '.join(cmd)} {o}" for o in sorted(help_options(help_text))
                    if o not in text]
    assert missing == []


# ---------------------------------------------------------- bash completion

def complete(script, *words):
    """COMPREPLY of the completion function in `script` for the command line
    `words` (the cursor at the end of the last word)."""
    prog = Path(script).name
    code = f"""
source /usr/share/bash-completion/bash_completion
source {script}
compopt() {{ :; }}
COMP_WORDS=("$@"); COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))
COMP_LINE="${{COMP_WORDS[*]}}"; COMP_POINT=${{#COMP_LINE}}
_{prog} {prog} "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"
printf '%s\\n' "${{COMPREPLY[@]}}"
"""
    p = run(["bash", "-c", code, "bash", prog, *words], check=0)
    assert p.stderr == ""
    return sorted(filter(None, p.stdout.split("\n")))


def test_bash_completion_of_labctl(tmp_path):
    script = ROOT / "completions" / "labctl"
    assert complete(script, "") == ["--help", "--version", "credentials", "help", "images",
                                    "version"]
    assert complete(script, "images", "") == ["--help", "index", "list", "overlay", "prune",
                                              "sync", "upload", "validate"]
    assert complete(script, "images", "sy") == ["sync"]
    assert complete(script, "images", "sync", "--s") == ["--skip", "--sops-age-key-file"]
    assert complete(script, "images", "list", "--") == sorted(
        "--versions --json --endpoint --bucket --credentials --sops-age-key-file --ca-bundle "
        "--help --version --verbose --quiet --log-level".split())
    assert complete(script, "images", "sync", "--log-level", "") == ["debug", "error", "info",
                                                                     "warn"]
    assert complete(script, "credentials", "") == ["--help", "check", "encrypt"]


def test_bash_completion_of_imgfs(tmp_path):
    script = ROOT / "completions" / "imgfs"
    assert complete(script, "--cache-s") == ["--cache-size"]
    assert complete(script, "-o", "allow_other,cache_s") == ["allow_other,cache_size="]
    assert "--pin-file" in complete(script, "--")
    (tmp_path / "mnt").mkdir()
    (tmp_path / "file").write_text("")
    assert complete(script, "-f", f"{tmp_path}/") == [f"{tmp_path}/mnt"]


# ----------------------------------------------------------- Debian package

@pytest.fixture(scope="session")
def deb(tmp_path_factory):
    """deploy/build-deb.sh once per session (a few minutes): the .deb and
    the script's output (lintian's included)."""
    out = tmp_path_factory.mktemp("deb")
    env = dict(clean_env(), DEB_BUILD_OPTIONS="nocheck parallel=2")
    # dpkg-buildpackage writes its results next to the source tree: what
    # lies beside the checkout before the build is not the build's doing
    beside = set(ROOT.parent.glob("imgstore_*"))
    p = run([ROOT / "deploy" / "build-deb.sh", out], env=env, timeout=1800)
    assert p.returncode == 0, p.stdout + p.stderr
    debs = sorted(out.glob("imgstore_*.deb"))
    assert len(debs) == 1, os.listdir(out)
    return debs[0], p, sorted(set(ROOT.parent.glob("imgstore_*")) - beside)


@pytest.mark.slow
def test_debian_package_contents(deb):
    path, build, _ = deb
    listing = run(["dpkg-deb", "--contents", path], check=0).stdout.splitlines()
    files = sorted(line.split()[-1] for line in listing if not line.startswith("d"))
    assert files == [
        "./lib/systemd/system/imgfs@.service",
        "./usr/bin/imgfs",
        "./usr/bin/labctl",
        "./usr/share/bash-completion/completions/imgfs",
        "./usr/share/bash-completion/completions/labctl",
        "./usr/share/doc/imgstore/README.md.gz",
        "./usr/share/doc/imgstore/changelog.gz",
        "./usr/share/doc/imgstore/cli.md.gz",
        "./usr/share/doc/imgstore/copyright",
        "./usr/share/doc/imgstore/design.md.gz",
        "./usr/share/doc/imgstore/examples/imgfs.env",
        "./usr/share/lintian/overrides/imgstore",
        "./usr/share/man/man1/labctl.1.gz",
        "./usr/share/man/man8/imgfs.8.gz",
    ]
    arch = run(["dpkg", "--print-architecture"], check=0).stdout.strip()
    assert run(["dpkg-deb", "-f", path, "Package", "Version", "Architecture"],
               check=0).stdout == f"Package: imgstore\nVersion: 0.1.0\nArchitecture: {arch}\n"
    depends = run(["dpkg-deb", "-f", path, "Depends"], check=0).stdout
    for pkg in ("fuse3", "ca-certificates", "libfuse3-3", "libsystemd0", "libcurl4"):
        assert pkg in depends, depends
    assert run(["dpkg-deb", "-f", path, "Recommends"], check=0).stdout.strip() == "qemu-utils"

    # the unit of the package: /usr/bin and /etc
    x = Path(str(path) + ".x")
    run(["dpkg-deb", "-x", path, x], check=0)
    unit = (x / "lib/systemd/system/imgfs@.service").read_text()
    assert "ExecStart=/usr/bin/imgfs -f --cache-dir %C/imgfs/%i" in unit
    assert "EnvironmentFile=-/etc/imgstore/imgfs@%i.env" in unit
    # built with sd_notify (-Dsystemd=enabled): the binary links libsystemd
    assert "libsystemd.so.0" in run(["ldd", x / "usr/bin/imgfs"], check=0).stdout
    # lintian ran in build-deb.sh and found no error
    assert "\nE: " not in "\n" + build.stderr, build.stderr


@pytest.mark.slow
def test_debian_package_installs_on_this_host_as_apt_would(deb):
    path, _, _ = deb
    p = run(["apt-get", "install", "--simulate", "--no-install-recommends", path],
            env=dict(clean_env(), DEBIAN_FRONTEND="noninteractive"))
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Inst imgstore (0.1.0 " in p.stdout and "Conf imgstore (0.1.0 " in p.stdout


@pytest.mark.slow
def test_building_the_package_leaves_the_checkout_as_it_was(deb):
    """build-deb.sh builds in a copy: no debian/.debhelper, debian/imgstore,
    obj-* directory or debian/files appears in the checkout, and no
    imgstore_* file beside it."""
    for leftover in ("debian/.debhelper", "debian/imgstore", "debian/files",
                     "debian/debhelper-build-stamp", "debian/imgstore.substvars"):
        assert not (ROOT / leftover).exists(), leftover
    assert not list(ROOT.glob("obj-*"))
    assert deb[2] == []
