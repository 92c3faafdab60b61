"""A Prefect server of recops's own, for the local profile: ``prefect server start`` on embedded
SQLite under ``{home}/prefect``, so the UI shows the deployments, their schedules and triggers, and
every run (automations, deployment triggers included, work on a self-hosted Prefect 3 server).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


class PrefectServer:
    """``prefect server start`` in its own process group; ``stop`` ends it and every child."""

    def __init__(self, home: Path, port: int = 4200, host: str = "127.0.0.1"):
        self.home, self.port, self.host = Path(home).resolve(), port, host
        self.url = f"http://{host}:{port}"
        self.api_url = f"{self.url}/api"
        self.proc: subprocess.Popen | None = None
        self.log_path = self.home / "prefect-server.log"

    def env(self) -> dict[str, str]:
        """What the server and its clients need: its home, its API (also for the UI on a non-default
        port), no analytics."""
        return {"PREFECT_HOME": str(self.home), "PREFECT_API_URL": self.api_url,
                "PREFECT_SERVER_UI_API_URL": self.api_url, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "PREFECT_UI_URL": self.url}

    def start(self, timeout: float = 120.0) -> PrefectServer:
        """Start the server and wait until its API answers.

        Args:
            timeout: the longest wait, in seconds (the first start runs the database migrations).

        Returns:
            self, started.

        Raises:
            RuntimeError: the server exited, or did not answer within ``timeout`` (its log's tail says why).
        """
        import httpx

        self.home.mkdir(parents=True, exist_ok=True)
        prefect = Path(sys.executable).with_name("prefect")
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen([str(prefect), "server", "start", "--host", self.host, "--port",
                                          str(self.port)], env={**os.environ, **self.env()}, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prefect server exited: {self.log_path.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.api_url}/health", timeout=2).status_code == 200:
                    self.marker.write_text(self.api_url)
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"prefect server did not answer in {timeout:.0f} s: {self.log_path.read_text()[-2000:]}")

    @property
    def marker(self) -> Path:
        """While the server runs, this file holds its API URL (``running_api``)."""
        return self.home / "server-url"

    def stop(self) -> None:
        """End the server's process group (SIGTERM, then SIGKILL after 20 s)."""
        self.marker.unlink(missing_ok=True)
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        except ProcessLookupError:
            pass


def running_api(home: Path) -> str | None:
    """The API URL of the server ``recops schedule`` runs for this home, if it answers.

    Args:
        home: the server's home (``{recops home}/prefect``).

    Returns:
        The URL, or None (no server, or it does not answer).
    """
    import httpx

    marker = Path(home) / "server-url"
    if not marker.exists():
        return None
    url = marker.read_text().strip()
    try:
        return url if httpx.get(f"{url}/health", timeout=1).status_code == 200 else None
    except httpx.HTTPError:
        return None
