"""Image history (issue 13), the rest of it: origin, sha256 records for sha512
manifests, retention and the prune that applies it, the record index by
default, and interruption of sync / upload by SIGINT / SIGTERM."""
import hashlib
import json
import os
import signal
import subprocess
import time

import pytest

from conftest import RECORD_INDEX, binary, run
from test_imgfs import MiB, imgfs, pattern, sha256, upload, wait_for  # noqa: F401
from test_labctl_sync import Lab as SyncLab
from test_labctl_sync import q

assert imgfs  # the fixture, for pytest


def labctl(*args):
    return [binary("labctl"), *args]


class Lab(SyncLab):
    """test_labctl_sync's lab, with sha512 validation, retention and
    spec.uploads in the manifest."""

    retention = None  # {"keepVersions": 1, "keepDays": 0}
    uploads = ()      # [{"prefix": ..., "keep": ..., "keepDays": ...}]

    def write(self, images=None):
        images = self.images if images is None else images
        lines = ["apiVersion: images.lab.gilman.io/v1alpha1", "kind: ImageManifest",
                 "metadata:", "  name: test-lab", "spec:"]
        if self.retention:
            lines.append("  retention:")
            lines += [f"    {k}: {v}" for k, v in self.retention.items()]
        if self.uploads:
            lines.append("  uploads:")
            for u in self.uploads:
                lines.append(f"    - prefix: {q(u['prefix'])}")
                lines += [f"      {k}: {v}" for k, v in u.items() if k != "prefix"]
        lines.append("  images:" if images else "  images: []")
        for im in images:
            lines += [f"    - name: {im['name']}", "      source:",
                      f"        url: {q(im['url'])}", f"        checksum: {q(im['checksum'])}"]
            lines.append(f"      destination: {q(im['destination'])}")
            if im.get("expected"):
                lines += ["      validation:", f"        expected: {q(im['expected'])}"]
            if im.get("retention"):
                lines.append("      retention:")
                lines += [f"        {k}: {v}" for k, v in im["retention"].items()]
        self.manifest.write_text("\n".join(lines) + "\n")

    def source512(self, name, data):
        e = self.source(name, data)
        e["checksum"] = "sha512:" + hashlib.sha512(data).hexdigest()
        return e

    def replace(self, entry, data):
        """Serve new bytes for an entry of the manifest."""
        (self.https.root / entry["fname"]).write_bytes(data)
        alg = entry["checksum"].split(":")[0]
        entry["checksum"] = f"{alg}:" + hashlib.new(alg, data).hexdigest()
        self.data[entry["name"]] = data
        self.write()


@pytest.fixture
def lab(tmp_path, bucket, https, request):
    return Lab(tmp_path, bucket, https, request.node.name.replace("[", "-").strip("]"))


def list_json(bucket, *args):
    p = run(labctl("images", "list", "--json", *args), env=bucket.env, check=0)
    return json.loads(p.stdout)


def prune(lab, *args, check=0):
    return lab.run("prune", *args, check=check)


def listing(bucket):
    """Every key with its ETag: what a dry run must leave as it is."""
    out = {}
    for page in bucket.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket.name):
        out.update({o["Key"]: o["ETag"] for o in page.get("Contents", [])})
    return out


# ------------------------------------------------------------------ origin

def test_origin_of_sync_upload_and_legacy_records(lab, tmp_path):
    a = lab.source("a", pattern(MiB + 3, 1))
    lab.write()
    lab.run("sync")
    upload(lab.bucket, tmp_path, "up/b.raw", pattern(MiB, 2))
    assert json.loads(lab.bucket.get(f"metadata/{a['destination']}.json"))["origin"] == \
        "manifest"
    rec = json.loads(lab.bucket.get("metadata/up/b.raw.json"))
    assert rec["origin"] == "upload" and "source" not in rec
    # records of older labctl: no origin; sync wrote source.url, upload none
    for dest, url in (("legacy/s.raw", "https://example.org/s.raw"),
                      ("legacy/u.raw", None), ("legacy/f.raw", "file:///tmp/f.raw")):
        upload(lab.bucket, tmp_path, dest, pattern(MiB, len(dest)))
        r = json.loads(lab.bucket.get(f"metadata/{dest}.json"))
        del r["origin"]
        if url:
            r["source"] = {"url": url}
        lab.bucket.put(f"metadata/{dest}.json", json.dumps(r).encode())
    got = {i["destination"]: i["origin"] for i in list_json(lab.bucket)}
    assert got == {a["destination"]: "manifest", "up/b.raw": "upload",
                   "legacy/s.raw": "manifest", "legacy/u.raw": "upload",
                   "legacy/f.raw": "upload"}


def test_record_with_unknown_origin_is_invalid(bucket, tmp_path):
    upload(bucket, tmp_path, "x.raw", pattern(MiB, 3))
    r = json.loads(bucket.get("metadata/x.raw.json"))
    r["origin"] = "elsewhere"
    bucket.put("metadata/x.raw.json", json.dumps(r).encode())
    [item] = list_json(bucket)
    assert item["complete"] is False
    assert 'field "origin": expected "manifest" or "upload"' in item["problem"]


# --------------------------------------------------------------- checksums

def test_sha512_manifest_gets_sha256_record(lab, imgfs):  # noqa: F811
    data = pattern(3 * MiB + 11, 5)
    e = lab.source512("deb", data)
    lab.write()
    p = lab.run("sync", "--json")
    [item] = json.loads(p.stdout)["images"]
    assert item["checksum"] == "sha256:" + sha256(data)
    assert item["manifestChecksum"] == e["checksum"]
    rec = json.loads(lab.bucket.get(f"metadata/{e['destination']}.json"))
    assert rec["checksum"] == "sha256:" + sha256(data)
    assert rec["manifestChecksum"] == e["checksum"]
    # idempotent: the manifest's sha512 is what is compared
    p = lab.run("sync")
    assert "0 uploaded, 1 skipped" in p.stdout, p.stdout
    # a record of older labctl (checksum sha512, no manifestChecksum) too
    legacy = dict(rec, checksum=e["checksum"])
    del legacy["manifestChecksum"]
    lab.bucket.put(f"metadata/{e['destination']}.json", json.dumps(legacy).encode())
    p = lab.run("sync")
    assert "0 uploaded, 1 skipped" in p.stdout, p.stdout
    lab.bucket.put(f"metadata/{e['destination']}.json", json.dumps(rec).encode())
    # the image has a by-sha256 name
    m = imgfs()
    assert (m.path / ".imgstore/by-sha256" / sha256(data)).read_bytes() == data
    assert os.getxattr(m.path / e["destination"], "user.imgstore.checksum").decode() == \
        "sha256:" + sha256(data)


def test_sha512_mismatch_stores_nothing(lab):
    e = lab.source512("bad", pattern(MiB, 6))
    e["checksum"] = "sha512:" + "ab" * 64
    lab.write()
    p = lab.run("sync", check=1)
    assert "checksum" in p.stdout + p.stderr
    assert lab.bucket.keys() == []
    assert lab.bucket.pending_uploads() == []


def test_upload_with_sha512_checksum(bucket, tmp_path):
    data = pattern(MiB, 7)
    src = tmp_path / "s.raw"
    src.write_bytes(data)
    want = "sha512:" + hashlib.sha512(data).hexdigest()
    run(labctl("images", "upload", "--source", src, "--destination", "s.raw", "--checksum",
               want), env=bucket.env, check=0)
    rec = json.loads(bucket.get("metadata/s.raw.json"))
    assert rec["checksum"] == "sha256:" + sha256(data)
    assert rec["manifestChecksum"] == want
    p = run(labctl("images", "upload", "--source", src, "--destination", "t.raw",
                   "--checksum", "sha512:" + "00" * 64), env=bucket.env, check=1)
    assert "checksum mismatch" in p.stderr
    assert "metadata/t.raw.json" not in bucket.keys()


def test_versions_destination_refused(lab, tmp_path):
    e = lab.source("v", pattern(MiB, 8))
    e["destination"] = "versions/v.raw"
    lab.write()
    p = lab.run("validate", "--offline", check=2)
    assert "is inside versions/" in p.stderr
    src = tmp_path / "x"
    src.write_bytes(b"x")
    p = run(labctl("images", "upload", "--source", src, "--destination", "versions/x"),
            env=lab.bucket.env, check=2)
    assert "is inside versions/" in p.stderr


def test_retention_and_uploads_validated(lab):
    lab.source("v", pattern(MiB, 9))
    lab.retention = {"keepVersions": "-1", "keepDays": "x"}
    lab.uploads = [{"prefix": "vyos/"}, {"prefix": "/abs", "keep": 1}]
    lab.images[0]["retention"] = {"keepVersion": 2}
    lab.write()
    p = lab.run("validate", "--offline", check=2)
    text = lab.manifest.read_text().splitlines()
    lines = p.stderr.splitlines()

    def at(needle, msg):
        n = next(i for i, t in enumerate(text) if needle in t) + 1
        assert any(f":{n}:" in ln and msg in ln for ln in lines), (needle, p.stderr)
    at("keepVersions: -1", 'spec.retention.keepVersions is "-1"; write a whole number')
    at("keepDays: x", "spec.retention.keepDays")
    at("prefix: 'vyos/'", "spec.uploads[0] says neither keep: nor keepDays:")
    at("prefix: '/abs'", "must be the start of a destination")
    at("keepVersion: 2", 'unknown key "keepVersion" in retention; did you mean "keepVersions"')


# ------------------------------------------------------------------- prune

def test_keep_versions_1_keeps_exactly_one(lab, tmp_path):
    e = lab.source("v", pattern(MiB, 10))
    lab.write()
    lab.run("sync")
    olds = []
    for seed in (11, 12, 13):
        olds.append(lab.data["v"])
        time.sleep(1.1)  # replacedAt has whole seconds
        lab.replace(e, pattern(MiB + seed, seed))
        lab.run("sync")
    assert sorted(lab.bucket.keys("versions/")) == sorted(f"versions/{sha256(d)}" for d in olds)
    p = prune(lab)
    assert "2 to delete" in p.stdout, p.stdout
    # the newest previous version stays, with its record
    assert lab.bucket.keys("versions/") == [f"versions/{sha256(olds[-1])}"]
    assert lab.bucket.keys("metadata/versions/") == \
        [f"metadata/versions/{sha256(olds[-1])}.json"]
    assert lab.bucket.get(f"images/{e['destination']}") == lab.data["v"]
    # a per-image override keeps none
    e["retention"] = {"keepVersions": 0}
    lab.write()
    prune(lab)
    assert lab.bucket.keys("versions/") == [] and lab.bucket.keys("metadata/versions/") == []
    # the index follows
    import gzip
    doc = json.loads(gzip.decompress(lab.bucket.get(RECORD_INDEX)))
    assert sorted(r["key"] for r in doc["records"]) == [f"metadata/{e['destination']}.json"]


def test_keep_days_keeps_younger_versions(lab):
    e = lab.source("v", pattern(MiB, 20))
    lab.retention = {"keepVersions": 0, "keepDays": 1}
    lab.write()
    lab.run("sync")
    old = lab.data["v"]
    lab.replace(e, pattern(MiB, 21))
    lab.run("sync")
    prune(lab)
    assert lab.bucket.keys("versions/") == [f"versions/{sha256(old)}"]
    # replaced two days ago: it goes
    key = f"metadata/versions/{sha256(old)}.json"
    rec = json.loads(lab.bucket.get(key))
    rec["replacedAt"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 2 * 86400))
    lab.bucket.put(key, json.dumps(rec).encode())
    p = prune(lab, "--json")
    [v] = [i for i in json.loads(p.stdout)["images"] if i["kind"] == "version"]
    assert v["action"] == "deleted" and v["destination"] == e["destination"]
    assert lab.bucket.keys("versions/") == []


def test_dry_run_changes_nothing(lab, tmp_path):
    keep = lab.source("keep", pattern(MiB, 30))
    gone = lab.source("gone", pattern(MiB, 31))
    lab.uploads = [{"prefix": "vyos/", "keep": 0}]
    lab.write()
    lab.run("sync")
    lab.replace(keep, pattern(MiB, 32))
    lab.run("sync")
    time.sleep(1.1)
    lab.replace(keep, pattern(MiB, 33))
    lab.run("sync")
    upload(lab.bucket, tmp_path, "vyos/a.raw", pattern(MiB, 34))
    lab.bucket.put("images/foreign.bin", b"foreign")
    lab.images = [keep]
    lab.write()
    before = listing(lab.bucket)
    p = prune(lab, "--dry-run")
    assert p.stdout.startswith("dry run: 2 to delete, 1 to retire"), p.stdout
    assert f"would retire images/{gone['destination']}" in p.stdout
    assert "would delete images/vyos/a.raw" in p.stdout
    assert "leave alone images/foreign.bin: no checksum record" in p.stdout
    assert listing(lab.bucket) == before
    p = prune(lab, "--dry-run", "--json")
    doc = json.loads(p.stdout)
    assert doc["dryRun"] is True
    acts = {i["key"]: i["action"] for i in doc["images"]}
    assert acts[f"images/{gone['destination']}"] == "retire"
    assert acts["images/vyos/a.raw"] == "delete"
    assert acts["images/foreign.bin"] == "leave alone"
    assert acts[f"images/{keep['destination']}"] == "keep"
    assert all(set(i) >= {"name", "destination", "action", "error"} for i in doc["images"])
    assert listing(lab.bucket) == before
    assert not [r for r in lab.https.requests if r[0] != "GET"]


def test_uploads_rule_foreign_and_uncovered(lab, tmp_path):
    lab.source("m", pattern(MiB, 40))
    lab.uploads = [{"prefix": "vyos/", "keep": 2}]
    lab.write()
    lab.run("sync")
    vy = []
    for i in range(3):
        if i:
            time.sleep(1.1)  # uploadedAt has whole seconds
        upload(lab.bucket, tmp_path, f"vyos/b{i}.raw", pattern(MiB, 41 + i))
        vy.append(f"vyos/b{i}.raw")
    upload(lab.bucket, tmp_path, "other/u.raw", pattern(MiB, 45))
    lab.bucket.put("images/foreign.bin", b"no record")
    lab.bucket.put("versions/" + "0" * 64, b"no record either")
    lab.bucket.put("elsewhere/x", b"outside")
    p = prune(lab, "--json")
    doc = json.loads(p.stdout)
    acts = {i["key"]: (i["action"], i["reason"]) for i in doc["images"]}
    assert acts["images/vyos/b0.raw"][0] == "deleted"
    assert acts["images/vyos/b1.raw"][0] == "kept"
    assert acts["images/other/u.raw"] == ("left alone",
                                          "an upload image that no spec.uploads rule covers")
    assert acts["images/foreign.bin"][0] == "left alone"
    assert acts["versions/" + "0" * 64][0] == "left alone"
    assert all(i["error"] is None for i in doc["images"])
    keys = lab.bucket.keys()
    assert "images/vyos/b0.raw" not in keys and "metadata/vyos/b0.raw.json" not in keys
    for k in ("images/vyos/b1.raw", "images/vyos/b2.raw", "images/other/u.raw",
              "metadata/other/u.raw.json", "images/foreign.bin", "versions/" + "0" * 64,
              "elsewhere/x"):
        assert k in keys, k
    # an upload that no rule covers is never deleted, however old
    p = prune(lab)
    assert "0 to delete" in p.stdout, p.stdout


def test_unnamed_manifest_image_retired_then_let_go(lab, imgfs):  # noqa: F811
    a = lab.source("a", pattern(2 * MiB, 50))
    b = lab.source("b", pattern(2 * MiB, 51))
    lab.write()
    lab.run("sync")
    m = imgfs(extra=["--refresh", "0"])
    by = m.path / ".imgstore/by-sha256"
    hb = sha256(lab.data["b"])
    assert (by / hb).read_bytes() == lab.data["b"]
    lab.images = [a]
    lab.write()
    prune(lab)
    keys = lab.bucket.keys()
    assert f"images/{b['destination']}" not in keys
    assert f"metadata/{b['destination']}.json" not in keys
    assert f"versions/{hb}" in keys and f"metadata/versions/{hb}.json" in keys
    vrec = json.loads(lab.bucket.get(f"metadata/versions/{hb}.json"))
    assert vrec["destination"] == b["destination"] and vrec["origin"] == "manifest"
    m.sighup()
    wait_for(lambda: not (m.path / b["destination"]).exists(), what="b gone from the root")
    assert (by / hb).read_bytes() == lab.data["b"]
    # a second prune keeps it (the default keeps one previous version)
    prune(lab)
    assert f"versions/{hb}" in lab.bucket.keys()
    lab.retention = {"keepVersions": 0}
    lab.write()
    prune(lab)
    assert lab.bucket.keys("versions/") == []
    assert lab.bucket.keys() == sorted([f"images/{a['destination']}",
                                        f"metadata/{a['destination']}.json"])


def test_dangling_records_are_deleted(lab, tmp_path):
    lab.source("a", pattern(MiB, 60))
    lab.write()
    lab.run("sync")
    upload(lab.bucket, tmp_path, "x.raw", pattern(MiB, 61))
    # what an interrupted prune leaves: records whose bytes are gone
    lab.bucket.s3.delete_object(Bucket=lab.bucket.name, Key="images/x.raw")
    h = "1" * 64
    lab.bucket.put(f"metadata/versions/{h}.json", b"{}")
    prune(lab)
    keys = lab.bucket.keys()
    assert "metadata/x.raw.json" not in keys
    assert f"metadata/versions/{h}.json" not in keys


# ------------------------------------------------------------ interruption

def slow_parts(bucket, delay=1.5):
    """A proxy in front of the server that holds every part upload a while."""
    from faultproxy import FaultProxy, Rule, match

    def slow(proxy, handler, x):
        time.sleep(delay)
        return handler.forward()
    slow.name = "slow part"
    proxy = FaultProxy(bucket.server.port).start()
    proxy.add(Rule(match(method="PUT", query="partNumber"), slow, times=10 ** 6))
    return proxy


def interrupt_when_multipart(bucket, proc, sig):
    deadline = time.monotonic() + 120
    while not bucket.pending_uploads():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no multipart upload started"
        time.sleep(0.05)
    time.sleep(0.3)  # parts in flight
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


@pytest.mark.parametrize("sig,status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["SIGINT", "SIGTERM"])
def test_interrupted_upload_leaves_previous_intact(bucket, tmp_path, sig, status):
    old = pattern(9 * MiB, 70)
    upload(bucket, tmp_path, "big.raw", old)
    before = listing(bucket)
    rec = bucket.get("metadata/big.raw.json")
    src = tmp_path / "new.raw"
    src.write_bytes(pattern(80 * MiB, 71))
    proxy = slow_parts(bucket)
    try:
        env = dict(bucket.env, E2_ENDPOINT=proxy.endpoint)
        proc = subprocess.Popen(labctl("images", "upload", "--source", src, "--destination",
                                       "big.raw"), env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        t0 = time.monotonic()
        rc, out, err = interrupt_when_multipart(bucket, proc, sig)
    finally:
        proxy.stop()
    assert rc == status, err
    assert time.monotonic() - t0 < 60
    assert "interrupted" in err and "aborted" in err, err
    assert bucket.pending_uploads() == []
    assert any(x.method == "DELETE" and "uploadId" in x.query for x in proxy.log)
    assert listing(bucket) == before
    assert bucket.get("images/big.raw") == old
    assert bucket.get("metadata/big.raw.json") == rec


def test_interrupted_sync_leaves_previous_intact(lab):
    e = lab.source("s", pattern(6 * MiB, 72))
    lab.write()
    lab.run("sync")
    before = listing(lab.bucket)
    lab.replace(e, pattern(96 * MiB, 73))
    proxy = slow_parts(lab.bucket)
    try:
        env = dict(lab.bucket.env, E2_ENDPOINT=proxy.endpoint)
        proc = subprocess.Popen(labctl("images", "sync", "--ca-bundle", lab.https.ca),
                                env=env, cwd=lab.repo, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        rc, out, err = interrupt_when_multipart(lab.bucket, proc, signal.SIGTERM)
    finally:
        proxy.stop()
    assert rc == 143, err
    assert "interrupted by SIGTERM" in err, err
    assert lab.bucket.pending_uploads() == []
    assert listing(lab.bucket) == before
    assert lab.bucket.get(f"images/{e['destination']}") == pattern(6 * MiB, 72)


# ------------------------------------------------- overlays across a prune

def test_overlay_survives_replacement_and_default_prune(bucket, tmp_path):
    """An overlay made before its base was replaced still compares equal to
    the old base after a prune with the default retention; retention lets
    the old base go only once a newer previous version exists."""
    import vmkit
    from test_overlay import BASE, Lab as OverlayLab
    lab = OverlayLab(bucket, tmp_path)
    try:
        lab.overlay("--only", "alpine-wireguard")
        out = lab.outdir / "alpine-wireguard.qcow2"
        shas = [lab.base_sha]
        for n in (2, 3):
            v = vmkit.base_image(tmp_path / f"base-v{n}.qcow2", size=8 * MiB,
                                 region_off=1 * MiB, region_len=4 * MiB, marker_off=6 * MiB,
                                 seed=b"v%d" % n)
            shas.append(vmkit.sha256_file(v.path))
            if n == 3:
                time.sleep(1.1)  # replacedAt has whole seconds
            run(labctl("images", "upload", "--source", v.path, "--destination", BASE),
                env=bucket.env, check=0)
            lab.mount.refresh(want=f".imgstore/by-sha256/{shas[-1]}")
            if n == 2:
                run(labctl("images", "prune", "--manifest", lab.manifest), env=bucket.env,
                    check=0)
                lab.mount.refresh()
                assert os.path.exists(lab.backing(lab.base_sha))
                run(["qemu-img", "compare", "-q", out, lab.base.path], check=0)
        # two previous versions, keepVersions 1: the oldest (the overlay's) goes
        p = run(labctl("images", "prune", "--manifest", lab.manifest, "--json"),
                env=bucket.env, check=0)
        acts = {i["key"]: i["action"] for i in json.loads(p.stdout)["images"]}
        assert acts[f"versions/{shas[0]}"] == "deleted"
        assert acts[f"versions/{shas[1]}"] == "kept"
        assert bucket.keys("versions/") == [f"versions/{shas[1]}"]
    finally:
        lab.close()
