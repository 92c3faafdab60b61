"""`recops package`: the champion imported into BentoML's model store, a Bento built from bentofile.yaml
with pinned requirements, and `bentoml serve TAG` answering over HTTP with no registry reachable."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import httpx
import pytest

from tests.conftest import Server, auth, free_port

pytestmark = pytest.mark.e2e

NO_REGISTRY = "http://127.0.0.1:9"  # nothing listens there: the packaged server must not need MLflow


def _recops(settings, *args) -> subprocess.CompletedProcess:
    recops = Path(sys.executable).with_name("recops")
    return subprocess.run([str(recops), *args], env={**os.environ, **settings.to_env()}, capture_output=True,
                          text=True, timeout=300, check=False)


def test_requirements_are_pinned_at_the_installed_versions():
    from recops.services.packaging import pinned_requirements

    pins = dict(line.split("==") for line in pinned_requirements())
    assert {"lightgbm", "pandas", "feast", "mlflow", "scikit-learn"} <= {k.lower() for k in pins}
    assert "recops" not in pins and "bentoml" not in pins  # recops travels as source; BentoML pins itself
    for name, version in pins.items():
        assert metadata.version(name) == version, name
    # followed all the way down: numpy comes through pandas, redis through feast's extra
    assert {"numpy", "redis", "pyarrow"} <= {k.lower() for k in pins}


def test_an_unknown_version_gets_a_clear_error(trained):
    settings, _ = trained
    r = _recops(settings, "package", "--version", "999")
    assert r.returncode == 2, r.stderr
    assert "has no version 999" in r.stderr


@pytest.fixture(scope="module")
def bento(trained):
    """`recops package` on the trained home's champion: the printed tag and the version it packaged."""
    from recops import registry

    settings, _ = trained
    version = registry.alias_version(settings, registry.CHAMPION)
    r = _recops(settings, "package")
    assert r.returncode == 0, r.stderr
    return r.stdout.strip().splitlines()[-1], version


def test_package_imports_the_champion_and_builds_a_bento(bento, trained):
    import bentoml

    from recops import registry

    settings, _ = trained
    tag, version = bento
    b = bentoml.bentos.get(tag)
    assert b.info.labels["registry_version"] == version
    assert [(str(m.tag), m.alias) for m in b.info.models] == [(f"recops:v{version}", "champion")]
    model = bentoml.models.get(f"recops:v{version}")
    assert model.info.labels["registry_version"] == version
    # the same bytes as the registry version's model
    packaged = Path(model.path) / "artifacts" / "recops_model.pkl"
    logged = registry.reference_folder(settings, version, "model") / "artifacts" / "recops_model.pkl"
    assert hashlib.sha256(packaged.read_bytes()).digest() == hashlib.sha256(logged.read_bytes()).digest()
    reqs = Path(b.path, "env", "python", "requirements.txt").read_text().splitlines()
    assert f"lightgbm=={metadata.version('lightgbm')}" in reqs
    assert Path(b.path, "src", "recops", "services", "service.py").exists()  # the code travels with the Bento


def test_the_bento_serves_over_http_without_the_registry(bento, trained):
    from recops.serving import Serving

    settings, _ = trained
    tag, version = bento
    srv = Server(settings, free_port(), bento=tag, env={"RECOPS_MLFLOW_TRACKING_URI": NO_REGISTRY}).wait()
    try:
        with httpx.Client(base_url=srv.url, timeout=60, headers=auth(settings)) as c:
            info = c.get("/model").json()
            assert (info["source"], info["version"], info["load_error"]) == (f"bento:recops:v{version}", version, None)
            user = "u1"
            rec = c.post("/recommend", json={"user_id": user, "k": 5}).json()
            assert rec["model_version"] == version and not rec["fallback"], rec
            assert len(rec["items"]) == 5 and all(i["reason"] for i in rec["items"])
            new = c.post("/recommend", json={"user_id": "someone-new", "k": 5}).json()
            assert new["fallback"] and len(new["items"]) == 5  # the fallback answers an unknown user
            item = rec["items"][0]["item_id"]
            served = c.post("/predict", json={"user_id": user, "item_id": item}).json()
            metrics = c.get("/metrics").text
    finally:
        srv.stop()
    assert f'source="bento:recops:v{version}"' in metrics
    # the same answer as the registry's version, served the usual way
    reference = Serving(settings, version=version)
    try:
        expected = reference.behavior.predict(user, item)
    finally:
        reference.close()
    assert served["score"] == pytest.approx(expected.score, rel=1e-6)
    assert "Traceback" not in srv.log_path.read_text()
