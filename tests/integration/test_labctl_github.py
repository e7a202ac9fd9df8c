"""labctl in GitHub Actions: ::error annotations, --check-files, the job
summary, files_changed, the offline pin preview, --skip and --json; and the
shipped workflows run step by step (their `run:` scripts) against the local
S3 server and HTTPS source server."""
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, binary, clean_env, run
from test_labctl_sync import MIB, Lab, image_bytes

WORKFLOWS = ROOT / "deploy" / "github"
EXAMPLE = ROOT / "examples" / "lab"


def labctl(*args):
    return [binary("labctl"), *args]


def gh_env(tmp_path, base=None):
    env = dict(clean_env() if base is None else base)
    env.update(GITHUB_ACTIONS="true", GITHUB_OUTPUT=str(tmp_path / "gh_output"),
               GITHUB_STEP_SUMMARY=str(tmp_path / "gh_summary"))
    return env


def read(path):
    p = Path(path)
    return p.read_text() if p.exists() else ""


HEADER = """apiVersion: images.lab.gilman.io/v1alpha1
kind: ImageManifest
metadata:
  name: lab
spec:
  images:
"""

PIN_IMAGE = """    - name: alpine
      source:
        url: https://example.org/alpine-3.21.qcow2
        checksum: sha256:{sha}
      destination: alpine/base.qcow2
      updateFile:
        path: packer/vars.pkr.hcl
        replacements:
          - pattern: 'alpine_url\\s*=\\s*"[^"]*"'
            value: 'alpine_url = "{{{{ .Source.URL }}}}"'
          - pattern: 'alpine_sum\\s*=\\s*"[^"]*"'
            value: 'alpine_sum = "{{{{ .Source.Checksum }}}}"'
"""
SHA = "ab" * 32


def pin_repo(tmp_path, dirname="repo", pins=True):
    repo = tmp_path / dirname
    (repo / "images").mkdir(parents=True)
    (repo / "images" / "images.yaml").write_text(HEADER + PIN_IMAGE.format(sha=SHA))
    if pins:
        (repo / "packer").mkdir()
        (repo / "packer" / "vars.pkr.hcl").write_text(
            'alpine_url = "https://example.org/alpine-3.20.qcow2"\n'
            'alpine_sum = "sha256:' + "00" * 32 + '"\n')
    return repo


# ------------------------------------------------------------ annotations


def test_annotations_byte_for_byte(tmp_path):
    # a directory name with the two characters a property must escape
    repo = tmp_path / "a,b:c"
    (repo / "images").mkdir(parents=True)
    m = repo / "images" / "images.yaml"
    m.write_text(HEADER + """    - name: alpine
      source:
        url: http://example.org/a.raw
        checksum: sha256:1234
      destinaton: a.raw
""")
    p = run(labctl("images", "validate", "--offline", "--manifest", m), env=gh_env(tmp_path),
            check=2)
    f = str(m).replace(",", "%2C").replace(":", "%3A")
    assert p.stdout.splitlines() == [
        f"::error file={f},line=7,col=7::image \"alpine\": source has no destination; "
        "add destination: <path in the bucket>",
        f"::error file={f},line=9,col=14::image \"alpine\": source.url must use https://, "
        "not http:// (got \"http://example.org/a.raw\"); use the https:// URL of the image",
        f"::error file={f},line=10,col=19::image \"alpine\": source.checksum has 4 hex "
        "digits after \"sha256:\"; a sha256 checksum has 64",
        f"::error file={f},line=11,col=7::image \"alpine\": unknown key \"destinaton\" "
        "(did you mean \"destination\"?)",
    ] or p.stdout
    # the same problems, in the usual form, on stderr
    assert f"{m}:10:19: image \"alpine\": source.checksum has 4 hex digits" in p.stderr


def test_no_annotations_outside_github(tmp_path):
    repo = pin_repo(tmp_path)
    (repo / "images" / "images.yaml").write_text(HEADER + "    - name: x\n")
    p = run(labctl("images", "validate", "--offline"), env=clean_env(), cwd=repo, check=2)
    assert "::error" not in p.stdout + p.stderr


def test_annotation_message_escapes_newline_and_percent(tmp_path):
    # the message quotes the unknown key: a literal %0A must come out as %250A,
    # or GitHub would show a line break the manifest does not have
    repo = pin_repo(tmp_path)
    m = repo / "images" / "images.yaml"
    m.write_text(m.read_text().replace("      destination:", "      x%0Ay: 1\n      destination:"))
    p = run(labctl("images", "validate", "--offline"), env=gh_env(tmp_path), cwd=repo,
            check=2)
    assert p.stdout.splitlines() == [
        "::error file=images/images.yaml,line=11,col=7::image \"alpine\": unknown key "
        "\"x%250Ay\"; remove it (known keys: name, source, destination, validation, "
        "updateFile, retention)"]


# ------------------------------------------------------------ --check-files


def test_check_files_reports_missing_file_and_dead_pattern(tmp_path):
    repo = pin_repo(tmp_path)
    (repo / "packer" / "vars.pkr.hcl").write_text('alpine_url = "x"\n')  # no alpine_sum
    m = "images/images.yaml"
    p = run(labctl("images", "validate", "--offline", "--check-files"), env=clean_env(),
            cwd=repo, check=2)
    assert p.stderr.splitlines()[0] == (
        f"{m}:17:13: image \"alpine\": updateFile packer/vars.pkr.hcl: pattern matches "
        "nothing in the file, so this pin would never be updated; correct the pattern or "
        "the file")
    assert "1 problem" in p.stderr
    (repo / "packer" / "vars.pkr.hcl").unlink()
    p = run(labctl("images", "validate", "--offline", "--check-files"), env=clean_env(),
            cwd=repo, check=2)
    assert p.stderr.splitlines()[0] == (
        f"{m}:13:9: image \"alpine\": updateFile.path packer/vars.pkr.hcl does not exist in "
        f"{repo.resolve()}; create it or correct the path")
    # without --check-files (and outside GitHub) the files are not looked at
    run(labctl("images", "validate", "--offline"), env=clean_env(), cwd=repo, check=0)
    # in GitHub Actions it is on by default, and annotated
    p = run(labctl("images", "validate", "--offline"), env=gh_env(tmp_path), cwd=repo,
            check=2)
    assert p.stdout.startswith(f"::error file={m},line=13,col=9::image \"alpine\": "
                               "updateFile.path packer/vars.pkr.hcl does not exist")


def test_check_files_passes_and_json(tmp_path):
    repo = pin_repo(tmp_path)
    p = run(labctl("images", "validate", "--offline", "--check-files", "--json"),
            env=clean_env(), cwd=repo, check=0)
    assert json.loads(p.stdout) == {"manifest": "images/images.yaml", "valid": True,
                                    "images": 1, "overlays": 0, "problems": []}
    (repo / "packer" / "vars.pkr.hcl").write_text("nothing\n")
    p = run(labctl("images", "validate", "--offline", "--check-files", "--json"),
            env=clean_env(), cwd=repo, check=2)
    doc = json.loads(p.stdout)
    assert doc["valid"] is False
    assert [(x["line"], x["column"]) for x in doc["problems"]] == [(15, 13), (17, 13)]


def test_shipped_example_validates_with_check_files(tmp_path):
    run(labctl("images", "validate", "--offline", "--check-files", "--manifest",
               EXAMPLE / "images" / "images.yaml"), env=clean_env(), check=0)


# ------------------------------------------------------------ offline pin preview


def test_offline_dry_run_rewrites_pins_without_credentials(tmp_path):
    repo = pin_repo(tmp_path)
    env = gh_env(tmp_path)
    assert not any(k.startswith(("E2_", "AWS_")) for k in env)
    p = run(labctl("images", "sync", "--dry-run", "--offline", "--json"), env=env, cwd=repo,
            check=0)
    assert (repo / "packer" / "vars.pkr.hcl").read_text() == (
        'alpine_url = "https://example.org/alpine-3.21.qcow2"\n'
        f'alpine_sum = "sha256:{SHA}"\n')
    doc = json.loads(p.stdout)
    assert doc["filesChanged"] is True and doc["dryRun"] is True
    assert doc["images"] == [{"name": "alpine", "destination": "alpine/base.qcow2",
                              "action": "preview", "error": None,
                              "reason": "offline: the bucket was not checked"}]
    assert read(tmp_path / "gh_output") == "files_changed=true\n"
    # a second preview finds the pins current
    run(labctl("images", "sync", "--dry-run", "--offline"), env=env, cwd=repo, check=0)
    assert read(tmp_path / "gh_output") == "files_changed=true\nfiles_changed=false\n"


def test_offline_needs_dry_run(tmp_path):
    repo = pin_repo(tmp_path)
    p = run(labctl("images", "sync", "--offline"), env=clean_env(), cwd=repo, check=2)
    assert "--offline needs --dry-run" in p.stderr


# ------------------------------------------------------------ sync in CI


@pytest.fixture
def lab(tmp_path, bucket, https, request):
    return Lab(tmp_path, bucket, https, request.node.name.replace("[", "-").strip("]"))


def test_summary_table_failed_image_and_files_changed(lab, tmp_path):
    good = lab.source("good", image_bytes(2 * MIB, 7))
    bad = lab.source("bad", image_bytes(1 * MIB, 8))
    bad["checksum"] = "sha256:" + "00" * 32
    (lab.repo / "vars.txt").write_text('good = "old"\n')
    good["update"] = ("vars.txt", [(r'good = "[^"]*"', 'good = "{{ .Source.Checksum }}"')])
    lab.write()
    env = gh_env(tmp_path, lab.bucket.env)
    p = run(labctl("images", "sync", "--ca-bundle", lab.https.ca), env=env, cwd=lab.repo,
            check=1)
    assert "1 of 2 images failed" in p.stderr
    # the image that synced still got its pin, and the workflow learns it
    assert (lab.repo / "vars.txt").read_text() == f'good = "{good["checksum"]}"\n'
    assert read(tmp_path / "gh_output") == "files_changed=true\n"
    rows = read(tmp_path / "gh_summary").strip().splitlines()
    assert rows[0] == "### labctl images sync: `images/images.yaml`"
    assert rows[2] == "| Image | Destination | Action | Size | Time | Error |"
    assert rows[4].startswith(f"| good | `{good['destination']}` | uploaded | 2.0 MiB | ")
    assert rows[4].endswith(" |  |")
    assert rows[5].startswith(f"| bad | `{bad['destination']}` | failed |  |  | ")
    assert "checksum" in rows[5]
    assert rows[-1] == "Files changed: yes"
    # --dry-run writes files_changed too (nothing left to change now)
    run(labctl("images", "sync", "--dry-run", "--skip", "bad", "--ca-bundle", lab.https.ca),
        env=env, cwd=lab.repo, check=0)
    assert read(tmp_path / "gh_output") == "files_changed=true\nfiles_changed=false\n"


def test_skip_and_json(lab):
    a = lab.source("a", image_bytes(1 * MIB, 1))
    b = lab.source("b", image_bytes(1 * MIB, 2))
    lab.write()
    p = lab.run("sync", "--skip", "a", "--json", check=0)
    doc = json.loads(p.stdout)
    assert [(x["name"], x["action"], x["error"]) for x in doc["images"]] == [
        ("b", "uploaded", None)]
    assert doc["images"][0]["size"] == 1 * MIB
    assert lab.bucket.keys("images/") == [f"images/{b['destination']}"]
    assert a["destination"] not in " ".join(lab.bucket.keys())
    p = lab.run("sync", "--skip", "c", check=2)
    assert "--skip c: no image of that name" in p.stderr


# ------------------------------------------------------------ the workflows


def steps(workflow, job):
    doc = yaml.safe_load((WORKFLOWS / workflow).read_text())
    return {s.get("name", s.get("uses")): s for s in doc["jobs"][job]["steps"]}


def run_step(step, cwd, env, tmp_path):
    """Run one `run:` step as the runner does (bash -e), with labctl on PATH."""
    env = dict(env)
    env.update(step.get("env") and {k: str(v) for k, v in step["env"].items()
                                     if "${{" not in str(v)} or {})
    env["PATH"] = f"{Path(binary('labctl')).parent}:{env['PATH']}"
    env.setdefault("RUNNER_TEMP", str(tmp_path))
    return subprocess.run(["bash", "-e", "-c", step["run"]], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def outputs(path):
    out = {}
    for line in read(path).splitlines():
        k, _, v = line.partition("=")
        out[k] = v
    return out


def test_images_sync_workflow_steps(lab, tmp_path):
    """images-sync.yml: validate, then sync (one image failing), then the
    outputs the pull-request and failure steps key on."""
    good = lab.source("good", image_bytes(1 * MIB, 3))
    bad = lab.source("bad", image_bytes(1 * MIB, 4))
    bad["checksum"] = "sha256:" + "11" * 32
    (lab.repo / "pins.txt").write_text('good = ""\n')
    good["update"] = ("pins.txt", [(r'good = "[^"]*"', 'good = "{{ .Source.URL }}"')])
    lab.write()
    st = steps("images-sync.yml", "sync")
    env = gh_env(tmp_path, lab.bucket.env)
    env.update(MANIFEST="images/images.yaml", CREDENTIALS="images/e2.sops.yaml",
               FORCE="false")
    p = run_step(st["Validate the manifest"], lab.repo, env, tmp_path)
    assert p.returncode == 0, p.stderr
    sync = st["Sync"]
    script = sync["run"].replace('args=(--manifest "$MANIFEST" --parallel 2)',
                                 'args=(--manifest "$MANIFEST" --parallel 2 --ca-bundle '
                                 f'"{lab.https.ca}")')
    assert script != sync["run"]
    p = run_step(dict(sync, run=script), lab.repo, env, tmp_path)
    assert p.returncode == 0, p.stderr  # the step itself succeeds...
    out = outputs(tmp_path / "gh_output")
    assert out == {"files_changed": "true", "status": "1"}  # ...and reports the failure
    assert (lab.repo / "pins.txt").read_text() == f'good = "{good["url"]}"\n'
    # the steps that follow: the pull request runs on files_changed, the last
    # step fails the job on status
    assert st["Open a pull request with the updated pins"]["if"] == \
        "steps.sync.outputs.files_changed == 'true'"
    last = st["Fail when an image failed"]
    assert last["if"] == "steps.sync.outputs.status != '0'"
    p = run_step(dict(last, env={"STATUS": out["status"]}), lab.repo, env, tmp_path)
    assert p.returncode == 1 and p.stdout.startswith("::error::labctl images sync exited 1")


def test_images_validate_workflow_steps(tmp_path):
    """images-validate.yml on the shipped example lab repository: validation
    with --check-files, then the pin preview into the job summary."""
    repo = tmp_path / "lab"
    shutil.copytree(EXAMPLE, repo)
    git = ["git", "-c", "user.email=ci@example.org", "-c", "user.name=ci"]
    subprocess.run(git + ["init", "-q"], cwd=repo, check=True)
    subprocess.run(git + ["add", "-A"], cwd=repo, check=True)
    subprocess.run(git + ["commit", "-qm", "lab"], cwd=repo, check=True)
    st = steps("images-validate.yml", "sync")
    env = gh_env(tmp_path)
    env.update(MANIFEST="images/images.yaml", HOME=str(tmp_path))
    p = run_step(st["Validate the manifest"], repo, env, tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    p = run_step(st["Preview the pin changes"], repo, env, tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    summary = read(tmp_path / "gh_summary")
    assert "### Pin changes this manifest implies" in summary
    assert "```diff" in summary
    assert ('+vyos_iso_url = "https://github.com/vyos/vyos-nightly-build/releases/download/'
            '1.5-rolling-202412200007/vyos-1.5-rolling-202412200007-generic-amd64.iso"'
            in summary.splitlines())
    assert outputs(tmp_path / "gh_output") == {"files_changed": "true"}
    changed = subprocess.run(["git", "diff", "--name-only"], cwd=repo, capture_output=True,
                             text=True, check=True).stdout.split()
    assert "infrastructure/network/vyos/packer/variables.pkr.hcl" in changed


def test_workflow_names_match_the_automation(tmp_path):
    sync = yaml.safe_load((WORKFLOWS / "images-sync.yml").read_text())
    pr = steps("images-sync.yml", "sync")["Open a pull request with the updated pins"]["with"]
    assert pr["branch"] == "automated/image-updates"
    assert pr["labels"] == "automated"
    assert pr["title"] == pr["commit-message"] == "chore: update source image references"
    mergify = yaml.safe_load((ROOT / ".mergify.yml").read_text())
    cond = mergify["pull_request_rules"][0]["conditions"]
    assert "label=automated" in cond and "check-success=sync" in cond
    assert "head=automated/image-updates" in cond
    assert "sync" in yaml.safe_load((WORKFLOWS / "images-validate.yml").read_text())["jobs"]
    packer = yaml.safe_load((WORKFLOWS / "packer-vyos.yml").read_text())
    assert packer[True]["push"]["paths"] == ["infrastructure/network/vyos/packer/**"]
    assert packer["env"]["DESTINATION"] == "vyos/vyos-gateway.raw"
    assert packer["env"]["OUTPUT"].endswith("output/vyos-lab.raw")
    upload = steps("packer-vyos.yml", "build")["Upload to the bucket"]["run"]
    assert upload.count("labctl images upload") == 1
    assert sync[True]["push"]["paths"] == ["images/**"]
