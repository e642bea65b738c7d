"""Paging through the service's listing of runs: the one place every part lists runs.

Reconciliation, the delta-column gate and the monitor all read runs through ``Lister``; each
page is one request (the client takes its rate permit) and is counted.

    page -> (retryable error: the same page again, after backoff, within the retry budget)
         -> runs of the flow asked about (any other is dropped: a page may be unfiltered)
         -> next link, unless it leads to a page already read, or pages outrun the runs

A page that fails is asked again, not the listing from its start: the pages already read stay
read. Retries draw on the one retry budget (``backfill.retry.Retries``: ``max_retries`` in a
row, 429s not counted); when it is spent the listing fails the engine with ``ApiUnavailable``
(exit 75) and raises it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Sequence

import structlog
from yarl import URL

from backfill.client import Page, RunInfo, RunsApi
from backfill.errors import ApiUnavailable, RetryableError
from backfill.retry import Retries

from .control import Control
from .options import EngineOptions, Stats

__all__ = ["Lister"]

log = structlog.get_logger("backfill.engine")

# A listing may read this many pages more than it finds runs (empty pages with a next link are
# legal, a service that filters after paging has them); beyond, its links never end.
SPARE_PAGES = 16

_LinkKey = tuple[str, str, int | None, str, tuple[tuple[str, str], ...]]


class Lister:
    """Lists a flow's runs, page after page, each page one request."""

    def __init__(
        self, client: RunsApi, control: Control, stats: Stats, options: EngineOptions
    ) -> None:
        self._client = client
        self._control = control
        self._stats = stats
        self._backoff = options.backoff
        self.page_size = options.page_size

    async def page(
        self,
        flow_id: str,
        *,
        ids: Sequence[str] = (),
        created_since_ms: int | None = None,
        limit: int | None = None,
        href: str | None = None,
    ) -> Page:
        """One page of the listing, retried as needed; only the flow's runs (and ``ids``)."""
        page = await self._fetch(flow_id, ids, created_since_ms, limit, href)
        return Page(self._ours(page.runs, flow_id, ids), page.next_href, page.url)

    async def has_run(self, flow_id: str) -> bool:
        """Does the service list any run of the flow? Pages are read until the first one: a
        page may hold only other flows' runs (a service that filters after paging)."""
        async with contextlib.aclosing(self.runs(flow_id)) as runs:
            async for _ in runs:
                return True
        return False

    async def runs(
        self, flow_id: str, *, ids: Sequence[str] = (), created_since_ms: int | None = None
    ) -> AsyncGenerator[RunInfo, None]:
        """Every run of the flow on every page, each once."""
        followed: set[_LinkKey] = set()
        seen: set[str] = set()
        pages = 0
        href: str | None = None
        while True:
            page = await self._fetch(flow_id, ids, created_since_ms, None, href)
            pages += 1
            if page.url is not None:
                followed.add(_link_key(page.url))
            fresh = [run for run in page.runs if run.run_id not in seen]
            seen.update(run.run_id for run in fresh)
            for run in self._ours(fresh, flow_id, ids):
                yield run
            href = page.next_href
            if href is None:
                return
            if _link_key(href) in followed:
                # Every page this link leads to was read already: the listing is whole.
                log.warning("listing_link_repeats", flow=flow_id, href=href, pages=pages)
                return
            if pages > len(seen) + SPARE_PAGES:
                error = ApiUnavailable(
                    f"GET /runs: the listing of flow {flow_id} does not end: {pages} pages "
                    f"brought {len(seen)} runs and the service still links a next page ({href})"
                )
                self._control.fail(error)
                raise error

    async def _fetch(
        self,
        flow_id: str,
        ids: Sequence[str],
        created_since_ms: int | None,
        limit: int | None,
        href: str | None,
    ) -> Page:
        """One request for one page, asked again after a retryable error while budget lasts."""
        control = self._control
        retries = Retries(self._backoff)
        while True:
            self._stats.list_requests += 1
            try:
                return await self._client.list_runs(
                    flow_id,
                    ids=ids,
                    created_since_ms=created_since_ms,
                    limit=self.page_size if limit is None else limit,
                    href=href,
                )
            except RetryableError as exc:
                try:
                    retry = retries.failed(exc)
                except ApiUnavailable as spent:
                    control.fail(spent)
                    raise spent from exc
                if control.closed.is_set():
                    raise
                self._stats.request_retries += 1
                log.debug("list_retry", flow=flow_id, error=str(exc), retries=retry, page=href)
                await control.nap(control.backoff(exc, retry))
                if control.closed.is_set():
                    raise

    @staticmethod
    def _ours(runs: list[RunInfo], flow_id: str, ids: Sequence[str]) -> list[RunInfo]:
        """The runs that answer the question: never trust a page to be filtered."""
        wanted = set(ids)
        kept = []
        for run in runs:
            if run.flow_id != flow_id:
                log.debug(
                    "listed_run_of_another_flow",
                    flow=flow_id,
                    run_id=run.run_id,
                    run_flow=run.flow_id,
                )
            elif wanted and run.run_id not in wanted:
                log.debug("listed_run_not_asked_for", flow=flow_id, run_id=run.run_id)
            else:
                kept.append(run)
        return kept


def _link_key(href: str) -> _LinkKey:
    """What makes two links the same page: origin (default port filled in), path, parameters."""
    url = URL(href)
    host = (url.host or "").lower()
    return (url.scheme, host, url.port, url.path, tuple(sorted(url.query.items())))
