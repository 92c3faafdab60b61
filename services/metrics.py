"""What ``/metrics`` adds to BentoML's own series (requests, in-progress and latency histograms per
endpoint and status code: ``bentoml_service_request_*``).

Counted as answers go out (``bentoml.metrics``, which keeps them right across worker processes):

- ``recops_answers_total{endpoint, strategy, variant, fallback}``: every list ``/recommend`` and
  ``/session/recommend`` served, by the strategy that answered, the experiment variant (``none``
  outside an experiment) and the fallback's reason (``none`` when the model answered; see
  ``recops.serving.recommend.fallback_kind``);
- ``recops_events_total{outcome}``: events sent to ``/track`` and ``/track/batch``: ``accepted``,
  ``stored`` (new), ``duplicate`` (a repeated ``event_id``) and ``unknown_item`` (stored, flagged).
  Requests rejected as invalid (4xx) are BentoML's ``bentoml_service_request_total`` with their code.

Read at scrape time (``LiveCollector``): the online refresher's backlog and lag, the rows validation
has quarantined, the served model (an info metric), when it was registered and loaded, and its age.
"""

from __future__ import annotations

import time

import bentoml

from recops.serving.recommend import degraded_cause, fallback_kind

ANSWERS = bentoml.metrics.Counter(
    name="recops_answers", documentation="lists served, by strategy, experiment variant and fallback reason",
    labelnames=["endpoint", "strategy", "variant", "fallback"])
EVENTS = bentoml.metrics.Counter(
    name="recops_events", documentation="events sent to /track and /track/batch, by outcome",
    labelnames=["outcome"])
EVENT_OUTCOMES = ("accepted", "stored", "duplicate", "unknown_item")
DEGRADED = bentoml.metrics.Counter(
    name="recops_degraded_answers", documentation="lists served while a part of the service was down, by what",
    labelnames=["endpoint", "cause"])


class ServiceMetrics:
    """The service's own metrics: counts as answers go out, gauges read from ``Serving`` when scraped."""

    def __init__(self, rt) -> None:
        self.rt = rt
        for outcome in EVENT_OUTCOMES:  # every outcome shows, at 0, from the start
            EVENTS.labels(outcome=outcome)

    def answered(self, endpoint: str, resp) -> None:
        """Count one served list.

        Args:
            endpoint: the route that served it.
            resp: the answer (a ``RankedList``).
        """
        ANSWERS.labels(endpoint=endpoint, strategy=resp.strategy, variant=resp.variant or "none",
                       fallback=fallback_kind(resp.fallback_reason if resp.fallback else None)).inc()
        if resp.degraded:
            DEGRADED.labels(endpoint=endpoint, cause=degraded_cause(resp.degraded_reason)).inc()

    def tracked(self, events: list, resp) -> None:
        """Count the events of one track request.

        Args:
            events: the request's events.
            resp: the ``TrackResponse``.
        """
        unknown = set(resp.unknown_items)
        for outcome, n in (("accepted", resp.accepted), ("stored", resp.stored), ("duplicate", resp.duplicates),
                           ("unknown_item", sum(e.item_id in unknown for e in events) if unknown else 0)):
            if n:
                EVENTS.labels(outcome=outcome).inc(n)

    def live(self) -> str:
        """The scrape-time gauges in the Prometheus text format.

        Returns:
            Exposition text to append to BentoML's.
        """
        from prometheus_client import CollectorRegistry, generate_latest

        registry = CollectorRegistry(auto_describe=False)
        registry.register(LiveCollector(self.rt))
        return generate_latest(registry).decode()


class LiveCollector:
    """Gauges computed when scraped (no value files: the figures live in ``Serving``)."""

    def __init__(self, rt) -> None:
        self.rt = rt

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily

        rt, now = self.rt, time.time()
        yield GaugeMetricFamily("recops_online_refresh_backlog",
                                "track requests whose online refresh has not landed yet", rt.refresher.pending())
        yield GaugeMetricFamily("recops_online_refresh_lag_seconds",
                                "how long the oldest refresh not landed yet has waited", rt.refresher.lag())
        yield GaugeMetricFamily("recops_online_refresh_failing",
                                "1 when the latest online refresh failed", float(rt.refresher.last_error is not None))
        yield GaugeMetricFamily("recops_quarantined_rows", "event rows validation quarantined, each with its reason",
                                rt.store.count_quarantined())
        slot = rt.champion
        served = slot.get()
        yield InfoMetricFamily("recops_model", "the model being served (empty version: none, the fallback answers)",
                               {"name": rt.settings.model_name, "alias": slot.alias, "source": slot.source,
                                "version": served.version if served else ""})
        if served is not None and slot.registered_at is not None:
            yield GaugeMetricFamily("recops_champion_registered_timestamp_seconds",
                                    "when the served version was registered (its training ended)", slot.registered_at)
            yield GaugeMetricFamily("recops_champion_age_seconds", "seconds since the served version was registered",
                                    now - slot.registered_at)
        if served is not None and slot.loaded_at is not None:
            yield GaugeMetricFamily("recops_champion_loaded_timestamp_seconds",
                                    "when this server loaded the served version", slot.loaded_at)
