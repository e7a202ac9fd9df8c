"""labctl images sync (and list/prune around it) with a real local S3 server
and a local HTTPS server with a test CA."""
import gzip
import hashlib
import json
import lzma
import os
import stat
import subprocess

import pytest

from conftest import binary, run
from test_labctl_upload import check_record, peak_rss_kib

MIB = 1 << 20


def labctl(*args):
    return [binary("labctl"), *args]


def image_bytes(size, seed):
    """Like a disk image: runs of zeros, text-ish data and incompressible bits."""
    out = bytearray()
    i = 0
    while len(out) < size:
        kind = i % 4
        if kind == 0:
            out += bytes(256 * 1024)
        elif kind == 1:
            out += (b"%d block %d of a test image\n" % (seed, i)) * 8000
        else:
            h = hashlib.sha256(b"%d/%d" % (seed, i)).digest()
            out += hashlib.shake_256(h).digest(128 * 1024)
        i += 1
    return bytes(out[:size])


def compress(data, kind):
    if kind == "xz":
        return lzma.compress(data, preset=1)
    if kind == "xz-blocks":
        # as xz -T writes it: blocks whose headers state both sizes, which
        # labctl decodes on several threads
        return subprocess.run(["xz", "-1", "-T2", f"--block-size={MIB // 2 + 4096}", "-c"],
                              input=data, check=True, capture_output=True).stdout
    if kind == "gzip":
        return gzip.compress(data, compresslevel=1)
    if kind == "zstd":
        return subprocess.run(["zstd", "-q", "-1", "-c"], input=data, check=True,
                              capture_output=True).stdout
    return data


def sha(data, alg="sha256"):
    return f"{alg}:" + hashlib.new(alg, data).hexdigest()


def q(s):
    """A single-quoted YAML scalar."""
    return "'" + s.replace("'", "''") + "'"


class Lab:
    """A repo (images/images.yaml + files to pin), sources on the HTTPS server."""

    def __init__(self, tmp, bucket, https, tag):
        self.tmp = tmp
        self.bucket = bucket
        self.https = https
        self.tag = tag  # keeps source names unique on the session-wide server
        self.repo = tmp / "repo"
        (self.repo / "images").mkdir(parents=True)
        self.manifest = self.repo / "images" / "images.yaml"
        self.images = []
        self.data = {}
        self.gh_output = tmp / "github_output"

    def source(self, name, data, kind="none", seed=None):
        """Serve `data` (compressed with kind) and return a manifest entry."""
        blob = compress(data, kind)
        fname = f"{self.tag}-{name}" + {"none": ".raw", "xz": ".raw.xz", "xz-blocks": ".raw.xz",
                                        "gzip": ".raw.gz", "zstd": ".raw.zst"}[kind]
        (self.https.root / fname).write_bytes(blob)
        entry = {"name": name, "url": self.https.url(fname), "checksum": sha(blob),
                 "destination": f"{self.tag}/{name}.raw", "fname": fname}
        if kind != "none":
            entry["decompress"] = "xz" if kind == "xz-blocks" else kind
            entry["expected"] = sha(data)
        self.images.append(entry)
        self.data[name] = data
        return entry

    def write(self, images=None):
        lines = ["apiVersion: images.lab.gilman.io/v1alpha1", "kind: ImageManifest",
                 "metadata:", "  name: test-lab", "spec:", "  images:"]
        for im in self.images if images is None else images:
            lines += [f"    - name: {im['name']}",
                      "      source:",
                      f"        url: {q(im['url'])}",
                      f"        checksum: {q(im['checksum'])}"]
            if im.get("decompress"):
                lines.append(f"        decompress: {im['decompress']}")
            lines.append(f"      destination: {q(im['destination'])}")
            if im.get("expected"):
                lines += ["      validation:", "        algorithm: sha256",
                          f"        expected: {q(im['expected'])}"]
            if im.get("update"):
                path, reps = im["update"]
                lines += ["      updateFile:", f"        path: {q(path)}",
                          "        replacements:"]
                for pat, val in reps:
                    lines += [f"          - pattern: {q(pat)}", f"            value: {q(val)}"]
        if not (self.images if images is None else images):
            lines[-1] = "  images: []"
        self.manifest.write_text("\n".join(lines) + "\n")

    def run(self, *args, check=0, env=None, gh=False):
        env = dict(self.bucket.env if env is None else env)
        if gh:
            env["GITHUB_OUTPUT"] = str(self.gh_output)
        return run(labctl("images", *args, "--ca-bundle", self.https.ca), env=env,
                   check=check, cwd=self.repo)

    def gets(self, name):
        return [r for r in self.https.requests if r[0] == "GET" and r[1] == "/" + name]

    def check_stored(self, im):
        data = self.data[im["name"]]
        assert self.bucket.get("images/" + im["destination"]) == data
        rec = check_record(self.bucket, im["destination"], data, name=im["name"])
        assert rec["source"]["url"] == im["url"]
        return rec


@pytest.fixture
def lab(tmp_path, bucket, https, request):
    return Lab(tmp_path, bucket, https, request.node.name.replace("[", "-").strip("]"))


def test_four_formats_sync_resync_noop_and_prune(lab):
    raw = lab.source("raw", image_bytes(3 * MIB + 17, 1))
    xz = lab.source("xz", image_bytes(11 * MIB + 5, 2), "xz")  # several 8 MiB parts
    gz = lab.source("gzip", image_bytes(2 * MIB, 3), "gzip")
    zs = lab.source("zstd", image_bytes(9 * MIB, 4), "zstd")
    lab.write()
    p = lab.run("sync")
    assert "4 uploaded, 0 skipped, 0 failed" in p.stdout, p.stdout
    for im in (raw, xz, gz, zs):
        rec = lab.check_stored(im)
        assert rec["checksum"] == im.get("expected", im["checksum"])
    assert lab.bucket.pending_uploads() == []
    etags = {k: lab.bucket.s3.head_object(Bucket=lab.bucket.name, Key=k)["ETag"]
             for k in lab.bucket.keys()}

    # second run: a no-op, not even a download
    gets = len(lab.https.requests)
    p = lab.run("sync")
    assert "0 uploaded, 4 skipped, 0 failed" in p.stdout, p.stdout
    assert len([r for r in lab.https.requests[gets:] if r[0] == "GET"]) == 0
    assert {k: lab.bucket.s3.head_object(Bucket=lab.bucket.name, Key=k)["ETag"]
            for k in lab.bucket.keys()} == etags

    items = {i["destination"]: i for i in json.loads(lab.run("list", "--json").stdout)}
    assert all(items[im["destination"]]["complete"] for im in (raw, xz, gz, zs))
    assert items[xz["destination"]]["name"] == "xz"

    # prune what the manifest no longer names (kept as previous versions:
    # retention, test_history.py)
    lab.images = [raw, zs]
    lab.write()
    p = lab.run("prune")
    assert lab.bucket.keys("images/") + lab.bucket.keys("metadata/") == sorted(
        [f"images/{raw['destination']}", f"images/{zs['destination']}"]) + sorted(
        [f"metadata/{raw['destination']}.json", f"metadata/{zs['destination']}.json"] +
        [f"metadata/versions/{sha(lab.data[n])[7:]}.json" for n in ("xz", "gzip")])
    p = lab.run("sync")
    assert "0 uploaded, 2 skipped" in p.stdout


@pytest.mark.parametrize("kind", ["none", "xz", "gzip", "zstd"])
def test_size_exactly_whole_parts(lab, kind):
    """The stream ends exactly at a part boundary (sync parts are 16 MiB)."""
    im = lab.source("exact", image_bytes(16 * MIB, 20), kind)
    lab.write()
    lab.run("sync")
    lab.check_stored(im)
    assert lab.bucket.pending_uploads() == []


def test_force_reuploads(lab):
    im = lab.source("img", image_bytes(MIB, 5), "gzip")
    lab.write()
    lab.run("sync")
    n = len(lab.gets(im["fname"]))
    p = lab.run("sync", "--force")
    assert "1 uploaded" in p.stdout
    assert len(lab.gets(im["fname"])) == n + 1
    lab.check_stored(im)


@pytest.mark.parametrize("threads", [None, "1", "3"])
def test_multi_block_xz(lab, threads):
    """Blocks decoded ahead on worker threads land in the object in order."""
    im = lab.source("blocks", image_bytes(13 * MIB + 12345, 21), "xz-blocks")
    lab.write()
    p = lab.run("sync", *(["--xz-threads", threads] if threads else []))
    assert "1 uploaded" in p.stdout
    lab.check_stored(im)


def test_multi_block_xz_corrupt_block(lab):
    """A damaged block in the middle (the download itself is as pinned): the
    decoder's verdict fails the sync and nothing is stored."""
    im = lab.source("bad", image_bytes(9 * MIB, 22), "xz-blocks")
    path = lab.https.root / im["fname"]
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0x40  # the data of a block in the middle
    path.write_bytes(bytes(blob))
    im["checksum"] = sha(bytes(blob))
    lab.write()
    p = lab.run("sync", check=1)
    assert "xz: corrupt xz data" in p.stderr, p.stderr
    assert "0 uploaded, 0 skipped, 1 failed" in p.stdout, p.stdout
    assert lab.bucket.keys() == []
    assert lab.bucket.pending_uploads() == []


def test_dry_run_changes_nothing(lab):
    pin = lab.repo / "pins.txt"
    pin.write_text("url=https://old.example/x.raw\n")
    im = lab.source("img", image_bytes(2 * MIB, 6), "xz")
    im["update"] = ("pins.txt", [(r"url=\S+", "url={{ .Source.URL }}")])
    lab.write()
    before = len(lab.https.requests)
    p = lab.run("sync", "--dry-run", gh=True)
    assert "img" in p.stdout and "upload" in p.stdout and "not in the bucket" in p.stdout
    assert "would rewrite pins.txt" in p.stdout
    assert lab.bucket.keys() == []
    assert lab.bucket.pending_uploads() == []
    assert lab.https.requests[before:] == []
    assert pin.read_text() == "url=https://old.example/x.raw\n"
    # a workflow learns what would change (CLI: files_changed with --dry-run too)
    assert lab.gh_output.read_text() == "files_changed=true\n"
    # after a real sync, the dry run says skip
    lab.run("sync")
    p = lab.run("sync", "--dry-run")
    assert "skip" in p.stdout and "pins.txt is up to date" in p.stdout


def test_wrong_checksums_leave_nothing_while_others_sync(lab):
    good = lab.source("good", image_bytes(MIB, 7))
    bad_src = lab.source("badsrc", image_bytes(10 * MIB, 8))       # multipart
    bad_src["checksum"] = sha(b"something else")
    bad_exp = lab.source("badexp", image_bytes(12 * MIB, 9), "zstd")  # multipart, decompressed
    bad_exp["expected"] = sha(b"not the image")
    small_bad = lab.source("smallbad", image_bytes(1000, 10), "gzip")  # single PUT
    small_bad["expected"] = sha(b"nope")
    pin = lab.repo / "pin.txt"
    pin.write_text("bad=old\n")
    bad_exp["update"] = ("pin.txt", [("bad=\\S+", "bad={{ .Name }}")])
    lab.write()
    p = lab.run("sync", "--parallel", "2", check=1)
    assert "checksum mismatch" in p.stderr
    assert "1 uploaded, 0 skipped, 3 failed" in p.stdout, p.stdout
    lab.check_stored(good)
    assert lab.bucket.keys() == [f"images/{good['destination']}",
                                 f"metadata/{good['destination']}.json"]
    assert lab.bucket.pending_uploads() == []
    assert pin.read_text() == "bad=old\n"


def test_resume_after_dropped_connection(lab):
    im = lab.source("big", image_bytes(7 * MIB, 11), "xz")
    size = (lab.https.root / im["fname"]).stat().st_size
    cut = size // 2
    lab.https.drop_once(im["fname"], cut)
    lab.write()
    p = lab.run("sync")
    assert "1 uploaded" in p.stdout
    ranges = [r[2] for r in lab.gets(im["fname"])]
    assert ranges == [None, f"bytes={cut}-"], ranges
    assert "resum" in p.stderr
    lab.check_stored(im)


def test_update_file_and_github_output(lab):
    vars_file = lab.repo / "packer" / "vars.pkr.hcl"
    vars_file.parent.mkdir()
    vars_file.write_text('iso_url      = "https://old.example/old.iso"\n'
                         'iso_checksum = "sha256:0000"\n'
                         'name = "keep me"\n')
    os.chmod(vars_file, 0o640)
    im = lab.source("vyos", image_bytes(MIB, 12), "zstd")
    im["update"] = ("packer/vars.pkr.hcl",
                    [(r'iso_url\s*=\s*"[^"]*"', 'iso_url      = "{{ .Source.URL }}"'),
                     (r'iso_checksum\s*=\s*"[^"]*"',
                      'iso_checksum = "{{ .Source.Checksum }}"')])
    lab.write()
    lab.run("sync", gh=True)
    assert vars_file.read_text() == (f'iso_url      = "{im["url"]}"\n'
                                     f'iso_checksum = "{im["checksum"]}"\n'
                                     'name = "keep me"\n')
    assert stat.S_IMODE(vars_file.stat().st_mode) == 0o640
    assert lab.gh_output.read_text() == "files_changed=true\n"
    assert [f for f in os.listdir(vars_file.parent) if "labctl" in f] == []  # no temp left
    lab.run("sync", gh=True)
    assert lab.gh_output.read_text() == "files_changed=true\nfiles_changed=false\n"


def test_only_and_parallel(lab):
    a = lab.source("a", image_bytes(MIB, 13))
    b = lab.source("b", image_bytes(MIB, 14), "gzip")
    c = lab.source("c", image_bytes(MIB, 15), "xz")
    lab.write()
    p = lab.run("sync", "--only", "a", "--only", "c", "--parallel", "2")
    assert "2 uploaded" in p.stdout
    lab.check_stored(a)
    lab.check_stored(c)
    assert f"images/{b['destination']}" not in lab.bucket.keys()
    p = lab.run("sync", "--only", "bb", check=2)
    assert "bb" in p.stderr
    assert lab.bucket.keys() == sorted([f"images/{a['destination']}",
                                        f"metadata/{a['destination']}.json",
                                        f"images/{c['destination']}",
                                        f"metadata/{c['destination']}.json"])


def test_stale_record_is_reuploaded(lab):
    im = lab.source("img", image_bytes(MIB, 16))
    lab.write()
    lab.run("sync")
    lab.bucket.put("images/" + im["destination"], b"tampered")
    p = lab.run("sync")
    assert "1 uploaded" in p.stdout
    lab.check_stored(im)


def test_invalid_manifest_and_missing_source(lab):
    lab.manifest.write_text("apiVersion: images.lab.gilman.io/v1alpha1\nkind: Nope\n")
    p = lab.run("sync", check=2)
    assert "images.yaml:" in p.stderr
    assert lab.bucket.keys() == []
    im = lab.source("gone", image_bytes(1000, 17))
    os.unlink(lab.https.root / im["fname"])
    lab.write()
    p = lab.run("sync", check=1)
    assert "404" in p.stderr
    assert lab.bucket.keys() == [] and lab.bucket.pending_uploads() == []


def test_no_manifest(tmp_path, bucket):
    p = run(labctl("images", "sync"), env=bucket.env, check=2, cwd=tmp_path)
    assert "images/images.yaml" in p.stderr and "--manifest" in p.stderr


def test_untrusted_certificate(lab):
    lab.source("img", image_bytes(1000, 18))
    lab.write()
    p = run(labctl("images", "sync"), env=lab.bucket.env, check=1, cwd=lab.repo)
    assert "certificate" in p.stderr.lower()
    assert lab.bucket.keys() == []


def sync_within_128mib(lab, im, size):
    """Sync the one image im: it is stored whole, and labctl's peak RSS stays
    under 128 MiB."""
    lab.images = [im]
    lab.write()
    p, rss = peak_rss_kib([binary("labctl"), "images", "sync", "--ca-bundle", lab.https.ca],
                          env=lab.bucket.env, cwd=lab.repo)
    assert p.returncode == 0, p.stderr
    assert "1 uploaded" in p.stdout
    assert rss < 128 * 1024, f"labctl peak RSS {rss} KiB"
    rec = json.loads(lab.bucket.get(f"metadata/{im['destination']}.json"))
    assert rec["checksum"] == im["expected"] and rec["size"] == size
    assert lab.bucket.pending_uploads() == []


@pytest.mark.slow
def test_sync_xz_blocks_bounded_memory(lab):
    """384 MiB as xz -T writes it (24 MiB blocks, 8 MiB dictionaries) on the
    default two decoder threads: 25 MiB of compressed input cycles through the
    12 MiB ring, every part buffer, dictionary and stage is used, and the job
    stays under 128 MiB."""
    raw = lab.tmp / "blocks.raw"
    h = hashlib.sha256()
    with open(raw, "wb") as f:
        for i in range(384):
            chunk = hashlib.shake_256(b"%d" % i).digest(MIB) if i % 16 == 5 else bytes(MIB)
            f.write(chunk)
            h.update(chunk)
    fname = f"{lab.tag}-blocks.raw.xz"
    with open(lab.https.root / fname, "wb") as out:
        subprocess.run(["xz", "-T2", "--block-size=24MiB", "--lzma2=preset=1,dict=8MiB", "-c",
                        str(raw)], stdout=out, check=True)
    blob = (lab.https.root / fname).read_bytes()
    assert len(blob) > 20 * MIB
    sync_within_128mib(lab, {"name": "blocks", "url": lab.https.url(fname),
                             "checksum": sha(blob), "destination": f"{lab.tag}/blocks.raw",
                             "decompress": "xz", "expected": "sha256:" + h.hexdigest()},
                       384 * MIB)


@pytest.mark.slow
def test_sync_1gib_bounded_memory(lab):
    """1 GiB served zstd-compressed: one streaming pass, peak RSS < 128 MiB."""
    size = 1 << 30
    raw = lab.tmp / "big.raw"
    h = hashlib.sha256()
    with open(raw, "wb") as f:
        for i in range(size // MIB):
            chunk = bytes(MIB) if i % 3 == 0 else hashlib.shake_256(b"%d" % i).digest(MIB)
            f.write(chunk)
            h.update(chunk)
    fname = f"{lab.tag}-big.raw.zst"
    subprocess.run(["zstd", "-q", "-1", "-T0", "-f", "-o", lab.https.root / fname, raw],
                   check=True)
    bh = hashlib.sha256()
    with open(lab.https.root / fname, "rb") as f:
        for chunk in iter(lambda: f.read(8 * MIB), b""):
            bh.update(chunk)
    blob_sha = bh.hexdigest()
    sync_within_128mib(lab, {"name": "big", "url": lab.https.url(fname),
                             "checksum": "sha256:" + blob_sha, "destination": f"{lab.tag}/big.raw",
                             "decompress": "zstd", "expected": "sha256:" + h.hexdigest()}, size)
