"""Scheduled deployments, served by this process (``flow.serve``-style; no Docker, no work pool).

``recops schedule`` calls :func:`serve_schedules`. With the scale-out profile the runs and their
schedules show in the Prefect server UI; with the local profile Prefect runs its own API in-process.
"""

from __future__ import annotations

from prefect import serve

from recops.flows.pipeline import ab_evaluate_flow, retrain_flow


def deployments(retrain_cron: str = "0 3 * * *", ab_cron: str = "0 * * * *"):
    """The scheduled deployments recops serves: the nightly retrain and the hourly experiment evaluation.

    Args:
        retrain_cron: the cron schedule of the retrain flow (default: 03:00 every day).
        ab_cron: the cron schedule of the ab-evaluate flow (default: every hour).

    Returns:
        The Prefect deployments (``RunnerDeployment``), for ``prefect.serve``.
    """
    return [
        retrain_flow.to_deployment(name="nightly-retrain", cron=retrain_cron, tags=["recops", "retrain"],
                                   description="Rebuild features, retrain, evaluate and promote on the event "
                                               "store's data."),
        ab_evaluate_flow.to_deployment(name="ab-evaluate", cron=ab_cron, tags=["recops", "experiment"],
                                       description="Evaluate the running online experiment and apply the policy: "
                                                   "ramp, promote, roll back, hold or continue."),
    ]


def serve_schedules(retrain_cron: str = "0 3 * * *", ab_cron: str = "0 * * * *") -> None:
    """Serve the deployments from this process; blocks, running scheduled flows, until interrupted.

    Args:
        retrain_cron: the cron schedule of the retrain flow.
        ab_cron: the cron schedule of the ab-evaluate flow.
    """
    serve(*deployments(retrain_cron, ab_cron))
