"""The Flow Service runs API over aiohttp: requests, answers, and typed errors.

The client sends exactly what it is asked to, once. Whether to send again, and when, is the
engine's decision; the client only says what happened, in an error class that tells a
retryable answer from a permanent one, and a request that may have acted (``in_doubt``) from
one that certainly did not.

Every request takes its rate permit here, once it holds a valid token and immediately before
it is sent (a 401 renewal's resend takes another); the token endpoint takes none. Until the
service has answered once like Flow Service, a failure that means a wrong base URL (a TLS
handshake with a plain-http server, a host that does not resolve, a 404 or an HTML page that
is not Flow Service's) is ``NotFlowService``: a configuration error, not an outage.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import re
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, Protocol

import orjson
from yarl import URL

from .auth import TokenProvider
from .errors import (
    ApiError,
    AuthError,
    NotFlowService,
    PermanentError,
    RateLimited,
    RetryableError,
    ServerError,
    TransportError,
)
from .state import RecordCounts, RunStatus

if TYPE_CHECKING:
    import aiohttp  # imported by the first request: plan and --help never load it

__all__ = [
    "RETRIGGER_SPELLINGS",
    "ApiIdentity",
    "CreatedRun",
    "FlowInfo",
    "FlowServiceClient",
    "FlowsApi",
    "Page",
    "Permit",
    "RunInfo",
    "RunsApi",
    "epoch_seconds",
    "run_window",
]

# The re-trigger operation is spelled ``re-trigger`` in the tutorial
# (help/sources/tutorials/api/retry-flows.md, AdobeDocs/experience-platform.en) and
# ``RE_TRIGGER`` in the spec's enum (static/swagger-specs/flow-service.yaml,
# AdobeDocs/experience-platform-apis). The tutorial's first; the other once on a 400 naming it.
RETRIGGER_SPELLINGS = ("re-trigger", "RE_TRIGGER")
# A 400 that is about the operation itself (its word, or Flow Service's "Unsupported operation",
# FLOW-1434-400 in help/sources/errors/flow-service-errors.md), not about the run.
_NAMES_THE_OPERATION = re.compile(r"\bop\b|operation|RE_TRIGGER", re.IGNORECASE)

# A request answered 401 renews the token and is sent again, each time with a new token, at
# most this many times: a token revoked twice in a row is renewed, one refused as soon as it
# is issued (wrong credentials, scopes or product profile) stops the run.
_MAX_RENEWALS = 2

# Ten digits of seconds reach the year 2286; milliseconds have 12 digits from 1973 on. A number
# in between (11 digits) is neither with any confidence, so it is not read as a time.
_MAX_SECONDS = 10**10
_MIN_MILLISECONDS = 10**11


@dataclass(frozen=True, slots=True)
class ApiIdentity:
    """The non-secret headers every request carries."""

    api_key: str
    org_id: str
    sandbox_name: str = "prod"


@dataclass(frozen=True, slots=True)
class CreatedRun:
    """The service's answer to a run creation or re-trigger."""

    run_id: str
    etag: str | None = None


@dataclass(frozen=True, slots=True)
class RunInfo:
    """What the monitor and reconciliation need of a run object."""

    run_id: str
    flow_id: str
    window_start: int | None  # unix seconds; None when the listing does not say (see run_window)
    window_end: int | None
    status: RunStatus
    raw_status: str
    errors: tuple[dict[str, str], ...] = ()
    created_at: int | None = None  # ``createdAt``, epoch milliseconds, as the service says
    records: RecordCounts | None = None  # metrics.recordSummary (and fileSummary)

    @classmethod
    def parse(cls, item: Mapping[str, Any]) -> RunInfo:
        summary = (item.get("metrics") or {}).get("statusSummary") or {}
        raw = str(summary.get("status") or "")
        errors = tuple(
            {"code": str(e.get("code", "")), "message": str(e.get("message", ""))}
            for e in summary.get("errors") or ()
            if isinstance(e, Mapping)
        )
        window_start, window_end = run_window(item)
        return cls(
            run_id=str(item["id"]),
            flow_id=str(item.get("flowId", "")),
            window_start=window_start,
            window_end=window_end,
            status=RunStatus.parse(raw),
            raw_status=raw,
            errors=errors,
            created_at=_int_or_none(item.get("createdAt")),
            records=_record_counts(item.get("metrics")),
        )


def run_window(item: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """A listed run's window in unix seconds, or ``(None, None)`` when the run does not say.

    From ``params.windowStartTime/windowEndTime`` when the run echoes its params (the tutorial's
    run, help/sources/tutorials/api/on-demand-ingestion.md in AdobeDocs/experience-platform.en),
    else from an activity's ``durationSummary.extensions.windowStart/windowEnd``, in
    milliseconds: the listed run of help/sources/tutorials/api/monitor.md has no ``params`` at
    all, and neither has the run object of the OpenAPI spec
    (static/swagger-specs/flow-service.yaml in AdobeDocs/experience-platform-apis). A window
    that cannot be read is unknown, never "another window": the caller must not conclude that
    the run is not the one it looks for.
    """
    params = item.get("params")
    if isinstance(params, Mapping):
        window = _window_pair(params.get("windowStartTime"), params.get("windowEndTime"))
        if window is not None:
            return window
    activities = item.get("activities")
    if isinstance(activities, list):
        for activity in activities:
            duration = activity.get("durationSummary") if isinstance(activity, Mapping) else None
            extensions = duration.get("extensions") if isinstance(duration, Mapping) else None
            if isinstance(extensions, Mapping):
                window = _window_pair(extensions.get("windowStart"), extensions.get("windowEnd"))
                if window is not None:
                    return window
    return None, None


def _window_pair(start: object, end: object) -> tuple[int, int] | None:
    first, last = epoch_seconds(start), epoch_seconds(end)
    if first is None or last is None or first >= last:
        return None
    return first, last


def epoch_seconds(value: object) -> int | None:
    """A moment in any form a service may echo it, as whole unix seconds; None if unreadable.

    We send window times as strings of digits (the tutorial's form), the spec types them as
    integers, and a service may echo them as numbers, as ``"1704067200.0"``, in milliseconds
    (13 digits, as the activities' extensions carry them) or as ISO-8601 text. A time that is
    not a whole second, or could be either seconds or milliseconds, is not guessed at.
    """
    exact: Decimal
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        exact = Decimal(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            return None
        exact = Decimal(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            exact = Decimal(text)
        except InvalidOperation:
            return _iso_seconds(text)
        if not exact.is_finite():
            return None
    else:
        return None
    if exact < 0:
        return None
    if exact >= _MIN_MILLISECONDS:
        exact /= 1000
    elif exact >= _MAX_SECONDS:
        return None
    if exact != exact.to_integral_value():
        return None
    return int(exact)


def _iso_seconds(text: str) -> int | None:
    """ISO-8601 text; without an offset it is UTC, as every time Platform reports is."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    if moment.microsecond:
        return None
    seconds = int(moment.timestamp())
    return seconds if 0 <= seconds < _MAX_SECONDS else None


def _record_counts(metrics: Any) -> RecordCounts | None:
    """``metrics.recordSummary`` and ``fileSummary`` (monitor.md); None when not reported.

    A count that is absent or not a number is -1, the service's own "unknown".
    """
    if not isinstance(metrics, Mapping):
        return None
    records = metrics.get("recordSummary")
    if not isinstance(records, Mapping) or not records:
        return None

    def count(summary: Mapping[str, Any], name: str) -> int:
        value = _int_or_none(summary.get(name))
        return value if value is not None and value >= 0 else -1

    files_summary = metrics.get("fileSummary")
    files = None
    if isinstance(files_summary, Mapping) and files_summary:
        files = (
            count(files_summary, "inputFileCount"),
            count(files_summary, "outputFileCount"),
            count(files_summary, "failedFileCount"),
        )
    return RecordCounts(
        count(records, "inputRecordCount"),
        count(records, "outputRecordCount"),
        count(records, "failedRecordCount"),
        files,
    )


@dataclass(frozen=True, slots=True)
class FlowInfo:
    """What the pre-flight needs of a flow (``GET /flows/{id}``).

    help/sources/tutorials/api/update-dataflows.md shows the flow object: ``scheduleParams``
    with ``frequency``, and ``transformations`` whose Copy step may carry ``deltaColumn``
    (help/sources/tutorials/api/collect/database-nosql.md makes it part of flow creation).
    """

    flow_id: str
    name: str
    state: str
    frequency: str | None
    delta_column: str | None

    @classmethod
    def parse(cls, flow_id: str, data: Any) -> FlowInfo:
        item: Any = data
        if isinstance(data, Mapping) and isinstance(data.get("items"), list):
            items = data["items"]
            item = items[0] if items else None
        if not isinstance(item, Mapping):
            raise ServerError(
                f"the answer has no flow: {str(data)[:200]}", request="GET /flows/{id}", status=200
            )
        schedule = item.get("scheduleParams")
        frequency = schedule.get("frequency") if isinstance(schedule, Mapping) else None
        delta: str | None = None
        for step in item.get("transformations") or ():
            params = step.get("params") if isinstance(step, Mapping) else None
            column = params.get("deltaColumn") if isinstance(params, Mapping) else None
            name = column.get("name") if isinstance(column, Mapping) else None
            if isinstance(name, str) and name.strip():
                delta = name
                break
        return cls(
            flow_id=str(item.get("id") or flow_id),
            name=str(item.get("name") or ""),
            state=str(item.get("state") or ""),
            frequency=str(frequency) if frequency is not None else None,
            delta_column=delta,
        )


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a listing: its runs, the next page's URL, and the URL that was asked."""

    runs: list[RunInfo]
    next_href: str | None  # absolute, with the listing's filters (see FlowServiceClient.list_runs)
    url: str | None = None


class RunsApi(Protocol):
    """What the engine needs of the service: the seam tests replace with a fake."""

    async def create_run(
        self, flow_id: str, start: int, end: int, delta_column: str | None = None
    ) -> CreatedRun: ...

    async def retrigger(self, run_id: str) -> CreatedRun: ...

    async def list_runs(
        self,
        flow_id: str | None = None,
        *,
        ids: Sequence[str] = (),
        created_since_ms: int | None = None,
        limit: int = 100,
        href: str | None = None,
    ) -> Page: ...

    @property
    def clock_offset(self) -> float | None:
        """The service's clock minus ours, in seconds, from its latest ``Date``; None before."""
        ...


class Permit(Protocol):
    """Waits for the rate permit of one request (``acts``: it may change the service's state)."""

    async def __call__(self, what: str, *, acts: bool) -> None: ...


async def no_permit(what: str, *, acts: bool) -> None:
    """No rate limit (tests, one-off calls)."""


class FlowsApi(Protocol):
    """What the pre-flight needs of the service."""

    async def get_flow(self, flow_id: str) -> FlowInfo: ...


class FlowServiceClient:
    """One aiohttp session's worth of Flow Service calls; counts every request it sends."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        identity: ApiIdentity,
        tokens: TokenProvider,
        permit: Permit = no_permit,
        *,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._session = session
        self._base = URL(base_url.rstrip("/"))
        self._origin = self._base.origin()
        self._runs_url = self._base / "runs"
        self._identity = identity
        self._tokens = tokens
        self._wall = wall
        self._clock_offset: float | None = None
        self._date: tuple[str, float | None] = ("", None)  # the last Date header, parsed
        self._headers_for: tuple[str, Mapping[str, str]] | None = None
        self._permit = permit
        self.confirmed = False  # the service has answered once like Flow Service
        self.responses: Counter[str] = Counter()  # status code (or "error") -> requests
        self.retrigger_op = RETRIGGER_SPELLINGS[0]
        self._retrigger_op_known = False  # a re-trigger with this spelling was accepted
        self._learning_op = asyncio.Lock()

    @property
    def clock_offset(self) -> float | None:
        """The service's clock minus ours, in seconds, from the latest answer's ``Date``.

        None until an answer with a readable ``Date`` has arrived. ``Date`` has whole seconds
        and is stamped before the answer travels, so this is right to about a second: enough to
        filter runs by the service's ``createdAt`` when our clock is minutes off.
        """
        return self._clock_offset

    # ------------------------------------------------------------------ calls

    async def create_run(
        self, flow_id: str, start: int, end: int, delta_column: str | None = None
    ) -> CreatedRun:
        """``POST /runs`` for one window; times go as strings of digits.

        ``startTime`` ("the scheduled time of when the on-demand flow run will begin") is now:
        every request of help/sources/tutorials/api/on-demand-ingestion.md sends it, and the
        run spec of help/sources/tutorials/api/collect/database-nosql.md lists it as required.
        """
        params: dict[str, Any] = {
            "windowStartTime": str(start),
            "windowEndTime": str(end),
            "startTime": str(int(self._wall())),
        }
        if delta_column is not None:
            params["deltaColumn"] = {"name": delta_column}
        body = orjson.dumps({"flowId": flow_id, "params": params})
        data = await self._send("POST", self._runs_url, "POST /runs", body=body)
        return _created(data, "POST /runs")

    async def retrigger(self, run_id: str) -> CreatedRun:
        """``POST /runs/{id}/action?op=re-trigger``: run a failed (or empty) run's window again.

        A 400 that names the operation means the service spells it the other way: that
        spelling is tried once, and whichever is accepted is used from then on. A 400 was
        refused before anything was done, so the second request cannot make a second run.
        Until a spelling has been accepted, re-triggers go one at a time, so only the first
        pays for the lesson.
        """
        if self._retrigger_op_known:
            data = await self._retrigger_as(run_id, self.retrigger_op)
        else:
            async with self._learning_op:
                data = await self._retrigger_learning(run_id)
        # The answer is {"id", "etag"} where the id is a NEW run: "A successful response returns
        # a newly created flow run ID" (help/sources/tutorials/api/retry-flows.md in
        # AdobeDocs/experience-platform.en; it re-triggers 4fb0418e-... and gets 3fb0418e-...).
        # An answer without an id leaves the new run unknown: in doubt, like a lost answer.
        return _created(data, "re-trigger")

    async def _retrigger_learning(self, run_id: str) -> Any:
        op = self.retrigger_op
        try:
            data = await self._retrigger_as(run_id, op)
        except PermanentError as exc:
            if self._retrigger_op_known or not _names_the_operation(exc):
                raise
            other = next(s for s in RETRIGGER_SPELLINGS if s != op)
            data = await self._retrigger_as(run_id, other)
            self.retrigger_op = other
        self._retrigger_op_known = True
        return data

    async def _retrigger_as(self, run_id: str, op: str) -> Any:
        url = (self._runs_url / run_id / "action").with_query(op=op)
        return await self._send("POST", url, f"POST /runs/{{id}}/action?op={op}", body=b"")

    async def get_flow(self, flow_id: str) -> FlowInfo:
        """``GET /flows/{id}``: the flow's schedule and its Copy transformation's delta column."""
        data = await self._send("GET", self._base / "flows" / flow_id, "GET /flows/{id}")
        return FlowInfo.parse(flow_id, data)

    async def list_runs(
        self,
        flow_id: str | None = None,
        *,
        ids: Sequence[str] = (),
        created_since_ms: int | None = None,
        limit: int = 100,
        href: str | None = None,
    ) -> Page:
        """One page of ``GET /runs``; pass the previous page's ``next_href`` for the next.

        The filters go with every page, the next ones too: a continuation link may carry only
        its token (the spec's ``PageLink`` example is ``/connections?continuationToken=...``,
        static/swagger-specs/flow-service.yaml in AdobeDocs/experience-platform-apis), and the
        one public client that pages runs (pitchmuc/aepp, ``getRuns``) sends its own filters
        with the token. A filter the link already carries is not sent twice.
        """
        query: list[tuple[str, str]] = []
        if flow_id is not None:
            query.append(("property", f"flowId=={flow_id}"))
        if ids:
            query.append(("property", "id==" + ",".join(ids)))
        if created_since_ms is not None:
            query.append(("property", f"createdAt>={created_since_ms}"))
        query += [("orderby", "createdAt"), ("limit", str(limit))]
        if href is None:
            url = self._runs_url.with_query(query)
        else:
            url = _with_filters(self._resolve(href, self._runs_url), query)
        data = await self._send("GET", url, "GET /runs")
        if not isinstance(data, dict):
            return Page([], None, str(url))
        items = data.get("items") or []
        runs = [RunInfo.parse(item) for item in items if isinstance(item, Mapping) and "id" in item]
        links = data.get("_links")
        following = links.get("next") if isinstance(links, dict) else None
        link = following.get("href") if isinstance(following, dict) else None
        if not link or not isinstance(link, str):
            return Page(runs, None, str(url))
        # A link is relative to the request that returned it (a query-only link is this path).
        next_url = _with_filters(self._resolve(link, url), query)
        return Page(runs, str(next_url), str(url))

    # --------------------------------------------------------------- plumbing

    def _resolve(self, href: str, against: URL) -> URL:
        """A ``_links.next.href`` as a URL on our origin, refusing any other host.

        Absolute links must be on our origin (an explicit default port, ``:443`` for https, is
        the same origin). A path starting with ``/`` is under the base URL, as Flow Service
        writes its links (``/runs?...``) unless it already starts with the base path. Anything
        else (``?continuationToken=...``, ``runs?...``) is relative to ``against``, the URL of
        the request that returned it.
        """
        if href.startswith(("http://", "https://")):
            url = URL(href, encoded=True)
            if not _same_origin(url, self._origin):
                raise PermanentError(
                    f"the next page is on another host ({url.origin()}); not following it",
                    request="GET /runs",
                )
            return url
        if href.startswith(self._base.path.rstrip("/") + "/"):
            return URL(str(self._origin) + href, encoded=True)
        if href.startswith("/"):
            return URL(str(self._base) + href, encoded=True)
        return against.join(URL(href, encoded=True))

    def _headers(self, token: str) -> Mapping[str, str]:
        """The headers that carry ``token``, built once per token.

        They are built as aiohttp's own ``CIMultiDict``, which the session would otherwise
        make of a plain dict for every request.
        """
        cached = self._headers_for
        if cached is not None and cached[0] == token:
            return cached[1]
        from multidict import CIMultiDict  # noqa: PLC0415 - aiohttp's; loaded with the session

        headers = CIMultiDict(
            {
                "Authorization": f"Bearer {token}",
                "x-api-key": self._identity.api_key,
                "x-gw-ims-org-id": self._identity.org_id,
                "x-sandbox-name": self._identity.sandbox_name,
                "Content-Type": "application/json",
                "Accept": "application/json",
            }
        )
        self._headers_for = (token, headers)
        return headers

    async def _ready(self, what: str, *, acts: bool) -> str:
        """A valid token, and then the rate permit, right before the send.

        A token renewal never happens between the permit and the send; if the token went stale
        while the request waited for its permit, it is renewed and another permit is taken.
        """
        tokens = self._tokens
        token = await tokens.token()
        while True:
            await self._permit(what, acts=acts)
            current = await tokens.token()  # returns at once while the token is valid
            if current == token:
                return token
            token = current

    async def _send(self, method: str, url: URL, what: str, *, body: bytes | None = None) -> Any:
        refused: set[str] = set()  # tokens the service answered 401 to, for this request
        while True:
            token = await self._ready(what, acts=method != "GET")
            headers = self._headers(token)
            status, raw, response_headers = await self._exchange(method, url, what, headers, body)
            if not self.confirmed:
                self._first_contact(method, what, url, status, raw, response_headers)
            if status == 401 and token not in refused and len(refused) < _MAX_RENEWALS:
                # The token expired (or was revoked) under us: renew it (every worker shares
                # the renewal) and send again, with a permit of its own. A fresh token refused
                # again means the credentials are wrong, not stale.
                refused.add(token)
                await self._tokens.renew(token)
                continue
            if 200 <= status < 300:
                try:
                    return orjson.loads(raw) if raw.strip() else {}
                except orjson.JSONDecodeError:
                    # The service acted (2xx) but its answer is unreadable: in doubt, like a 5xx.
                    raise ServerError(
                        f"the answer is not JSON: {raw[:200]!r}", request=what, status=status
                    ) from None
            raise _error(status, raw, response_headers, what)

    async def _exchange(
        self,
        method: str,
        url: URL,
        what: str,
        headers: Mapping[str, str],
        body: bytes | None,
    ) -> tuple[int, bytes, Mapping[str, str]]:
        try:
            async with self._session.request(method, url, data=body, headers=headers) as response:
                raw = await response.read()
        except Exception as exc:  # what no answer means: below; anything else as it was
            error = self._no_answer(what, exc)
            if error is None:
                raise
            raise error from exc
        self.responses[str(response.status)] += 1
        self._read_date(response.headers)
        return response.status, raw, response.headers

    def _no_answer(self, what: str, exc: Exception) -> TransportError | None:
        """The error for a request that got no answer, or None if ``exc`` is not one."""
        import aiohttp  # noqa: PLC0415 - loaded already by the session; see the top

        if isinstance(exc, aiohttp.ClientConnectorError):
            self.responses["error"] += 1
            if not self.confirmed:
                self._unreachable(what, exc)
            return TransportError(f"could not connect: {exc}", request=what, in_doubt=False)
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            self.responses["error"] += 1
            return TransportError("connect timed out", request=what, in_doubt=False)
        if isinstance(exc, TimeoutError | aiohttp.ClientError | OSError):
            # The request may have reached the service: a POST is now in doubt.
            self.responses["error"] += 1
            reason = str(exc) or type(exc).__name__
            return TransportError(f"no answer: {reason}", request=what, in_doubt=True)
        return None

    # ------------------------------------------------------------ first contact

    def _unreachable(self, what: str, exc: aiohttp.ClientConnectorError) -> None:
        """Before the service ever answered: tell a wrong URL from an outage, or raise."""
        import aiohttp  # noqa: PLC0415 - loaded already by the session; see the top

        base = str(self._base)
        if isinstance(exc, aiohttp.ClientConnectorSSLError | aiohttp.ClientSSLError):
            plain = self._base.with_scheme("http")
            raise NotFlowService(
                f"{base}: the TLS handshake failed ({exc.os_error}); is it a plain-http "
                f"server? Check --base-url (http://, as in {plain}, is accepted for loopback "
                "hosts only)",
                request=what,
            ) from exc
        if isinstance(exc, aiohttp.ClientConnectorDNSError):
            raise NotFlowService(
                f"{base}: the host {self._base.host} does not resolve ({exc.os_error}); "
                "check --base-url (Adobe's is https://platform.adobe.io/data/foundation/"
                "flowservice)",
                request=what,
            ) from exc
        raise TransportError(
            f"could not connect to {base} ({exc.os_error}); if nothing ever answers there, "
            "check --base-url",
            request=what,
            in_doubt=False,
        ) from exc

    def _first_contact(
        self,
        method: str,
        what: str,
        url: URL,
        status: int,
        raw: bytes,
        headers: Mapping[str, str],
    ) -> None:
        """The first answer: Flow Service's (remember it), or something else (raise).

        A POST answered 2xx may have acted whatever the body: that stays in doubt.
        """
        content_type = headers.get("Content-Type", "").split(";")[0].strip().lower()
        html = content_type == "text/html" or raw.lstrip()[:15].lower().startswith(
            (b"<!doctype html", b"<html")
        )
        html = html and (method == "GET" or not 200 <= status < 300)
        if html or (status == 404 and not _adobe_error(raw)):
            shown = raw.decode("utf-8", "replace").strip().replace("\n", " ")[:80]
            kind = "an HTML page" if html else f"{status} without Flow Service's error body"
            raise NotFlowService(
                f"{url.with_query(None)} answered {kind} ({shown!r}): this is not the Flow "
                f"Service API; --base-url must be its root, ending in "
                f"/data/foundation/flowservice (got {self._base})",
                request=what,
                status=status,
            )
        if status < 500:
            self.confirmed = True

    # ------------------------------------------------------------ clock

    def _read_date(self, headers: Mapping[str, str]) -> None:
        value = headers.get("Date")
        if not value:
            return
        seen, when = self._date
        if value != seen:  # whole seconds: most answers repeat the one before's; parsed once
            when = _http_date(value)
            self._date = (value, when)
        if when is not None:
            self._clock_offset = when - self._wall()


def _http_date(value: str) -> float | None:
    """An HTTP-date as unix seconds, or None if it is not one."""
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:  # RFC 9110: an HTTP-date is always GMT
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _same_origin(url: URL, origin: URL) -> bool:
    """Scheme, host and port, with the scheme's default port filled in (yarl does)."""
    host, other = url.host, origin.host
    return (
        url.scheme == origin.scheme
        and host is not None
        and other is not None
        and host.lower() == other.lower()
        and url.port == origin.port
    )


# Parameters a query holds once: a link's own value wins over ours.
_SINGLE_VALUED = frozenset({"orderby", "limit"})


def _with_filters(url: URL, query: Sequence[tuple[str, str]]) -> URL:
    """``url`` with every parameter of ``query`` it lacks added; its own are left as sent."""
    present = list(url.query.items())
    have = set(present)
    names = {name for name, _ in present}
    missing = [
        (name, value)
        for name, value in query
        if (name, value) not in have and not (name in _SINGLE_VALUED and name in names)
    ]
    return url.extend_query(missing) if missing else url


def _names_the_operation(exc: PermanentError) -> bool:
    if exc.status != 400 or isinstance(exc, AuthError):
        return False
    return exc.code == "1434-400" or bool(_NAMES_THE_OPERATION.search(exc.detail))


def _created(data: Any, what: str) -> CreatedRun:
    """The run id from either documented answer: the run itself, or ``{"items": [...]}``."""
    if isinstance(data, dict):
        item = data
        items = data.get("items")
        if "id" not in data and isinstance(items, list) and items and isinstance(items[0], dict):
            item = items[0]
        run_id = item.get("id")
        if isinstance(run_id, str) and run_id:
            etag = item.get("etag")
            return CreatedRun(run_id, str(etag) if etag is not None else None)
    raise ServerError(f"the answer has no run id: {str(data)[:200]}", request=what, status=None)


def _error(status: int, raw: bytes, headers: Mapping[str, str], what: str) -> ApiError:
    code, message = _error_body(raw)
    message = message or f"HTTP {status}"
    if status == 429:
        return RateLimited(
            message, request=what, status=status, code=code, retry_after=_retry_after(headers)
        )
    if status >= 500 or status == 408:
        # Any 5xx -- a proxy's 520 too -- and a proxy's 408 may come after the service acted:
        # retried, and for a POST settled against the listing first (in doubt), never resent
        # blindly.
        return ServerError(
            message, request=what, status=status, code=code, retry_after=_retry_after(headers)
        )
    if status in (401, 403):
        return AuthError(message, request=what, status=status, code=code)
    if 400 <= status < 500:
        return PermanentError(message, request=what, status=status, code=code)
    return RetryableError(message, request=what, status=status, code=code)


def _adobe_error(raw: bytes) -> bool:
    """Is this body one of Adobe's error shapes: Flow Service's envelope or the gateway's?

    Flow Service answers errors as ``{"type", "title", "status", "report"}`` with codes like
    ``1101-404`` "resource not found" (AdobeDocs/experience-platform.en,
    help/sources/errors/flow-service-errors.md); the API gateway as ``{"error_code",
    "message"}`` (AdobeDocs/experience-platform.en, help/landing/troubleshooting.md).
    """
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    return isinstance(body, dict) and bool({"type", "report", "error_code"} & body.keys())


def _error_body(raw: bytes) -> tuple[str | None, str | None]:
    """Code and message from a gateway, Flow Service or IMS error body."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        text = raw.decode("utf-8", "replace").strip()
        return None, text[:300] or None
    if not isinstance(body, dict):
        return None, None
    if "error_code" in body:  # gateway
        return str(body["error_code"]), _str(body.get("message"))
    if "report" in body or "type" in body:  # Flow Service envelope
        report = body.get("report") or {}
        code = str(body.get("type", "")).rsplit("/", 1)[-1].removeprefix("FLOW-") or None
        message = _str(report.get("detailed-message")) or _str(body.get("title"))
        return code, message
    if "error" in body:  # IMS
        return str(body["error"]), _str(body.get("error_description"))
    return None, _str(body.get("message"))


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("Retry-After")
    if not value:
        return None
    if value.strip().isdigit():  # delay-seconds, the usual form
        return float(value.strip())
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:  # a fraction is not standard but harmless; inf and nan are not times
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - time.time())


def _str(value: Any) -> str | None:
    return str(value) if value else None


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
