"""The mount exported to hosts that cannot run FUSE (issue 14, the NAS case):
over NFSv4 by NFS-Ganesha with FSAL VFS (this kernel has no nfsd; Ganesha
reaches the mount through the kernel's file-handle API,
name_to_handle_at/open_by_handle_at, as knfsd does), read by libnfs'
nfs-cat; and over SMB by Samba, read by smbclient. Bytes are compared
exactly, and the NFS reads are repeated after the kernel dropped its inodes:
without FUSE export support that is where file handles go stale."""
import ctypes
import errno
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import free_port_block
from test_imgfs import MiB, imgfs, pattern, put_raw, sparse, wait_for  # noqa: F401 (fixture)

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0,
                               reason="file handles and drop_caches need root")


def drop_caches():
    """Make the kernel forget the mount's dentries and inodes (FUSE FORGET):
    the next use of a file handle has to go through the file system."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def images(bucket):
    """Two images in a directory and one at the top, as destinations -> bytes."""
    out = {"lab/nested/a.raw": pattern(3 * MiB + 4321, seed=51),
           "lab/b.raw": sparse(4 * MiB, seed=52),
           "c.iso": pattern(70000, seed=53)}
    for dest, data in out.items():
        put_raw(bucket, dest, data)
    return out


def stop_server(proc):
    """SIGTERM a server the test started, SIGKILL after 20 s; None is fine."""
    if proc and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ------------------------------------------------ the kernel's file handles

class FileHandle(ctypes.Structure):
    _fields_ = [("handle_bytes", ctypes.c_uint), ("handle_type", ctypes.c_int),
                ("f_handle", ctypes.c_ubyte * 128)]  # MAX_HANDLE_SZ


_libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100


def name_to_handle(path):
    fh, mount_id = FileHandle(), ctypes.c_int()
    fh.handle_bytes = 128
    if _libc.name_to_handle_at(AT_FDCWD, os.fsencode(path), ctypes.byref(fh),
                               ctypes.byref(mount_id), 0):
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), str(path))
    return fh


def open_by_handle(mount_fd, fh, flags):
    fd = _libc.open_by_handle_at(mount_fd, ctypes.byref(fh), flags)
    if fd < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return fd


@ROOT_ONLY
def test_file_handles_survive_forgotten_inodes(bucket, tmp_path, imgfs):
    """What knfsd and Ganesha do with the mount, without either: a handle
    taken before the kernel forgot the inode opens the same file afterwards
    (the kernel asks imgfs for "." of the inode), and a directory's handle
    reconnects through ".." lookups up to the root."""
    data = images(bucket)
    m = imgfs(["--refresh", "0"])
    paths = ["lab/nested/a.raw", "lab/b.raw", "c.iso", "lab/nested", "lab", ".imgstore",
             ".imgstore/metrics"]
    handles = {p: name_to_handle(m.path / p) for p in paths}
    inos = {p: os.stat(m.path / p).st_ino for p in paths}
    mount_fd = os.open(m.path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for round_ in range(2):
            drop_caches()
            for p in paths:
                fd = open_by_handle(mount_fd, handles[p], os.O_RDONLY)
                try:
                    assert os.fstat(fd).st_ino == inos[p], (round_, p)
                    if p in data:
                        with os.fdopen(os.dup(fd), "rb") as f:
                            assert f.read() == data[p], (round_, p)
                finally:
                    os.close(fd)
            # a directory opened by handle is connected: its entries and its ".."
            drop_caches()
            fd = open_by_handle(mount_fd, handles["lab/nested"], os.O_RDONLY | os.O_DIRECTORY)
            try:
                assert os.listdir(fd) == ["a.raw"]
                up = os.open("..", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
                try:
                    assert os.fstat(up).st_ino == inos["lab"]
                    assert sorted(os.listdir(up)) == ["b.raw", "nested"]
                finally:
                    os.close(up)
            finally:
                os.close(fd)
        # "." and ".." by name as well (lookups the kernel normally answers itself)
        assert os.stat(m.path / "lab" / "nested" / ".." / "b.raw").st_size == len(data["lab/b.raw"])
    finally:
        os.close(mount_fd)


@ROOT_ONLY
def test_file_handles_survive_a_restart_of_imgfs(bucket, tmp_path, imgfs):
    """A handle is the inode number (a hash of the path) and a generation, so
    the handles an NFS server gave out before imgfs restarted (same mount
    point, same bucket; with a fixed fsid the server maps them to the new
    mount) open the same files afterwards, even with a fresh cache."""
    data = images(bucket)
    m = imgfs(["--refresh", "0"])
    paths = ["lab/nested/a.raw", "lab/b.raw", "lab/nested"]
    handles = {p: name_to_handle(m.path / p) for p in paths}
    m.stop()
    m2 = imgfs(["--refresh", "0"], cache=tmp_path / "cache2", name="mnt")
    drop_caches()
    mount_fd = os.open(m2.path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for p in ["lab/nested/a.raw", "lab/b.raw"]:
            fd = open_by_handle(mount_fd, handles[p], os.O_RDONLY)
            with os.fdopen(fd, "rb") as f:
                assert f.read() == data[p], p
        fd = open_by_handle(mount_fd, handles["lab/nested"], os.O_RDONLY | os.O_DIRECTORY)
        try:
            assert os.listdir(fd) == ["a.raw"]
        finally:
            os.close(fd)
    finally:
        os.close(mount_fd)


@ROOT_ONLY
def test_a_removed_image_handle_is_stale(bucket, tmp_path, imgfs):
    data = images(bucket)
    m = imgfs(["--refresh", "0"])
    fh = name_to_handle(m.path / "c.iso")
    bucket.s3.delete_object(Bucket=bucket.name, Key="metadata/c.iso.json")
    bucket.s3.delete_object(Bucket=bucket.name, Key="images/c.iso")
    m.sighup()
    wait_for(lambda: not (m.path / "c.iso").exists(), what="c.iso gone")
    drop_caches()
    mount_fd = os.open(m.path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(OSError) as e:
            os.close(open_by_handle(mount_fd, fh, os.O_RDONLY))
        assert e.value.errno == errno.ESTALE
    finally:
        os.close(mount_fd)
    assert (m.path / "lab/b.raw").read_bytes() == data["lab/b.raw"]


# ------------------------------------------------------------ NFS-Ganesha

GANESHA = shutil.which("ganesha.nfsd")
NFS_CAT = shutil.which("nfs-cat")


def fsal_dir():
    found = glob.glob("/usr/lib/*/ganesha/libfsalvfs.so") + \
        glob.glob("/usr/lib/ganesha/libfsalvfs.so")
    return os.path.dirname(found[0]) if found else None


def ganesha_conf(d, port, export_path):
    """NFSv4 only, TCP on 127.0.0.1:port; no NLM, rquota, UDP, grace period
    or Kerberos; recovery state under d. Ganesha runs without rpcbind (it
    logs that it cannot register NFS V4, which NFSv4 clients do not need)
    and without D-Bus (it logs that there is no bus and goes on)."""
    return f"""
NFS_CORE_PARAM {{
	NFS_Port = {port};
	Bind_Addr = 127.0.0.1;
	Protocols = 4;
	Enable_NLM = false;
	Enable_RQUOTA = false;
	Enable_UDP = false;
	Plugins_Dir = "{fsal_dir()}";
}}
NFSv4 {{
	Graceless = true;
	RecoveryBackend = fs;
	RecoveryRoot = "{d}/recovery";
	Only_Numeric_Owners = true;
}}
NFS_KRB5 {{ Active_krb5 = false; }}
EXPORT {{
	Export_Id = 1;
	Path = "{export_path}";
	Pseudo = "/images";
	Access_Type = RO;
	Squash = No_Root_Squash;
	SecType = sys;
	Protocols = 4;
	Transports = TCP;
	Filesystem_id = 4242.1;
	FSAL {{ Name = VFS; }}
}}
LOG {{ Default_Log_Level = EVENT; }}
"""


class Ganesha:
    def __init__(self, d, export_path):
        self.dir = d
        self.port = free_port_block(1)
        (d / "recovery").mkdir(parents=True)
        self.conf = d / "ganesha.conf"
        self.conf.write_text(ganesha_conf(d, self.port, export_path))
        self.log = d / "ganesha.log"
        self.proc = None

    def start(self, timeout=30):
        self.proc = subprocess.Popen(
            [GANESHA, "-F", "-f", self.conf, "-L", self.log, "-p", self.dir / "ganesha.pid",
             "-N", "NIV_EVENT"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"ganesha.nfsd exited {self.proc.returncode}:\n"
                                     + self.logtext())
            if "NFS SERVER INITIALIZED" in self.logtext():
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                    return self
                except OSError:
                    pass
            time.sleep(0.1)
        self.stop()
        raise AssertionError("ganesha.nfsd did not start:\n" + self.logtext())

    def logtext(self):
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self):
        stop_server(self.proc)

    def url(self, path):
        # libnfs URL arguments (libnfs 4.0, nfs-cat(1)): version=4 speaks NFSv4
        # and needs no portmapper/mountd; nfsport= is the server's port
        return f"nfs://127.0.0.1/images/{path}?version=4&nfsport={self.port}"


def nfs_cat(url):
    p = subprocess.run([NFS_CAT, url], capture_output=True, timeout=60)
    assert p.returncode == 0, (url, p.returncode, p.stderr.decode(errors="replace"))
    return p.stdout


@ROOT_ONLY
@pytest.mark.skipif(not (GANESHA and NFS_CAT and fsal_dir()),
                    reason="needs nfs-ganesha, nfs-ganesha-vfs and libnfs-utils "
                           "(deploy/setup.sh installs them)")
def test_nfs_export_through_ganesha(bucket, tmp_path, imgfs):
    data = images(bucket)
    m = imgfs(["--refresh", "0", "-o", "allow_other"])
    g = Ganesha(tmp_path / "ganesha", m.path).start()
    try:
        for dest, want in data.items():
            assert nfs_cat(g.url(dest)) == want, dest
        # the kernel forgets every inode; Ganesha's handles must still open them
        for round_ in range(2):
            drop_caches()
            for dest, want in data.items():
                assert nfs_cat(g.url(dest)) == want, (round_, dest)
        ls = subprocess.run(["nfs-ls", g.url("lab/")], capture_output=True, text=True,
                            timeout=60)
        assert ls.returncode == 0, ls.stderr
        assert sorted(line.split()[-1] for line in ls.stdout.splitlines()) == ["b.raw", "nested"]
        metrics = nfs_cat(g.url(".imgstore/metrics")).decode()
        assert metrics.startswith("# HELP imgstore_info ")
    finally:
        g.stop()
    assert "NFS4ERR_STALE" not in g.logtext()


# ------------------------------------------------------------------ Samba

SMBD = shutil.which("smbd")
SMBCLIENT = shutil.which("smbclient")


class Samba:
    """smbd in the foreground with everything under d: a share of the mount,
    read only, for guests, on 127.0.0.1:port only."""

    def __init__(self, d, share_path):
        self.dir = d
        self.port = free_port_block(1)
        for sub in ("private", "lock", "state", "cache", "pid", "ncalrpc"):
            (d / sub).mkdir(parents=True)
        self.conf = d / "smb.conf"
        self.conf.write_text(f"""[global]
	server role = standalone server
	bind interfaces only = yes
	interfaces = lo
	smb ports = {self.port}
	disable netbios = yes
	private dir = {d}/private
	lock directory = {d}/lock
	state directory = {d}/state
	cache directory = {d}/cache
	pid directory = {d}/pid
	ncalrpc dir = {d}/ncalrpc
	log file = {d}/log.%m
	passdb backend = tdbsam:{d}/private/passdb.tdb
	map to guest = Bad User
	load printers = no
	printcap name = /dev/null
	disable spoolss = yes
[images]
	path = {share_path}
	read only = yes
	guest ok = yes
""")
        self.client_conf = d / "client.conf"  # not the host's /etc/samba/smb.conf
        self.client_conf.write_text("[global]\n")
        self.out = d / "smbd.out"
        self.proc = None

    def start(self, timeout=30):
        self.proc = subprocess.Popen(
            [SMBD, "--foreground", "--no-process-group", f"--configfile={self.conf}",
             "--debug-stdout", "-d", "1"], stdin=subprocess.DEVNULL,
            stdout=open(self.out, "wb"), stderr=subprocess.STDOUT,
            # smbd signals its whole process group when it exits: not ours
            start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"smbd exited {self.proc.returncode}:\n"
                                     + self.out.read_text(errors="replace"))
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise AssertionError("smbd did not listen:\n" + self.out.read_text(errors="replace"))

    def stop(self):
        stop_server(self.proc)

    def client(self, command):
        return subprocess.run([SMBCLIENT, "//127.0.0.1/images", "-p", str(self.port), "-N",
                               "-s", str(self.client_conf), "-c", command],
                              capture_output=True, timeout=60)

    def get(self, path):
        p = self.client(f'get "{path}" -')
        assert p.returncode == 0, (path, p.returncode, p.stderr.decode(errors="replace"))
        return p.stdout


@pytest.fixture
def open_dir():
    """A directory every user may traverse: Samba enters the share as the
    guest account (nobody), and pytest's tmp_path is under a 0700 directory."""
    d = tempfile.mkdtemp(prefix="imgstore-smb-", dir="/tmp")
    os.chmod(d, 0o755)
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


@ROOT_ONLY
@pytest.mark.skipif(not (SMBD and SMBCLIENT),
                    reason="needs samba and smbclient (deploy/setup.sh installs them)")
def test_smb_share_through_samba(bucket, tmp_path, open_dir, imgfs):
    data = images(bucket)
    m = imgfs(["--refresh", "0", "-o", "allow_other"], name=open_dir / "mnt")
    s = Samba(tmp_path / "samba", m.path).start()
    try:
        for dest, want in data.items():
            assert s.get(dest) == want, dest
        ls = s.client("ls lab/*")
        assert ls.returncode == 0, ls.stderr
        names = ls.stdout.decode().split()
        assert "b.raw" in names and "nested" in names
        # the share is read only, whatever the client tries
        src = tmp_path / "upload"
        src.write_bytes(b"x")
        put = s.client(f"put {src} new.raw")
        assert b"NT_STATUS_ACCESS_DENIED" in put.stdout + put.stderr, put
        assert not (m.path / "new.raw").exists()
    finally:
        s.stop()


@ROOT_ONLY
@pytest.mark.skipif(not (SMBD and SMBCLIENT),
                    reason="needs samba and smbclient (deploy/setup.sh installs them)")
def test_smb_guest_needs_allow_other(bucket, tmp_path, open_dir, imgfs):
    """Samba serves a guest as `nobody`: without -o allow_other only the user
    who ran imgfs may enter the mount, and the share is denied."""
    images(bucket)
    m = imgfs(["--refresh", "0"], name=open_dir / "mnt")  # an absolute name wins over tmp_path
    s = Samba(tmp_path / "samba", m.path).start()
    try:
        p = s.client('get "c.iso" -')
        assert p.returncode == 1
        assert p.stdout == b"NT_STATUS_ACCESS_DENIED opening remote file \\c.iso\n", p
    finally:
        s.stop()
