"""The champion packaged the BentoML way: a registry version imported into BentoML's model store,
and a Bento (the service's code, that model, pinned requirements) built from ``bentofile.yaml``.

    recops package [--version N | --alias champion]
      1. import_model   models:/{model_name}/{N}  ->  BentoML model ``{model_name}:v{N}`` (once per version;
                        labels: the registry version and run; metadata: when it was registered)
      2. build          a build context: the recops package, requirements pinned at the versions
                        installed here, ``bentofile.yaml`` with that model (alias ``champion``) and the
                        Bento argument ``model``  ->  Bento ``recops:v{N}-{time}``
    bentoml serve recops:v{N}-{time}
                        the service finds the ``model`` argument and serves that model (``Packaged``):
                        no registry at start, no reload; the fallback, tracking and the rest as usual

Light imports only (the service's supervisor imports this module): BentoML, MLflow and the model
are imported where they are used.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import NamedTuple

import yaml

from recops.config import Settings

MODEL_ARG = "model"  # the Bento argument that names the packaged model (``bentoml serve --arg model=TAG``)
MODEL_FILE = "artifacts/recops_model.pkl"  # inside the MLflow model folder the registry version holds
BENTOFILE = Path(__file__).with_name("bentofile.yaml")


class Packaged(NamedTuple):
    """A model in BentoML's model store, as the service serves it."""

    tag: str  # BentoML model tag, ``{model_name}:v{version}``
    version: str  # the registry version it was imported from
    registered_at: float  # when that version was registered (epoch s)
    path: Path  # the model's folder in the store

    @classmethod
    def from_store(cls, tag: str) -> Packaged:
        """The model with this tag (or alias) in BentoML's model store, as a Bento serves it.

        Args:
            tag: a BentoML model tag, or an alias the Bento declares.

        Returns:
            Its tag, registry version, registration time and folder.

        Raises:
            bentoml.exceptions.NotFound: no such model in the store.
        """
        import bentoml

        model = bentoml.models.get(tag)
        return cls(str(model.tag), str(model.info.labels["registry_version"]),
                   float(model.info.metadata["registered_at"]), Path(model.path))

    def load(self):
        """The ``RecopsModel`` (no MLflow: the pickled model inside the MLflow model folder).

        Returns:
            The model.
        """
        from recops.models.recommender import RecopsModel

        return RecopsModel.load(self.path / MODEL_FILE)


def from_arguments() -> Packaged | None:
    """The packaged model this process serves: the Bento's ``model`` argument, if any.

    Returns:
        The model named by the argument, or None (no argument: follow the registry).
    """
    import bentoml

    tag = getattr(bentoml.use_arguments(), MODEL_ARG, None)
    return Packaged.from_store(tag) if tag else None


def model_tag(settings: Settings, version: str) -> str:
    """The BentoML tag of a registry version.

    Args:
        settings: the registered model's name (``model_name``).
        version: the registry version.

    Returns:
        ``{model_name}:v{version}`` (lower case, as BentoML's tags are).
    """
    return f"{settings.model_name.lower()}:v{version}"


def import_model(settings: Settings, version: str):
    """Import a registry version's MLflow model into BentoML's model store (once: a version never changes).

    Args:
        settings: the MLflow backend and registered model name.
        version: the registry version.

    Returns:
        The ``bentoml.Model``.
    """
    import bentoml
    import mlflow

    from recops import registry

    tag = model_tag(settings, version)
    try:
        return bentoml.models.get(tag)
    except bentoml.exceptions.NotFound:
        pass
    client = registry.setup(settings)
    mv = client.get_model_version(settings.model_name, version)
    labels = {"registry_version": str(version), "registered_model": settings.model_name, "run_id": mv.run_id}
    meta = {"registered_at": mv.creation_timestamp / 1000.0, "source": f"models:/{settings.model_name}/{version}",
            "tracking_uri": settings.tracking_uri, "description": mv.description or ""}
    with bentoml.models.create(tag, labels=labels, metadata=meta) as model:
        mlflow.artifacts.download_artifacts(meta["source"], dst_path=model.path)
        if not (Path(model.path) / MODEL_FILE).exists():
            raise FileNotFoundError(f"{meta['source']} holds no {MODEL_FILE}: not a recops model")
    return model


def pinned_requirements(root: str = "recops", leave_out: tuple[str, ...] = ("recops", "bentoml")) -> list[str]:
    """``root``'s dependencies, all the way down, pinned at the versions installed here: the versions
    the model was trained and tested with. BentoML adds its own pin; recops travels as source.

    Args:
        root: the distribution whose requirements are followed.
        leave_out: distributions not listed.

    Returns:
        Sorted ``name==version`` lines.
    """
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    done: dict[str, set[str]] = {}  # distribution -> the extras whose requirements were followed
    todo: list[tuple[str, frozenset[str]]] = [(root, frozenset())]
    pins: dict[str, str] = {}
    while todo:
        name, extras = todo.pop()
        key = canonicalize_name(name)
        new = set(extras | {""}) - done.get(key, set())
        if not new:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # a marker-free requirement that is not installed is not needed here
        done.setdefault(key, set()).update(new)
        pins[key] = f"{dist.metadata['Name']}=={dist.version}"
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in new):
                todo.append((req.name, frozenset(req.extras)))
    return sorted(pin for key, pin in pins.items() if key not in leave_out)


# pyproject.toml installs the design card's top-level folders as sub-packages of recops (``package-dir``):
# an editable install keeps them where they are, so they are not found under recops's own folder
MAPPED = ("flows", "models", "services", "feature_repo", "expectations")


def _copy_package(dst: Path) -> None:
    """Copy the installed recops package, mapped folders included, into ``dst/recops``: Python files
    and package data, no caches."""
    import importlib
    import pkgutil

    roots = ["recops"] + [f"recops.{m}" for m in MAPPED]
    names = set(roots)
    for root in roots:
        pkg = importlib.import_module(root)
        names |= {m.name for m in pkgutil.walk_packages(pkg.__path__, f"{root}.") if m.ispkg}
    for name in sorted(names):
        src = Path(importlib.import_module(name).__file__).parent
        target = dst.joinpath(*name.split("."))
        target.mkdir(parents=True, exist_ok=True)
        for f in src.iterdir():
            if f.is_file() and f.suffix in {".py", ".yaml", ".json"}:
                shutil.copy2(f, target / f.name)


def build(settings: Settings, version: str) -> str:
    """Package a registry version: import it into BentoML's model store, then build a Bento from
    ``bentofile.yaml`` with it.

    Args:
        settings: the MLflow backend and registered model name.
        version: the registry version.

    Returns:
        The Bento's tag, for ``bentoml serve`` and ``bentoml containerize``.
    """
    import bentoml

    model = import_model(settings, version)
    spec = yaml.safe_load(BENTOFILE.read_text())
    spec["models"] = [{"tag": str(model.tag), "alias": "champion"}]
    spec["labels"] = {**spec.get("labels", {}), "registry_version": str(version),
                      "registered_model": settings.model_name}
    with tempfile.TemporaryDirectory(prefix="recops-bento-") as tmp:
        ctx = Path(tmp)
        _copy_package(ctx)
        (ctx / "requirements.txt").write_text("\n".join(pinned_requirements()) + "\n")
        (ctx / "bentofile.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
        bento = bentoml.bentos.build_bentofile(str(ctx / "bentofile.yaml"), build_ctx=str(ctx),
                                               args={MODEL_ARG: str(model.tag)},
                                               version=f"v{version}-{time.strftime('%Y%m%d-%H%M%S')}")
    return str(bento.tag)
