"""Services a fault-injection test (or bench/chaos.py) starts on ports of its own and then kills: a
PostgreSQL cluster and a Redis server. Each raises ``Unavailable`` when its binaries are absent."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

PG_BIN = Path("/usr/lib/postgresql/15/bin")


class Unavailable(RuntimeError):
    """The service's binaries are not on this machine."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgCluster:
    """A PostgreSQL cluster of its own (initdb as the postgres user), on a free port."""

    def __init__(self):
        if not (PG_BIN / "initdb").exists() or shutil.which("runuser") is None:
            raise Unavailable("PostgreSQL 15's server binaries or runuser are absent")
        self.dir = Path(tempfile.mkdtemp(prefix="recops-pg-"))
        os.chown(self.dir, *self._ids())
        self.port = free_port()
        self._as_postgres(PG_BIN / "initdb", "-D", self.dir / "data", "-A", "trust", "-U", "postgres")
        self.url = f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/postgres"

    @staticmethod
    def _ids() -> tuple[int, int]:
        import pwd

        pw = pwd.getpwnam("postgres")
        return pw.pw_uid, pw.pw_gid

    def _as_postgres(self, *cmd) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *map(str, cmd)], check=True, capture_output=True,
                       timeout=120)

    def start(self) -> None:
        self._as_postgres(PG_BIN / "pg_ctl", "-D", self.dir / "data", "-l", self.dir / "log", "-w", "-o",
                          f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1", "start")

    def kill(self) -> None:
        """Stop at once, as a crash would (``pg_ctl -m immediate``)."""
        self._as_postgres(PG_BIN / "pg_ctl", "-D", self.dir / "data", "-m", "immediate", "-w", "stop")

    def remove(self) -> None:
        try:
            self.kill()
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


class RedisServer:
    """A redis-server of its own on a free port, keeping nothing on disk (a restart starts empty)."""

    def __init__(self):
        if shutil.which("redis-server") is None:
            raise Unavailable("redis-server is absent")
        self.port, self.proc = free_port(), None
        self.url = f"127.0.0.1:{self.port}"

    def start(self) -> None:
        import redis

        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(host="127.0.0.1", port=self.port)
        deadline = time.time() + 20
        while True:
            try:
                client.ping()
                return
            except redis.exceptions.ConnectionError:
                if time.time() > deadline:
                    raise TimeoutError("redis-server did not start") from None
                time.sleep(0.1)

    def kill(self) -> None:
        """kill -9."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
