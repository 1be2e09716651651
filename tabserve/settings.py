"""The services' configuration: every environment variable they read, read once at start-up and checked here.

    settings = read_api_settings(os.environ)     # or read_web_settings(os.environ); StartupError names a bad one
    host, port, workers, threads = read_server_settings("api", os.environ)

The variables and their meanings are listed once, in docs/configuration.md (tests/test_docs.py checks that the two
agree). An empty value counts as unset: compose files and Makefiles pass empty strings for variables nobody set.
"""

import math
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from tabserve.signing import SignatureError, read_public_keys
from tabserve.users import trusted_networks

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_HOST = "127.0.0.1"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("text", "json")
# Which requests get a line of their own: all, those answered with an error status (4xx, 5xx), or none. Failed logins
# and crashes are logged whatever this says. See docs/watching.md for what each costs.
ACCESS_LOGS = ("all", "errors", "off")
DEFAULT_ACCESS_LOG = "errors"
DEFAULT_PORTS = {"api": 8000, "web": 5000}
DEFAULT_GRPC_PORT = 8001  # the API's gRPC port, as Triton's
DEFAULT_WORKERS = 2
DEFAULT_THREADS = 8
DEFAULT_MODEL_PATH = ROOT / "model" / "iris.skops"
BOOLEANS = ("true", "false")
BATCHING_CHOICES = ("auto", "on", "off")
# Seconds between two looks at an s3:// repository, by each worker: one LIST request (per 1,000 objects) a look.
DEFAULT_REPOSITORY_POLL = 10.0
DEFAULT_DRIFT_WINDOW = 3600  # seconds: the recent window of GET /api/v1.0/monitoring and the PSI gauges
DEFAULT_DRIFT_THRESHOLDS = (0.1, 0.25)  # PSI: below the first stable, above the second drifted (the usual bands)
# The live values an input needs before its PSI is judged: an unchanged distribution over 10 bins shows a PSI of
# about (bins - 1) / count from sampling alone, 0.02 at 500, a fifth of the first band.
DEFAULT_DRIFT_MIN_COUNT = 500
PREDICTION_LOGS = ("off", "stdout")
DEFAULT_FAILURES_PER_MINUTE = 10
DEFAULT_API_URL = "http://localhost:8000"
DEFAULT_TIMEOUT = 5.0
MAX_TIMEOUT = 300


class StartupError(Exception):
    """A configuration or model problem that must stop a service before it serves anything."""


@dataclass(frozen=True, kw_only=True)
class Settings:
    """What both services are configured with; ApiSettings and WebSettings add their own."""

    username: str
    password: str = field(repr=False)
    host: str = DEFAULT_HOST
    port: int
    log_level: str = "INFO"
    log_format: str = "text"
    access_log: str = DEFAULT_ACCESS_LOG


@dataclass(frozen=True, kw_only=True)
class ApiSettings(Settings):
    """What the API is configured with."""

    port: int = DEFAULT_PORTS["api"]
    model_path: Path = DEFAULT_MODEL_PATH
    model_repository: str = None  # MODEL_REPOSITORY: a folder or s3://BUCKET/PREFIX: serve its versions (versions.py)
    repository_poll: float = DEFAULT_REPOSITORY_POLL  # REPOSITORY_POLL: seconds between looks at an s3:// one
    model_name: str = None  # which model of the repository, when it holds more than one
    allow_pickle: bool = False  # ALLOW_PICKLE: load a pickle artifact anyway (a migration), warned at every load
    signing_keys: dict = field(default=None, repr=False)  # MODEL_SIGNING_PUBLIC_KEY's keys: every version verified
    batching: str = "auto"
    users_file: Path = None  # API_USERS_FILE: name:hash lines (users.py); else API_USERNAME + API_PASSWORD
    failures_per_minute: int = DEFAULT_FAILURES_PER_MINUTE
    trusted_proxies: tuple = ()
    drift_window: int = DEFAULT_DRIFT_WINDOW
    drift_thresholds: tuple = DEFAULT_DRIFT_THRESHOLDS
    drift_min_count: int = DEFAULT_DRIFT_MIN_COUNT
    prediction_log: str = "off"
    prediction_log_sample: float = 1.0


@dataclass(frozen=True, kw_only=True)
class WebSettings(Settings):
    """What the web app is configured with."""

    port: int = DEFAULT_PORTS["web"]
    api_url: str = DEFAULT_API_URL
    timeout: float = DEFAULT_TIMEOUT


def read_password(environ):
    """The password from API_PASSWORD or the file named by API_PASSWORD_FILE (exactly one of them)."""
    password, password_file = environ.get("API_PASSWORD"), environ.get("API_PASSWORD_FILE")
    if password and password_file:
        raise StartupError("set API_PASSWORD or API_PASSWORD_FILE, not both")
    if password_file:
        try:
            return Path(password_file).read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeError) as err:
            raise StartupError(f"cannot read API_PASSWORD_FILE {password_file}: {err}") from None
    return password


def choice(environ, name, choices, default):
    """A variable that takes one of a few words, in any case; StartupError otherwise."""
    value = environ.get(name) or default
    value = value.upper() if choices[0].isupper() else value.lower()
    if value not in choices:
        raise StartupError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def read_common_settings(environ, default_port, why_credentials, credentials_required=True):
    """Credentials, HOST, PORT, LOG_LEVEL, LOG_FORMAT and ACCESS_LOG, checked; StartupError names the first bad one."""
    username, password = environ.get("API_USERNAME"), read_password(environ)
    if credentials_required and (not username or not password):
        raise StartupError(f"API_USERNAME and API_PASSWORD (or API_PASSWORD_FILE) must be set: {why_credentials}")
    port = environ.get("PORT") or str(default_port)
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise StartupError(f"PORT must be an integer from 1 to 65535, got {port!r}")
    return {"username": username or "", "password": password or "", "host": environ.get("HOST") or DEFAULT_HOST,
            "port": int(port), "log_level": choice(environ, "LOG_LEVEL", LOG_LEVELS, "INFO"),
            "log_format": choice(environ, "LOG_FORMAT", LOG_FORMATS, "text"),
            "access_log": choice(environ, "ACCESS_LOG", ACCESS_LOGS, DEFAULT_ACCESS_LOG)}


def logging_settings(environ):
    """(level, format) for the log lines written before the settings are checked: the valid ones, else defaults."""
    level, log_format = (environ.get("LOG_LEVEL") or "INFO").upper(), (environ.get("LOG_FORMAT") or "text").lower()
    return (level if level in LOG_LEVELS else "INFO"), (log_format if log_format in LOG_FORMATS else "text")


def read_api_settings(environ):
    """The API's settings from environment variables; StartupError names the first bad one."""
    users_file = environ.get("API_USERS_FILE")
    common = read_common_settings(environ, DEFAULT_PORTS["api"], "the API does not start without credentials (or "
                                  "API_USERS_FILE)", credentials_required=not users_file)
    if users_file and common["username"]:
        raise StartupError("set API_USERS_FILE or API_USERNAME and API_PASSWORD, not both")
    batching = choice(environ, "BATCHING", BATCHING_CHOICES, "auto")
    failures = environ.get("LOGIN_FAILURES_PER_MINUTE") or str(DEFAULT_FAILURES_PER_MINUTE)
    if not failures.isdigit() or int(failures) < 1:
        raise StartupError(f"LOGIN_FAILURES_PER_MINUTE must be a whole number of at least 1, got {failures!r}")
    try:
        proxies = trusted_networks(environ.get("TRUSTED_PROXIES"))
    except ValueError as err:
        raise StartupError(str(err)) from None
    repository, name = environ.get("MODEL_REPOSITORY"), environ.get("MODEL_NAME")
    if repository and environ.get("MODEL_PATH"):
        raise StartupError("set MODEL_PATH (one artifact) or MODEL_REPOSITORY (its published versions), not both")
    if name and not repository:
        raise StartupError("MODEL_NAME names a model of MODEL_REPOSITORY, which is not set")
    return ApiSettings(model_path=Path(environ.get("MODEL_PATH") or DEFAULT_MODEL_PATH),
                       model_repository=repository or None, model_name=name or None,
                       repository_poll=seconds_of(environ, "REPOSITORY_POLL", DEFAULT_REPOSITORY_POLL),
                       batching=batching, **read_artifact_settings(environ),
                       users_file=Path(users_file) if users_file else None, failures_per_minute=int(failures),
                       trusted_proxies=proxies, **read_monitoring_settings(environ), **common)


def read_artifact_settings(environ):
    """ALLOW_PICKLE and MODEL_SIGNING_PUBLIC_KEY (its keys read now: a key that cannot be read stops the start)."""
    key_file = environ.get("MODEL_SIGNING_PUBLIC_KEY")
    try:
        keys = read_public_keys(Path(key_file)) if key_file else None
    except SignatureError as err:
        raise StartupError(f"MODEL_SIGNING_PUBLIC_KEY: {err}") from None
    return {"allow_pickle": choice(environ, "ALLOW_PICKLE", BOOLEANS, "false") == "true", "signing_keys": keys}


def fraction_of(environ, name, default):
    """A number from 0 to 1 (PREDICTION_LOG_SAMPLE); StartupError otherwise."""
    text = environ.get(name) or str(default)
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value <= 1:
        raise StartupError(f"{name} must be a number from 0 to 1, got {text!r}")
    return value


def read_monitoring_settings(environ):
    """DRIFT_WINDOW, DRIFT_THRESHOLDS, DRIFT_MIN_COUNT, PREDICTION_LOG and PREDICTION_LOG_SAMPLE, checked."""
    text = environ.get("DRIFT_THRESHOLDS") or ",".join(map(str, DEFAULT_DRIFT_THRESHOLDS))
    try:
        thresholds = tuple(float(part) for part in text.split(","))
    except ValueError:
        thresholds = ()
    if len(thresholds) != 2 or not 0 < thresholds[0] < thresholds[1] < math.inf:
        raise StartupError(f"DRIFT_THRESHOLDS must be two increasing positive numbers, as 0.1,0.25, got {text!r}")
    return {"drift_window": positive_int(environ, "DRIFT_WINDOW", DEFAULT_DRIFT_WINDOW), "drift_thresholds": thresholds,
            "drift_min_count": positive_int(environ, "DRIFT_MIN_COUNT", DEFAULT_DRIFT_MIN_COUNT),
            "prediction_log": choice(environ, "PREDICTION_LOG", PREDICTION_LOGS, "off"),
            "prediction_log_sample": fraction_of(environ, "PREDICTION_LOG_SAMPLE", 1.0)}


def read_web_settings(environ):
    """The web app's settings from environment variables; StartupError names the first bad one."""
    common = read_common_settings(environ, DEFAULT_PORTS["web"], "the web app needs them to call the API")
    api_url = (environ.get("API_URL") or DEFAULT_API_URL).rstrip("/")
    if urlsplit(api_url).scheme not in ("http", "https") or not urlsplit(api_url).hostname:
        raise StartupError(f"API_URL must be an http:// or https:// URL, got {api_url!r}")
    return WebSettings(api_url=api_url, timeout=seconds_of(environ, "API_TIMEOUT", DEFAULT_TIMEOUT, MAX_TIMEOUT),
                       **common)


def seconds_of(environ, name, default, limit=3600):
    """A number of seconds, above 0 and at most limit; StartupError otherwise."""
    text = environ.get(name) or str(default)
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value <= limit:
        raise StartupError(f"{name} must be a number of seconds above 0 and at most {limit}, got {text!r}")
    return value


def positive_int(environ, name, default):
    value = environ.get(name) or str(default)
    if not value.isdigit() or int(value) < 1:
        raise StartupError(f"{name} must be a whole number of at least 1, got {value!r}")
    return int(value)


def read_grpc_port(environ):
    """GRPC_PORT: where the API serves the Open Inference Protocol over gRPC (grpcapi.py); None when "off"."""
    text = environ.get("GRPC_PORT", "").strip().lower() or str(DEFAULT_GRPC_PORT)
    if text == "off":
        return None
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise StartupError(f"GRPC_PORT must be a port from 1 to 65535, or off, got {text!r}")
    return int(text)


def read_server_settings(name, environ, default_workers=DEFAULT_WORKERS):
    """(host, port, workers, threads) of the production server for the app called name."""
    port = positive_int(environ, "PORT", DEFAULT_PORTS.get(name, DEFAULT_PORTS["api"]))
    if port > 65535:
        raise StartupError(f"PORT must be from 1 to 65535, got {port}")
    return (environ.get("HOST") or DEFAULT_HOST, port, positive_int(environ, "WORKERS", default_workers),
            positive_int(environ, "THREADS", DEFAULT_THREADS))
