"""The OpenAPI document tells the truth: schemathesis (pinned, every check) against the real server,
on a home of its own (the fuzzed events must not touch the shared one), fails on any finding."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from recops.config import load_settings
from tests.conftest import Server, free_port, token, train_champion

pytestmark = pytest.mark.e2e

CONFIG = Path(__file__).with_name("schemathesis.toml")


@pytest.fixture(scope="module")
def contract_server(tmp_root):
    settings = load_settings(home=tmp_root / "contract")
    train_champion(settings, n_events=4_000, seed=5)
    srv = Server(settings, free_port(), workers=1).wait()
    yield srv
    srv.stop()


def test_the_server_keeps_every_promise_of_its_openapi_document(contract_server):
    srv = contract_server
    st = Path(sys.executable).with_name("schemathesis")
    # a fixed seed: the same cases every run (bench/chaos.py explores with fresh seeds)
    r = subprocess.run([str(st), "--config-file", str(CONFIG), "run", f"{srv.url}/docs.json", "--checks", "all",
                        "-H", f"Authorization: Bearer {token(srv.settings)}", "--seed", "1", "-w", "1",
                        "--no-color"], capture_output=True, text=True, timeout=600, check=False,
                       cwd=srv.settings.home)  # its cache folder goes there, not into the checkout
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-6000:]
    generated = re.search(r"(\d+) generated, (\d+) passed", out)
    assert generated and int(generated.group(1)) >= 1000 and generated.group(1) == generated.group(2), out[-2000:]
    assert re.search(r"status=5\d\d", srv.log_path.read_text()) is None  # the access log: not one 5xx
