"""MLflow tracking and registry: experiments, logged runs, aliases (@challenger, @champion)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from recops.config import Settings

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

CHALLENGER, CHAMPION = "challenger", "champion"


def setup(settings: Settings):
    """Point MLflow at the settings' backend; create the experiment with an explicit artifact root.

    Args:
        settings: its ``tracking_uri`` (also the registry URI), ``mlflow_experiment`` and ``artifact_root``
            (the experiment's artifacts go to ``{artifact_root}/{mlflow_experiment}``).

    Returns:
        An ``MlflowClient`` on that backend; the experiment is also made the active one.
    """
    import mlflow

    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    exp = mlflow.get_experiment_by_name(settings.mlflow_experiment)
    if exp is None:
        root = settings.artifact_root.rstrip("/")
        mlflow.create_experiment(settings.mlflow_experiment, artifact_location=f"{root}/{settings.mlflow_experiment}")
    mlflow.set_experiment(settings.mlflow_experiment)
    return mlflow.MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)


def pip_requirements() -> list[str]:
    """The pip requirements logged with the model: its runtime packages at their installed versions.

    Returns:
        ``package==version`` strings.
    """
    from importlib.metadata import version

    return [f"{p}=={version(p)}" for p in ("lightgbm", "scikit-learn", "pandas", "numpy", "scipy", "mlflow")]


def log_model(settings: Settings, model, params: dict, metrics: dict, extra: dict | None = None,
              figures: dict | None = None) -> dict:
    """One run: params, metrics, figures, the feature list and the packaged model, registered as @challenger.

    Args:
        settings: the MLflow backend, experiment and registered model name (``model_name``).
        model: the fitted ``RecopsModel``; with a ranker, its feature importance (gain) is logged too.
        params: the run's parameters.
        metrics: the run's metrics (values cast to float).
        extra: artifact file name -> a dict logged under that name (JSON); None: none.
        figures: artifact file name -> a matplotlib figure; None: none.

    Returns:
        ``run_id``, ``version`` (the new registered version, a string) and ``model_uri``
        (``models:/{model_name}/{version}``).
    """
    import mlflow

    from recops.models.packaging import RecopsPyfunc

    client = setup(settings)
    with mlflow.start_run(run_name="train") as run, tempfile.TemporaryDirectory() as tmp:
        mlflow.log_params(params)
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
        mlflow.log_dict({"features": model.feature_names, "generators": list(model.generators)}, "features.json")
        if model.ranker is not None:
            imp = dict(zip(model.feature_names, model.ranker.feature_importance("gain").round(3).tolist()))
            mlflow.log_dict(dict(sorted(imp.items(), key=lambda kv: -kv[1])), "feature_importance.json")
        for name, obj in (extra or {}).items():
            mlflow.log_dict(obj, name)
        for name, fig in (figures or {}).items():
            mlflow.log_figure(fig, name)
        path = Path(tmp) / "recops_model.pkl"
        model.save(path)
        info = mlflow.pyfunc.log_model(
            name="model", python_model=RecopsPyfunc(), artifacts={"model": str(path)},
            pip_requirements=pip_requirements(), registered_model_name=settings.model_name,
        )
        version = str(info.registered_model_version)
        client.set_registered_model_alias(settings.model_name, CHALLENGER, version)
        client.set_model_version_tag(settings.model_name, version, "run_id", run.info.run_id)
        return {"run_id": run.info.run_id, "version": version, "model_uri": f"models:/{settings.model_name}/{version}"}


def alias_version(settings: Settings, alias: str) -> str | None:
    """The version an alias points at, or None (no registered model or no such alias).

    Args:
        settings: the MLflow backend and registered model name.
        alias: the alias, e.g. CHALLENGER or CHAMPION.

    Returns:
        The version number as a string, or None.

    Raises:
        Exception: any MLflow error other than "not found" (e.g. an unreachable backend) is re-raised.
    """
    client = setup(settings)
    try:
        return str(client.get_model_version_by_alias(settings.model_name, alias).version)
    except Exception as exc:  # MLflow raises RestException/MlflowException for "not found"
        if ("not found" in str(exc).lower() or "does not exist" in str(exc).lower()
                or "RESOURCE_DOES_NOT_EXIST" in str(exc)):
            return None
        raise


def latest_version(settings: Settings) -> str | None:
    """The newest registered version (the one the last train registered), or None.

    Args:
        settings: the MLflow backend and registered model name.

    Returns:
        The highest version number as a string, or None when the model has no version.
    """
    client = setup(settings)
    versions = client.search_model_versions(f"name='{settings.model_name}'")
    return str(max(int(v.version) for v in versions)) if versions else None


def registered_at(settings: Settings, version: str) -> float:
    """When a version was registered (its training run ended then).

    Args:
        settings: the MLflow backend and registered model name.
        version: the version number.

    Returns:
        Epoch seconds.
    """
    client = setup(settings)
    return client.get_model_version(settings.model_name, version).creation_timestamp / 1000.0


def load_version(settings: Settings, version: str):
    """The RecopsModel of a registered version.

    Args:
        settings: the MLflow backend and registered model name.
        version: the version number, e.g. from alias_version.

    Returns:
        The unwrapped ``RecopsModel`` (not the pyfunc wrapper).
    """
    import mlflow

    setup(settings)
    pyf = mlflow.pyfunc.load_model(f"models:/{settings.model_name}/{version}")
    return pyf.unwrap_python_model().model
