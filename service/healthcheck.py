"""`python -m service.healthcheck [PATH]`: exit 0 when GET http://127.0.0.1:$GAN_PORT/PATH answers 200.

The container images' HEALTHCHECK: the slim base has no curl, and this reads the same GAN_PORT as the service.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def check(path: str = "/healthz", timeout_s: float = 2.0) -> int:
    url = f"http://127.0.0.1:{os.environ.get('GAN_PORT', '8000')}{path}"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            ok = response.status == 200
    except (urllib.error.URLError, OSError) as error:
        print(f"{url}: {error}", file=sys.stderr)
        return 1
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(check(sys.argv[1] if len(sys.argv) > 1 else "/healthz"))
