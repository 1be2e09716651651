"""Where a model repository lives: a folder, or a bucket of S3 (or of any S3-compatible store), laid out alike.

    store = open_store("models", name=None)              # FolderStore of models/<the one model>
    store = open_store("s3://bucket/prefix")             # S3Store of s3://bucket/prefix/<the one model>
    look = store.look()                                  # the versions published, the routing file's tag
    routing, tag = store.read_routing()                  # and store.write_routing(routing, tag): False if it moved
    with store.fetched("2") as folder: ...               # a local folder of version 2's files
    store.add_version("3", write)                        # publish: write(folder) fills it; None if 3 was taken

    REPO/<name>/routing.json     which version answers (routing.py)
    REPO/<name>/<version>/       model.skops, model.json and, when signed, model.sig

A folder's version is written in a hidden folder and renamed into place. S3 has no rename: a version counts as
published only once its card, model.json, is written, and it is written last (after the artifact and the
signature), so no reader sees a version before all of it is there; S3's reads after a write are strongly consistent,
so once the card's PUT returns, every LIST shows it. Two publishers never write the same number: each first claims it
with a conditional write (If-None-Match: *) of REPO/<name>/.claims/<number>, which only one of them can make; the
other takes the next number. The routing file is rewritten with If-Match on the tag it was read with, so an operator
never overwrites a change made since they read it (repository.py reads it again and retries).

boto3 is imported only for an s3:// repository: its credentials and endpoint come the standard AWS ways (the AWS_*
variables, the shared credentials and config files, a container's or pod's role; AWS_ENDPOINT_URL for a store of
your own). A fetched version lives in a private temporary folder only while it is verified and loaded.
"""

import contextlib
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tabserve.routing import (
    ROUTING_FILE,
    RoutingError,
    parse_routing,
    published,
    read_routing,
    routing_text,
    write_routing,
)

CARD = "model.json"  # the last object of an S3 version: it is published when its card is there
CLAIMS = ".claims"  # REPO/<name>/.claims/<version>: a number taken by a publisher
MAX_VERSION_BYTES = 512 * 1024 * 1024  # a version's files, at most: they are fetched into memory-backed /tmp
VERSION = re.compile(r"[0-9]+")
CONDITION_FAILED = ("PreconditionFailed", "ConditionalRequestConflict")  # S3's answers to a conditional write lost


class StoreError(Exception):
    """A repository that cannot be read or written; one line saying what was tried and what answered."""


@dataclass(frozen=True)
class Look:
    """What one look at a repository found: the versions published (oldest first) and the routing file's tag."""

    versions: tuple
    routing_tag: object = None
    objects: dict = None  # S3: {version: {file name: size}}


def open_store(location, name=None, client=None):
    """The store of the model a repository serves: the one named, else the only one there (or the model itself, when
    location is REPO/<name>); StoreError naming what the repository holds."""
    location = str(location)
    if location.startswith("s3://"):
        return S3Store.of(location, name, client)
    if (Path(location) / ROUTING_FILE).is_file() and name is None:
        return FolderStore(location)
    return FolderStore(model_folder(location, name))


def store_for(location, name):
    """The store a model's versions are published into, made if it is new."""
    location = str(location)
    if location.startswith("s3://"):
        bucket, _, prefix = location[len("s3://"):].partition("/")
        return S3Store(bucket, prefix.strip("/") + "/" if prefix.strip("/") else "", name)
    (Path(location) / name).mkdir(parents=True, exist_ok=True)
    return FolderStore(Path(location) / name)


def choose_model(location, models, name):
    """The model's name among those a repository holds; StoreError otherwise."""
    if (name or (models[0] if len(models) == 1 else None)) in models:
        return name or models[0]
    if not models:
        raise StoreError(f"the model repository {location} holds no model: publish one with train.py --publish")
    if name is None:
        raise StoreError(f"the model repository {location} holds {', '.join(models)}: set MODEL_NAME to one")
    raise StoreError(f"the model repository {location} has no model {name!r}; it holds {', '.join(models)}")


def model_folder(repository, name=None):
    """The folder of the model a folder repository serves (REPO/<name>); StoreError otherwise."""
    repository = Path(repository)
    if not repository.is_dir():
        raise StoreError(f"the model repository {repository} is not a folder")
    models = sorted(entry.name for entry in repository.iterdir() if (entry / ROUTING_FILE).is_file())
    return repository / choose_model(repository, models, name)


class FolderStore:
    """A model repository's folder of one model, on a disk every reader mounts."""

    remote = False

    def __init__(self, folder):
        self.folder, self.name, self.location = Path(folder), Path(folder).name, str(folder)

    def look(self):
        path = self.folder / ROUTING_FILE
        try:
            stat = path.stat()
            return Look(tuple(published(self.folder)), (stat.st_mtime_ns, stat.st_size))
        except OSError as err:
            raise StoreError(f"cannot read {path}: {err.strerror}") from None

    def read_routing(self):
        return read_routing(self.folder), None

    def write_routing(self, routing, tag=None, create=False):
        """Write the routing file atomically (a new one only if there is none, with create); True."""
        if not (create and (self.folder / ROUTING_FILE).exists()):
            write_routing(self.folder, routing)
        return True

    @contextlib.contextmanager
    def fetched(self, version, files=None):
        """The version's own folder: already local."""
        yield self.folder / version

    def next_version(self):
        return str(max(map(int, published(self.folder)), default=0) + 1)

    def add_version(self, version, write):
        """write(folder) into a hidden folder, renamed into place as version; its result, or None when another
        publisher took the number meanwhile."""
        staging = Path(tempfile.mkdtemp(dir=self.folder, prefix=f".version-{version}-"))
        try:
            result = write(staging / version)
            os.chmod(staging / version, 0o755)
            os.rename(staging / version, self.folder / version)  # fails if the number was taken meanwhile
            return result
        except OSError:
            return None
        finally:
            shutil.rmtree(staging, ignore_errors=True)


class S3Store:
    """A model repository's prefix of one model in an S3 bucket."""

    remote = True

    def __init__(self, bucket, prefix, name, client=None):
        self.bucket, self.base, self.name = bucket, f"{prefix}{name}/", name
        self.location = f"s3://{bucket}/{prefix}{name}"
        self.made = client  # (process id, boto3 client): a client per process, never one inherited through fork

    @classmethod
    def of(cls, location, name=None, client=None):
        """The store of s3://BUCKET/PREFIX's model (one listing of the prefix), or of s3://BUCKET/PREFIX/<name>."""
        bucket, _, prefix = location[len("s3://"):].partition("/")
        prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        probe = cls(bucket, prefix, "", client)
        keys = [key[len(prefix):] for key, _, _ in probe.objects(prefix)]
        if ROUTING_FILE in keys and name is None and prefix:  # the model's own prefix
            parent, _, own = prefix.rstrip("/").rpartition("/")
            return cls(bucket, parent + "/" if parent else "", own, probe.made)
        models = sorted({key.split("/")[0] for key in keys if key.count("/") == 1 and key.endswith(f"/{ROUTING_FILE}")})
        return cls(bucket, prefix, choose_model(location, models, name), probe.made)

    @property
    def client(self):
        if self.made is None or self.made[0] != os.getpid():
            import boto3  # only an s3:// repository loads it
            from botocore.config import Config

            # botocore says at INFO where it found the credentials and the endpoint, at every worker's first call.
            logging.getLogger("botocore").setLevel(logging.WARNING)
            config = Config(connect_timeout=3, read_timeout=10, retries={"max_attempts": 2, "mode": "standard"})
            self.made = (os.getpid(), boto3.client("s3", config=config))
        return self.made[1]

    def call(self, what, method, refused=(), **arguments):
        """A call of the S3 client; None when S3 answers one of the refused error codes, else StoreError saying what
        was tried and what answered."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            client = self.client
        except (BotoCoreError, ValueError) as err:  # botocore refuses an endpoint it cannot use with a ValueError
            raise StoreError(f"{what}: cannot make an S3 client: {err}") from None
        try:
            return getattr(client, method)(Bucket=self.bucket, **arguments)
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in refused:
                return None
            raise StoreError(f"{what} at {client.meta.endpoint_url}: {answer_of(err, self.bucket)}") from None
        except BotoCoreError as err:
            raise StoreError(f"{what} at {client.meta.endpoint_url}: {err}") from None

    def objects(self, prefix):
        """(key, size, etag) of every object under the prefix, all pages of the listing."""
        arguments, found = {"Prefix": prefix}, []
        while True:
            page = self.call(f"listing s3://{self.bucket}/{prefix}", "list_objects_v2", **arguments)
            found += [(item["Key"], item["Size"], item["ETag"]) for item in page.get("Contents", ())]
            if not page.get("IsTruncated"):
                return found
            arguments["ContinuationToken"] = page["NextContinuationToken"]

    def look(self):
        """One listing (a request per 1,000 objects): the versions whose card is written, the routing file's ETag."""
        files, tag = {}, None
        for key, size, etag in self.objects(self.base):
            version, _, file = key[len(self.base):].partition("/")
            if version == ROUTING_FILE:
                tag = etag
            elif VERSION.fullmatch(version):
                files.setdefault(version, {})[file] = size
        complete = sorted((v for v, names in files.items() if CARD in names), key=int)
        return Look(tuple(complete), tag, {version: files[version] for version in complete})

    def read_routing(self):
        """(the routing, its ETag); RoutingError when it is missing or wrong."""
        try:
            answer = self.call("reading the routing file", "get_object", Key=self.base + ROUTING_FILE)
        except StoreError as err:
            raise RoutingError(str(err)) from None
        return parse_routing(answer["Body"].read().decode("utf-8")), answer["ETag"]

    def write_routing(self, routing, tag=None, create=False):
        """Write the routing file unless it changed since it was read with tag (or, with create, exists); False
        when it did, or exists."""
        condition = {"IfNoneMatch": "*"} if create else {"IfMatch": tag} if tag else {}
        return self.put(ROUTING_FILE, routing_text(routing).encode(), condition)

    def put(self, name, data, condition=None):
        """PUT an object under the model's prefix; False when its condition does not hold (S3's 412, or the 409 of
        two conditional writes at once)."""
        return self.call(f"writing s3://{self.bucket}/{self.base}{name}", "put_object", CONDITION_FAILED,
                         Key=self.base + name, Body=data, **(condition or {})) is not None

    @contextlib.contextmanager
    def fetched(self, version, files=None):
        """A private local copy of a version's objects (those a look found, or listed now), removed afterwards."""
        files = files if files is not None else {key[len(self.base) + len(version) + 1:]: size for key, size, _ in
                                                  self.objects(f"{self.base}{version}/")}
        if any("/" in name or name in ("", ".", "..") for name in files):
            raise StoreError(f"version {version} of {self.location} holds objects in folders of their own")
        if sum(files.values()) > MAX_VERSION_BYTES:
            raise StoreError(f"version {version} of {self.location} is larger than {MAX_VERSION_BYTES >> 20} MiB")
        with tempfile.TemporaryDirectory(prefix="tabserve-fetch-") as scratch:
            folder = Path(scratch) / version
            folder.mkdir()
            for name in files:
                answer = self.call(f"reading version {version}", "get_object", Key=f"{self.base}{version}/{name}")
                (folder / name).write_bytes(answer["Body"].read())
            yield folder

    def next_version(self):
        taken = [int(key.rsplit("/", 1)[1]) for key, _, _ in self.objects(self.base + CLAIMS + "/")
                 if VERSION.fullmatch(key.rsplit("/", 1)[1])]
        return str(max([*taken, *map(int, self.look().versions)], default=0) + 1)

    def add_version(self, version, write):
        """Claim the number, write(folder) locally, upload its files with the card last; write's result, or None
        when another publisher claimed the number first."""
        if not self.put(f"{CLAIMS}/{version}", b"", {"IfNoneMatch": "*"}):
            return None
        with tempfile.TemporaryDirectory(prefix="tabserve-publish-") as scratch:
            result = write(Path(scratch) / version)
            for path in sorted(Path(scratch, version).iterdir(), key=lambda path: path.name == CARD):
                self.put(f"{version}/{path.name}", path.read_bytes())
        return result


def answer_of(error, bucket):
    """What S3 answered, in words: no such bucket, the credentials refused, or its own code and message."""
    code = error.response.get("Error", {}).get("Code", "")
    message = error.response.get("Error", {}).get("Message", "")
    if code == "NoSuchBucket":
        return f"there is no bucket {bucket!r} (NoSuchBucket)"
    if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "ExpiredToken", "403"):
        return f"the credentials were refused ({code}: {message or 'Forbidden'})"
    return f"{code or 'error'}: {message}".strip()
