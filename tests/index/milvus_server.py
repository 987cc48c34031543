"""A Milvus standalone server for the tests (the ``milvus`` package on PyPI ships one).

Its data lives in a folder of the test session; every component advertises 127.0.0.1 (Milvus
2.3's gRPC servers still listen on all interfaces; this machine has no outside network). The
server can be SIGKILLed and started again on the same data and ports, as a crash would leave it.
"""

from __future__ import annotations

import signal
import socket
import subprocess
from pathlib import Path

_COMPONENTS = ("rootCoord", "proxy", "queryCoord", "queryNode", "indexCoord", "indexNode",
               "dataCoord", "dataNode")


def _config_class():
    from milvus import MilvusServerConfig

    class LoopbackConfig(MilvusServerConfig):
        """Ports probed with SO_REUSEADDR, as the server itself binds them: a port left in
        TIME_WAIT by a killed server can be taken again on restart."""

        def try_bind_port(self, port):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
                sock.listen()
                return sock
            except (OSError, OverflowError, ValueError):
                sock.close()
                return None

    return LoopbackConfig


class MilvusServerProcess:
    def __init__(self, data_dir: Path):
        self.data_dir = Path(data_dir)
        self.ports: dict[str, int] = {}
        self.server = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.ports['proxy_port']}"

    def start(self) -> None:
        """Start on the data folder; a restart reuses the ports of the first start."""
        from milvus import MilvusServer

        config = _config_class()(data_dir=str(self.data_dir), **self.ports)
        for component in _COMPONENTS:
            config.set(f"{component}.ip", "127.0.0.1")
        self.server = MilvusServer(config)
        try:
            self.server.start()
        except BaseException:
            self.stop()
            raise
        self.ports = {key: int(config.get(key)) for key in config.configurable_items if key.endswith("_port")}

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

    @property
    def log(self) -> Path:
        return self.data_dir / "logs" / "milvus-stderr.log"
