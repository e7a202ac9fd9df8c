"""`labctl credentials encrypt` without --age/--pgp takes its recipients (and
encrypted_regex) from the creation rules of the nearest .sops.yaml, as sops
does; the Debian `age` CLI then opens the data key, so the file is a real
SOPS file, and labctl lists the bucket with it."""
import subprocess

import pytest
import yaml

from conftest import ACCESS_KEY, SECRET_KEY, binary, clean_env, run

PLAIN = """endpoint: {endpoint}
bucket: {bucket}
access_key: {ak}
secret_key: {sk}
"""


def keygen(path):
    run(["age-keygen", "-o", path], check=0)
    return next(line.split(": ", 1)[1] for line in path.read_text().splitlines()
                if line.startswith("# public key: "))


@pytest.fixture
def repo(tmp_path):
    r = tmp_path / "repo"
    (r / "images").mkdir(parents=True)
    return r


def encrypt(repo, out, plain_text, check=0, extra=()):
    plain = repo / "plain.yaml"
    plain.write_text(plain_text)
    return run([binary("labctl"), "credentials", "encrypt", "--in", plain, "--out", out,
                *extra], env=clean_env(), check=check, cwd=repo)


def test_creation_rule_recipients_and_encrypted_regex(repo, tmp_path, bucket):
    key_a, key_b = tmp_path / "a.txt", tmp_path / "b.txt"
    rcpt_a, rcpt_b = keygen(key_a), keygen(key_b)
    (repo / ".sops.yaml").write_text(
        "creation_rules:\n"
        "  - path_regex: secrets/.*\\.yaml$\n"
        f"    age: {rcpt_b}\n"
        "  - path_regex: images/e2\\.sops\\.yaml$\n"
        f"    age: '{rcpt_a}, {rcpt_b}'\n"
        "    encrypted_regex: ^(access_key|secret_key)$\n")
    env = bucket.env
    text = PLAIN.format(endpoint=env["E2_ENDPOINT"], bucket=env["E2_BUCKET"], ak=ACCESS_KEY,
                        sk=SECRET_KEY)
    p = encrypt(repo, "images/e2.sops.yaml", text)
    assert "from the creation rule of " + str((repo / ".sops.yaml").resolve()) in p.stderr
    doc = yaml.safe_load((repo / "images" / "e2.sops.yaml").read_text())
    # only the keys the rule names are encrypted; the others stay readable
    assert doc["endpoint"] == env["E2_ENDPOINT"] and doc["bucket"] == env["E2_BUCKET"]
    assert doc["access_key"].startswith("ENC[AES256_GCM,")
    assert doc["secret_key"].startswith("ENC[AES256_GCM,")
    assert doc["sops"]["encrypted_regex"] == "^(access_key|secret_key)$"
    assert "unencrypted_suffix" not in doc["sops"]
    assert [r["recipient"] for r in doc["sops"]["age"]] == [rcpt_a, rcpt_b]
    # each recipient opens the data key with the real age CLI
    for key, stanza in ((key_a, doc["sops"]["age"][0]), (key_b, doc["sops"]["age"][1])):
        dk = subprocess.run(["age", "-d", "-i", str(key)], input=stanza["enc"].encode(),
                            capture_output=True, check=True).stdout
        assert len(dk) == 32
    # and labctl reads the bucket with it, no E2_* in the environment
    env = clean_env()
    env["SOPS_AGE_KEY_FILE"] = str(key_b)
    run([binary("labctl"), "images", "list", "--credentials", repo / "images" / "e2.sops.yaml"],
        env=env, check=0, cwd=repo)


def test_no_rule_matches_and_unsupported_rule(repo, tmp_path):
    rcpt = keygen(tmp_path / "k.txt")
    (repo / ".sops.yaml").write_text(
        f"creation_rules:\n  - path_regex: other\\.yaml$\n    age: {rcpt}\n")
    p = encrypt(repo, "images/e2.sops.yaml", "a: b\n", check=2)
    assert "no recipient" in p.stderr and ".sops.yaml" in p.stderr
    (repo / ".sops.yaml").write_text(
        f"creation_rules:\n  - kms: arn:aws:kms:x\n    age: {rcpt}\n")
    p = encrypt(repo, "images/e2.sops.yaml", "a: b\n", check=2)
    assert "uses kms, which labctl does not support" in p.stderr
    # an explicit --age wins over the rules
    encrypt(repo, "images/e2.sops.yaml", "a: b\n", extra=("--age", rcpt))
