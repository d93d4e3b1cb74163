"""An S3-compatible server for the tests: moto's server mode on loopback (``moto[server]``).

:func:`start_s3_server` starts ``python -m moto.server`` on 127.0.0.1 at a free port,
waits until it answers, creates a bucket and returns an :class:`S3Server` whose ``env``
is what a process (a driver, a ``ray start`` node) needs in its environment to reach it
through pyarrow and Ray: ``AWS_ENDPOINT_URL`` (read by pyarrow's AWS SDK), dummy
credentials and a region.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, field


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class S3Server:
    """A running moto server: ``bucket``, ``endpoint`` (``http://127.0.0.1:PORT``), ``env``."""

    process: subprocess.Popen
    port: int
    bucket: str
    env: dict[str, str] = field(default_factory=dict)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def uri(self, prefix: str | None = None) -> str:
        """``s3://<bucket>/<prefix>`` (a fresh prefix by default): the storage URI of a test."""
        return f"s3://{self.bucket}/{prefix or uuid.uuid4().hex[:12]}"

    def query_uri(self, prefix: str | None = None) -> str:
        """The same storage with the endpoint in the URI instead of the environment."""
        return f"{self.uri(prefix)}?endpoint_override=127.0.0.1:{self.port}&scheme=http"

    def filesystem(self):
        """A pyarrow S3FileSystem on this server (paths: ``<bucket>/<key>``)."""
        import pyarrow.fs as pafs

        return pafs.S3FileSystem(
            access_key=self.env["AWS_ACCESS_KEY_ID"], secret_key=self.env["AWS_SECRET_ACCESS_KEY"],
            endpoint_override=f"127.0.0.1:{self.port}", scheme="http", region=self.env["AWS_DEFAULT_REGION"],
        )

    def keys(self, prefix: str) -> list[str]:
        """Every object key under ``s3://<bucket>/<prefix>``."""
        import pyarrow.fs as pafs

        infos = self.filesystem().get_file_info(
            pafs.FileSelector(f"{self.bucket}/{prefix}", recursive=True, allow_not_found=True)
        )
        return sorted(i.path[len(self.bucket) + 1:] for i in infos if i.type == pafs.FileType.File)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def start_s3_server(bucket: str = "tce-test", timeout_s: float = 90.0) -> S3Server:
    """Start moto's server on a free loopback port and create ``bucket`` in it."""
    try:
        import moto  # noqa: F401
    except ImportError as e:  # pragma: no cover - the dev extras install it
        raise RuntimeError("moto[server] is not installed: pip install -e '.[dev]'") from e
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",  # never ask a cloud metadata service for credentials
    }
    server = S3Server(proc, port, bucket, env)
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"moto's server exited with {proc.returncode} before it answered")
        try:
            urllib.request.urlopen(f"{server.endpoint}/moto-api/", timeout=2).read()
            break
        except OSError:
            if time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(f"moto's server did not answer on port {port} within {timeout_s} s") from None
            time.sleep(0.2)
    req = urllib.request.Request(f"{server.endpoint}/{bucket}", method="PUT")  # CreateBucket (us-east-1)
    urllib.request.urlopen(req, timeout=10).read()
    return server


def env_with(server: S3Server, base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) plus the server's settings."""
    return {**(os.environ if base is None else base), **server.env}
