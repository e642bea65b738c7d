"""Prometheus metrics, read from the live counters at scrape time (nothing on the hot path).

``--metrics-port`` serves them over HTTP at ``/metrics`` (and any other path no page claims:
the coverage page takes ``/``); ``--metrics-file`` writes the text format at exit for
node-exporter's textfile collector.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app, write_to_textfile
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector

from .state import WindowState

__all__ = ["Metrics", "MetricsSource", "Page"]


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
    duplicates: Callable[[], int] = lambda: 0
    adopted_existing: Callable[[], int] = lambda: 0
    records: Callable[[], dict[str, int]] = dict  # input, output, failed records


Page = Callable[[], tuple[str, bytes]]  # () -> (content type, body)
_App = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def _dispatch(metrics: _App, pages: dict[str, Page]) -> _App:
    """A WSGI app: a page by its exact path, the metrics for every other path."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        page = pages.get(environ.get("PATH_INFO") or "/")
        if page is None:
            return metrics(environ, start_response)
        content_type, body = page()
        start_response(
            "200 OK",
            [
                ("Content-Type", content_type),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "no-store"),
            ],
        )
        return [body]

    return app


class _Quiet(WSGIRequestHandler):
    """No access log on stderr: it would break the JSON lines of a container's logs."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


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
            (
                "backfill_duplicate_windows",
                "Windows found with more than one live run at the service",
                source.duplicates,
            ),
            (
                "backfill_runs_adopted_existing",
                "Windows whose run the service already had (not sent)",
                source.adopted_existing,
            ),
        ):
            family = CounterMetricFamily(name, doc, labels=names)
            family.add_metric(values, read())
            yield family
        records = GaugeMetricFamily(
            "backfill_records",
            "Records of every window's latest run, as the service counted them "
            "(metrics.recordSummary): read (input), ingested (output), failed",
            labels=[*names, "kind"],
        )
        for kind, count in source.records().items():
            records.add_metric([*values, kind], count)
        yield records
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

    def serve(
        self,
        port: int,
        addr: str = "0.0.0.0",  # noqa: S104 - scraped from the pod
        pages: Mapping[str, Page] | None = None,
    ) -> int:
        """Serve the metrics (and ``pages``, by path) from a daemon thread; the bound port."""
        app = _dispatch(make_wsgi_app(self.registry), dict(pages or {}))

        class Server(ThreadingWSGIServer):
            address_family = socket.getaddrinfo(
                addr, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )[0][0]

        server = make_server(addr, port, app, Server, handler_class=_Quiet)
        threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
        return int(server.server_port)

    def write(self, path: Path) -> None:
        write_to_textfile(str(path), self.registry)
