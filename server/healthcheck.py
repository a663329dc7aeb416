"""Container health check: exit 0 when the app answers /healthz with 200, 1 otherwise."""

import os
import sys
import urllib.error
import urllib.request

TIMEOUT_SECONDS = 1.5


def main() -> int:
    url = f"http://127.0.0.1:{os.environ.get('PORT', '8000')}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError):
        return 1


if __name__ == "__main__":
    sys.exit(main())
