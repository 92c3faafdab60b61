"""Scheduled deployments, served by this process (``flow.serve``-style; no Docker, no work pool).

``recops schedule`` calls :func:`serve_schedules`. With the scale-out profile the runs and their
schedules show in the Prefect server UI; with the local profile Prefect runs its own API in-process.
"""

from __future__ import annotations

from prefect import serve

from recops.flows.pipeline import retrain_flow


def deployments(retrain_cron: str = "0 3 * * *"):
    return [
        retrain_flow.to_deployment(name="nightly-retrain", cron=retrain_cron, tags=["recops", "retrain"],
                                   description="Rebuild features, retrain, evaluate and promote on the event store's data."),
    ]


def serve_schedules(retrain_cron: str = "0 3 * * *") -> None:
    serve(*deployments(retrain_cron))
