"""Who may call the API: a users file of scrypt hashes, re-read when it changes, with verified headers remembered and
failed logins limited per client address.

    users = Users.from_settings(settings, log)   # API_USERS_FILE, or API_USERNAME + API_PASSWORD as a one-user set
    user = users.authenticate(environ)           # the user name, or RequestError 401 (wrong) / 429 (too many tries)

The users file has one `name:hash` line per client (two while its password is rotated: the old one and the new one
are both good until the old line is removed); blank lines and lines starting with # are skipped. A hash is
`scrypt$N$r$p$salt$digest` (salt and digest in unpadded URL-safe base64): hashlib.scrypt with N=2**14, r=8, p=1
and a 16-byte random salt, about 50 ms and 16 MiB to compute, which is what makes a stolen file slow to guess from.
`python api.py --hash-password` prints one. Since every request would otherwise pay those 50 ms, a verified
Authorization header is remembered (keyed by an HMAC of the header under a key made at start-up, so the memory holds
no password) until the set of users changes, at most CACHE_ENTRIES of them; a wrong password is never remembered.
The one user of API_USERNAME and API_PASSWORD is remembered at start-up, before the server forks its workers: no
worker's first request waits for scrypt (it did, 40-80 ms, and at 1 connection that was the p99).

The file is checked at most once a second, at a request: a changed file is read again and the remembered headers
forgotten, so a removed user or a changed password is refused within about a second. A file that no longer parses
keeps the last good set and logs an error naming the line: it never locks everyone out, never lets anyone in.
Failed logins are counted per client address (FAILURES_PER_MINUTE); past the limit, that address gets 429 with
Retry-After until the minute is over, without its password being checked. The address is REMOTE_ADDR, or, when that
is a proxy listed in TRUSTED_PROXIES, the last address of X-Forwarded-For that is not one of them.
"""

import base64
import collections
import functools
import hashlib
import hmac
import ipaddress
import os
import secrets
import threading
import time

from tabserve.wsgi import RequestError

SCRYPT = {"n": 2 ** 14, "r": 8, "p": 1}
SALT_BYTES = 16
CACHE_ENTRIES = 1_000
RELOAD_SECONDS = 1.0  # how often the users file is checked for a change, at most
WINDOW_SECONDS = 60
MAX_ADDRESSES = 10_000  # client addresses whose failed logins are counted; the oldest is forgotten first
UNKNOWN_USER = "unknown"  # the metrics' label for every name not in the users file
USER_KEY = "tabserve.user"  # where authenticate() leaves the user's name in the WSGI environ, for the metrics


class UsersFileError(ValueError):
    """A users file that cannot be used; the message names the line."""


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_password(password, salt=None):
    """A self-describing scrypt hash of the password: scrypt$N$r$p$salt$digest."""
    salt = salt or secrets.token_bytes(SALT_BYTES)
    digest = hashlib.scrypt(password.encode(), salt=salt, **SCRYPT, maxmem=64 * 1024 * 1024)
    return f"scrypt${SCRYPT['n']}${SCRYPT['r']}${SCRYPT['p']}${b64(salt)}${b64(digest)}"


def verify_password(password, encoded):
    """Whether the password is the one this hash was made from (constant-time comparison)."""
    _, n, r, p, salt, digest = encoded.split("$")
    given = hashlib.scrypt(password.encode(), salt=unb64(salt), n=int(n), r=int(r), p=int(p),
                           maxmem=64 * 1024 * 1024)
    return hmac.compare_digest(given, unb64(digest))


def check_hash(encoded):
    """ValueError unless the text is a hash of the form hash_password makes."""
    parts = encoded.split("$")
    if len(parts) != 6 or parts[0] != "scrypt" or not all(part.isdigit() for part in parts[1:4]):
        raise ValueError("the hash is not scrypt$N$r$p$salt$digest (make one with python api.py --hash-password)")
    n = int(parts[1])
    if n < 2 or n & (n - 1) or not 1 <= int(parts[2]) <= 64 or not 1 <= int(parts[3]) <= 16:
        raise ValueError("the hash's scrypt parameters are out of range")
    unb64(parts[4]), unb64(parts[5])


def parse_users(text, source):
    """{name: (hash, ...)} from the text of a users file; UsersFileError naming the first bad line. A name may have
    several lines, each a password it may use: while a password is rotated, the old one and the new one."""
    users = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, colon, encoded = line.partition(":")
        try:
            if not colon or not name or any(c.isspace() for c in name):
                raise ValueError("a line is name:hash, the name without spaces")
            check_hash(encoded)
        except ValueError as err:
            raise UsersFileError(f"{source} line {number}: {err}") from None
        users[name] = users.get(name, ()) + (encoded,)
    if not users:
        raise UsersFileError(f"{source} holds no user")
    return users


def parse_basic_auth(header):
    """(user, password) from an Authorization header, or None when it is missing or malformed."""
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except ValueError:  # not ASCII, not base64, or not UTF-8
        return None
    user, colon, password = decoded.partition(":")
    return (user, password) if colon else None


def credentials_checker(username, password, log):
    """A function that says whether an Authorization header carries these credentials, logging each refusal."""
    expected_user, expected_password = username.encode(), password.encode()

    def check(header):
        given = parse_basic_auth(header)
        if given is None:
            log.warning("authentication failed: missing or malformed Authorization header")
            return False
        user, secret = given
        # Both comparisons always run (& not `and`), so a wrong user costs what a wrong password costs.
        ok = hmac.compare_digest(user.encode(), expected_user) & hmac.compare_digest(secret.encode(), expected_password)
        if not ok:
            log.warning("authentication failed for user %r", user)
        return ok

    return check


class FailureLimiter:
    """Failed logins per client address in the current minute, for at most MAX_ADDRESSES addresses."""

    def __init__(self, per_minute):
        self.per_minute, self.lock = per_minute, threading.Lock()
        self.windows = collections.OrderedDict()  # address -> [window start, failures]

    def retry_after(self, address, now):
        """Seconds until this address may try again, or 0."""
        with self.lock:
            window = self.windows.get(address)
        if window is None or now - window[0] >= WINDOW_SECONDS or window[1] < self.per_minute:
            return 0
        return max(1, int(window[0] + WINDOW_SECONDS - now + 0.999))

    def fail(self, address, now):
        with self.lock:
            window = self.windows.pop(address, None)
            if window is None or now - window[0] >= WINDOW_SECONDS:
                window = [now, 0]
            window[1] += 1
            self.windows[address] = window  # most recent last
            while len(self.windows) > MAX_ADDRESSES:
                self.windows.popitem(last=False)


def trusted_networks(text):
    """The networks of TRUSTED_PROXIES (comma-separated addresses or CIDR ranges); ValueError names a bad one."""
    networks = []
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        try:
            networks.append(ipaddress.ip_network(item, strict=True))
        except ValueError:
            raise ValueError(f"TRUSTED_PROXIES: {item!r} is not an address or a network") from None
    return tuple(networks)


def is_in(address, networks):
    try:
        return any(ipaddress.ip_address(address) in network for network in networks)
    except ValueError:
        return False


def client_address(environ, proxies):
    """The client's address: REMOTE_ADDR, or through trusted proxies the last X-Forwarded-For hop not one of them."""
    address = environ.get("REMOTE_ADDR", "")
    if not proxies or not is_in(address, proxies):
        return address
    for hop in reversed([part.strip() for part in environ.get("HTTP_X_FORWARDED_FOR", "").split(",") if part.strip()]):
        if not is_in(hop, proxies):
            return hop
    return address


class Users:
    """The users the API knows, from a file it follows or from one name and password."""

    def __init__(self, log, realm, path=None, users=None, per_minute=10, proxies=(), on_failure=None):
        self.log, self.path, self.proxies = log, path, proxies
        # The realm names what the credentials are for: the model served, not a fixed word.
        self.challenge = {"WWW-Authenticate": f'Basic realm="{realm}", charset="UTF-8"'}
        self.limiter = FailureLimiter(per_minute)
        self.on_failure = on_failure or (lambda user: None)  # a metrics hook: a name from the set, or UNKNOWN_USER
        self.key = secrets.token_bytes(32)  # for the remembered headers' HMAC; never leaves this process
        self.lock = threading.Lock()
        self.remembered = collections.OrderedDict()  # HMAC of a verified header -> user
        self.verifying = {}  # HMAC of a header being verified -> an Event set when it is done
        self.users, self.stamp, self.checked = users or {}, None, time.monotonic()
        if path is not None:
            self.users, self.stamp = self.read(), self.file_stamp()  # a bad file at start-up: UsersFileError

    def file_stamp(self):
        status = os.stat(self.path)
        return status.st_mtime_ns, status.st_size, status.st_ino

    def read(self):
        try:
            with open(self.path, encoding="utf-8") as handle:
                text = handle.read()
        except (OSError, UnicodeError) as err:
            raise UsersFileError(f"cannot read {self.path}: {err}") from None
        return parse_users(text, self.path)

    def reload(self):
        """Read the users file again if it changed; keep the last good set if it does not parse."""
        self.checked = time.monotonic()
        try:
            stamp = self.file_stamp()
            if stamp == self.stamp:
                return
            users = self.read()
        except (OSError, UsersFileError) as err:
            self.log.error("users file not reloaded, the last good set of %d users stays: %s", len(self.users), err)
            return
        with self.lock:
            self.users, self.stamp = users, stamp
            self.remembered.clear()
        self.log.info("users file %s read: %d users", self.path, len(users))

    def authenticate(self, environ):
        """The user name of a request's valid credentials; RequestError 401 or 429 otherwise."""
        now = time.monotonic()
        if self.path is not None and now - self.checked >= RELOAD_SECONDS:
            self.reload()
        header = environ.get("HTTP_AUTHORIZATION", "")
        key = self.header_key(header)
        user = self.remembered.get(key)  # one dict read needs no lock: a held lock would stall the other threads
        if user is not None:
            environ[USER_KEY] = user
            return user
        address = client_address(environ, self.proxies)
        wait = self.limiter.retry_after(address, now)
        if wait:
            raise RequestError(429, f"Too many failed logins from this address: try again in {wait} s.",
                               headers={"Retry-After": str(wait)})
        environ[USER_KEY] = user = self.verify_once(key, header, address, now)
        return user

    def verify_once(self, key, header, address, now):
        """verify() and remember, once for the requests that bring one new header at the same time: the others wait
        and take its user. A burst of requests from a new client, or from every client after the file changed, would
        each pay scrypt's 50 ms and 16 MiB (8 threads: 128 MiB at once). A refused header is tried by each request,
        so that each failed login is counted."""
        with self.lock:
            running = self.verifying.get(key)
            if running is None:
                self.verifying[key] = done = threading.Event()
        if running is not None:
            running.wait()
            user = self.remembered.get(key)
            return user if user is not None else self.verify(header, address, now)
        try:
            user = self.verify(header, address, now)
            self.remember(key, user)
            return user
        finally:
            with self.lock:
                del self.verifying[key]
            done.set()

    def remember(self, key, user):
        with self.lock:
            self.remembered[key] = user
            while len(self.remembered) > CACHE_ENTRIES:
                self.remembered.popitem(last=False)

    def remember_password(self, name, password):
        """Remember the header a client sends for this name and password (Basic, as curl and urllib send it), which
        must be a user's: the API's own user at start-up, whose password it was given."""
        header = "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode("ascii")
        self.remember(self.header_key(header), name)

    def header_key(self, header):
        return hmac.digest(self.key, header.encode("latin-1", "replace"), "sha256")

    def verify(self, header, address, now):
        """The user whose password this header carries; RequestError 401 (logged and counted) when there is none.
        Only a name and password that do not match count as a failed login: a request without credentials (a
        browser's first try, a probe) guesses nothing, and costs no scrypt."""
        given = parse_basic_auth(header)
        if given is None:
            self.on_failure(UNKNOWN_USER)
            self.log.warning("authentication failed from %s: missing or malformed Authorization header", address)
            raise RequestError(401, "Send valid credentials with HTTP basic authentication.", headers=self.challenge)
        name, password = given
        users = self.users
        # An unknown name is compared with a hash that matches nothing: it costs what a known one costs.
        hashes = users.get(name) or (dummy_hash(),)
        if any([verify_password(password, encoded) for encoded in hashes]) and name in users:
            return name
        self.limiter.fail(address, now)
        self.on_failure(name if name in users else UNKNOWN_USER)
        self.log.warning("authentication failed for user %r from %s", name, address)
        raise RequestError(401, "Send valid credentials with HTTP basic authentication.", headers=self.challenge)


@functools.cache
def dummy_hash():
    return hash_password(secrets.token_urlsafe(16))
