"""The S3 server of the model repository on Compose and Swarm (Dockerfile.s3): SeaweedFS's `weed mini`, one bucket
made at start, its data in /data, its keys read from the same AWS credentials file its clients read (a secret).

    S3_CREDENTIALS_FILE=/run/secrets/s3_credentials S3_BUCKET=models python start.py
    python start.py --check     # the image's health: the S3 port answers and the bucket is made (exit 0)

weed takes its keys from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; this reads them from the file's [default]
profile, so that they are never in the compose file or the image, and becomes weed (exec): weed is PID 1's child of
Docker's init, and stops with the container.
"""

import configparser
import os
import sys
import urllib.request

CREDENTIALS = os.environ.get("S3_CREDENTIALS_FILE") or "/run/secrets/s3_credentials"
BUCKET = os.environ.get("S3_BUCKET") or "models"
PORT = "8333"
FILER = "http://127.0.0.1:8888"  # weed mini's filer, inside the container: it lists a bucket once it is made


def check():
    """Healthy once the S3 port answers and the bucket exists (it is made a moment after the port opens)."""
    urllib.request.urlopen(f"http://127.0.0.1:{PORT}/status", timeout=2)
    urllib.request.urlopen(f"{FILER}/buckets/{BUCKET}/", timeout=2)


def main():
    if sys.argv[1:] == ["--check"]:
        check()
        return
    keys = configparser.ConfigParser()
    if not keys.read(CREDENTIALS) or not keys.has_option("default", "aws_secret_access_key"):
        sys.exit(f"start.py: {CREDENTIALS} holds no [default] aws_access_key_id and aws_secret_access_key")
    environ = {**os.environ, "AWS_ACCESS_KEY_ID": keys.get("default", "aws_access_key_id"),
               "AWS_SECRET_ACCESS_KEY": keys.get("default", "aws_secret_access_key")}
    # Its components find each other on 127.0.0.1 inside the container; only the S3 port is exposed.
    os.execve("/usr/local/bin/weed", ["weed", "mini", "-dir=/data", "-ip=127.0.0.1", "-ip.bind=0.0.0.0",
                                      f"-s3.port={PORT}", f"-bucket={BUCKET}", "-webdav=false", "-admin.ui=false",
                                      "-s3.port.iceberg=0", "-s3.port.lance=0"], environ)


if __name__ == "__main__":
    main()
