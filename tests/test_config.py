import pytest

from recops.config import load_settings


def test_defaults_are_local_and_embedded(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = load_settings(home=tmp_path / "h")
    assert s.profile == "local"
    assert s.event_store_uri.startswith("sqlite:///") and s.tracking_uri.startswith("sqlite:///")
    assert s.online_store == "sqlite" and s.prefect_api_url == ""


def test_file_then_env_then_overrides(tmp_path, monkeypatch):
    cfg = tmp_path / "recops.yaml"
    cfg.write_text("k: 5\nholdout_days: 3\ncustom_event_types: {share: 2.5}\n")
    monkeypatch.setenv("RECOPS_K", "7")
    s = load_settings(cfg)
    assert s.k == 7 and s.holdout_days == 3.0
    assert s.event_types["share"] == 2.5 and s.event_types["purchase"] == 5.0
    assert load_settings(cfg, k=9).k == 9


def test_scaleout_profile_selects_postgres_redis_prefect_server():
    s = load_settings(profile="scaleout")
    assert s.event_store_uri.startswith("postgresql") and s.tracking_uri.startswith("postgresql")
    assert s.online_store == "redis" and s.prefect_api_url.startswith("http://127.0.0.1:4200")


def test_bad_settings_are_named(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("nonsense: 1\n")
    with pytest.raises(ValueError, match="nonsense"):
        load_settings(cfg)
    with pytest.raises(ValueError, match="profile"):
        load_settings(profile="cloud")
    cfg.write_text("custom_event_types: {view: 3}\n")
    with pytest.raises(ValueError, match="built-in"):
        load_settings(cfg)


def test_to_env_round_trips(tmp_path, monkeypatch):
    s = load_settings(home=tmp_path, k=12, online_store="redis")
    for k, v in s.to_env().items():
        monkeypatch.setenv(k, v)
    again = load_settings()
    assert again.k == 12 and again.online_store == "redis" and again.home.resolve() == tmp_path.resolve()
