"""The record index (index/records.json.gz): `labctl images index` creates
it, upload/sync/prune keep an existing one current, imgfs and
`labctl images list` read it instead of one GET per record.

It is only a cache: whatever the index holds (nothing, garbage, stale or
forged entries), the mount and the listing must show exactly what they show
without it.  Readers consult it only when more than 8 records are to be
fetched, so the buckets here hold a dozen images.  The debug log says how
many records came from the index, which shows it was really used.
"""
import gzip
import hashlib
import json
import os
import re
import uuid

import pytest

from conftest import RECORD_INDEX, binary, run
from test_imgfs import Mount, put_raw, record_for

N_GOOD = 10


def labctl(*args):
    return [binary("labctl"), *args]


def index_of(bucket):
    doc = json.loads(gzip.decompress(bucket.get(RECORD_INDEX)))
    assert doc["version"] == 1
    return {e["key"]: e for e in doc["records"]}


def put_index(bucket, entries):
    doc = {"version": 1, "records": entries}
    bucket.put(RECORD_INDEX, gzip.compress(json.dumps(doc).encode()))


def fill(bucket):
    """N_GOOD images with valid records and the cases that must stay hidden."""
    for i in range(N_GOOD):
        put_raw(bucket, f"d/img{i:02d}.raw", b"image %d\n" % i * (i + 1))
    put_raw(bucket, "norecord.raw", b"no record", record=False)
    etag = bucket.put("images/badsize.raw", b"x" * 1000)["ETag"]
    bucket.put("metadata/badsize.raw.json",
               json.dumps(record_for(b"x" * 1001, etag, "badsize")).encode())
    bucket.put("images/badjson.raw", b"abc")
    bucket.put("metadata/badjson.raw.json", b"{not json")


def debug_env(bucket):
    env = bucket.env
    env["IMGSTORE_LOG"] = "debug"
    return env


def listing(bucket):
    """(`images list --json` as a dict by destination, how many records came
    from the index)."""
    p = run(labctl("images", "list", "--json"), env=debug_env(bucket), check=0)
    m = re.search(r"(\d+) checksum record\(s\): (\d+) from " + re.escape(RECORD_INDEX),
                  p.stderr)
    return {i["destination"]: i for i in json.loads(p.stdout)}, int(m.group(2)) if m else 0


def mounted(bucket, tmp_path):
    """What a fresh mount (fresh cache: no listing cached) shows: every file
    with its size and checksum xattr; and how many records came from the
    index."""
    tag = uuid.uuid4().hex[:8]
    m = Mount(debug_env(bucket), tmp_path / f"mnt-{tag}", tmp_path / f"cache-{tag}")
    m.start()
    try:
        seen = {}
        for d, dirs, files in os.walk(m.path):
            if d == str(m.path):
                dirs.remove(".imgstore")
            for f in files:
                p = os.path.join(d, f)
                seen[os.path.relpath(p, m.path)] = (
                    os.stat(p).st_size, os.getxattr(p, "user.imgstore.checksum").decode())
    finally:
        m.stop()
    log = m.logtext()
    assert "Sanitizer" not in log and "runtime error" not in log, log
    hit = re.search(r"record index: (\d+) of (\d+) record\(s\) taken", log)
    return seen, int(hit.group(1)) if hit else 0


def expected_mount():
    return {f"d/img{i:02d}.raw" for i in range(N_GOOD)}


def test_index_by_default_unless_off(bucket, tmp_path):
    """upload (like sync and prune) writes the index by default;
    IMGSTORE_RECORD_INDEX=off skips it."""
    src = tmp_path / "a.raw"
    src.write_bytes(b"a" * 5000)
    env = dict(bucket.env, IMGSTORE_RECORD_INDEX="off")
    run(labctl("images", "upload", "--source", src, "--destination", "a.raw"),
        env=env, check=0)
    assert bucket.keys(index=True) == ["images/a.raw", "metadata/a.raw.json"]
    run(labctl("images", "upload", "--source", src, "--destination", "b.raw"),
        env=bucket.env, check=0)
    assert bucket.keys(index=True) == ["images/a.raw", "images/b.raw", RECORD_INDEX,
                                       "metadata/a.raw.json", "metadata/b.raw.json"]
    doc = json.loads(gzip.decompress(bucket.get(RECORD_INDEX)))
    assert sorted(r["key"] for r in doc["records"]) == ["metadata/a.raw.json",
                                                        "metadata/b.raw.json"]


def test_index_command_then_upload_keeps_it_current(bucket, tmp_path):
    src = tmp_path / "a.raw"
    src.write_bytes(b"a" * 5000)
    run(labctl("images", "upload", "--source", src, "--destination", "a.raw"),
        env=dict(bucket.env, IMGSTORE_RECORD_INDEX="off"), check=0)
    p = run(labctl("images", "index"), env=bucket.env, check=0)
    assert "written" in p.stdout, p.stdout
    ix = index_of(bucket)
    assert list(ix) == ["metadata/a.raw.json"]
    e = ix["metadata/a.raw.json"]
    assert e["json"].encode() == bucket.get("metadata/a.raw.json")
    assert e["etag"] == bucket.s3.head_object(Bucket=bucket.name,
                                              Key="metadata/a.raw.json")["ETag"]

    # records written behind labctl's back: the index is stale until rebuilt
    fill(bucket)
    assert len(index_of(bucket)) == 1
    p = run(labctl("images", "index"), env=bucket.env, check=0)
    assert "written" in p.stdout and "1 reused" in p.stdout, p.stdout
    ix = index_of(bucket)
    assert sorted(ix) == sorted(k for k in bucket.keys("metadata/"))
    # an upload into a bucket that has an index keeps it current
    src.write_bytes(b"b" * 7000)
    run(labctl("images", "upload", "--source", src, "--destination", "b.raw"),
        env=bucket.env, check=0)
    ix = index_of(bucket)
    assert ix["metadata/b.raw.json"]["json"].encode() == bucket.get("metadata/b.raw.json")
    for k, e in ix.items():
        assert e["json"].encode() == bucket.get(k)
    p = run(labctl("images", "index"), env=bucket.env, check=0)
    assert "already up to date" in p.stdout, p.stdout
    run(labctl("images", "index", "--help"), env=bucket.env, check=0)
    run(labctl("images", "index", "extra"), env=bucket.env, check=2)


def test_empty_bucket_gets_no_index(bucket):
    p = run(labctl("images", "index"), env=bucket.env, check=0)
    assert "no index written" in p.stdout
    assert bucket.keys() == []


def test_upload_replaces_a_garbage_index(bucket, tmp_path):
    # (an object at the index key, even garbage, means the bucket has one)
    # an unreadable current index is neither a failure nor kept
    bucket.put(RECORD_INDEX, os.urandom(4096))
    src = tmp_path / "a.raw"
    src.write_bytes(b"a" * 5000)
    p = run(labctl("images", "upload", "--source", src, "--destination", "a.raw"),
            env=bucket.env, check=0)
    assert "record index" in p.stderr
    assert list(index_of(bucket)) == ["metadata/a.raw.json"]


def test_same_results_with_and_without_index(bucket, tmp_path):
    fill(bucket)
    without, used = listing(bucket)
    assert used == 0
    assert sorted(d for d, i in without.items() if i["complete"]) == sorted(expected_mount())
    mnt_without, used = mounted(bucket, tmp_path)
    assert used == 0
    assert set(mnt_without) == expected_mount()

    run(labctl("images", "index"), env=bucket.env, check=0)
    with_ix, used = listing(bucket)
    assert used == N_GOOD + 2  # every record in the listing
    assert with_ix == without
    mnt_with, used = mounted(bucket, tmp_path)
    assert used == N_GOOD + 2
    assert mnt_with == mnt_without


def test_stale_entry_is_not_used(bucket, tmp_path):
    fill(bucket)
    run(labctl("images", "index"), env=bucket.env, check=0)
    # rewritten after indexing: img00 gets another name, img01 a record that
    # no longer describes its object (it must disappear)
    rec = json.loads(bucket.get("metadata/d/img00.raw.json"))
    rec["name"] = "renamed"
    bucket.put("metadata/d/img00.raw.json", json.dumps(rec).encode())
    rec = json.loads(bucket.get("metadata/d/img01.raw.json"))
    rec["size"] += 1
    bucket.put("metadata/d/img01.raw.json", json.dumps(rec).encode())

    items, used = listing(bucket)
    assert used == N_GOOD  # all but the two rewritten
    assert items["d/img00.raw"]["name"] == "renamed" and items["d/img00.raw"]["complete"]
    assert not items["d/img01.raw"]["complete"]
    seen, used = mounted(bucket, tmp_path)
    assert used == N_GOOD
    assert set(seen) == expected_mount() - {"d/img01.raw"}


def test_garbage_index_changes_nothing(bucket, tmp_path):
    fill(bucket)
    without, _ = listing(bucket)
    mnt_without, _ = mounted(bucket, tmp_path)
    for junk in (os.urandom(10000), gzip.compress(b"not json"),
                 gzip.compress(b'{"version": 99, "records": []}'),
                 gzip.compress(b'{"version": 1, "records": [1, {"key": 2}, null]}')):
        bucket.put(RECORD_INDEX, junk)
        p = run(labctl("images", "list", "--json"), env=bucket.env, check=0)
        assert {i["destination"]: i for i in json.loads(p.stdout)} == without
        assert listing(bucket)[1] == 0
    assert mounted(bucket, tmp_path) == (mnt_without, 0)
    # and the next rebuild replaces it
    p = run(labctl("images", "index"), env=bucket.env, check=0)
    assert "written" in p.stdout
    assert len(index_of(bucket)) == N_GOOD + 2


def test_entry_of_a_deleted_record_does_not_make_an_image_appear(bucket, tmp_path):
    fill(bucket)
    run(labctl("images", "index"), env=bucket.env, check=0)
    bucket.s3.delete_object(Bucket=bucket.name, Key="metadata/d/img03.raw.json")
    # and an entry for an image that never had a record
    ix = list(index_of(bucket).values())
    etag = bucket.s3.head_object(Bucket=bucket.name, Key="images/norecord.raw")["ETag"]
    ix.append({"key": "metadata/norecord.raw.json", "etag": '"0123456789abcdef0123456789abcdef"',
               "json": json.dumps(record_for(b"no record", etag, "norecord"))})
    put_index(bucket, ix)

    items, used = listing(bucket)
    assert used == N_GOOD - 1 + 2
    assert not items["d/img03.raw"]["complete"]
    assert "no checksum record" in items["d/img03.raw"]["problem"]
    assert not items["norecord.raw"]["complete"]
    seen, _ = mounted(bucket, tmp_path)
    assert set(seen) == expected_mount() - {"d/img03.raw"}


@pytest.mark.parametrize("same_etag", [False, True])
def test_forged_entry_cannot_validate_an_invalid_record(bucket, tmp_path, same_etag):
    """badsize.raw and badjson.raw have invalid records; an index entry holding
    a valid-looking record for them is not taken: not under another ETag
    (stale), and not under their current ETag either (the bytes do not hash
    to that MD5 ETag)."""
    fill(bucket)
    run(labctl("images", "index"), env=bucket.env, check=0)
    ix = index_of(bucket)
    for dest, data in (("badsize.raw", b"x" * 1000), ("badjson.raw", b"abc")):
        key = f"metadata/{dest}.json"
        img_etag = bucket.s3.head_object(Bucket=bucket.name, Key=f"images/{dest}")["ETag"]
        rec_etag = bucket.s3.head_object(Bucket=bucket.name, Key=key)["ETag"]
        ix[key] = {"key": key,
                   "etag": rec_etag if same_etag else '"ffffffffffffffffffffffffffffffff"',
                   "json": json.dumps(record_for(data, img_etag, dest))}
    put_index(bucket, list(ix.values()))

    items, used = listing(bucket)
    assert used == N_GOOD
    assert not items["badsize.raw"]["complete"] and not items["badjson.raw"]["complete"]
    seen, used = mounted(bucket, tmp_path)
    assert used == N_GOOD
    assert set(seen) == expected_mount()


def test_prune_keeps_the_index_current(bucket, tmp_path):
    fill(bucket)
    # an image of the manifest that it no longer names: prune retires it
    gone = b"gone\n" * 100
    etag = bucket.put("images/gone.raw", gone)["ETag"]
    bucket.put("metadata/gone.raw.json",
               json.dumps(dict(record_for(gone, etag, "gone"), origin="manifest")).encode())
    run(labctl("images", "index"), env=bucket.env, check=0)
    # prune with a manifest that keeps only the good images
    lines = ["apiVersion: images.lab.gilman.io/v1alpha1", "kind: ImageManifest",
             "metadata:", "  name: lab", "spec:", "  images:"]
    for i in range(N_GOOD):
        lines += [f"    - name: img{i}", "      source:",
                  f"        url: https://example.org/{i}.raw",
                  "        checksum: 'sha256:" + "0" * 64 + "'",
                  f"      destination: 'd/img{i:02d}.raw'"]
    m = tmp_path / "images" / "images.yaml"
    m.parent.mkdir()
    m.write_text("\n".join(lines) + "\n")
    before = bucket.get(RECORD_INDEX)
    run(labctl("images", "prune", "--manifest", m, "--dry-run"), env=bucket.env, check=0)
    assert bucket.get(RECORD_INDEX) == before
    run(labctl("images", "prune", "--manifest", m), env=bucket.env, check=0)
    ix = index_of(bucket)
    # incomplete images are left alone by prune (their records too)
    vkey = "metadata/versions/" + hashlib.sha256(gone).hexdigest() + ".json"
    assert sorted(ix) == bucket.keys("metadata/")
    assert "metadata/gone.raw.json" not in ix and vkey in ix
    assert {f"metadata/d/img{i:02d}.raw.json" for i in range(N_GOOD)} <= set(ix)
    items, used = listing(bucket)
    assert used == N_GOOD + 2  # and badsize, badjson
    assert sorted(d for d, i in items.items() if i["complete"]) == sorted(expected_mount())
