"""labctl images validate: every manifest rule (exit 2 with FILE:LINE:COL),
and the HEAD check of every source URL (exit 1 when one does not answer)."""
import re

import pytest

from conftest import binary, clean_env, run

SHA = "sha256:" + "ab" * 32
SHA512 = "sha512:" + "cd" * 64


def labctl(*args):
    return [binary("labctl"), *args]


HEADER = """apiVersion: images.lab.gilman.io/v1alpha1
kind: ImageManifest
metadata:
  name: lab
spec:
  images:
"""


def image(name="alpine", url="https://example.org/a.raw", checksum=SHA, dest="alpine.raw",
          extra=""):
    return (f"    - name: {name}\n"
            f"      source:\n"
            f"        url: '{url}'\n"
            f"        checksum: '{checksum}'\n"
            f"      destination: '{dest}'\n" + extra)


def write(tmp_path, text):
    repo = tmp_path / "repo"
    (repo / "images").mkdir(parents=True, exist_ok=True)
    m = repo / "images" / "images.yaml"
    m.write_text(text)
    return m


def validate(m, *args, check):
    return run(labctl("images", "validate", "--manifest", m, *args), env=clean_env(),
               check=check)


def line_of(text, needle):
    for i, line in enumerate(text.splitlines(), 1):
        if needle in line:
            return i
    raise AssertionError(needle)


def test_valid_offline(tmp_path):
    m = write(tmp_path, HEADER + image() + image("b", dest="b/b.raw"))
    p = validate(m, "--offline", check=0)
    assert "valid" in p.stdout and "2 images" in p.stdout


def test_default_manifest_path(tmp_path):
    m = write(tmp_path, HEADER + image())
    run(labctl("images", "validate", "--offline"), env=clean_env(), check=0,
        cwd=m.parent.parent)


# (name, manifest text, a text on the offending line, words expected in the message)
BAD = [
    ("api-version", HEADER.replace("v1alpha1", "v2") + image(), "apiVersion", []),
    ("kind", HEADER.replace("ImageManifest", "Manifest") + image(), "kind:", []),
    ("unknown-key", HEADER + image(extra="      destinaton: typo\n"), "destinaton", []),
    ("unknown-source-key", HEADER + image().replace("        checksum:",
                                                    "        checksum_: 'x'\n        checksum:"),
     "checksum_", []),
    ("wrong-type", HEADER + image().replace("name: alpine", "name: [a, b]"), "name: [a", []),
    ("http-url", HEADER + image(url="http://example.org/a.raw"), "http://", ["https"]),
    ("ftp-url", HEADER + image(url="ftp://example.org/a.raw"), "ftp://", ["https"]),
    ("no-checksum", HEADER + image().replace("        checksum: '" + SHA + "'\n", ""),
     "url: 'https", ["checksum"]),
    ("bad-checksum", HEADER + image(checksum="sha256:1234"), "sha256:1234", []),
    ("md5-checksum", HEADER + image(checksum="md5:" + "a" * 32), "md5:", []),
    ("bad-algorithm", HEADER + image(extra="      validation:\n        algorithm: md5\n"),
     "algorithm: md5", []),
    ("algorithm-mismatch", HEADER + image(extra="      validation:\n        algorithm: sha512\n"
                                                "        expected: '" + SHA + "'\n"),
     None, []),
    ("expected-required", HEADER + image().replace(
        "        checksum: '" + SHA + "'\n",
        "        checksum: '" + SHA + "'\n        decompress: xz\n"), "decompress: xz",
     ["expected"]),
    ("bad-decompress", HEADER + image().replace(
        "        checksum: '" + SHA + "'\n",
        "        checksum: '" + SHA + "'\n        decompress: rar\n") +
     "      validation:\n        expected: '" + SHA + "'\n", "decompress: rar", []),
    ("dup-name", HEADER + image() + image(dest="other.raw"), None, []),
    ("dup-dest", HEADER + image() + image(name="other"), None, []),
    ("dest-dotdot", HEADER + image(dest="a/../b.raw"), "a/../b.raw", []),
    ("dest-abs", HEADER + image(dest="/abs.raw"), "/abs.raw", []),
    ("dest-empty-seg", HEADER + image(dest="a//b.raw"), "a//b.raw", []),
    ("dest-dot", HEADER + image(dest="./b.raw"), "./b.raw", []),
    ("update-outside", HEADER + image(extra="      updateFile:\n        path: '../x.txt'\n"
                                            "        replacements:\n"
                                            "          - pattern: 'a'\n            value: 'b'\n"),
     "../x.txt", []),
    ("bad-pattern", HEADER + image(extra="      updateFile:\n        path: 'x.txt'\n"
                                         "        replacements:\n"
                                         "          - pattern: 'a(b'\n            value: 'b'\n"),
     "a(b", []),
    ("bad-template", HEADER + image(extra="      updateFile:\n        path: 'x.txt'\n"
                                          "        replacements:\n"
                                          "          - pattern: 'a'\n"
                                          "            value: '{{ .Source.Sha }}'\n"),
     ".Source.Sha", []),
]


@pytest.mark.parametrize("name,text,needle,words", BAD, ids=[b[0] for b in BAD])
def test_invalid_manifest(tmp_path, name, text, needle, words):
    m = write(tmp_path, text)
    p = validate(m, "--offline", check=2)
    out = p.stderr
    assert re.search(r"images\.yaml:\d+:\d+: ", out), out
    if needle is not None:
        assert f"images.yaml:{line_of(text, needle)}:" in out, (needle, out)
    for w in words:
        assert w in out, (w, out)


def test_every_problem_at_once(tmp_path):
    text = HEADER + image(url="http://x.org/a", checksum="sha256:12") + image(
        name="b", dest="/b.raw")
    m = write(tmp_path, text)
    p = validate(m, "--offline", check=2)
    lines = [ln for ln in p.stderr.splitlines() if re.search(r"images\.yaml:\d+:\d+:", ln)]
    assert len(lines) >= 3, p.stderr
    assert any('"alpine"' in ln for ln in lines) and any('"b"' in ln for ln in lines)


def test_online_heads_every_url(tmp_path, https):
    (https.root / "v-a.raw").write_bytes(b"a" * 1000)
    (https.root / "v-b.raw").write_bytes(b"b" * 10)
    https.redirect("v-moved.raw", https.url("v-b.raw"))
    m = write(tmp_path, HEADER + image("a", https.url("v-a.raw"), dest="a.raw")
              + image("b", https.url("v-moved.raw"), dest="b.raw"))
    before = len(https.requests)
    p = validate(m, "--ca-bundle", https.ca, check=0)
    reqs = https.requests[before:]
    assert ("HEAD", "/v-a.raw", None) in reqs
    assert ("HEAD", "/v-moved.raw", None) in reqs and ("HEAD", "/v-b.raw", None) in reqs
    assert not [r for r in reqs if r[0] == "GET"]
    assert re.search(r"^a\s+HTTP 200", p.stdout, re.M), p.stdout
    assert re.search(r"^b\s+HTTP 200", p.stdout, re.M), p.stdout


def test_online_unreachable_url_exit_1(tmp_path, https):
    (https.root / "v-ok.raw").write_bytes(b"ok")
    m = write(tmp_path, HEADER + image("ok", https.url("v-ok.raw"), dest="ok.raw")
              + image("missing", https.url("v-missing.raw"), dest="m.raw"))
    p = validate(m, "--ca-bundle", https.ca, check=1)
    assert re.search(r"^missing\s+HTTP 404", p.stdout, re.M), p.stdout
    # offline, the same manifest is fine
    validate(m, "--offline", check=0)
