"""The emulator's HTTP face: Flow Service routes behind the gateway checks, IMS, stats, serve()."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import http
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from .arrival import arrived_after
from .auth import Gatekeeper, GatewayError, ImsError
from .config import EmulatorConfig
from .errors import FlowServiceError
from .faults import FaultModel
from .query import count as count_runs
from .query import encode_token, next_href, parse_query, self_href
from .query import select as select_runs
from .store import Identity, Store, parse_run_body, read_state_file, write_state_file

__all__ = ["ENDPOINTS", "IMS_PATH", "PREFIX", "Clock", "Emulator", "EmulatorApp", "Sleep", "serve"]

PREFIX = "/data/foundation/flowservice"
IMS_PATH = "/ims/token/v3"
ENDPOINTS = (
    "POST /runs",
    "GET /runs",
    "GET /runs/{id}",
    "POST /runs/{id}/action",
    "GET /flows/{id}",
    "POST " + IMS_PATH,
)
OTHER_ENDPOINT = "other"  # anything else under the Flow Service prefix (answered 404)
DROPPED = "dropped"

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
Handler = Callable[[web.Request, Identity], Awaitable[web.Response]]

_JSON = "application/json"
_FORM = "application/x-www-form-urlencoded"
_RATE_LIMITED = orjson.dumps({"error_code": "429050", "message": "Too many requests"})
_GATEWAY_FAULTS = {
    502: orjson.dumps({"error_code": "502000", "message": "Bad Gateway"}),
    503: orjson.dumps({"error_code": "503000", "message": "Service Unavailable"}),
}


def _json(status: int, body: object, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type=_JSON, headers=headers)


async def _form_fields(request: web.Request) -> dict[str, str]:
    """The IMS request's fields: the form, over any in the query string (IMS accepts both)."""
    if request.content_type != _FORM:
        raise ImsError(400, "invalid_request", f"send the fields as {_FORM}")
    fields = dict(request.query.items())
    form = await request.post()
    fields.update({k: v for k, v in form.items() if isinstance(v, str)})
    return fields


class EmulatorApp:
    """One emulator's state (store, faults, gate, counters) and its aiohttp application."""

    def __init__(self, config: EmulatorConfig, clock: Clock, sleep: Sleep) -> None:
        self.config = config
        self._clock = clock
        self._sleep = sleep
        # Emulator time is epoch seconds that advance with the injected monotonic clock, so a
        # test that moves the clock moves createdAt, the lifecycle and token expiry together.
        self._clock_origin = clock()
        # A whole millisecond, so that whole-millisecond clock moves give exact timestamps.
        self._epoch_origin = round(time.time() * 1000) / 1000
        self.store = Store(config, self.now)
        self.faults = FaultModel(config, clock)
        self.gate = Gatekeeper(config, self.now)
        self.requests: dict[str, dict[str, int]] = {name: {} for name in ENDPOINTS}
        # Requests being handled now, and the most at once, per endpoint: a client's
        # concurrency as the service sees it.
        self.in_flight: dict[str, int] = {}
        self.max_in_flight: dict[str, int] = {}
        self.total = 0
        self.dropped = 0
        self._request_serial = 0
        # The re-trigger op: "re-trigger" (retry-flows.md), "RE_TRIGGER" (the spec's enum).
        spelling = config.retrigger_spelling
        self._retrigger_ops = ("re-trigger", "RE_TRIGGER") if spelling == "both" else (spelling,)
        self.status_words: dict[str, int] = {}  # every status word served, and how often

    def now(self) -> float:
        """Emulator time, epoch seconds."""
        return self._epoch_origin + (self._clock() - self._clock_origin)

    # -- application -----------------------------------------------------------------------

    def build(self) -> web.Application:
        """The aiohttp application with every route."""
        app = web.Application()
        route = app.router.add_route
        for path in ("/runs", "/runs/"):
            route("POST", PREFIX + path, self._metered("POST /runs", self._create_run, True))
            route("GET", PREFIX + path, self._metered("GET /runs", self._list_runs, lists=True))
        route("GET", PREFIX + "/runs/{id}", self._metered("GET /runs/{id}", self._get_run))
        # A re-trigger creates a run (retry-flows.md): its answer can be lost like a POST's.
        retrigger_creates = not self.config.retrigger_same_run
        route(
            "POST",
            PREFIX + "/runs/{id}/action",
            self._metered("POST /runs/{id}/action", self._run_action, retrigger_creates),
        )
        route("GET", PREFIX + "/flows/{id}", self._metered("GET /flows/{id}", self._get_flow))
        route("*", PREFIX + "/{tail:.*}", self._metered(OTHER_ENDPOINT, self._not_found))
        route("POST", IMS_PATH, self._ims_token)
        route("GET", "/__emulator/stats", self._stats)
        route("POST", "/__emulator/reset", self._reset)
        route("POST", "/__emulator/revoke-tokens", self._revoke_tokens)
        route("GET", "/", self._index)
        return app

    def _metered(
        self, endpoint: str, handler: Handler, creates_run: bool = False, *, lists: bool = False
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        """Wrap a Flow Service handler in the gateway: faults, then auth, then counting."""
        counts = self.requests.setdefault(endpoint, {})
        admit = self.faults.admit
        check = self.gate.check

        async def flow_service(request: web.Request) -> web.StreamResponse:
            now_in = self.in_flight[endpoint] = self.in_flight.get(endpoint, 0) + 1
            if now_in > self.max_in_flight.get(endpoint, 0):
                self.max_in_flight[endpoint] = now_in
            try:
                return await answer(request)
            finally:
                self.in_flight[endpoint] -= 1

        async def answer(request: web.Request) -> web.StreamResponse:
            # The order is the contract: latency, rate limit, injected 5xx, auth, handler.
            # How long ago the request can have reached the socket (the loop may be late).
            transport = request.transport
            sock = transport.get_extra_info("socket") if transport is not None else None
            lag = max(0.0, time.monotonic() - arrived_after(sock))
            verdict = admit(creates_run=creates_run, lists=lists, lag=lag)
            if verdict.delay > 0.0:
                # A real service has the whole request before it takes its time to act: a
                # client that gives up meanwhile does not undo the run. Read it first.
                try:
                    await request.read()
                except (ConnectionError, aiohttp.ClientConnectionResetError):
                    return web.Response(status=499)  # the client left mid-request
                await self._sleep(verdict.delay)
            try:
                if verdict.rate_limited:
                    response = self._rate_limited()
                elif verdict.injected_status is not None:
                    response = self._injected(verdict.injected_status)
                else:
                    response = await handler(request, check(request.headers))
            except GatewayError as exc:
                response = _json(exc.status, exc.body())
            except FlowServiceError as exc:
                response = self._envelope(exc)
            self.total += 1
            # The service's clock, not the host's: a test that moves the emulator's clock
            # moves its Date too (aiohttp only adds a Date when there is none).
            response.headers["Date"] = email.utils.formatdate(self.now(), usegmt=True)
            # A drop is drawn on arrival but happens only to a request that created a run.
            if not (verdict.drop and response.status in (200, 201)):
                key = str(response.status)
                counts[key] = counts.get(key, 0) + 1
                return response
            counts[DROPPED] = counts.get(DROPPED, 0) + 1
            self.dropped += 1
            if verdict.drop_status is not None:
                # --post-error-codes: a proxy answers its own error for a run that exists.
                return self._injected(verdict.drop_status)
            # The run exists; the client must never learn it. Aborting the transport makes
            # aiohttp's write of the answer fail quietly, so nothing reaches the socket.
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=201)

        return flow_service

    def _request_id(self) -> str:
        self._request_serial += 1
        return f"{self._request_serial:08x}-e3a1-4000-8000-{self.config.seed & 0xFFFFFFFFFFFF:012x}"

    def _envelope(self, exc: FlowServiceError) -> web.Response:
        headers = {"Retry-After": str(self.config.retry_after)} if exc.retry_after else None
        return _json(exc.status, exc.envelope(self._request_id()), headers)

    def _rate_limited(self) -> web.Response:
        return web.Response(
            status=429,
            body=_RATE_LIMITED,
            content_type=_JSON,
            headers={"Retry-After": str(self.config.retry_after)},
        )

    def _injected(self, status: int) -> web.Response:
        if status == 500:
            # Adobe's guide: a 500 may mean an API limit was reached; wait and retry.
            return self._envelope(
                FlowServiceError(1500, "Internal server error, please retry later.", status=500)
            )
        headers = {"Retry-After": str(self.config.retry_after)} if status == 503 else None
        body = _GATEWAY_FAULTS.get(status)
        if body is None:  # --post-error-codes: a proxy's or a gateway's own status (520, 408)
            try:
                reason = http.HTTPStatus(status).phrase
            except ValueError:
                reason = "Unknown Error"
            body = orjson.dumps({"error_code": f"{status}000", "message": reason})
        response = web.Response(status=status, body=body, content_type=_JSON, headers=headers)
        response.headers["Date"] = email.utils.formatdate(self.now(), usegmt=True)
        return response

    # -- Flow Service handlers ---------------------------------------------------------------

    async def _create_run(self, request: web.Request, who: Identity) -> web.Response:
        run_request = parse_run_body(await request.read())
        run = self.store.create_run(run_request, who)
        if self.config.response_shape == "items":
            body: dict[str, Any] = {"items": [{"id": run.id, "etag": run.etag}]}
        else:
            body = self.store.render_run(run, run.created_at, as_created=True)
        return _json(201, body)

    async def _get_run(self, request: web.Request, who: Identity) -> web.Response:
        run = self.store.get_run(request.match_info["id"])
        return _json(200, {"items": self._served([self.store.render_run(run, self.now())])})

    def _served(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Count the status words of runs about to be served (the record a test judges by)."""
        words = self.status_words
        for item in items:
            word = item["metrics"]["statusSummary"]["status"]
            words[word] = words.get(word, 0) + 1
        return items

    async def _list_runs(self, request: web.Request, who: Identity) -> web.Response:
        config = self.config
        params = list(request.query.items())
        query = parse_query(params, config.max_page_size, bare_tokens=config.token_only_links)
        now = self.now()
        lag = config.listing_lag
        if query.count:
            return _json(200, {"count": count_runs(self.store, query, now, lag)})
        page = select_runs(self.store, query, now, lag)
        links: dict[str, Any] = {}
        if page.next_cursor is not None:
            token = encode_token(page.next_cursor, query.fingerprint)
            links["next"] = {"href": next_href(params, token, bare=config.token_only_links)}
        elif config.self_link:
            # --self-link: the last page names itself as the next one; following it is a loop.
            links["next"] = {"href": self_href(params)}
        render = self.store.render_run
        items = self._served([render(run, now) for run in page.runs])
        return _json(200, {"items": items, "_links": links})

    async def _run_action(self, request: web.Request, who: Identity) -> web.Response:
        op = request.query.get("op", "")
        run_id = request.match_info["id"]
        self._check_operation(op)
        # {"id", "etag"}: the id of the new run (retry-flows.md), or the same one with
        # --retrigger-same-run.
        run = self.store.retrigger(run_id, who)
        return _json(200, {"id": run.id, "etag": run.etag})

    def _check_operation(self, op: str) -> None:
        """Only the re-trigger spellings of ``--retrigger-spelling`` are operations."""
        accepted = self._retrigger_ops
        if op not in accepted:
            # FLOW-1434-400 "Unsupported operation 'move' received" (flow-service-errors.md).
            raise FlowServiceError(
                1434,
                f"Unsupported operation {op!r} received. Please use one of the supported "
                f"operation types ({', '.join(accepted)}) and try again.",
            )

    async def _get_flow(self, request: web.Request, who: Identity) -> web.Response:
        flow = self.store.get_flow(request.match_info["id"])
        return _json(200, {"items": [self.store.render_flow(flow, self.now(), who)]})

    async def _not_found(self, request: web.Request, who: Identity) -> web.Response:
        raise FlowServiceError(
            1404, f"{request.method} {request.path} is not a Flow Service route.", status=404
        )

    # -- IMS, inspection ---------------------------------------------------------------------

    async def _ims_token(self, request: web.Request) -> web.StreamResponse:
        # IMS is another host in production: latency applies, the gateway's faults do not.
        delay = self.faults.draw_delay()
        if delay > 0.0:
            await self._sleep(delay)
        try:
            response = _json(200, self.gate.issue(await _form_fields(request)))
        except ImsError as exc:
            response = _json(exc.status, exc.body())
        counts = self.requests["POST " + IMS_PATH]
        counts[str(response.status)] = counts.get(str(response.status), 0) + 1
        self.total += 1
        return response

    async def _stats(self, request: web.Request) -> web.StreamResponse:
        return _json(200, self.stats())

    async def _reset(self, request: web.Request) -> web.StreamResponse:
        self.reset()
        return _json(200, {"reset": True})

    async def _revoke_tokens(self, request: web.Request) -> web.StreamResponse:
        return _json(200, {"revoked": self.gate.revoke()})

    async def _index(self, request: web.Request) -> web.StreamResponse:
        return _json(
            200,
            {
                "service": "backfill emulator of Adobe Flow Service",
                "base_path": PREFIX,
                "ims_path": IMS_PATH,
                "stats_path": "/__emulator/stats",
            },
        )

    def stats(self) -> dict[str, Any]:
        """Everything tests and demos inspect (the body of ``GET /__emulator/stats``)."""
        store = self.store.stats(self.now())
        return {
            "runs": store["runs"],
            "windows": store["windows"],
            "duplicates": store["duplicates"],
            "requests": {
                "total": self.total,
                "by_endpoint": {name: dict(counts) for name, counts in self.requests.items()},
            },
            "max_requests_per_second": self.faults.max_requests_per_second,
            "max_requests_per_second_as_read": self.faults.max_requests_per_second_as_read,
            "max_read_lag_s": round(self.faults.max_read_lag, 6),
            "rate_limited": self.faults.rate_limited,
            "injected_errors": self.faults.injected_errors,
            "dropped": self.dropped,
            "max_active_runs": store["max_active_runs"],
            "max_in_flight": dict(self.max_in_flight),
            "tokens_issued": self.gate.tokens_issued,
            "status_words": dict(self.status_words),
        }

    def reset(self) -> None:
        """Forget runs, undeclared flows and counters; issued tokens stay valid."""
        self.store.reset()
        self.faults.reset()
        # The route wrappers hold these dicts: clear them in place.
        for counts in self.requests.values():
            counts.clear()
        self.total = 0
        self.dropped = 0
        self.status_words.clear()
        self.max_in_flight.clear()  # what is in flight now stays counted

    # -- persistence -----------------------------------------------------------------------

    def load(self) -> None:
        """Carry on from ``--state`` if the file exists."""
        path = self.config.state_file
        if path is None:
            return
        saved = read_state_file(path)
        if saved is None:
            return
        # Emulator time never runs backwards across a restart (a wall clock set back, or a
        # test's fake clock): the saved runs must not go back to "scheduled".
        lag = float(saved.get("saved_at", 0.0)) - self.now()
        if lag > 0:
            self._epoch_origin += lag
        self.store.restore(saved.get("store", {}))
        self.gate.restore(saved.get("tokens", {}))
        self.faults.restore(saved.get("faults", {}))

    def save(self) -> None:
        """Write ``--state`` atomically."""
        path = self.config.state_file
        if path is None:
            return
        write_state_file(
            path,
            {
                "saved_at": self.now(),
                "store": self.store.snapshot(),
                "tokens": self.gate.snapshot(),
                "faults": self.faults.snapshot(),
            },
        )


class Emulator:
    """A running emulator, as :func:`serve` yields it."""

    __slots__ = ("_app", "base_url", "config", "ims_url", "port", "url")

    def __init__(self, app: EmulatorApp, host: str, port: int) -> None:
        self._app = app
        self.config = app.config
        self.port = port
        self.url = f"http://{host}:{port}"  # the server's root (stats live under it)
        self.base_url = self.url + PREFIX
        self.ims_url = self.url + IMS_PATH

    def stats(self) -> dict[str, Any]:
        """The same document as ``GET /__emulator/stats``."""
        return self._app.stats()

    def reset(self) -> None:
        """Same as ``POST /__emulator/reset``."""
        self._app.reset()

    def revoke_tokens(self) -> int:
        """Same as ``POST /__emulator/revoke-tokens``: every issued token is refused from now."""
        return self._app.gate.revoke()

    @property
    def app(self) -> EmulatorApp:
        """The state behind the server, for tests that look inside."""
        return self._app


def _url_host(host: str) -> str:
    if host in ("", "0.0.0.0", "::"):  # noqa: S104 - compares a wildcard, binds nothing
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


@contextlib.asynccontextmanager
async def serve(
    config: EmulatorConfig, *, clock: Clock | None = None, sleep: Sleep | None = None
) -> AsyncIterator[Emulator]:
    """Run the emulator on ``config.host:config.port`` (0 picks a free port) until exit.

    ``clock`` is a monotonic clock in seconds (default ``time.monotonic``) and ``sleep`` the
    coroutine used for injected latency (default ``asyncio.sleep``): tests replace both to be
    exact without waiting. With ``config.state_file`` the state is loaded before listening and
    saved after the server has stopped.
    """
    core = EmulatorApp(config, clock or time.monotonic, sleep or asyncio.sleep)
    core.load()
    runner = web.AppRunner(
        core.build(), access_log=None, handle_signals=False, shutdown_timeout=2.0
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, config.host, config.port, backlog=1024)
        await site.start()
        port = int(runner.addresses[0][1])
        yield Emulator(core, _url_host(config.host), port)
    finally:
        await runner.cleanup()
        core.save()
