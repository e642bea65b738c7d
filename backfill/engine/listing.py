"""Paging through the service's listing of runs: the one place every part lists runs.

Reconciliation, the delta-column gate and the monitor all read runs through ``Lister``; each
page is one request (the client takes its rate permit) and is counted.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from backfill.client import Page, RunInfo, RunsApi

from .options import Stats

__all__ = ["Lister"]


class Lister:
    """Lists a flow's runs, page after page, each page one request."""

    def __init__(self, client: RunsApi, stats: Stats, page_size: int):
        self._client = client
        self._stats = stats
        self.page_size = page_size

    async def page(
        self,
        flow_id: str,
        *,
        ids: Sequence[str] = (),
        created_since_ms: int | None = None,
        limit: int | None = None,
        href: str | None = None,
    ) -> Page:
        """One page of the listing (the next one, given the previous page's ``next_href``)."""
        self._stats.list_requests += 1
        return await self._client.list_runs(
            flow_id,
            ids=ids,
            created_since_ms=created_since_ms,
            limit=self.page_size if limit is None else limit,
            href=href,
        )

    async def runs(
        self, flow_id: str, *, ids: Sequence[str] = (), created_since_ms: int | None = None
    ) -> AsyncIterator[RunInfo]:
        """Every run of every page."""
        href: str | None = None
        while True:
            page = await self.page(flow_id, ids=ids, created_since_ms=created_since_ms, href=href)
            for run in page.runs:
                yield run
            href = page.next_href
            if href is None:
                return
