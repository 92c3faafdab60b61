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


def signature():
    """The pyfunc's input and output schema (``RecopsPyfunc.predict``), so MLflow shows and checks it.

    Returns:
        An MLflow ``ModelSignature``: ``user_id`` with optional ``history``, ``exclude`` and ``k`` in;
        ``user_id``, ``item_id``, ``rank``, ``score`` out; the ``k`` parameter (default 10).
    """
    from mlflow.models import ModelSignature
    from mlflow.types import DataType
    from mlflow.types.schema import Array, ColSpec, ParamSchema, ParamSpec, Schema

    inputs = Schema([ColSpec(DataType.string, "user_id"),
                     ColSpec(Array(DataType.string), "history", required=False),
                     ColSpec(Array(DataType.string), "exclude", required=False),
                     ColSpec(DataType.long, "k", required=False)])
    outputs = Schema([ColSpec(DataType.string, "user_id"), ColSpec(DataType.string, "item_id"),
                      ColSpec(DataType.long, "rank"), ColSpec(DataType.double, "score")])
    return ModelSignature(inputs, outputs, ParamSchema([ParamSpec("k", DataType.long, 10)]))


def log_model(settings: Settings, model, params: dict, metrics: dict, extra: dict | None = None,
              figures: dict | None = None, folders: dict | None = None, run: dict | None = None) -> dict:
    """One run: params, metrics, figures, the feature list and the packaged model, registered as @challenger.

    Args:
        settings: the MLflow backend, experiment and registered model name (``model_name``).
        model: the fitted ``RecopsModel``; with a ranker, its feature importance (gain) is logged too.
        params: the run's parameters.
        metrics: the run's metrics (values cast to float).
        extra: artifact file name -> a dict logged under that name (JSON); None: none.
        figures: artifact file name -> a matplotlib figure; None: none.
        folders: artifact folder name -> a local folder logged under it; None: none.
        run: how the run reads in the MLflow UI: ``name`` (``{version}`` is filled in once registered),
            ``tags``, ``description`` (``{version}`` filled in too), ``started_at`` (epoch seconds: the
            run's duration is the training's) and ``dataset`` (an MLflow dataset, logged as the
            training input); None: a run named ``train``.

    Returns:
        ``run_id``, ``version`` (the new registered version, a string) and ``model_uri``
        (``models:/{model_name}/{version}``).
    """
    import time

    import mlflow

    from recops.models.packaging import RecopsPyfunc

    client = setup(settings)
    run = run or {}
    exp = mlflow.get_experiment_by_name(settings.mlflow_experiment)
    from mlflow.tracking.context.registry import resolve_tags  # source, user, git commit, as start_run sets them

    started = client.create_run(exp.experiment_id, start_time=int(1000 * run.get("started_at", time.time())),
                                tags=resolve_tags({k: str(v) for k, v in run.get("tags", {}).items()}),
                                run_name=run.get("name", "train").replace("{version}", "…"))
    with mlflow.start_run(run_id=started.info.run_id) as active, tempfile.TemporaryDirectory() as tmp:
        mlflow.log_params(params)
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
        if run.get("dataset") is not None:
            mlflow.log_input(run["dataset"], context="training")
        mlflow.log_dict({"features": model.feature_names, "generators": list(model.generators)}, "features.json")
        if model.ranker is not None:
            imp = dict(zip(model.feature_names, model.ranker.feature_importance("gain").round(3).tolist()))
            mlflow.log_dict(dict(sorted(imp.items(), key=lambda kv: -kv[1])), "feature_importance.json")
        for name, obj in (extra or {}).items():
            mlflow.log_dict(obj, name)
        for name, fig in (figures or {}).items():
            mlflow.log_figure(fig, name)
        for name, folder in (folders or {}).items():
            mlflow.log_artifacts(str(folder), name)
        path = Path(tmp) / "recops_model.pkl"
        model.save(path)
        info = mlflow.pyfunc.log_model(
            name="model", python_model=RecopsPyfunc(), artifacts={"model": str(path)}, signature=signature(),
            pip_requirements=pip_requirements(), registered_model_name=settings.model_name,
        )
        version = str(info.registered_model_version)
        run_id = active.info.run_id
        client.set_registered_model_alias(settings.model_name, CHALLENGER, version)
        client.set_model_version_tag(settings.model_name, version, "run_id", run_id)
        for k, v in run.get("tags", {}).items():  # what the version is, where the registry lists it
            client.set_model_version_tag(settings.model_name, version, k, str(v))
        client.update_run(run_id, name=run.get("name", "train").replace("{version}", version))
        if run.get("description"):
            mlflow.set_tag("mlflow.note.content", run["description"].replace("{version}", version))
            client.update_model_version(settings.model_name, version, run["description"].replace("{version}", version))
        mlflow.set_tag("model_version", version)
        return {"run_id": run_id, "version": version, "model_uri": f"models:/{settings.model_name}/{version}"}


def reference_folder(settings: Settings, version: str, name: str) -> Path:
    """A registered version's artifact folder, downloaded once to ``home/registry/v{version}/{name}``.

    Args:
        settings: the MLflow backend and registered model name.
        version: the version.
        name: the folder's artifact path in the version's training run.

    Returns:
        The local folder.
    """
    import mlflow

    client = setup(settings)
    local = (Path(settings.home) / "registry" / f"v{version}").resolve()
    if not (local / name).exists():
        run_id = client.get_model_version(settings.model_name, version).run_id
        local.mkdir(parents=True, exist_ok=True)
        mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=name, dst_path=str(local))
    return local / name


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
