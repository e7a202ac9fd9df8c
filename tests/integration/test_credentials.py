"""Credentials from SOPS files (issue 6), end to end with the built binaries.

`labctl credentials encrypt` makes a SOPS file for the local S3 server with an
age key from `age-keygen` (and one for a PGP key in a temporary GNUPGHOME);
`labctl credentials check` opens it.  The file is also checked independently
of our C code: the Debian `age` CLI unwraps the data key and Python's
`cryptography` AES-GCM decrypts every value and recomputes the SOPS MAC, the
way sops itself would.  `labctl images list` and `imgfs` are then run with no
E2_* variable at all (skipped until those commands exist).
"""
import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from conftest import ACCESS_KEY, SECRET_KEY, TEST_DATA, binary, clean_env, run

SOPS_VECTORS = TEST_DATA / "sops"
PGP_FPR = "FBC7B9E2A4F9289AC0C1D4843D16CEE4A27381B4"


def _help_text(*args):
    """What `labctl/imgfs ARGS --help` prints, or "unknown" when it cannot run."""
    try:
        name = args[0]
        p = subprocess.run([binary(name), *args[1:], "--help"], capture_output=True, text=True,
                           timeout=30, env=clean_env())
        return (p.stdout + p.stderr).lower()
    except BaseException:  # not built yet: pytest.fail raises an outcome exception
        return "unknown"


def _lacks(*args, needle=None):
    text = _help_text(*args)
    if "unknown" in text or "not implemented" in text:
        return True
    return needle is not None and needle not in text


needs_credentials_cmd = pytest.mark.skipif(
    _lacks("labctl", "credentials"),
    reason="labctl does not dispatch 'credentials' yet (sync/labctl.c must call "
           "cmd_credentials)")


@pytest.fixture
def agekey(tmp_path):
    """A fresh age identity made by age-keygen: (identity file, recipient)."""
    if not shutil.which("age-keygen"):
        pytest.skip("age-keygen is not installed (apt-get install age)")
    key = tmp_path / "keys.txt"
    p = run(["age-keygen", "-o", key], check=0)
    recipient = next(line.split(": ", 1)[1] for line in key.read_text().splitlines()
                     if line.startswith("# public key: "))
    assert recipient.startswith("age1"), p.stderr
    return key, recipient


def _plaintext(path, endpoint, bucket_name, **extra):
    fields = {"endpoint": endpoint, "bucket": bucket_name, "access_key": ACCESS_KEY,
              "secret_key": SECRET_KEY, "region": "us-east-1"}
    fields.update(extra)
    path.write_text("".join(f"{k}: {yaml.safe_dump(v).splitlines()[0]}\n"
                            for k, v in fields.items() if v is not None))
    return path


def _encrypt(tmp_path, plain, *recipients, env=None, check=0, name="e2.sops.yaml"):
    out = tmp_path / name
    args = [binary("labctl"), "credentials", "encrypt", "--in", plain, "--out", out]
    for r in recipients:
        args += ["--pgp" if not r.startswith("age1") else "--age", r]
    p = run(args, env=env or clean_env(), check=check)
    return out, p


def _check(creds, key=None, env=None, check=None):
    args = [binary("labctl"), "credentials", "check", "--credentials", creds]
    if key:
        args += ["--sops-age-key-file", key]
    return run(args, env=env or clean_env(), check=check)


def _no_secret(*texts):
    for t in texts:
        assert SECRET_KEY not in t.replace("secret_key", "")
        assert "AGE-SECRET-KEY" not in t


def _sops_decrypt_independently(path, identity):
    """Decrypt a SOPS YAML file without our C code: the age CLI for the data
    key, cryptography's AES-GCM for the values, the MAC as sops computes it."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    import base64
    import re

    doc = yaml.safe_load(Path(path).read_text())
    meta = doc.pop("sops")
    enc = meta["age"][0]["enc"]
    p = subprocess.run(["age", "-d", "-i", str(identity)], input=enc.encode(),
                       capture_output=True, timeout=30)
    assert p.returncode == 0, p.stderr
    key = p.stdout
    assert len(key) == 32

    rx = re.compile(r"^ENC\[AES256_GCM,data:(.+),iv:(.+),tag:(.+),type:(.+)\]")

    def dec(value, aad):
        m = rx.match(value)
        assert m, value
        data, iv, tag = (base64.b64decode(x) for x in m.groups()[:3])
        assert len(iv) == 32 and len(tag) == 16
        gcm = AESGCM(key)
        return gcm.decrypt(iv, data + tag, aad.encode()).decode(), m.group(4)

    h = hashlib.sha512()
    out = {}

    def walk(node, path):
        for k, v in node.items():
            p = path + [k]
            if isinstance(v, dict):
                walk(v, p)
                continue
            items = v if isinstance(v, list) else [v]
            for item in items:
                if any(c.endswith("_unencrypted") for c in p):
                    h.update(str(item).encode())
                    out[":".join(p)] = item
                    continue
                pt, typ = dec(item, ":".join(p) + ":") if item != "" else ("", "str")
                h.update(pt.encode())
                out[":".join(p)] = (pt, typ)

    walk(doc, [])
    mac, _ = dec(meta["mac"], meta["lastmodified"])
    assert mac == h.hexdigest().upper()
    assert meta["version"] == "3.9.0" and meta["unencrypted_suffix"] == "_unencrypted"
    return out


@needs_credentials_cmd
def test_encrypt_then_check_with_age_keygen_key(tmp_path, bucket, agekey):
    key, recipient = agekey
    plain = _plaintext(tmp_path / "plain.yaml", bucket.server.endpoint, bucket.name)
    creds, p = _encrypt(tmp_path, plain, recipient)
    text = creds.read_text()
    assert "ENC[AES256_GCM," in text and recipient in text
    assert SECRET_KEY not in text and bucket.name not in text and ACCESS_KEY not in text
    _no_secret(p.stdout, p.stderr)

    c = _check(creds, key, check=0)
    assert bucket.server.endpoint in c.stdout and bucket.name in c.stdout
    assert "access_key: present" in c.stdout and "secret_key: present" in c.stdout
    assert "MAC verified" in c.stdout and recipient in c.stdout
    _no_secret(c.stdout, c.stderr)
    assert ACCESS_KEY not in c.stdout

    # SOPS_AGE_KEY_FILE instead of the flag.
    env = clean_env()
    env["SOPS_AGE_KEY_FILE"] = str(key)
    _check(creds, env=env, check=0)

    # Independent of our decryptor: age CLI + Python AES-GCM + the sops MAC.
    values = _sops_decrypt_independently(creds, key)
    assert values["endpoint"] == (bucket.server.endpoint, "str")
    assert values["secret_key"] == (SECRET_KEY, "str")


@needs_credentials_cmd
def test_encrypt_types_and_clear_fields(tmp_path, agekey):
    key, recipient = agekey
    plain = tmp_path / "plain.yaml"
    plain.write_text("endpoint: http://127.0.0.1:1\nbucket: b\naccess_key: a\nsecret_key: s\n"
                     "port: 9000\nverify: true\nratio: 0.25\nnote_unencrypted: hello\n"
                     "nested:\n  inner: x\n  list: [a, b]\n")
    creds, _ = _encrypt(tmp_path, plain, recipient)
    assert "note_unencrypted: hello" in creds.read_text()
    values = _sops_decrypt_independently(creds, key)
    assert values["port"] == ("9000", "int")
    assert values["verify"] == ("True", "bool")
    assert values["ratio"] == ("0.25", "float")
    assert values["nested:inner"] == ("x", "str")
    _check(creds, key, check=0)


@needs_credentials_cmd
def test_wrong_key_missing_field_and_tampering(tmp_path, agekey):
    key, recipient = agekey
    plain = _plaintext(tmp_path / "plain.yaml", "http://127.0.0.1:1", "b")
    creds, _ = _encrypt(tmp_path, plain, recipient)

    other = tmp_path / "other.txt"
    run(["age-keygen", "-o", other], check=0)
    c = _check(creds, other, check=1)
    assert "finding the data key" in c.stderr and recipient in c.stderr
    assert str(other) in c.stderr and str(creds) in c.stderr
    _no_secret(c.stdout, c.stderr)

    env = clean_env()  # no identity at all (nor a default ~/.config/sops/age/keys.txt)
    env.pop("XDG_CONFIG_HOME", None)
    env["HOME"] = str(tmp_path)
    c = _check(creds, None, env=env, check=1)
    assert "--sops-age-key-file" in c.stderr

    tampered = tmp_path / "tampered.yaml"
    text = creds.read_text()
    i = text.index("secret_key: ENC[AES256_GCM,data:") + len("secret_key: ENC[AES256_GCM,data:")
    tampered.write_text(text[:i] + ("A" if text[i] != "A" else "B") + text[i + 1:])
    c = _check(tampered, key, check=2)
    assert "decrypting" in c.stderr and "secret_key" in c.stderr
    _no_secret(c.stdout, c.stderr)

    nomac = tmp_path / "nomac.yaml"
    nomac.write_text("\n".join(line for line in text.splitlines()
                               if not line.lstrip().startswith("mac:")) + "\n")
    c = _check(nomac, key, check=2)
    assert "MAC" in c.stderr

    partial = _plaintext(tmp_path / "partial.yaml", "http://127.0.0.1:1", "b", access_key=None)
    pcreds, _ = _encrypt(tmp_path, partial, recipient, name="partial.sops.yaml")
    c = _check(pcreds, key, check=2)
    assert "access_key: missing" in c.stdout
    assert "access_key (set E2_ACCESS_KEY" in c.stderr and "partial.sops.yaml" in c.stderr

    # The environment fills the gap and wins.
    env = clean_env()
    env["E2_ACCESS_KEY"] = "from-env"
    c = _check(pcreds, key, env=env, check=0)
    assert "E2_ACCESS_KEY is set in the environment" in c.stdout


@needs_credentials_cmd
def test_check_takes_endpoint_and_bucket(tmp_path, agekey):
    """check takes --endpoint and --bucket as the other commands do: they win
    over the file and the environment, and fill what neither has."""
    key, recipient = agekey
    plain = _plaintext(tmp_path / "plain.yaml", "http://127.0.0.1:1", "from-file")
    creds, _ = _encrypt(tmp_path, plain, recipient)
    env = clean_env()
    env["E2_BUCKET"] = "from-env"
    args = [binary("labctl"), "credentials", "check", "--credentials", creds,
            "--sops-age-key-file", key, "--endpoint", "http://127.0.0.1:2",
            "--bucket", "from-flag"]
    c = run(args, env=env, check=0)
    effective = c.stdout[c.stdout.index("effective settings:"):]
    assert "endpoint:   http://127.0.0.1:2\n" in effective
    assert "bucket:     from-flag\n" in effective
    assert "note: --endpoint is given and takes precedence over E2_ENDPOINT and the file" \
        in c.stdout
    assert "note: --bucket is given and takes precedence over E2_BUCKET and the file" in c.stdout
    assert "E2_BUCKET is set" not in c.stdout
    _no_secret(c.stdout, c.stderr)

    # Without a file: the keys from the environment, the rest from the flags.
    env = clean_env()
    env["E2_ACCESS_KEY"] = ACCESS_KEY
    env["E2_SECRET_KEY"] = SECRET_KEY
    c = run([binary("labctl"), "credentials", "check", "--endpoint", "http://127.0.0.1:3",
             "--bucket", "b3"], env=env, check=0)
    assert "endpoint:   http://127.0.0.1:3\n" in c.stdout and "bucket:     b3\n" in c.stdout
    _no_secret(c.stdout, c.stderr)
    c = run([binary("labctl"), "credentials", "check", "--bucket", "b3"], env=env, check=2)
    assert "E2_ENDPOINT" in c.stderr and "--endpoint" in c.stderr


@needs_credentials_cmd
def test_usage_errors(tmp_path):
    labctl = binary("labctl")
    for sub in ("encrypt", "check"):
        p = run([labctl, "credentials", sub, "--help"], env=clean_env(), check=0)
        assert "Usage: labctl credentials " + sub in p.stdout
    run([labctl, "credentials", "--help"], env=clean_env(), check=0)
    run([labctl, "credentials", "bogus"], env=clean_env(), check=2)
    p = run([labctl, "credentials", "encrypt", "--out", tmp_path / "x"], env=clean_env(),
            check=2)
    assert "recipient" in p.stderr
    run([labctl, "credentials", "encrypt", "--age", "age1bogus", "--out", tmp_path / "x"],
        env=clean_env(), check=2, input="a: b\n")
    assert not (tmp_path / "x").exists()
    p = run([labctl, "credentials", "check"], env=clean_env(), check=2)
    assert "E2_ENDPOINT" in p.stderr


@needs_credentials_cmd
def test_pgp_recipient_through_gpg(tmp_path, bucket):
    if not shutil.which("gpg"):
        pytest.skip("gpg is not installed (apt-get install gnupg)")
    home = Path(f"/tmp/gpg-{os.getpid()}-{time.monotonic_ns()}")
    home.mkdir(mode=0o700)
    env = clean_env()
    env["GNUPGHOME"] = str(home)
    try:
        run(["gpg", "--batch", "--quiet", "--import",
             SOPS_VECTORS / "getsops-sops" / "sops_functional_tests_key.asc"], env=env, check=0)
        plain = _plaintext(tmp_path / "plain.yaml", bucket.server.endpoint, bucket.name)
        creds, _ = _encrypt(tmp_path, plain, PGP_FPR, env=env)
        assert f"fp: {PGP_FPR}" in creds.read_text()
        c = _check(creds, None, env=env, check=0)
        assert f"opened with PGP key {PGP_FPR}" in c.stdout and bucket.name in c.stdout
        _no_secret(c.stdout, c.stderr)
        # Without the secret key: gpg's stderr, summarized.
        empty = Path(str(home) + "-empty")
        empty.mkdir(mode=0o700)
        env2 = dict(env, GNUPGHOME=str(empty))
        c = _check(creds, None, env=env2, check=1)
        assert "No secret key" in c.stderr and PGP_FPR in c.stderr
        subprocess.run(["gpgconf", "--kill", "gpg-agent"], env=env2, check=False)
        shutil.rmtree(empty, ignore_errors=True)
    finally:
        subprocess.run(["gpgconf", "--kill", "gpg-agent"], env=env, check=False)
        shutil.rmtree(home, ignore_errors=True)


@needs_credentials_cmd
def test_sops_vectors_open_with_labctl_check(tmp_path):
    """Files written by real sops (age) open through the CLI; their fields are
    not bucket settings, so check reports them missing with exit 2, after the
    MAC was verified."""
    creds = SOPS_VECTORS / "helm-secrets" / "secrets.age.yaml"
    c = _check(creds, SOPS_VECTORS / "helm-secrets" / "key.txt", check=2)
    assert "MAC verified" in c.stdout and "endpoint:   missing" in c.stdout
    c = _check(creds, SOPS_VECTORS / "sops-nix" / "age-keys.txt", check=1)
    assert "age1rh2xsjg8avja92j3jhtttuczgmqkz89lezxt4e3mmp5ukl5j4f9smvteju" in c.stderr


@pytest.mark.skipif(_lacks("labctl", "images", "list") or _lacks("labctl", "credentials"),
                    reason="labctl images list / credentials are not implemented yet")
def test_images_list_with_credentials_file_only(tmp_path, bucket, agekey):
    key, recipient = agekey
    plain = _plaintext(tmp_path / "plain.yaml", bucket.server.endpoint, bucket.name)
    creds, _ = _encrypt(tmp_path, plain, recipient)
    p = run([binary("labctl"), "images", "list", "--credentials", creds,
             "--sops-age-key-file", key], env=clean_env(), check=0)
    _no_secret(p.stdout, p.stderr)
    # A wrong key fails with the file named, exit 1.
    other = tmp_path / "other.txt"
    run(["age-keygen", "-o", other], check=0)
    p = run([binary("labctl"), "images", "list", "--credentials", creds,
             "--sops-age-key-file", other], env=clean_env(), check=1)
    assert str(creds) in p.stderr


@pytest.mark.skipif(_lacks("imgfs", needle="--credentials") or _lacks("labctl", "credentials")
                    or not shutil.which("fusermount3"),
                    reason="imgfs with --credentials (or fusermount3) is not available yet")
def test_imgfs_mounts_with_credentials_file_only(tmp_path, bucket, agekey):
    key, recipient = agekey
    plain = _plaintext(tmp_path / "plain.yaml", bucket.server.endpoint, bucket.name)
    creds, _ = _encrypt(tmp_path, plain, recipient)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.Popen([binary("imgfs"), "-f", "--credentials", str(creds),
                             "--sops-age-key-file", str(key), "--cache-dir",
                             str(tmp_path / "cache"), str(mnt)], env=clean_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not os.path.ismount(mnt) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert os.path.ismount(mnt), proc.stderr.read() if proc.poll() is not None else ""
        os.listdir(mnt)
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], check=False)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
    _no_secret(out, err)
