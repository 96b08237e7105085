"""An ASGI app (ft-server's, or a plugin's) served by uvicorn on 127.0.0.1 in a thread, for
tests that need a real socket: an OpenAI client, a browser, a client that hangs up.

    with ThreadedServer(create_app(settings)) as server:
        httpx.get(server.url + "/health")

uvicorn is imported when a server starts (ft-server depends on it; ft-testing does not)."""

from __future__ import annotations

import threading
import time
from typing import Any


class ThreadedServer:
    """`app` served on a free port of 127.0.0.1 until `stop()`; `url` is its address."""

    def __init__(self, app: Any, *, join_timeout: float = 120.0) -> None:
        import uvicorn

        self.app = app
        self.join_timeout = join_timeout
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start: see its log above")
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        """Ask uvicorn to exit (its lifespan's shutdown runs) and wait for the thread."""
        self.server.should_exit = True
        self.thread.join(timeout=self.join_timeout)

    def __enter__(self) -> ThreadedServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
