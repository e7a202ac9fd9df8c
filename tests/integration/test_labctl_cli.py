"""labctl's command line: dispatcher, --help everywhere, usage errors (exit 2)."""
import pytest

from conftest import binary, clean_env, run

SUBCOMMANDS = ["validate", "sync", "list", "prune", "upload", "overlay", "index"]


def labctl(*args):
    return [binary("labctl"), *args]


def test_version():
    p = run(labctl("--version"), env=clean_env(), check=0)
    assert p.stdout.startswith("labctl ")


@pytest.mark.parametrize("args", [["--help"], ["images", "--help"], ["credentials", "--help"]]
                         + [["images", s, "--help"] for s in SUBCOMMANDS])
def test_help_everywhere(args):
    p = run(labctl(*args), env=clean_env(), check=0)
    assert "Usage: labctl" in p.stdout


@pytest.mark.parametrize("sub", SUBCOMMANDS)
def test_help_lists_contract_flags(sub):
    p = run(labctl("images", sub, "--help"), env=clean_env(), check=0)
    expected = {
        "validate": ["--manifest", "--offline"],
        "sync": ["--manifest", "--credentials", "--sops-age-key-file", "--dry-run", "--force",
                 "--parallel", "--only"],
        "list": ["--credentials", "--sops-age-key-file", "--json"],
        "prune": ["--manifest", "--credentials", "--sops-age-key-file", "--dry-run"],
        "upload": ["--source", "--destination", "--name", "--credentials"],
        "overlay": ["--mount", "--overlay-dir", "--manifest", "--only"],
        "index": ["--credentials", "--sops-age-key-file"],
    }[sub]
    for flag in expected:
        assert flag in p.stdout, (sub, flag)


def test_unknown_command():
    p = run(labctl("frobnicate"), env=clean_env(), check=2)
    assert "frobnicate" in p.stderr and "--help" in p.stderr


def test_unknown_subcommand():
    p = run(labctl("images", "frobnicate"), env=clean_env(), check=2)
    assert "frobnicate" in p.stderr and "--help" in p.stderr


def test_missing_subcommand():
    run(labctl("images"), env=clean_env(), check=2)
    run(labctl(), env=clean_env(), check=2)


@pytest.mark.parametrize("sub", SUBCOMMANDS)
def test_unknown_flag(sub):
    p = run(labctl("images", sub, "--no-such-flag"), env=clean_env(), check=2)
    assert "--no-such-flag" in p.stderr
    assert f"labctl images {sub} --help" in p.stderr


def test_flag_needs_value():
    p = run(labctl("images", "upload", "--source"), env=clean_env(), check=2)
    assert "--source" in p.stderr


def test_stray_argument():
    p = run(labctl("images", "list", "extra"), env=clean_env(), check=2)
    assert "extra" in p.stderr


def test_bad_parallel():
    for v in ("0", "x", "-1"):
        p = run(labctl("images", "sync", "--parallel", v), env=clean_env(), check=2)
        assert "--parallel" in p.stderr
