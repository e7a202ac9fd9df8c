"""A watchdog for one test at a time: a test still running after its limit
is taken as hung. Then the thread stacks of every imgfs and labctl process
go to stderr (shown with the failing test), and the FUSE connections of the mounts under the session's
temporary directory are aborted: a request that imgfs read and never
answers keeps its caller in the kernel, unkillable, until then. The hung
call then fails with ENOTCONN, the test fails with what was dumped, and the
run goes on, instead of sitting until CI's own limit with nothing to say.

IMGSTORE_TEST_HANG_S sets the limit (seconds; 0: no watchdog)."""
import os
import subprocess
import sys
import threading
from pathlib import Path

FUSECTL = Path("/sys/fs/fuse/connections")


def limit_s():
    return float(os.environ.get("IMGSTORE_TEST_HANG_S", "420"))


def say(text):
    # pytest's capture takes this in too: it shows with the failing test
    print(text, file=sys.stderr, flush=True)


def parent(pid):
    try:
        # the name, in parentheses, may hold spaces: the fields after it
        return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def our_processes():
    """[(pid, name)] of the imgfs and labctl processes that descend from
    this run (another run's are none of its business)."""
    out, me = [], os.getpid()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            name = (d / "comm").read_text().strip()
        except OSError:
            continue
        if name not in ("imgfs", "labctl"):
            continue
        pid = int(d.name)
        while pid > 1 and pid != me:
            pid = parent(pid)
        if pid == me:
            out.append((int(d.name), name))
    return out


def kernel_view(pid):
    """Where each thread waits, as the kernel sees it: it cannot hang, and it
    works on a process that strace already traces (gdb cannot attach)."""
    lines = []
    for t in sorted(Path(f"/proc/{pid}/task").glob("*")):
        def read(name):
            try:
                return (t / name).read_text().strip()
            except OSError as e:
                return f"({e.strerror})"
        lines.append(f"  thread {t.name} ({read('comm')}): wchan {read('wchan')}, "
                     f"syscall {read('syscall').split(' ')[0]}")
    return "\n".join(lines)


def stacks(pid):
    """The kernel's view of each thread, then gdb's stacks when it can
    attach within 20 s."""
    out = kernel_view(pid)
    try:
        r = subprocess.run(["gdb", "-batch", "-nx", "-p", str(pid), "-ex", "thread apply all bt"],
                           capture_output=True, text=True, timeout=20)
        if "Thread" in r.stdout:
            out += "\n" + r.stdout
    except (OSError, subprocess.TimeoutExpired):
        pass
    return out


def fuse_mounts_under(top):
    """[(mountpoint, connection number)] of the FUSE mounts below top, from
    mountinfo (a stat of a hung mount would hang too)."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = left.split()
            fstype = right.split()[0] if right else ""
            point = fields[4].replace("\\040", " ")
            if fstype.startswith("fuse") and (point + "/").startswith(str(top) + "/"):
                out.append((point, int(fields[2].split(":")[1])))
    return out


def abort_connections(top):
    if not FUSECTL.is_dir() or not any(FUSECTL.iterdir()):
        subprocess.run(["mount", "-t", "fusectl", "fusectl", str(FUSECTL)],
                       capture_output=True, check=False)
    for point, conn in fuse_mounts_under(top):
        try:
            (FUSECTL / str(conn) / "abort").write_text("1")
            say(f"hangwatch: aborted the FUSE connection of {point}")
        except OSError as e:
            say(f"hangwatch: cannot abort the FUSE connection of {point}: {e}")


class Watch:
    """Started before a test, stopped after it; hung says whether it fired."""

    def __init__(self, name, top):
        self.name, self.top, self.hung = name, top, False
        self.timer = None
        if limit_s() > 0:
            self.timer = threading.Timer(limit_s(), self.fire)
            self.timer.daemon = True
            self.timer.start()

    def fire(self):
        self.hung = True
        say(f"\nhangwatch: {self.name} still runs after {limit_s():.0f} s; "
            "the stacks of imgfs and labctl follow")
        for pid, name in our_processes():
            say(f"--- {name} {pid}\n{stacks(pid)}")
        abort_connections(self.top)

    def stop(self):
        if self.timer:
            self.timer.cancel()
