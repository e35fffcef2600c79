"""A bare ASGI app on uvicorn (httptools, uvloop): the cost of HTTP alone, the floor under any service.

    python -m bench.bare --port 8200   (binds 127.0.0.1)
Answers every request with 200 and a fixed 912-byte body (the size of one 28x28 .npy sample).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import uvicorn

BODY = b"\x93NUMPY" + b"\0" * 906
HEADERS = [(b"content-type", b"application/octet-stream"), (b"content-length", str(len(BODY)).encode())]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    more = True
    while more:  # read the whole request body, as any real handler must
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
