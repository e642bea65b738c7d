"""Prometheus metrics, read from the live counters at scrape time (nothing on the hot path).

``--metrics-port`` serves them over HTTP; ``--metrics-file`` writes the text format at exit
for node-exporter's textfile collector.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, start_http_server, write_to_textfile
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .state import WindowState

__all__ = ["Metrics", "MetricsSource"]


@dataclass(frozen=True, slots=True)
class MetricsSource:
    """Callables that read the current counters."""

    window_counts: Callable[[], dict[WindowState, int]]
    responses: Callable[[], dict[str, int]]
    submitted: Callable[[], int]
    retries: Callable[[], int]
    rate_limited: Callable[[], int]
    rate_limit_wait: Callable[[], float]
    token_renewals: Callable[[], int]


class _Collector(Collector):
    def __init__(self, source: MetricsSource, labels: dict[str, str]) -> None:
        self._source = source
        self._names = list(labels)
        self._values = list(labels.values())

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        source, names, values = self._source, self._names, self._values
        windows = GaugeMetricFamily(
            "backfill_windows", "Planned windows by state", labels=[*names, "state"]
        )
        for state, count in source.window_counts().items():
            windows.add_metric([*values, state.value], count)
        yield windows
        requests = CounterMetricFamily(
            "backfill_requests",
            "Requests sent to the Flow Service by answer",
            labels=[*names, "code"],
        )
        for code, count in sorted(source.responses().items()):
            requests.add_metric([*values, code], count)
        yield requests
        for name, doc, read in (
            ("backfill_runs_submitted", "Runs the service accepted", source.submitted),
            ("backfill_retries", "Requests sent again after a retryable error", source.retries),
            ("backfill_rate_limited", "Answers 429 received", source.rate_limited),
            ("backfill_token_renewals", "Access tokens fetched from IMS", source.token_renewals),
        ):
            family = CounterMetricFamily(name, doc, labels=names)
            family.add_metric(values, read())
            yield family
        wait = CounterMetricFamily(
            "backfill_rate_limit_wait_seconds", "Time spent waiting for rate permits", labels=names
        )
        wait.add_metric(values, source.rate_limit_wait())
        yield wait


class Metrics:
    """One registry with the backfill collector; serve it, or write it to a file."""

    def __init__(self, source: MetricsSource, *, shard: str) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_Collector(source, {"shard": shard}))

    def serve(self, port: int, addr: str = "0.0.0.0") -> int:  # noqa: S104 - scraped from the pod
        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        return int(server.server_port)

    def write(self, path: Path) -> None:
        write_to_textfile(str(path), self.registry)
