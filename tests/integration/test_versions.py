"""Image history (issue 13): before an image is replaced by different bytes,
labctl keeps the previous bytes and record as a version (server-side copy);
imgfs publishes every kept version under /.imgstore/by-sha256/."""
import errno
import json
import os

import pytest

import vmkit
from conftest import run
from test_imgfs import MiB, imgfs, labctl, pattern, sha256, upload, wait_for  # noqa: F401
from test_overlay import BASE, Lab

assert imgfs  # the fixture, for pytest


def version_keys(hexsum):
    return [f"metadata/versions/{hexsum}.json", f"versions/{hexsum}"]


def check_version(bucket, dest, data):
    """versions/<hex> holds data; its record is the old one plus destination
    and replacedAt, with the ETag of the copy."""
    h = sha256(data)
    assert bucket.get(f"versions/{h}") == data
    rec = json.loads(bucket.get(f"metadata/versions/{h}.json"))
    # the ETag a listing shows (what imgfs compares): for a copy of a
    # multipart object Swift's HEAD says "...-N", its listing the MD5
    listed = bucket.s3.list_objects_v2(Bucket=bucket.name, Prefix=f"versions/{h}")
    assert rec["checksum"] == "sha256:" + h
    assert rec["size"] == len(data)
    assert rec["destination"] == dest
    assert rec["replacedAt"].endswith("Z")
    assert rec["etag"] == listed["Contents"][0]["ETag"]
    return rec


@pytest.mark.parametrize("size", [3 * MiB, 9 * MiB], ids=["single-put", "multipart"])
def test_replace_keeps_previous_version(bucket, tmp_path, size):
    old, new = pattern(size, 1), pattern(size + 5, 2)
    upload(bucket, tmp_path, "a/v.raw", old)
    assert bucket.keys() == ["images/a/v.raw", "metadata/a/v.raw.json"]
    old_rec = json.loads(bucket.get("metadata/a/v.raw.json"))
    upload(bucket, tmp_path, "a/v.raw", new)
    assert bucket.keys() == sorted(["images/a/v.raw", "metadata/a/v.raw.json"] +
                                   version_keys(sha256(old)))
    assert bucket.get("images/a/v.raw") == new
    rec = check_version(bucket, "a/v.raw", old)
    # the old record otherwise, block map included
    for k in ("name", "uploadedAt", "blocks"):
        assert rec[k] == old_rec[k], k
    # the same bytes again: nothing to keep
    upload(bucket, tmp_path, "a/v.raw", new)
    assert len(bucket.keys()) == 4
    # back to the old bytes: the new ones become a version; the old one stays
    upload(bucket, tmp_path, "a/v.raw", old)
    assert bucket.keys() == sorted(["images/a/v.raw", "metadata/a/v.raw.json"] +
                                   version_keys(sha256(old)) + version_keys(sha256(new)))
    check_version(bucket, "a/v.raw", new)
    assert bucket.pending_uploads() == []


def test_no_version_without_valid_record(bucket, tmp_path):
    old, new = pattern(MiB, 3), pattern(MiB, 4)
    bucket.put("images/x.raw", old)  # a foreign object, no record
    upload(bucket, tmp_path, "x.raw", new)
    assert bucket.keys() == ["images/x.raw", "metadata/x.raw.json"]
    # a record that does not describe the object (another ETag) is no version
    rec = json.loads(bucket.get("metadata/x.raw.json"))
    bucket.put("images/x.raw", old)
    bucket.put("metadata/x.raw.json", json.dumps(rec).encode())
    upload(bucket, tmp_path, "x.raw", pattern(MiB, 5))
    assert bucket.keys() == ["images/x.raw", "metadata/x.raw.json"]


@pytest.mark.parametrize("size", [4 * MiB, 9 * MiB], ids=["single-put", "multipart"])
def test_replaced_image_readable_by_old_sha(bucket, tmp_path, imgfs, size):  # noqa: F811
    old, new = pattern(size, 11), pattern(size + MiB, 12)
    upload(bucket, tmp_path, "v.raw", old)
    m = imgfs(extra=["--refresh", "0"])
    by = m.path / ".imgstore/by-sha256"
    assert (by / sha256(old)).read_bytes() == old
    upload(bucket, tmp_path, "v.raw", new)
    m.sighup()
    wait_for(lambda: (by / sha256(new)).exists(), what="the new by-sha256 name")
    assert (m.path / "v.raw").read_bytes() == new
    assert (by / sha256(new)).read_bytes() == new
    assert (by / sha256(old)).read_bytes() == old
    assert os.getxattr(by / sha256(old), "user.imgstore.checksum").decode() == \
        "sha256:" + sha256(old)
    # versions are not images: the root lists only the current one
    assert sorted(p.name for p in m.path.iterdir()) == [".imgstore", "v.raw"]
    # a fresh mount (no state from before) shows it too
    m.stop()
    m2 = imgfs(name="mnt2", cache=tmp_path / "cache2")
    assert (m2.path / ".imgstore/by-sha256" / sha256(old)).read_bytes() == old


def test_version_record_claiming_another_name_is_not_published(bucket, tmp_path,
                                                                imgfs):  # noqa: F811
    old, new, other = pattern(2 * MiB, 21), pattern(2 * MiB, 22), pattern(2 * MiB, 23)
    upload(bucket, tmp_path, "v.raw", old)
    upload(bucket, tmp_path, "v.raw", new)
    # a version whose bytes are not those its name says: its record (made
    # for them) claims another checksum than the name
    h = sha256(old)
    upload(bucket, tmp_path, "other.raw", other)
    rec = json.loads(bucket.get("metadata/other.raw.json"))
    etag = bucket.put(f"versions/{h}", other)["ETag"]
    rec["etag"] = etag
    bucket.put(f"metadata/versions/{h}.json", json.dumps(rec).encode())
    m = imgfs()
    by = m.path / ".imgstore/by-sha256"
    assert not (by / h).exists()
    assert (by / sha256(other)).read_bytes() == other
    assert "not its name" in m.logtext()


def test_overlay_made_before_replacement_still_equals_base(bucket, tmp_path):
    lab = Lab(bucket, tmp_path)
    try:
        lab.overlay("--only", "alpine-wireguard")
        out = lab.outdir / "alpine-wireguard.qcow2"
        run(["qemu-img", "compare", "-q", out, lab.base.path], check=0)
        v2 = vmkit.base_image(tmp_path / "base-v2.qcow2", size=8 * MiB, region_off=1 * MiB,
                              region_len=4 * MiB, marker_off=6 * MiB, seed=b"v2")
        v2_sha = vmkit.sha256_file(v2.path)
        run(labctl("images", "upload", "--source", v2.path, "--destination", BASE),
            env=bucket.env, check=0)
        lab.mount.refresh(want=f".imgstore/by-sha256/{v2_sha}")
        assert os.path.exists(lab.backing(lab.base_sha))
        run(["qemu-img", "compare", "-q", out, lab.base.path], check=0)
        # and the new base differs from the old one, so the compare can fail
        p = run(["qemu-img", "compare", "-q", out, v2.path])
        assert p.returncode == 1
    finally:
        lab.close()


def test_record_index_holds_version_records(bucket, tmp_path):
    import gzip
    old, new = pattern(MiB, 31), pattern(MiB, 32)
    upload(bucket, tmp_path, "v.raw", old)
    upload(bucket, tmp_path, "v.raw", new)
    run(labctl("images", "index"), env=bucket.env, check=0)
    doc = json.loads(gzip.decompress(bucket.get("index/records.json.gz")))
    keys = {r["key"]: r for r in doc["records"]}
    vkey = f"metadata/versions/{sha256(old)}.json"
    assert sorted(keys) == sorted(["metadata/v.raw.json", vkey])
    assert json.loads(keys[vkey]["json"])["destination"] == "v.raw"


def test_list_versions(bucket, tmp_path):
    old, new = pattern(MiB, 51), pattern(MiB, 52)
    upload(bucket, tmp_path, "v.raw", old)
    upload(bucket, tmp_path, "v.raw", new)
    bucket.put("versions/" + "0" * 64, b"foreign")  # no record: not listed
    cur = json.loads(run(labctl("images", "list", "--json"), env=bucket.env, check=0).stdout)
    assert [(i["destination"], i["checksum"]) for i in cur] == \
        [("v.raw", "sha256:" + sha256(new))]
    assert "current" not in cur[0]
    allv = json.loads(run(labctl("images", "list", "--versions", "--json"), env=bucket.env,
                          check=0).stdout)
    assert [(i["destination"], i["checksum"], i["current"]) for i in allv] == \
        [("v.raw", "sha256:" + sha256(new), True),
         ("v.raw", "sha256:" + sha256(old), False)]
    assert allv[0]["replacedAt"] is None and allv[1]["replacedAt"].endswith("Z")
    assert allv[1]["size"] == len(old) and allv[1]["complete"] is True
    table = run(labctl("images", "list", "--versions"), env=bucket.env, check=0).stdout
    assert "previous version" in table


def test_prune_leaves_previous_versions_alone(bucket, tmp_path):
    from test_labctl_prune import manifest
    old, new = pattern(MiB, 61), pattern(MiB, 62)
    upload(bucket, tmp_path, "keep.raw", old)
    upload(bucket, tmp_path, "keep.raw", new)
    before = bucket.keys()
    assert before == sorted(["images/keep.raw", "metadata/keep.raw.json"] +
                            version_keys(sha256(old)))
    m = manifest(tmp_path, ["keep.raw"])
    run(labctl("images", "prune", "--manifest", m), env=bucket.env, check=0)
    assert bucket.keys() == before
    check_version(bucket, "keep.raw", old)


@pytest.mark.parametrize("opened", ["by-sha256", "destination"])
def test_open_file_follows_its_bytes_to_the_version(bucket, tmp_path, imgfs,  # noqa: F811
                                                    opened):
    """A file open before its image is replaced (a VM's base) reads on: the
    same bytes now live at versions/<hex>, so an uncached block comes from
    there, never EIO for good and never the new image's bytes."""
    old, new = pattern(16 * MiB, 41), pattern(16 * MiB, 42)
    upload(bucket, tmp_path, "v.raw", old)
    m = imgfs(extra=["--refresh", "0"])
    by = m.path / ".imgstore/by-sha256"
    path = by / sha256(old) if opened == "by-sha256" else m.path / "v.raw"
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        buf = os.pread(fd, 4096, 0)
        assert buf == old[:4096]
        upload(bucket, tmp_path, "v.raw", new)
        # no SIGHUP, and --refresh 0: blocks never read before meet other
        # bytes at images/v.raw (412); imgfs refreshes the listing itself
        # and reads them from versions/<old>.  Only a server listing that
        # lags behind the upload may give EIO (never other bytes) for a
        # while; then the same open file reads on.
        def reads_old():
            try:
                got = os.pread(fd, 128 * 1024, 12 * MiB)
            except OSError as e:
                assert e.errno == errno.EIO
                return False
            assert got == old[12 * MiB:12 * MiB + 128 * 1024]
            return True
        wait_for(reads_old, timeout=60, what="the open file to read from the version")
        assert "refreshing the listing to find where its bytes went" in m.logtext()
        for off in (8 * MiB, 15 * MiB, 2 * MiB):
            assert os.pread(fd, 128 * 1024, off) == old[off:off + 128 * 1024], off
    finally:
        os.close(fd)
    # a new open of the destination gets the new bytes
    assert (m.path / "v.raw").read_bytes() == new
