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

import email.utils
import math
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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
from .state import RunStatus

if TYPE_CHECKING:
    import aiohttp  # imported by the first request: plan and --help never load it

__all__ = [
    "ApiIdentity",
    "CreatedRun",
    "FlowServiceClient",
    "Page",
    "Permit",
    "RunInfo",
    "RunsApi",
]

PRODUCTION_URL = "https://platform.adobe.io/data/foundation/flowservice"

# A request answered 401 renews the token and is sent again, each time with a new token, at
# most this many times: a token revoked twice in a row is renewed, one refused as soon as it
# is issued (wrong credentials, scopes or product profile) stops the run.
_MAX_RENEWALS = 2


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
    window_start: int | None
    window_end: int | None
    status: RunStatus
    raw_status: str
    errors: tuple[dict[str, str], ...] = ()

    @classmethod
    def parse(cls, item: Mapping[str, Any]) -> RunInfo:
        params = item.get("params") or {}
        summary = (item.get("metrics") or {}).get("statusSummary") or {}
        raw = str(summary.get("status") or "")
        errors = tuple(
            {"code": str(e.get("code", "")), "message": str(e.get("message", ""))}
            for e in summary.get("errors") or ()
            if isinstance(e, Mapping)
        )
        return cls(
            run_id=str(item["id"]),
            flow_id=str(item.get("flowId", "")),
            window_start=_int_or_none(params.get("windowStartTime")),
            window_end=_int_or_none(params.get("windowEndTime")),
            status=RunStatus.parse(raw),
            raw_status=raw,
            errors=errors,
        )


@dataclass(frozen=True, slots=True)
class Page:
    runs: list[RunInfo]
    next_href: str | None


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


class Permit(Protocol):
    """Waits for the rate permit of one request (``acts``: it may change the service's state)."""

    async def __call__(self, what: str, *, acts: bool) -> None: ...


async def no_permit(what: str, *, acts: bool) -> None:
    """No rate limit (tests, one-off calls)."""


class FlowServiceClient:
    """One aiohttp session's worth of Flow Service calls; counts every request it sends."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        identity: ApiIdentity,
        tokens: TokenProvider,
        permit: Permit = no_permit,
    ) -> None:
        self._session = session
        self._base = URL(base_url.rstrip("/"))
        self._origin = self._base.origin()
        self._runs_url = self._base / "runs"
        self._identity = identity
        self._tokens = tokens
        self._headers_for: tuple[str, dict[str, str]] | None = None
        self._permit = permit
        self.confirmed = False  # the service has answered once like Flow Service
        self.responses: Counter[str] = Counter()  # status code (or "error") -> requests

    # ------------------------------------------------------------------ calls

    async def create_run(
        self, flow_id: str, start: int, end: int, delta_column: str | None = None
    ) -> CreatedRun:
        """``POST /runs`` for one window; window times go as strings of digits."""
        params: dict[str, Any] = {"windowStartTime": str(start), "windowEndTime": str(end)}
        if delta_column is not None:
            params["deltaColumn"] = {"name": delta_column}
        body = orjson.dumps({"flowId": flow_id, "params": params})
        data = await self._send("POST", self._runs_url, "POST /runs", body=body)
        return _created(data, "POST /runs")

    async def retrigger(self, run_id: str) -> CreatedRun:
        """``POST /runs/{id}/action?op=re-trigger``: run a failed run's window again."""
        url = (self._runs_url / run_id / "action").with_query(op="re-trigger")
        data = await self._send("POST", url, "POST /runs/{id}/action?op=re-trigger", body=b"")
        # The answer is documented as {"id", "etag"}: the same run. Without an id, it still is.
        etag = data.get("etag") if isinstance(data, dict) else None
        return _created(data, "re-trigger", default_id=run_id, default_etag=etag)

    async def list_runs(
        self,
        flow_id: str | None = None,
        *,
        ids: Sequence[str] = (),
        created_since_ms: int | None = None,
        limit: int = 100,
        href: str | None = None,
    ) -> Page:
        """One page of ``GET /runs``; pass the previous page's ``next_href`` for the next."""
        if href is not None:
            url = self._resolve(href)
        else:
            query: list[tuple[str, str]] = []
            if flow_id is not None:
                query.append(("property", f"flowId=={flow_id}"))
            if ids:
                query.append(("property", "id==" + ",".join(ids)))
            if created_since_ms is not None:
                query.append(("property", f"createdAt>={created_since_ms}"))
            query += [("orderby", "createdAt"), ("limit", str(limit))]
            url = self._runs_url.with_query(query)
        data = await self._send("GET", url, "GET /runs")
        if not isinstance(data, dict):
            return Page([], None)
        items = data.get("items") or []
        runs = [RunInfo.parse(item) for item in items if isinstance(item, Mapping) and "id" in item]
        links = data.get("_links")
        following = links.get("next") if isinstance(links, dict) else None
        next_href = following.get("href") if isinstance(following, dict) else None
        return Page(runs, str(next_href) if next_href else None)

    # --------------------------------------------------------------- plumbing

    def _resolve(self, href: str) -> URL:
        """A ``_links.next.href``: absolute on our origin, or a path under the base URL."""
        if href.startswith(("http://", "https://")):
            url = URL(href, encoded=True)
            if url.origin() != self._origin:
                raise PermanentError(
                    f"the next page is on another host ({url.origin()}); not following it",
                    request="GET /runs",
                )
            return url
        if href.startswith(self._base.path + "/"):
            return URL(str(self._origin) + href, encoded=True)
        return URL(str(self._base) + "/" + href.lstrip("/"), encoded=True)

    async def _headers(self) -> dict[str, str]:
        token = await self._tokens.token()
        cached = self._headers_for
        if cached is not None and cached[0] == token:
            return cached[1]
        headers = {
            "Authorization": f"Bearer {token}",
            "x-api-key": self._identity.api_key,
            "x-gw-ims-org-id": self._identity.org_id,
            "x-sandbox-name": self._identity.sandbox_name,
            "Content-Type": "application/json",
            "Accept": "application/json",
        }
        self._headers_for = (token, headers)
        return headers

    async def _ready(self, what: str, *, acts: bool) -> dict[str, str]:
        """The headers (a valid token) and then the rate permit, right before the send.

        A token renewal never happens between the permit and the send; if the token went stale
        while the request waited for its permit, it is renewed and another permit is taken.
        """
        headers = await self._headers()
        while True:
            await self._permit(what, acts=acts)
            current = await self._headers()  # returns at once while the token is valid
            if current is headers:
                return headers
            headers = current

    async def _send(self, method: str, url: URL, what: str, *, body: bytes | None = None) -> Any:
        refused: set[str] = set()  # tokens the service answered 401 to, for this request
        while True:
            headers = await self._ready(what, acts=method != "GET")
            status, raw, response_headers = await self._exchange(method, url, what, headers, body)
            if not self.confirmed:
                self._first_contact(method, what, url, status, raw, response_headers)
            token = headers["Authorization"].removeprefix("Bearer ")
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
        import aiohttp  # noqa: PLC0415 - loaded already by the session; see the top

        try:
            async with self._session.request(method, url, data=body, headers=headers) as response:
                raw = await response.read()
        except aiohttp.ClientConnectorError as exc:
            self.responses["error"] += 1
            if not self.confirmed:
                self._unreachable(what, exc)
            raise TransportError(f"could not connect: {exc}", request=what, in_doubt=False) from exc
        except aiohttp.ConnectionTimeoutError as exc:
            self.responses["error"] += 1
            raise TransportError("connect timed out", request=what, in_doubt=False) from exc
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            # The request may have reached the service: a POST is now in doubt.
            self.responses["error"] += 1
            reason = str(exc) or type(exc).__name__
            raise TransportError(f"no answer: {reason}", request=what, in_doubt=True) from exc
        self.responses[str(response.status)] += 1
        return response.status, raw, response.headers

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


def _created(
    data: Any, what: str, *, default_id: str | None = None, default_etag: Any = None
) -> CreatedRun:
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
    if default_id is not None:
        return CreatedRun(default_id, str(default_etag) if default_etag is not None else None)
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
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
