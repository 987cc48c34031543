"""A Milvus standalone server for the tests (the ``milvus`` package on PyPI ships one), on loopback only.

Milvus 2.3's servers listen on every interface, whatever their config says. So the server runs
in a network namespace of its own (``unshare --net``: nothing but its own loopback), and the
tests reach it through a relay on this machine's 127.0.0.1 that forwards the client port and the
health port into that namespace. No Milvus port is open on any interface of the machine.

Its data lives in a folder of the test session. The server can be SIGKILLed and started again on
the same data, as a crash would leave it; the relay keeps its ports, so clients reconnect to the
same URI.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

_CLONE_NEWNET = 0x40000000
#: the ports Milvus takes inside its namespace (nothing else is there, so the defaults are free)
_PROXY_PORT, _HEALTH_PORT = 19530, 9091


def can_isolate() -> str | None:
    """Why the server cannot run in a namespace of its own here (None: it can)."""
    if os.geteuid() != 0:
        return "needs root to give the Milvus server a network namespace of its own"
    if not (shutil.which("unshare") and shutil.which("ip")):
        return "needs util-linux's unshare and iproute2's ip"
    return None


class NamespaceRelay:
    """Ports on this machine's 127.0.0.1 forwarded to the same loopback ports inside another
    process's network namespace (set with :meth:`point_at`; re-pointed after a restart)."""

    def __init__(self, inner_ports: list[int]):
        self._netns: str | None = None
        self._listeners: list[socket.socket] = []
        self.host_port: dict[int, int] = {}
        for inner in inner_ports:
            listener = socket.create_server(("127.0.0.1", 0))
            self._listeners.append(listener)
            self.host_port[inner] = listener.getsockname()[1]
            threading.Thread(target=self._accept, args=(listener, inner), daemon=True).start()

    def point_at(self, pid: int) -> None:
        self._netns = f"/proc/{pid}/ns/net"

    def close(self) -> None:
        for listener in self._listeners:
            listener.close()

    def _accept(self, listener: socket.socket, inner: int) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._bridge, args=(client, inner), daemon=True).start()

    def _bridge(self, client: socket.socket, inner: int) -> None:
        try:
            upstream = self._connect_inside(inner)
        except OSError:
            client.close()  # the server is down or starting: the client sees a reset and retries
            return
        threading.Thread(target=_pump, args=(upstream, client), daemon=True).start()
        _pump(client, upstream)

    def _connect_inside(self, port: int) -> socket.socket:
        """A TCP connection made from inside the namespace: ``setns`` moves only the calling
        thread, so a short-lived thread enters it, connects, and hands the socket back."""
        result: dict = {}

        def connect() -> None:
            try:
                with open(self._netns or "/nonexistent") as ns:
                    libc = ctypes.CDLL(None, use_errno=True)
                    if libc.setns(ns.fileno(), _CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), "setns failed")
                result["sock"] = socket.create_connection(("127.0.0.1", port), timeout=5)
                result["sock"].settimeout(None)
            except OSError as exc:
                result["error"] = exc

        thread = threading.Thread(target=connect, daemon=True)
        thread.start()
        thread.join()
        if "error" in result:
            raise result["error"]
        return result["sock"]


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


def _config_class():
    from milvus import MilvusServerConfig

    class NamespaceConfig(MilvusServerConfig):
        """Every port is free inside the server's own namespace: nothing to probe on this machine."""

        def try_bind_port(self, port):
            return socket.socket()  # the caller only closes it

    return NamespaceConfig


def _server_class():
    from milvus import MilvusServer

    class NamespacedServer(MilvusServer):
        """Starts the Milvus binary through ``unshare --net`` with its loopback up; every step
        ``exec``s, so the process the package watches and kills is Milvus itself."""

        def get_milvus_executable_path(self):
            real = super().get_milvus_executable_path()
            wrapper = Path(real).with_name("milvus-in-netns")
            wrapper.write_text(f"#!/bin/sh\nexec unshare --net sh -c 'ip link set lo up && exec \"$0\" \"$@\"' "
                               f"'{real}' \"$@\"\n")
            wrapper.chmod(0o755)
            return str(wrapper)

    return NamespacedServer


class MilvusServerProcess:
    def __init__(self, data_dir: Path):
        self.data_dir = Path(data_dir)
        self.server = None
        self.relay = NamespaceRelay([_PROXY_PORT, _HEALTH_PORT])

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.relay.host_port[_PROXY_PORT]}"

    def start(self, timeout: float = 180) -> None:
        """Start on the data folder (the same data after a kill) and wait until it is healthy."""
        config = _config_class()(data_dir=str(self.data_dir), proxy_port=_PROXY_PORT)
        for component in ("rootCoord", "proxy", "queryCoord", "queryNode", "indexCoord", "indexNode",
                          "dataCoord", "dataNode"):
            config.set(f"{component}.ip", "127.0.0.1")
        self.server = _server_class()(config, wait_for_started=False)
        self.server.webservice_port = _HEALTH_PORT
        try:
            self.server.start()
            self.relay.point_at(self.server.server_proc.pid)
            self._wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_healthy(self, timeout: float) -> None:
        url = f"http://127.0.0.1:{self.relay.host_port[_HEALTH_PORT]}/healthz"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.server.server_proc.poll() is not None:
                raise RuntimeError(f"the Milvus server exited with {self.server.server_proc.returncode}")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if b"OK" in response.read():
                        return
            except OSError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"the Milvus server was not healthy after {timeout:.0f} s")

    def kill(self) -> None:
        """SIGKILL, as a crash: no chance to flush or close anything."""
        process: subprocess.Popen = self.server.server_proc
        process.send_signal(signal.SIGKILL)
        process.wait()
        self.stop()  # closes its log files

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def close(self) -> None:
        self.stop()
        self.relay.close()

    @property
    def log(self) -> Path:
        return self.data_dir / "logs" / "milvus-stderr.log"
