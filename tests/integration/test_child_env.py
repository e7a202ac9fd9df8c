"""What labctl's child processes see (issue 11): `labctl images overlay` runs
qemu-img and git through common/child, so neither gets the bucket secrets
(E2_*, AWS_*) or age key material (SOPS_AGE_KEY) of labctl's environment.
Wrappers earlier on PATH record each child's environment, then run the real
program."""
import shutil
import stat

import pytest

from conftest import ACCESS_KEY, SECRET_KEY, binary, run
from test_overlay import Lab

AGE_KEY = "AGE-SECRET-KEY-1QQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQ"


def wrap(bindir, dumps, name):
    """bindir/name: dump the environment into dumps/name.PID, exec the real one."""
    real = shutil.which(name)
    if not real:
        pytest.skip(f"{name} is not installed")
    script = bindir / name
    script.write_text(f'#!/bin/sh\nenv > "{dumps}/{name}.$$"\nexec "{real}" "$@"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)


def environments(dumps, name):
    out = []
    for f in sorted(dumps.glob(f"{name}.*")):
        env = {}
        for line in f.read_text().splitlines():
            k, sep, v = line.partition("=")
            if sep:
                env[k] = v
        out.append(env)
    return out


def test_overlay_children_do_not_see_secrets(bucket, tmp_path):
    lab = Lab(bucket, tmp_path)
    try:
        bindir, dumps = tmp_path / "bin", tmp_path / "dumps"
        bindir.mkdir()
        dumps.mkdir()
        for name in ("qemu-img", "git"):
            wrap(bindir, dumps, name)
        env = dict(bucket.env, PATH=f"{bindir}:{bucket.env['PATH']}",
                   AWS_SECRET_ACCESS_KEY=SECRET_KEY, AWS_ACCESS_KEY_ID=ACCESS_KEY,
                   SOPS_AGE_KEY=AGE_KEY, IMGSTORE_TEST_MARKER="kept")
        assert env["E2_SECRET_KEY"] == SECRET_KEY
        p = run([binary("labctl"), "images", "overlay", "--mount", lab.mount.path,
                 "--overlay-dir", lab.outdir, "--manifest", lab.manifest], env=env, check=0)
        assert "created" in p.stdout
        for name in ("qemu-img", "git"):
            envs = environments(dumps, name)
            assert envs, f"labctl did not run {name} through the wrapper"
            for child in envs:
                leaked = sorted(k for k in child
                                if k.startswith(("E2_", "AWS_")) or k == "SOPS_AGE_KEY")
                assert leaked == [], (name, leaked)
                assert SECRET_KEY not in child.values() and AGE_KEY not in child.values()
                # the rest of the environment is passed on
                assert child["IMGSTORE_TEST_MARKER"] == "kept"
                assert child["PATH"] == env["PATH"]
    finally:
        lab.close()


def test_overlay_without_qemu_img(bucket, tmp_path):
    """A program missing from PATH is named with the package to install."""
    lab = Lab(bucket, tmp_path, git=False)
    try:
        empty = tmp_path / "empty"
        empty.mkdir()
        p = run([binary("labctl"), "images", "overlay", "--mount", lab.mount.path,
                 "--overlay-dir", lab.outdir, "--manifest", lab.manifest],
                env=dict(bucket.env, PATH=str(empty)), check=1)
        assert "qemu-img: program not found (install qemu-utils)" in p.stderr
        assert not any(lab.outdir.iterdir())
    finally:
        lab.close()
