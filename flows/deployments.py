"""The operator's deployments, served by this process (``prefect.serve``; no Docker, no work pool).

``recops schedule`` calls :func:`serve_schedules`:

- ``nightly-retrain`` and ``weekly-retrain``: the retrain flow on crons (``trigger=schedule``);
- ``monitor``: the monitor flow, hourly; its alarms are Prefect events;
- ``triggered-retrain``: the retrain flow, started by the deployment triggers (Prefect automations)
  on ``recops.drift.detected``, ``recops.volume.reached`` and ``recops.performance.dropped``, with
  the trigger's name and the monitor's evidence as parameters; one run at a time
  (``concurrency_limit=1``), and the flow itself skips a run within the cool-down;
- ``ab-evaluate``: the running online experiment's evaluation, hourly.
"""

from __future__ import annotations

from prefect import serve
from prefect.events import DeploymentEventTrigger

from recops.flows.pipeline import ALARM_EVENTS, ab_evaluate_flow, monitor_flow, retrain_flow

CRONS = {"nightly-retrain": "0 3 * * *", "weekly-retrain": "0 4 * * 0", "monitor": "0 * * * *",
         "ab-evaluate": "0 * * * *"}


def retrain_triggers() -> list[DeploymentEventTrigger]:
    """One deployment trigger per monitor alarm: its event starts a retrain with ``trigger`` set to the
    alarm and ``evidence`` to the event's payload (JSON kept as JSON)."""
    return [DeploymentEventTrigger(name=f"retrain on {kind}", expect={event},
                                   description=f"The monitor emitted {event}: retrain with its evidence "
                                               "(one run at a time; nothing within the cool-down).",
                                   parameters={"trigger": kind, "evidence": "{{ event.payload.evidence }}"})
            for kind, event in ALARM_EVENTS.items()]


def deployments(crons: dict[str, str] | None = None):
    """The deployments recops serves.

    Args:
        crons: deployment name -> cron, over ``CRONS``; an empty cron leaves that deployment out.

    Returns:
        The Prefect deployments (``RunnerDeployment``), for ``prefect.serve``.
    """
    crons = {**CRONS, **(crons or {})}
    out = [
        retrain_flow.to_deployment(
            name="triggered-retrain", triggers=retrain_triggers(), concurrency_limit=1,
            tags=["recops", "retrain", "triggered"],
            description="Retrain when the monitor finds drift, enough new events or a significant drop in online "
                        "quality (deployment triggers on its Prefect events); skipped within the cool-down."),
    ]
    if crons["nightly-retrain"]:
        out.append(retrain_flow.to_deployment(
            name="nightly-retrain", cron=crons["nightly-retrain"], parameters={"trigger": "schedule"},
            concurrency_limit=1, tags=["recops", "retrain", "schedule"],
            description="Rebuild features, retrain, evaluate and promote on the event store's data, nightly."))
    if crons["weekly-retrain"]:
        out.append(retrain_flow.to_deployment(
            name="weekly-retrain", cron=crons["weekly-retrain"], parameters={"trigger": "schedule"},
            concurrency_limit=1, tags=["recops", "retrain", "schedule"],
            description="The full retrain on a weekly cron (for shops that switch the nightly one off)."))
    if crons["monitor"]:
        out.append(monitor_flow.to_deployment(
            name="monitor", cron=crons["monitor"], tags=["recops", "monitor"],
            description="Drift against the champion's training reference, online quality, performance and "
                        "new-event volume; alarms become Prefect events."))
    if crons["ab-evaluate"]:
        out.append(ab_evaluate_flow.to_deployment(
            name="ab-evaluate", cron=crons["ab-evaluate"], tags=["recops", "experiment"],
            description="Evaluate the running online experiment and apply the policy: ramp, promote, roll back, "
                        "hold or continue."))
    return out


def serve_schedules(crons: dict[str, str] | None = None) -> None:
    """Serve the deployments from this process; blocks, running their flows, until interrupted.

    Args:
        crons: deployment name -> cron overrides (see ``deployments``).
    """
    serve(*deployments(crons))
