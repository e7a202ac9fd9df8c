"""Helpers that the overlay and boot tests (and tests/bench/boot.sh) share:
an imgfs mount run in the foreground for the length of a test, a manifest
writer for images + overlays, and qemu-img/qemu-io wrappers."""
import json
import os
import signal
import subprocess
import time
from pathlib import Path


class ImgfsMount:
    """`imgfs -f` in the background; unmounted (and the process reaped) on
    stop().  Usable as a context manager."""

    def __init__(self, imgfs, mountpoint, env, cache_dir, extra=(), log=None):
        self.imgfs = imgfs
        self.path = Path(mountpoint)
        self.env = env
        self.cache_dir = Path(cache_dir)
        self.extra = list(extra)
        self.log = Path(log) if log else self.cache_dir.parent / (self.path.name + "-imgfs.log")
        self.proc = None

    def start(self, timeout=30):
        self.path.mkdir(parents=True, exist_ok=True)
        self.cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        args = [self.imgfs, "-f", "--cache-dir", str(self.cache_dir), *self.extra, str(self.path)]
        self._logf = open(self.log, "ab")
        self.proc = subprocess.Popen(args, env=self.env, stdin=subprocess.DEVNULL,
                                     stdout=self._logf, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"imgfs exited {self.proc.returncode} before mounting:\n"
                                   + self.log.read_text(errors="replace")[-3000:])
            if os.path.ismount(self.path) and (self.path / ".imgstore").is_dir():
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"imgfs did not mount {self.path} within {timeout}s:\n"
                           + self.log.read_text(errors="replace")[-3000:])

    def refresh(self, want=None, gone=None, timeout=20):
        """SIGHUP (re-read the listing now); wait until `want` (a path inside
        the mount) exists and `gone` does not."""
        self.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ok = (want is None or (self.path / want).exists()) and \
                (gone is None or not (self.path / gone).exists())
            if ok:
                return
            time.sleep(0.1)
        raise AssertionError(f"after SIGHUP the mount does not show want={want} gone={gone}")

    def stop(self):
        if self.proc is None:
            return
        if os.path.ismount(self.path):
            subprocess.run(["fusermount3", "-u", str(self.path)], capture_output=True)
        killed = False
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            killed = True
        if os.path.ismount(self.path):
            subprocess.run(["fusermount3", "-uz", str(self.path)], capture_output=True)
        self._logf.close()
        rc, self.proc = self.proc.returncode, None
        log = self.log.read_text(errors="replace")
        # a clean unmount ends imgfs with 0; sanitizer reports fail the test
        if killed or rc != 0 or "Sanitizer" in log or "runtime error:" in log:
            raise AssertionError(f"imgfs {'hung on unmount' if killed else f'exited {rc}'}"
                                 f" (log {self.log}):\n{log[-3000:]}")

    def stats(self):
        return json.loads((self.path / ".imgstore" / "stats").read_text())

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def write_manifest(path, images, overlays=None, name="lab-images"):
    """images: [{name, url, checksum, destination}]; overlays: spec.overlays[]
    dicts.  Written as YAML by hand (flow lists for packages/services)."""
    lines = ["apiVersion: images.lab.gilman.io/v1alpha1", "kind: ImageManifest",
             "metadata:", f"  name: {name}", "spec:", "  images:"]
    for im in images:
        lines += [f"    - name: {im['name']}",
                  "      source:",
                  f"        url: {im['url']}",
                  f"        checksum: \"{im['checksum']}\"",
                  f"      destination: {im['destination']}"]
    if overlays:
        lines.append("  overlays:")
        for o in overlays:
            first = True
            for k in ("name", "base", "output", "variant", "packages", "services"):
                if k not in o:
                    continue
                v = o[k]
                if isinstance(v, list):
                    v = "[" + ", ".join(json.dumps(x) for x in v) + "]"
                lines.append(("    - " if first else "      ") + f"{k}: {v}")
                first = False
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("\n".join(lines) + "\n")
    return Path(path)


def image_info(path, force_share=True):
    args = ["qemu-img", "info", "--output=json"]
    if force_share:
        args.append("-U")
    p = subprocess.run(args + [str(path)], capture_output=True, text=True, check=True)
    return json.loads(p.stdout)


def qemu_io(args, check=True):
    p = subprocess.run(["qemu-io", *map(str, args)], capture_output=True, text=True,
                       timeout=300)
    if check and (p.returncode != 0 or "error" in p.stdout.lower() or "failed" in p.stdout.lower()):
        raise AssertionError(f"qemu-io {args} -> {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p
