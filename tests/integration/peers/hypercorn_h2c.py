"""A strict third-party HTTP/2 upstream for weft's tests: hypercorn serving
h2c (HTTP/2 by prior knowledge) on 127.0.0.1, on a port the OS picks.

hypercorn checks every request with python-h2, which refuses a request whose
`host` header differs from its `:authority` (RFC 9113 section 8.3.1) with a
GOAWAY PROTOCOL_ERROR. A request that passes is answered 200 with the
authority hypercorn saw (it hands `:authority` to the app as `host`) and
the HTTP version.

Prints the port on the first line of stdout; serves until stdin closes.
"""

import asyncio
import socket
import sys

from hypercorn.asyncio import serve
from hypercorn.config import Config


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    authority = b",".join(v for k, v in scope["headers"] if k == b"host").decode()
    body = f"authority={authority} http_version={scope['http_version']}\n"
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body.encode()})


async def main():
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    sock.set_inheritable(True)
    config = Config()
    config.bind = [f"fd://{sock.fileno()}"]
    config.accesslog = None
    config.errorlog = "-"
    config.loglevel = "WARNING"
    print(sock.getsockname()[1], flush=True)
    loop = asyncio.get_running_loop()
    stdin_closed = loop.run_in_executor(None, sys.stdin.read)
    await serve(app, config, shutdown_trigger=lambda: stdin_closed)


asyncio.run(main())
