"""labctl images prune: deletes what labctl manages and the manifest no longer
wants (upload images only under a spec.uploads rule), aborts stale multipart
uploads, and refuses (exit 2, deleting nothing) on an invalid or empty
manifest.  Retention and origin: test_history.py."""
import json

from conftest import binary, run

SHA = "sha256:" + "ab" * 32


def labctl(*args):
    return [binary("labctl"), *args]


def manifest(tmp_path, dests, raw=None, uploads=()):
    repo = tmp_path / "repo"
    (repo / "images").mkdir(parents=True, exist_ok=True)
    m = repo / "images" / "images.yaml"
    if raw is None:
        lines = ["apiVersion: images.lab.gilman.io/v1alpha1", "kind: ImageManifest",
                 "metadata:", "  name: lab", "spec:"]
        if uploads:
            lines.append("  uploads:")
            for prefix, keep in uploads:
                lines += [f"    - prefix: '{prefix}'", f"      keep: {keep}"]
        if dests:
            lines.append("  images:")
            for i, d in enumerate(dests):
                lines += [f"    - name: img{i}", "      source:",
                          f"        url: https://example.org/{i}.raw",
                          f"        checksum: '{SHA}'", f"      destination: '{d}'"]
        else:
            lines.append("  images: []")
        raw = "\n".join(lines) + "\n"
    m.write_text(raw)
    return m


def fill(bucket, tmp_path, dests):
    for d in dests:
        src = tmp_path / "src.raw"
        src.write_bytes(d.encode() * 100)
        run(labctl("images", "upload", "--source", src, "--destination", d),
            env=bucket.env, check=0)


def prune(bucket, m, *args, check=0):
    return run(labctl("images", "prune", "--manifest", m, *args), env=bucket.env, check=check)


def test_prune_deletes_unnamed_only(bucket, tmp_path):
    fill(bucket, tmp_path, ["keep.raw", "dir/keep2.qcow2", "old.raw", "dir/old2.iso"])
    bucket.put("metadata/orphan.raw.json", b"{}")   # a record without image
    bucket.put("images/foreign.bin", b"no record")  # an object without record
    bucket.put("other/untouched.txt", b"not under images/ or metadata/")
    bucket.put("metadata/README", b"not a record name")
    # the uploads go by their rules (dir/keep2.qcow2 stays: the manifest names it)
    m = manifest(tmp_path, ["keep.raw", "dir/keep2.qcow2"],
                 uploads=[("old", 0), ("dir/", 0)])
    p = prune(bucket, m, "--dry-run")
    assert "would delete images/old.raw (and its record)" in p.stdout
    assert len(bucket.keys()) == 12
    prune(bucket, m)
    # the record without image goes; the object without record is left alone
    assert bucket.keys() == ["images/dir/keep2.qcow2", "images/foreign.bin", "images/keep.raw",
                             "metadata/README", "metadata/dir/keep2.qcow2.json",
                             "metadata/keep.raw.json", "other/untouched.txt"]
    items = json.loads(run(labctl("images", "list", "--json"), env=bucket.env, check=0).stdout)
    assert sorted(i["destination"] for i in items if i["complete"]) == ["dir/keep2.qcow2",
                                                                        "keep.raw"]
    # nothing more to do
    p = prune(bucket, m)
    assert p.stdout.startswith("0 to delete, 0 to retire"), p.stdout


def test_prune_refuses_invalid_manifest(bucket, tmp_path):
    fill(bucket, tmp_path, ["a.raw"])
    m = manifest(tmp_path, None, raw="apiVersion: images.lab.gilman.io/v1alpha1\n"
                                     "kind: ImageManifest\nmetadata: {name: x}\n"
                                     "spec:\n  images:\n    - name: a\n      sorce: {}\n")
    p = prune(bucket, m, check=2)
    assert "refusing" in p.stderr and "images.yaml:" in p.stderr
    assert bucket.keys() == ["images/a.raw", "metadata/a.raw.json"]


def test_prune_refuses_manifest_without_images(bucket, tmp_path):
    fill(bucket, tmp_path, ["a.raw"])
    m = manifest(tmp_path, [])
    p = prune(bucket, m, check=2)
    assert "refusing" in p.stderr and "no images" in p.stderr
    assert bucket.keys() == ["images/a.raw", "metadata/a.raw.json"]


def test_prune_refuses_missing_manifest(bucket, tmp_path):
    fill(bucket, tmp_path, ["a.raw"])
    prune(bucket, tmp_path / "nope.yaml", check=2)
    assert bucket.keys() == ["images/a.raw", "metadata/a.raw.json"]


def test_prune_aborts_stale_uploads(bucket, tmp_path):
    fill(bucket, tmp_path, ["a.raw"])
    up = bucket.s3.create_multipart_upload(Bucket=bucket.name, Key="images/a.raw")
    bucket.s3.upload_part(Bucket=bucket.name, Key="images/a.raw", PartNumber=1,
                          UploadId=up["UploadId"], Body=b"x" * 1000)
    m = manifest(tmp_path, ["a.raw"])
    # a fresh upload (a sync running right now) is left alone
    p = prune(bucket, m)
    assert "0 uploads to abort" in p.stdout
    assert len(bucket.pending_uploads()) == 1
    prune(bucket, m, "--upload-age", "0", "--dry-run")
    assert len(bucket.pending_uploads()) == 1
    p = prune(bucket, m, "--upload-age", "0")
    assert "abort images/a.raw: a multipart upload started" in p.stdout
    assert bucket.pending_uploads() == []
    assert bucket.keys() == ["images/a.raw", "metadata/a.raw.json"]
