"""vmkit: what the VM tests need to boot a real Linux guest under QEMU.

- kernel():     Debian's kernel (linux-image-<ver>-amd64 fetched with
                `apt-get download`, unpacked with `dpkg -x`, never installed),
                cached so that repeated runs do not download it again;
- initramfs():  a busybox-static initramfs whose /init (init.sh beside this
                file) loads the virtio modules, hashes a region of /dev/vda,
                writes a marker, syncs and powers off;
- base_image(): a qcow2 with known, deterministic contents;
- accel():      'kvm' or 'tcg': KVM only once a tiny guest really ran under
                it (probe_kvm), the verdict cached for this boot of the host;
- boot():       runs qemu-system-x86_64 with that accelerator and a hard
                timeout and parses the serial log.  QEMU dies with the
                process that started it (popen_qemu).

Cache: $IMGSTORE_VMKIT_CACHE, else $XDG_CACHE_HOME/imgstore-vmkit, else
~/.cache/imgstore-vmkit.  $IMGSTORE_VMKIT_KERNEL_PKG pins the package (e.g.
linux-image-6.1.0-47-amd64); otherwise a kernel already in the cache is used,
and only an empty cache asks apt for the current one (linux-image-amd64's
dependency).

Environment: $IMGSTORE_VMKIT_ACCEL forces the accelerator (kvm, tcg);
$IMGSTORE_VMKIT_QEMU names the QEMU binary (default qemu-system-x86_64);
$IMGSTORE_VMKIT_KVM_DEVICE the KVM device (default /dev/kvm).  The last two
exist so that the tests can stand in a QEMU whose KVM guests hang.
"""
import contextlib
import ctypes
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
INIT_SCRIPT = HERE / "init.sh"
BUSYBOX = Path(os.environ.get("IMGSTORE_VMKIT_BUSYBOX", "/bin/busybox"))
META_PACKAGE = "linux-image-amd64"
# The modules /init loads (their dependencies are added): PCI transport + disk.
GUEST_MODULES = ("virtio_pci", "virtio_blk")

MiB = 1 << 20


class VmkitError(RuntimeError):
    pass


def cache_dir():
    d = os.environ.get("IMGSTORE_VMKIT_CACHE")
    if not d:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        d = os.path.join(base, "imgstore-vmkit")
    p = Path(d)
    p.mkdir(parents=True, exist_ok=True)
    return p


@contextlib.contextmanager
def _locked(path):
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _run(args, **kw):
    p = subprocess.run([str(a) for a in args], capture_output=True, text=True, **kw)
    if p.returncode != 0:
        raise VmkitError(f"{' '.join(map(str, args))} exited {p.returncode}: "
                         f"{p.stderr.strip() or p.stdout.strip()}")
    return p.stdout


# ---------------------------------------------------------------- kernel


@dataclass
class Kernel:
    package: str
    version: str          # uname -r, e.g. 6.1.0-47-amd64
    vmlinuz: Path
    modules: list         # [Path] in load order


def _resolve_package():
    """The linux-image-<ver>-amd64 package that linux-image-amd64 points at."""
    def depends():
        out = subprocess.run(["apt-cache", "depends", META_PACKAGE], capture_output=True,
                             text=True).stdout
        m = re.search(r"Depends:\s*(linux-image-[0-9][^\s]*-amd64)\b", out)
        return m.group(1) if m else None
    pkg = depends()
    if pkg is None and os.geteuid() == 0:
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True)
        pkg = depends()
    if pkg is None:
        raise VmkitError(f"cannot find the kernel package: 'apt-cache depends {META_PACKAGE}' "
                         "names none (run apt-get update, or set IMGSTORE_VMKIT_KERNEL_PKG)")
    return pkg


def elf_modinfo(ko):
    """The key=value strings of a kernel module's .modinfo section."""
    data = Path(ko).read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise VmkitError(f"{ko}: not a little-endian ELF64 module")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def section(i):
        name, _type, _flags, _addr, off, size = struct.unpack_from("<IIQQQQ", data,
                                                                   shoff + i * shentsize)
        return name, off, size
    _, stroff, _ = section(shstrndx)
    info = {}
    for i in range(shnum):
        name, off, size = section(i)
        end = data.index(b"\0", stroff + name)
        if data[stroff + name:end] != b".modinfo":
            continue
        for item in data[off:off + size].split(b"\0"):
            if b"=" in item:
                k, v = item.decode("utf-8", "replace").split("=", 1)
                info.setdefault(k, v)
    return info


def module_closure(modroot, wanted):
    """Module files for `wanted` and everything they depend on, dependencies
    first.  Names use underscores (file names may use dashes)."""
    files = {}
    for p in Path(modroot).rglob("*.ko"):
        files[p.name[:-3].replace("-", "_")] = p
    order, seen = [], set()

    def visit(name, stack=()):
        if name in seen:
            return
        if name in stack:
            raise VmkitError(f"module dependency cycle at {name}")
        if name not in files:
            raise VmkitError(f"module {name} is not in {modroot} (built in? check modules.builtin)")
        deps = elf_modinfo(files[name]).get("depends", "")
        for d in filter(None, deps.split(",")):
            visit(d.replace("-", "_"), stack + (name,))
        seen.add(name)
        order.append(name)
    for w in wanted:
        visit(w)
    return [(n, files[n]) for n in order]


def _cached_kernels(root):
    return sorted((p for p in root.glob("linux-image-*") if (p / "READY").exists()),
                  key=lambda p: p.stat().st_mtime, reverse=True)


def _load_kernel(d):
    meta = json.loads((d / "READY").read_text())
    return Kernel(meta["package"], meta["version"], d / "vmlinuz",
                  [d / "modules" / f"{n}.ko" for n in meta["modules"]])


def kernel(log=print):
    root = cache_dir()
    pinned = os.environ.get("IMGSTORE_VMKIT_KERNEL_PKG")
    if not pinned:
        have = _cached_kernels(root)
        if have:
            return _load_kernel(have[0])
    with _locked(root / ".lock"):
        pkg = pinned or _resolve_package()
        d = root / pkg
        if (d / "READY").exists():
            return _load_kernel(d)
        log(f"vmkit: downloading {pkg} into {root}")
        with tempfile.TemporaryDirectory(dir=root, prefix=".dl-") as tmp:
            tmp = Path(tmp)
            try:
                _run(["apt-get", "download", pkg], cwd=tmp)
            except VmkitError:
                if os.geteuid() != 0:
                    raise
                # stale package lists (the version moved on): refresh once
                subprocess.run(["apt-get", "update", "-qq"], capture_output=True)
                if not pinned:
                    pkg = _resolve_package()
                    d = root / pkg
                _run(["apt-get", "download", pkg], cwd=tmp)
            debs = list(tmp.glob("*.deb"))
            if len(debs) != 1:
                raise VmkitError(f"apt-get download {pkg} left {len(debs)} .deb files")
            x = tmp / "x"
            _run(["dpkg", "-x", debs[0], x])
            vmlinuz = sorted((x / "boot").glob("vmlinuz-*"))
            if not vmlinuz:
                raise VmkitError(f"{pkg} has no /boot/vmlinuz-*")
            version = vmlinuz[0].name[len("vmlinuz-"):]
            modroot = x / "lib" / "modules" / version
            mods = module_closure(modroot, GUEST_MODULES)
            if d.exists():
                shutil.rmtree(d)
            (d / "modules").mkdir(parents=True)
            shutil.copy2(vmlinuz[0], d / "vmlinuz")
            shutil.copy2(x / "boot" / f"config-{version}", d / "config")
            for n, p in mods:
                shutil.copy2(p, d / "modules" / f"{n}.ko")
            (d / "READY").write_text(json.dumps(
                {"package": pkg, "version": version, "modules": [n for n, _ in mods]}))
        return _load_kernel(d)


# ---------------------------------------------------------------- initramfs


class _Cpio:
    """A newc ("070701") cpio archive, as the kernel unpacks an initramfs.
    Written here so that device nodes need no root and no cpio binary."""

    def __init__(self, f):
        self.f = f
        self.ino = 1

    def _entry(self, name, mode, data=b"", rdev=(0, 0), nlink=1):
        name_b = name.encode() + b"\0"
        fields = [self.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1],
                  len(name_b), 0]
        self.ino += 1
        hdr = b"070701" + b"".join(b"%08X" % v for v in fields)
        self.f.write(hdr + name_b)
        self.f.write(b"\0" * (-(len(hdr) + len(name_b)) % 4))
        self.f.write(data)
        self.f.write(b"\0" * (-len(data) % 4))

    def dir(self, name, perm=0o755):
        self._entry(name, stat.S_IFDIR | perm, nlink=2)

    def file(self, name, data, perm=0o644):
        self._entry(name, stat.S_IFREG | perm, data)

    def symlink(self, name, target):
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, name, major, minor, perm=0o600):
        self._entry(name, stat.S_IFCHR | perm, rdev=(major, minor))

    def close(self):
        self._entry("TRAILER!!!", 0)


def initramfs(out, kern):
    """Write the test initramfs for `kern` to `out` (uncompressed newc)."""
    return _write_initramfs(out, INIT_SCRIPT.read_bytes(), kern.modules)


def _write_initramfs(out, init, modules):
    """A busybox initramfs with `init` (bytes) as /init and `modules` (.ko
    paths, in load order) under /lib/modules."""
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "wb") as f:
        c = _Cpio(f)
        for d in ("bin", "dev", "proc", "sys", "lib", "lib/modules", "tmp"):
            c.dir(d)
        c.chardev("dev/console", 5, 1)
        c.chardev("dev/null", 1, 3, 0o666)
        c.file("bin/busybox", BUSYBOX.read_bytes(), 0o755)
        c.symlink("bin/sh", "busybox")
        c.file("init", init, 0o755)
        names = []
        for m in modules:
            c.file(f"lib/modules/{m.name}", m.read_bytes())
            names.append(m.name[:-3])
        c.file("lib/modules/order", ("\n".join(names) + "\n").encode())
        c.close()
    os.replace(tmp, out)
    return out


# ---------------------------------------------------------------- base image


@dataclass
class Base:
    """A base qcow2 whose guest-visible bytes are known."""
    path: Path
    virtual_size: int
    region_off: int
    region_len: int
    region_sha256: str    # what the guest must print
    marker_off: int       # where the guest writes (zeros in the base)
    seed: bytes

    def expected_raw(self):
        """The whole guest-visible disk, as bytes."""
        return pattern_disk(self.virtual_size, self.region_off, self.region_len, self.seed)


def pattern(n, seed=b"imgstore-vmkit"):
    """n deterministic pseudo-random bytes (SHAKE-256 of the seed)."""
    return hashlib.shake_256(seed).digest(n)


def pattern_disk(size, off, length, seed):
    return b"\0" * off + pattern(length, seed) + b"\0" * (size - off - length)


def base_image(out, size=64 * MiB, region_off=1 * MiB, region_len=16 * MiB,
               marker_off=48 * MiB, seed=b"imgstore-vmkit", cluster_size=None):
    """A qcow2 at `out`: zeros, with pattern(region_len, seed) at region_off.
    The marker offset lies in the zero part, so the base holds no marker."""
    if not (0 <= region_off and region_off + region_len <= size):
        raise ValueError("region outside the disk")
    if region_off <= marker_off < region_off + region_len or marker_off + 512 > size:
        raise ValueError("marker offset must be in the zero part of the disk")
    out = Path(out)
    raw = out.with_name(out.name + ".raw")
    with open(raw, "wb") as f:
        f.truncate(size)
        f.seek(region_off)
        f.write(pattern(region_len, seed))
    args = ["qemu-img", "convert", "-f", "raw", "-O", "qcow2"]
    if cluster_size:
        args += ["-o", f"cluster_size={cluster_size}"]
    _run(args + [raw, out])
    raw.unlink()
    return Base(out, size, region_off, region_len,
                hashlib.sha256(pattern(region_len, seed)).hexdigest(), marker_off, seed)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(4 * MiB), b""):
            h.update(chunk)
    return h.hexdigest()


def read_guest(image, off, length, fmt="qcow2", opts=None):
    """`length` guest-visible bytes at `off` of an image (through its backing
    chain): `qemu-img convert` to a temporary raw file, then read."""
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "out.raw"
        args = ["qemu-img", "convert", "-O", "raw"]
        if opts:
            args += ["--image-opts", opts]
        else:
            args += ["-f", fmt, image]
        _run(args + [raw])
        with open(raw, "rb") as f:
            f.seek(off)
            return f.read(length)


# ---------------------------------------------------------------- qemu processes


PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def qemu_binary():
    return os.environ.get("IMGSTORE_VMKIT_QEMU") or "qemu-system-x86_64"


def _die_with(parent_pid):
    """A preexec_fn: the kernel sends the child SIGKILL when the thread that
    forked it dies.  Without it a QEMU outlives a killed test run or demo (it
    is in a session of its own) and keeps holding its image locks."""
    def preexec():
        if _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
        if os.getppid() != parent_pid:   # the parent died before the prctl
            os.kill(os.getpid(), signal.SIGKILL)
    return preexec


def popen_qemu(args, **kw):
    """subprocess.Popen for QEMU, the only way vmkit starts one: in a session
    of its own (so that killpg reaches anything it started) and killed when
    its parent goes.  PR_SET_PDEATHSIG fires when the parent *thread* exits:
    call this from a thread that outlives QEMU (the main thread does)."""
    return subprocess.Popen([str(a) for a in args], start_new_session=True,
                            preexec_fn=_die_with(os.getpid()), **kw)


def _run_qemu(args, timeout):
    """Run QEMU with stdout+stderr captured, SIGKILLed after `timeout` s.
    Returns (returncode, text, timed_out)."""
    p = popen_qemu(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                   stderr=subprocess.STDOUT)
    timed_out = False
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(p.pid, signal.SIGKILL)
        out, _ = p.communicate()
    return p.returncode, out.decode("utf-8", "replace").replace("\r", ""), timed_out


# ---------------------------------------------------------------- accelerator

# On some hosts /dev/kvm opens but no KVM guest gets anywhere (nested
# virtualization): SeaBIOS prints "Booting from ROM..." and then nothing, until
# the boot timeout.  So KVM is chosen only after a guest ran under it: the test
# kernel, with an initramfs whose /init prints PROBE_MARKER and powers off.
# Firmware output does not count; the marker comes from guest userspace.
PROBE_SECONDS = 10      # a working KVM needs ~1 s, TCG ~6 s on a busy 2-core host
PROBE_MARKER = "VMKIT-PROBE-OK"
PROBE_INIT = (b"#!/bin/busybox sh\n"
              b"/bin/busybox echo " + PROBE_MARKER.encode() + b"\n"
              b"/bin/busybox poweroff -f\n")

_ACCEL = {}             # (qemu, kvm device) -> verdict, for this process


def _warn(msg):
    # stderr: `python3 -m vmkit boot --json` keeps stdout for its JSON
    print(msg, file=sys.stderr, flush=True)


def kvm_device():
    return os.environ.get("IMGSTORE_VMKIT_KVM_DEVICE") or "/dev/kvm"


def _can_open(path):
    try:
        os.close(os.open(path, os.O_RDWR))
        return True
    except OSError:
        return False


def accel(kern=None, qemu=None, kvm_dev=None, deadline=PROBE_SECONDS, log=_warn):
    """'kvm' or 'tcg' for guests started with `qemu` (default qemu_binary()).

    $IMGSTORE_VMKIT_ACCEL wins; a KVM device that does not open means TCG
    without a probe.  Otherwise probe_kvm decides, once per boot of the host:
    the verdict is kept in this process and in a file in the cache dir
    (accel_cache_file), so the tests, the demo and tests/bench/boot.sh agree
    and only the first of them waits for the probe."""
    forced = os.environ.get("IMGSTORE_VMKIT_ACCEL")
    if forced:
        return forced
    qemu = qemu or qemu_binary()
    kvm_dev = kvm_dev or kvm_device()
    if not _can_open(kvm_dev):
        return "tcg"
    key = (shutil.which(qemu) or qemu, str(kvm_dev))
    if key not in _ACCEL:
        _ACCEL[key] = _cached_verdict(key, kern, deadline, log)
    return _ACCEL[key]


def _boot_id():
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def accel_cache_file(qemu, kvm_dev):
    """Where the verdict for (qemu path, KVM device) is kept."""
    h = hashlib.sha256(f"{qemu}\0{kvm_dev}".encode()).hexdigest()[:16]
    return cache_dir() / f"accel-{h}.json"


def _cached_verdict(key, kern, deadline, log):
    """The verdict stored for this boot of the host, else a fresh probe,
    stored.  Under the lock, so concurrent pytest workers probe only once."""
    path = accel_cache_file(*key)
    boot_id = _boot_id()
    with _locked(path.with_suffix(".lock")):
        try:
            v = json.loads(path.read_text())
            if boot_id and v["boot_id"] == boot_id and v["accel"] in ("kvm", "tcg"):
                return v["accel"]
        except (OSError, ValueError, KeyError):
            pass
        verdict, why = probe_kvm(kern or kernel(log=log), key[0], deadline)
        if why:
            log(f"vmkit: {key[1]} opens but {why}; using TCG")
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({"boot_id": boot_id, "qemu": key[0], "kvm_device": key[1],
                                   "accel": verdict, "reason": why}) + "\n")
        os.replace(tmp, path)
    return verdict


def probe_kvm(kern, qemu=None, deadline=PROBE_SECONDS):
    """Boot the probe guest under `-accel kvm`, killed after `deadline` s.
    Returns ('kvm', None) when its /init printed PROBE_MARKER, else
    ('tcg', why)."""
    with tempfile.TemporaryDirectory(prefix="vmkit-probe-") as tmp:
        initrd = _write_initramfs(Path(tmp) / "probe.img", PROBE_INIT, [])
        args = qemu_command(kern, initrd, accelerator="kvm", qemu=qemu, memory=128)
        t0 = time.monotonic()
        rc, text, timed_out = _run_qemu(args, deadline)
        secs = time.monotonic() - t0
    if PROBE_MARKER in text:
        return "kvm", None
    if timed_out:
        return "tcg", f"a KVM guest printed nothing from its /init in {deadline:g}s"
    last = text.strip().splitlines()[-1:] or ["no output"]
    return "tcg", (f"a KVM guest ended (exit {rc} after {secs:.1f}s) before its /init ran:"
                   f" {last[0][:200]}")


# ---------------------------------------------------------------- boot


@dataclass
class BootResult:
    returncode: int
    seconds: float
    log: str
    timed_out: bool = False
    sha256: str = None
    marker: str = None
    marker_off: int = None
    failures: list = field(default_factory=list)
    guest_start: float = None   # guest uptime when /init started
    guest_done: float = None    # guest uptime when /init finished

    @property
    def ok(self):
        return not self.timed_out and not self.failures and self.guest_done is not None


def parse_log(text, res):
    for line in text.splitlines():
        line = line.strip()
        m = re.search(r"VMKIT-SHA256 off=\d+ len=\d+ ([0-9a-f]{64})", line)
        if m:
            res.sha256 = m.group(1)
        m = re.search(r"VMKIT-MARKER off=(\d+) (\S+)", line)
        if m:
            res.marker_off, res.marker = int(m.group(1)), m.group(2)
        m = re.search(r"VMKIT-FAIL (.*)", line)
        if m:
            res.failures.append(m.group(1))
        m = re.search(r"VMKIT-START uptime=([0-9.]+)", line)
        if m:
            res.guest_start = float(m.group(1))
        m = re.search(r"VMKIT-DONE uptime=([0-9.]+)", line)
        if m:
            res.guest_done = float(m.group(1))
    return res


def qemu_command(kern, initrd, drive=None, region=None, marker=None, marker_off=None,
                 direct_read=False, memory=256, extra_append="", accelerator=None, qemu=None):
    """The QEMU argument vector.  `drive` is the -drive value (e.g.
    'file=overlay.qcow2,if=virtio' or a dict of options), None for no disk;
    `accelerator` defaults to accel() for `qemu` (default qemu_binary())."""
    if isinstance(drive, dict):
        drive = ",".join(f"{k}={v}" for k, v in drive.items())
    append = ["console=ttyS0", "panic=-1", "quiet", "loglevel=3", "rdinit=/init",
              "mitigations=off", "tsc=reliable", "no_timer_check"]
    if region:
        append += [f"vmkit.off={region[0]}", f"vmkit.len={region[1]}"]
    if marker:
        append += [f"vmkit.marker={marker}", f"vmkit.moff={marker_off}"]
    if direct_read:
        append.append("vmkit.direct=1")
    if extra_append:
        append.append(extra_append)
    qemu = qemu or qemu_binary()
    a = accelerator or accel(kern, qemu=qemu)
    args = [qemu, "-machine", "pc", "-accel", a,
            "-cpu", "host" if a == "kvm" else "max",
            "-m", str(memory), "-smp", "1", "-nographic", "-no-reboot",
            "-nodefaults", "-serial", "stdio", "-display", "none",
            "-kernel", str(kern.vmlinuz), "-initrd", str(initrd),
            "-append", " ".join(append)]
    return args + ["-drive", drive] if drive else args


def boot(kern, initrd, drive, timeout=120, log_path=None, **kw):
    """Boot the test guest; returns a BootResult (never raises on a failed
    guest: the caller asserts, with the log at hand).  The accelerator is
    chosen (and, the first time, probed) before the clock starts."""
    args = qemu_command(kern, initrd, drive, **kw)
    t0 = time.monotonic()
    rc, text, timed_out = _run_qemu(args, timeout)
    secs = time.monotonic() - t0
    if log_path:
        Path(log_path).write_text(" ".join(args) + "\n\n" + text)
    return parse_log(text, BootResult(rc, secs, text, timed_out))
