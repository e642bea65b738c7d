"""The Flow Service runs API over aiohttp: requests, answers, and typed errors.

The client sends exactly what it is asked to, once. Whether to send again, and when, is the
engine's decision; the client only says what happened, in an error class that tells a
retryable answer from a permanent one, and a request that may have acted (``in_doubt``) from
one that certainly did not.
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
    PermanentError,
    RateLimited,
    RetryableError,
    ServerError,
    TransportError,
)
from .state import RunStatus

if TYPE_CHECKING:
    import aiohttp  # imported by the first request: plan and --help never load it

__all__ = ["ApiIdentity", "CreatedRun", "FlowServiceClient", "Page", "RunInfo", "RunsApi"]

PRODUCTION_URL = "https://platform.adobe.io/data/foundation/flowservice"


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


class FlowServiceClient:
    """One aiohttp session's worth of Flow Service calls; counts every request it sends."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        identity: ApiIdentity,
        tokens: TokenProvider,
    ) -> None:
        self._session = session
        self._base = URL(base_url.rstrip("/"))
        self._origin = self._base.origin()
        self._runs_url = self._base / "runs"
        self._identity = identity
        self._tokens = tokens
        self._headers_for: tuple[str, dict[str, str]] | None = None
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

    async def _send(self, method: str, url: URL, what: str, *, body: bytes | None = None) -> Any:
        renewed = False
        while True:
            headers = await self._headers()
            status, raw, response_headers = await self._exchange(method, url, what, headers, body)
            if status == 401 and not renewed:
                # The token expired under us: renew it once (every worker shares the renewal).
                await self._tokens.renew(headers["Authorization"].removeprefix("Bearer "))
                renewed = True
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
    if status in (500, 502, 503, 504):
        return ServerError(
            message, request=what, status=status, code=code, retry_after=_retry_after(headers)
        )
    if status in (401, 403):
        return AuthError(message, request=what, status=status, code=code)
    if 400 <= status < 500:
        return PermanentError(message, request=what, status=status, code=code)
    return RetryableError(message, request=what, status=status, code=code)


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
