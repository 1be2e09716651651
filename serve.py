"""The production server for both services (granian; tabserve/server.py says why and how).

    python serve.py api      # what Dockerfile.api runs: api.app_from_env() on port 8000
    python serve.py web      # what Dockerfile.web runs: web.app_from_env() on port 5000

The environment variables it reads, once at start-up, are in docs/configuration.md (the one table of them).
"""

import sys

from tabserve.server import serve


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        sys.exit("usage: python serve.py api|web  (any module with an app_from_env() function)")
    serve(argv[0])


if __name__ == "__main__":
    main()
