"""The scale-out profile against the PostgreSQL and Redis on 127.0.0.1 (real servers, own DB and namespace)."""

import uuid

import pandas as pd
import pytest
import sqlalchemy as sa

from recops import registry, steps
from recops.config import load_settings
from recops.featurestore import FeatureStoreClient
from recops.online import refresh
from recops.store import EventStore
from tests.conftest import END

pytestmark = pytest.mark.scaleout
ADMIN = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"


@pytest.fixture(scope="module")
def scaleout(tmp_root):
    tag = uuid.uuid4().hex[:8]
    dbs = [f"recops_test_{tag}", f"recops_mlflow_test_{tag}"]
    admin = sa.create_engine(ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        for db in dbs:
            c.execute(sa.text(f'CREATE DATABASE "{db}"'))
    settings = load_settings(
        profile="scaleout", home=tmp_root / f"scaleout-{tag}",
        event_store_url=f"postgresql+psycopg2://postgres@127.0.0.1:5432/{dbs[0]}",
        mlflow_tracking_uri=f"postgresql+psycopg2://postgres@127.0.0.1:5432/{dbs[1]}",
        redis_url="127.0.0.1:6379,db=0", feast_project=f"recops_test_{tag}", prefect_api_url="",
    )
    yield settings
    try:
        FeatureStoreClient(settings).teardown()  # deletes this project's keys only
    finally:
        import gc

        gc.collect()
        with admin.connect() as c:
            for db in dbs:
                c.execute(sa.text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
        admin.dispose()


def test_scaleout_pipeline_on_postgres_and_redis(scaleout):
    s = scaleout
    assert s.event_store_uri.startswith("postgresql") and s.online_store == "redis"
    b = steps.ingest(s, n_events=12_000, end=END, seed=5, bad_share=0.01)
    v = steps.validate(s, b["batch_id"])
    store = EventStore(s.event_store_uri)
    assert store.dialect == "postgresql" and store.count_events() == v["loaded"] > 0
    assert len(store.quarantined()) == v["bad_rows"] > 0
    assert steps.validate(s, b["batch_id"])["loaded"] == 0  # idempotent on event_id in PostgreSQL too
    steps.build_features(s)
    t = steps.train(s)
    assert steps.promote(s)["promoted"]
    assert registry.alias_version(s, registry.CHAMPION) == t["version"]
    assert registry.setup(s).tracking_uri.startswith("postgresql")

    # online features live in Redis: materialized values, then a real-time push
    fs = FeatureStoreClient(s)
    user = store.events()["user_id"].value_counts().index[0]
    before = fs.online_user(user)
    assert before is not None and before["u_events_30d"] >= 0
    import redis

    r = redis.Redis(host="127.0.0.1", port=6379, db=0)
    assert any(s.feast_project.encode() in k for k in r.scan_iter(count=1000))
    now = pd.Timestamp.now(tz="UTC")
    ev = pd.DataFrame({"event_id": [f"so-{uuid.uuid4().hex}"], "user_id": [user], "item_id": ["i1"],
                       "event_type": ["purchase"], "timestamp": [now], "session_id": ["so"], "value": [12.5],
                       "context": [None]})
    assert store.add_events(ev) == 1
    refresh(store, fs, [user], [], store.items(), as_of=now)
    after = fs.online_user(user)
    assert after["u_purchase_1d"] >= 1 and after["u_last_event_ts"] > before["u_last_event_ts"]
    # the /recommend hot query (driver-level SQL, pyformat on psycopg2) on PostgreSQL
    hist, bought, _ = store.user_state(user_id=user, n=5, exclude_types=("purchase", "rate"))
    assert hist[0] == "i1" and len(hist) == 5 and "i1" in bought
    store.dispose()
