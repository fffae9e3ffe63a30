"""A local HTTP server that answers the one Kubernetes API request a worker makes (a StatefulSet's
``spec.replicas``, ``stream_app.scale_down``) as the API server does: for the tests and for
``persona bench scale``, where no cluster runs, so that the worker's request goes over a real
socket as real HTTP and gets real JSON back, not a patched function's answer."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

_PATH = re.compile(r"^/apis/apps/v1/namespaces/(?P<ns>[^/]+)/statefulsets/(?P<name>[^/]+)$")


class StatefulSetApi:
    """Serves ``GET /apis/apps/v1/namespaces/NS/statefulsets/NAME`` from :attr:`replicas`
    (``(ns, name) -> replicas``; None serves a spec without the field); 404 for anything else,
    or :attr:`status` for every request when set. Records each request's path and Authorization."""

    def __init__(self, token: str | None = None) -> None:
        self.replicas: dict[tuple[str, str], int | None] = {}
        self.status: int | None = None
        self.body: bytes | None = None  # served as is when set (a malformed answer)
        self.redirect: str | None = None  # a 307 to this base URL (same path) when set
        self.token = token
        self.requests: list[tuple[str, str | None]] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802  (http.server's name)
                api.requests.append((self.path, self.headers.get("Authorization")))
                if api.redirect is not None:
                    self.send_response(307)
                    self.send_header("Location", api.redirect + self.path)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                code, body = api._answer(self.path, self.headers.get("Authorization"))
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def _answer(self, path: str, auth: str | None) -> tuple[int, bytes]:
        if self.status is not None:
            return self.status, json.dumps({"kind": "Status", "code": self.status}).encode()
        if self.token is not None and auth != f"Bearer {self.token}":
            return 401, b'{"kind": "Status", "code": 401}'
        if self.body is not None:
            return 200, self.body
        m = _PATH.match(path)
        if m is None or (m.group("ns"), m.group("name")) not in self.replicas:
            return 404, b'{"kind": "Status", "code": 404}'
        replicas = self.replicas[(m.group("ns"), m.group("name"))]
        spec: dict[str, Any] = {"serviceName": m.group("name")} if replicas is None else {"replicas": replicas}
        return 200, json.dumps({"kind": "StatefulSet", "metadata": {"name": m.group("name")}, "spec": spec}).encode()

    def __enter__(self) -> StatefulSetApi:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._server.shutdown()
        self._server.server_close()
