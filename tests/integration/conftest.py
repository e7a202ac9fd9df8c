"""Shared fixtures for the integration tests.

Everything here is real: a Swift + s3api server on loopback (deploy/local-s3.sh;
IMGSTORE_S3_SERVER=radosgw runs Ceph's radosgw instead), the built labctl/imgfs
binaries, boto3 as an independent S3 client to check what landed in the bucket.
Every test that uses the server (the s3server fixture, directly or through
`bucket`) carries the `s3` marker: `-m s3` runs just those.
"""
import os
import random
import socket
import subprocess
import uuid
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

import hangwatch

ROOT = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("IMGSTORE_BUILD", ROOT / "build")).resolve()
TEST_DATA = ROOT / "tests" / "data"
LOCAL_S3 = ROOT / "deploy" / "local-s3.sh"
ACCESS_KEY = "test:tester"
SECRET_KEY = "testing"
# which local S3 server the session runs (deploy/local-s3.sh): swift or radosgw
S3_SERVER = os.environ.get("IMGSTORE_S3_SERVER") or "swift"
# labctl's record index (a cache of every checksum record, README "The bucket"):
# written next to images/ and metadata/ whenever labctl changed the bucket
RECORD_INDEX = "index/records.json.gz"


def binary(name):
    path = BUILD / {"labctl": "sync/labctl", "imgfs": "fs/imgfs",
                    "s3tool": "tests/tools/s3tool"}.get(name, name)
    if not path.exists():
        pytest.fail(f"{path} is not built (IMGSTORE_BUILD={BUILD})")
    return str(path)


def _ports_free(base, count):
    for p in range(base, base + count):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p))
            except OSError:
                return False
    return True


def free_port_block(count=5):
    for _ in range(200):
        base = random.randrange(20000, 40000, 10)
        if _ports_free(base, count):
            return base
    raise RuntimeError("no free port block on 127.0.0.1")


class S3Server:
    # ports PORT.. that deploy/local-s3.sh uses for each server
    PORTS = {"swift": 5, "radosgw": 10}

    def __init__(self, workdir, port, kind=S3_SERVER):
        self.dir = workdir
        self.port = port
        self.kind = kind
        self.endpoint = f"http://127.0.0.1:{port}"

    def start(self):
        subprocess.run([str(LOCAL_S3), "start", str(self.dir), str(self.port), "imgstore"],
                       check=True, stdout=subprocess.DEVNULL,
                       env=dict(os.environ, IMGSTORE_S3_SERVER=self.kind))

    def stop(self):
        subprocess.run([str(LOCAL_S3), "stop", str(self.dir)], check=False,
                       stdout=subprocess.DEVNULL)

    def client(self):
        return boto3.client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY, region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"},
                          retries={"max_attempts": 3, "mode": "standard"}))


@pytest.fixture(scope="session")
def s3server(tmp_path_factory):
    if S3_SERVER not in S3Server.PORTS:
        pytest.fail(f"IMGSTORE_S3_SERVER={S3_SERVER}: swift or radosgw")
    server = S3Server(tmp_path_factory.mktemp("s3"), free_port_block(S3Server.PORTS[S3_SERVER]))
    server.start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def hang_watch(request, tmp_path_factory):
    """A test that hangs fails with the stacks of imgfs and labctl instead of
    holding the run up (hangwatch.py)."""
    watch = hangwatch.Watch(request.node.nodeid, tmp_path_factory.getbasetemp())
    yield
    watch.stop()
    if watch.hung:
        pytest.fail(f"hung for {hangwatch.limit_s():.0f} s (IMGSTORE_TEST_HANG_S); "
                    "the stacks are in its captured stderr")


def pytest_collection_modifyitems(items):
    for item in items:
        if "s3server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.s3)


def clean_env():
    """The process environment without anything that could point our programs
    (or boto3) somewhere else."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("E2_", "AWS_", "SOPS_", "GITHUB_"))}
    env.setdefault("IMGSTORE_LOG", "info")
    return env


class Bucket:
    """A fresh bucket per test, with the E2_* environment that names it."""

    def __init__(self, server):
        self.server = server
        self.name = "t-" + uuid.uuid4().hex[:12]
        self.s3 = server.client()
        self.s3.create_bucket(Bucket=self.name)

    @property
    def env(self):
        env = clean_env()
        env.update(E2_ENDPOINT=self.server.endpoint, E2_BUCKET=self.name,
                   E2_ACCESS_KEY=ACCESS_KEY, E2_SECRET_KEY=SECRET_KEY,
                   E2_REGION="us-east-1")
        return env

    def keys(self, prefix="", index=False):
        """Every key; the record index (labctl writes it by default) only
        with index=True."""
        out = []
        pager = self.s3.get_paginator("list_objects_v2")
        for page in pager.paginate(Bucket=self.name, Prefix=prefix):
            out += [o["Key"] for o in page.get("Contents", [])]
        return sorted(k for k in out if index or k != RECORD_INDEX)

    def get(self, key):
        return self.s3.get_object(Bucket=self.name, Key=key)["Body"].read()

    def put(self, key, data):
        return self.s3.put_object(Bucket=self.name, Key=key, Body=data)

    def pending_uploads(self):
        r = self.s3.list_multipart_uploads(Bucket=self.name)
        return r.get("Uploads", [])


@pytest.fixture
def bucket(s3server):
    return Bucket(s3server)


@pytest.fixture(scope="session")
def https(tmp_path_factory):
    """A local HTTPS file server with a test CA (https_server.py): put files in
    `https.root`, fetch `https.url(name)`, trust `https.ca` (--ca-bundle)."""
    from https_server import HTTPSServer
    srv = HTTPSServer(tmp_path_factory.mktemp("www"), tmp_path_factory.mktemp("ca")).start()
    yield srv
    srv.stop()


def run(args, env=None, check=None, timeout=600, **kw):
    """Run a command, capture text output; `check` is the expected exit code."""
    p = subprocess.run([str(a) for a in args], env=env, capture_output=True, text=True,
                       timeout=timeout, **kw)
    if check is not None and p.returncode != check:
        raise AssertionError(
            f"{args!r} exited {p.returncode}, expected {check}\n"
            f"--- stdout\n{p.stdout}\n--- stderr\n{p.stderr}")
    return p
