"""A TCP echo server on 127.0.0.1: the target kwok's port-forward rule connects fake pods' ports to."""

from __future__ import annotations

import socketserver
import threading


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.settimeout(60)
        try:
            while data := self.request.recv(65536):
                self.request.sendall(data)
        except OSError:
            return


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class EchoServer:
    def __init__(self) -> None:
        self._server = _Server(("127.0.0.1", 0), _Echo)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"echo-{self.port}", daemon=True)

    def start(self) -> EchoServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
