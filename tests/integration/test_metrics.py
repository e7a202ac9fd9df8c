"""/.imgstore/metrics (issue 14): the stats in the Prometheus text exposition
format (0.0.4), parsed strictly here, and checked to move with real reads."""
import mmap
import os
import re

import pytest

from test_imgfs import MiB, Proxy, imgfs, pattern, put_raw, wait_for  # noqa: F401 (fixture)

NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')


class FormatError(AssertionError):
    pass


def parse_value(text, lineno):
    if text in ("+Inf", "-Inf", "NaN"):
        return float(text)
    if not re.fullmatch(r"[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?", text):
        raise FormatError(f"line {lineno}: {text!r} is not a number")
    return float(text)


def parse_labels(text, lineno):
    """`a="x",b="y"` (a trailing comma is allowed by the format) -> tuple."""
    out, pos = [], 0
    while pos < len(text):
        m = LABEL.match(text, pos)
        if not m:
            raise FormatError(f"line {lineno}: bad label set {{{text}}}")
        out.append((m.group(1), m.group(2)))
        pos = m.end()
        if pos < len(text):
            if text[pos] != ",":
                raise FormatError(f"line {lineno}: bad label set {{{text}}}")
            pos += 1
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        raise FormatError(f"line {lineno}: a label twice in {{{text}}}")
    return tuple(sorted(out))


def parse_prometheus(text):
    """A strict reader of the text format for counters and gauges: every line
    is `# HELP`, `# TYPE` or a sample `name{labels} value`; a family has one
    HELP and one TYPE, both before its samples, and its samples are
    contiguous; no sample twice; the text ends with a newline.
    Returns {name: {"type", "help", "samples": {labels: value}}}."""
    if not text.endswith("\n"):
        raise FormatError("the text does not end with a newline")
    fams, current, closed = {}, None, set()
    for lineno, line in enumerate(text[:-1].split("\n"), 1):
        if line.startswith("#"):
            m = re.fullmatch(r"# (HELP|TYPE) (\S+) (.*)", line)
            if not m:
                raise FormatError(f"line {lineno}: a comment that is not HELP or TYPE: {line!r}")
            kind, name, rest = m.groups()
            if not NAME.match(name):
                raise FormatError(f"line {lineno}: bad metric name {name!r}")
            if name in closed or (name in fams and fams[name]["samples"]):
                raise FormatError(f"line {lineno}: {kind} of {name} after its samples")
            fam = fams.setdefault(name, {"type": None, "help": None, "samples": {}})
            key = kind.lower()
            if fam[key] is not None:
                raise FormatError(f"line {lineno}: a second {kind} for {name}")
            if kind == "TYPE" and rest not in ("counter", "gauge"):
                raise FormatError(f"line {lineno}: type {rest!r} (only counter and gauge here)")
            if kind == "HELP" and not rest.strip():
                raise FormatError(f"line {lineno}: empty HELP for {name}")
            fam[key] = rest
            if current and current != name:
                closed.add(current)
            current = name
            continue
        m = re.fullmatch(r"([^\s{]+)(?:\{([^}]*)\})? (\S+)", line)
        if not m:
            raise FormatError(f"line {lineno}: not a sample line: {line!r}")
        name, labels, value = m.groups()
        if not NAME.match(name):
            raise FormatError(f"line {lineno}: bad metric name {name!r}")
        fam = fams.get(name)
        if not fam or fam["help"] is None or fam["type"] is None:
            raise FormatError(f"line {lineno}: sample of {name} without HELP and TYPE before it")
        if name in closed or (current != name):
            raise FormatError(f"line {lineno}: samples of {name} are not together")
        lbl = parse_labels(labels or "", lineno)
        if lbl in fam["samples"]:
            raise FormatError(f"line {lineno}: duplicate sample {line!r}")
        fam["samples"][lbl] = parse_value(value, lineno)
    for name, fam in fams.items():
        if fam["help"] is None or fam["type"] is None:
            raise FormatError(f"{name}: HELP and TYPE are both required")
    return fams


# ------------------------------------------------------- the parser itself

@pytest.mark.parametrize("bad", [
    "# TYPE a counter\na_total 1\n",                           # no HELP
    "# HELP a x\n# TYPE a gauge\na 1",                          # no final newline
    "# HELP a x\n# TYPE a gauge\na 1\na 2\n",                   # duplicate
    "# HELP a x\n# TYPE a gauge\n# HELP a y\na 1\n",            # second HELP
    "# HELP a-b x\n# TYPE a-b gauge\na-b 1\n",                  # bad name
    "# HELP a x\n# TYPE a gauge\na one\n",                      # bad value
    "# HELP a x\n# TYPE a summary\na 1\n",                      # not counter/gauge
    "# HELP a x\n# TYPE a gauge\na 1\n# HELP b x\n# TYPE b gauge\nb 1\na 2\n",  # split
    "# HELP a x\n# TYPE a gauge\na{x=\"1\",x=\"2\"} 1\n",       # label twice
    "# HELP a x\n# TYPE a gauge\na{x=1} 1\n",                   # unquoted label
    "# a comment\n# HELP a x\n# TYPE a gauge\na 1\n",           # stray comment
])
def test_the_strict_parser_refuses(bad):
    with pytest.raises(FormatError):
        parse_prometheus(bad)


def test_the_strict_parser_accepts():
    fams = parse_prometheus('# HELP a_total x y\n# TYPE a_total counter\na_total 3\n'
                            '# HELP b x\n# TYPE b gauge\nb{v="1.0",w="a\\"b"} 1\n'
                            '# HELP c x\n# TYPE c gauge\n')
    assert fams["a_total"]["samples"] == {(): 3.0}
    assert fams["b"]["samples"] == {(("v", "1.0"), ("w", 'a\\"b')): 1.0}
    assert fams["c"]["samples"] == {}


# ------------------------------------------------------------ the file

# every numeric stats field and the metric it becomes (CLI.md: imgstore_ prefix)
FIELDS = {
    "images": ("imgstore_images", "gauge"),
    "unverified_images": ("imgstore_unverified_images", "gauge"),
    "image_bytes": ("imgstore_image_bytes", "gauge"),
    "cache_hits": ("imgstore_cache_hits_total", "counter"),
    "cache_misses": ("imgstore_cache_misses_total", "counter"),
    "bytes_fetched": ("imgstore_fetched_bytes_total", "counter"),
    "verify_failures": ("imgstore_verify_failures_total", "counter"),
    "cache_bytes": ("imgstore_cache_bytes", "gauge"),
    "cache_limit_bytes": ("imgstore_cache_limit_bytes", "gauge"),
    "cache_inserts": ("imgstore_cache_inserts_total", "counter"),
    "cache_evictions": ("imgstore_cache_evictions_total", "counter"),
    "cache_dropped": ("imgstore_cache_dropped_total", "counter"),
    "cache_verify_failures": ("imgstore_cache_verify_failures_total", "counter"),
    "memory_hits": ("imgstore_memory_hits_total", "counter"),
    "memory_bytes": ("imgstore_memory_bytes", "gauge"),
    "memory_limit_bytes": ("imgstore_memory_limit_bytes", "gauge"),
    "memory_peak_bytes": ("imgstore_memory_peak_bytes", "gauge"),
    "zero_blocks": ("imgstore_zero_blocks_total", "counter"),
    "coalesced_reads": ("imgstore_coalesced_reads_total", "counter"),
    "readahead_blocks": ("imgstore_readahead_blocks_total", "counter"),
    "fetch_errors": ("imgstore_fetch_errors_total", "counter"),
    "gets": ("imgstore_gets_total", "counter"),
    "requests": ("imgstore_requests_total", "counter"),
    "retries": ("imgstore_retries_total", "counter"),
    "refreshes": ("imgstore_refreshes_total", "counter"),
    "refresh_errors": ("imgstore_refresh_errors_total", "counter"),
    "pinned_images": ("imgstore_pinned_images", "gauge"),
    "pinned_bytes": ("imgstore_pinned_bytes", "gauge"),
    "pinned_cached_bytes": ("imgstore_pinned_cached_bytes", "gauge"),
}


def metrics(m):
    text = (m.path / ".imgstore" / "metrics").read_text()
    return text, parse_prometheus(text)


def value(fams, name, labels=()):
    return fams[name]["samples"][labels]


def test_metrics_parse_strictly_and_follow_the_stats(bucket, tmp_path, imgfs):
    data = pattern(3 * MiB + 12345, seed=41)
    put_raw(bucket, "lab/m.raw", data)
    m = imgfs(["--refresh", "0", "--timeout", "10"])
    assert "metrics" in os.listdir(m.path / ".imgstore")
    st = os.stat(m.path / ".imgstore" / "metrics")
    text, fams = metrics(m)
    assert st.st_mode & 0o777 == 0o444

    for name, fam in fams.items():
        assert name.startswith("imgstore_"), name
        assert (fam["type"] == "counter") == name.endswith("_total"), name
        assert "bytes" not in name or re.search(r"_bytes(_total)?\Z", name), name
    stats = m.stats()
    for field, v in stats.items():
        if isinstance(v, int) and not isinstance(v, bool):
            assert field in FIELDS, f"stats field {field} has no metric in this test's table"
    for field, (name, typ) in FIELDS.items():
        assert fams[name]["type"] == typ, name
        assert len(fams[name]["samples"]) == 1, name
    info = fams["imgstore_info"]["samples"]
    assert len(info) == 1 and next(iter(info))[0][0] == "version"
    assert value(fams, "imgstore_bucket_reachable") == 1
    assert value(fams, "imgstore_images") == 1
    assert value(fams, "imgstore_image_bytes") == len(data)
    assert value(fams, "imgstore_refreshes_total") == 1
    assert value(fams, "imgstore_last_refresh_timestamp_seconds") > 1.7e9

    # an idle mount: the same numbers in both files
    again = m.stats()
    _, fams = metrics(m)
    for field, (name, _) in FIELDS.items():
        if stats[field] == again[field]:
            assert value(fams, name) == stats[field], field

    # a cold read of the whole image: exactly its bytes fetched, one miss per block
    before = fams
    assert (m.path / "lab" / "m.raw").read_bytes() == data
    _, after = metrics(m)

    def grew(name):
        return value(after, name) - value(before, name)

    def gets_accounted():
        # a GET counts when it starts and its HTTP requests when it ends,
        # and its blocks reach the read before the end: wait for the end
        nonlocal after
        _, after = metrics(m)
        return grew("imgstore_requests_total") >= grew("imgstore_gets_total")
    wait_for(gets_accounted, timeout=10, what="the read's GETs to end")
    assert grew("imgstore_fetched_bytes_total") == len(data)
    assert grew("imgstore_cache_misses_total") == 4
    assert grew("imgstore_verify_failures_total") == 0
    assert grew("imgstore_gets_total") >= 1
    assert grew("imgstore_requests_total") >= grew("imgstore_gets_total")

    # read again, uncached by the kernel: served by imgfs without a GET
    fd = os.open(m.path / "lab" / "m.raw", os.O_RDONLY | os.O_DIRECT)
    try:
        buf = mmap.mmap(-1, 4 * MiB)
        n = os.preadv(fd, [buf], 0)
        assert n == len(data) and buf[:n] == data
    finally:
        os.close(fd)
    _, third = metrics(m)
    assert value(third, "imgstore_fetched_bytes_total") == value(after, "imgstore_fetched_bytes_total")
    assert value(third, "imgstore_cache_hits_total") >= value(after, "imgstore_cache_hits_total") + 4


def test_metrics_when_the_bucket_is_away(bucket, tmp_path, imgfs):
    """bucket_reachable drops to 0 and refresh_errors counts, as in the stats."""
    put_raw(bucket, "a.raw", pattern(MiB, seed=42))
    proxy = Proxy(int(bucket.server.endpoint.rsplit(":", 1)[1]))
    env = bucket.env
    env["E2_ENDPOINT"] = proxy.endpoint
    try:
        m = imgfs(["--refresh", "1", "--timeout", "2"], env=env)
        proxy.set_mode("reset")
        wait_for(lambda: value(metrics(m)[1], "imgstore_refresh_errors_total") >= 1,
                 timeout=30, what="a failed refresh")
        _, fams = metrics(m)
        assert value(fams, "imgstore_bucket_reachable") == 0
        assert value(fams, "imgstore_images") == 1
    finally:
        proxy.close()
