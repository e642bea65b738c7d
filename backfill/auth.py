"""Access tokens: a static one, or OAuth server-to-server client credentials renewed in time.

Adobe's tokens live 24 hours and a long backfill outlives them. The client-credentials
provider fetches a token at start, renews it a margin before it expires, and renews at once
when the service answers 401. Renewal is single-flight: however many workers need a token at
that moment, one request goes to IMS. Secrets stay ``SecretStr`` until the header is built.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import orjson
from pydantic import SecretStr

from .errors import AuthError, ConfigError, RetryableError, TransportError
from .limits import Clock, monotonic

if TYPE_CHECKING:
    import aiohttp  # imported by the first request: plan and --help never load it

__all__ = ["DEFAULT_SCOPES", "ClientCredentials", "StaticToken", "TokenProvider"]

DEFAULT_SCOPES = "openid,AdobeID,read_organizations,additional_info.projectedProductContext,session"
IMS_URL = "https://ims-na1.adobelogin.com/ims/token/v3"


class TokenProvider(Protocol):
    """Where the ``Authorization`` header's token comes from."""

    renewals: int

    async def token(self) -> str:
        """A token that is valid now, as far as we know."""
        ...

    async def renew(self, stale: str) -> str:
        """The service refused ``stale``: get a new one, or raise ``AuthError``."""
        ...


class StaticToken:
    """A token given by the user: it cannot be renewed, so a 401 ends the run, resumably."""

    def __init__(self, token: SecretStr) -> None:
        self._token = token
        self.renewals = 0

    async def token(self) -> str:
        return self._token.get_secret_value()

    async def renew(self, stale: str) -> str:
        raise AuthError(
            "the access token was refused: it has probably expired (Adobe tokens live "
            "24 hours); set a fresh BACKFILL_ACCESS_TOKEN and run the same command again to "
            "resume, or use client credentials so backfill renews tokens itself",
            request="Authorization",
            status=401,
        )


class ClientCredentials:
    """OAuth server-to-server: ``POST /ims/token/v3`` with ``grant_type=client_credentials``."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        client_id: str,
        client_secret: SecretStr,
        scopes: str = DEFAULT_SCOPES,
        ims_url: str = IMS_URL,
        margin: float = 300.0,
        clock: Clock = monotonic,
        on_token: Callable[[str], None] | None = None,
    ) -> None:
        self._session = session
        self._client_id = client_id
        self._secret = client_secret
        self._scopes = scopes
        self._url = ims_url
        self._margin = margin
        self._clock = clock
        self._on_token = on_token  # e.g. the log scrubber: every new token is a secret too
        self._token: str | None = None
        self._renew_at = 0.0
        self._fetching: asyncio.Task[str] | None = None
        self.renewals = 0  # tokens fetched, the first one included

    async def token(self) -> str:
        if self._token is not None and self._clock() < self._renew_at:
            return self._token
        return await self._single_flight()

    async def renew(self, stale: str) -> str:
        if self._token is not None and self._token != stale:
            return self._token  # someone else renewed it meanwhile
        self._renew_at = 0.0
        return await self._single_flight()

    async def _single_flight(self) -> str:
        if self._fetching is None:
            self._fetching = asyncio.get_running_loop().create_task(self._fetch())
            self._fetching.add_done_callback(self._fetched)
        return await asyncio.shield(self._fetching)

    def _fetched(self, task: asyncio.Task[str]) -> None:
        self._fetching = None
        if not task.cancelled():
            task.exception()  # retrieved here so an unawaited failure is not reported twice

    async def _fetch(self) -> str:
        form = {
            "grant_type": "client_credentials",
            "client_id": self._client_id,
            "client_secret": self._secret.get_secret_value(),
            "scope": self._scopes,
        }
        import aiohttp  # noqa: PLC0415 - loaded already by the session; see the top

        started = self._clock()
        what = "POST /ims/token/v3"
        try:
            async with self._session.post(self._url, data=form) as response:
                raw = await response.read()
                status = response.status
        except aiohttp.ClientConnectorError as exc:
            if self._token is None and isinstance(
                exc, aiohttp.ClientConnectorSSLError | aiohttp.ClientConnectorDNSError
            ):
                # The first fetch: a host that does not resolve or a TLS handshake with a
                # plain-http server is a wrong URL, not an outage worth retrying.
                raise ConfigError(
                    "ims_url",
                    f"{self._url} cannot be reached ({exc.os_error}); check BACKFILL_IMS_URL "
                    f"(the default is {IMS_URL})",
                ) from exc
            raise TransportError(
                f"IMS unreachable at {self._url}: {exc}", request=what, in_doubt=False
            ) from exc
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise TransportError(
                f"IMS did not answer: {exc}", request=what, in_doubt=False
            ) from exc
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        if status >= 500 or status == 429:
            raise RetryableError("IMS is unavailable", request=what, status=status)
        if status in (404, 405) and "error" not in body:
            # No OAuth error body: the URL is not a token endpoint (a wrong path, another
            # server), which no change of credentials would fix.
            raise ConfigError(
                "ims_url",
                f"{self._url} answered {status} without IMS's error body: it is not a token "
                f"endpoint; check BACKFILL_IMS_URL (the default is {IMS_URL})",
            )
        if status != 200 or not isinstance(body.get("access_token"), str):
            reason = body.get("error_description") or body.get("error") or f"HTTP {status}"
            raise AuthError(
                f"IMS refused the client credentials ({reason}); check BACKFILL_CLIENT_ID, "
                "BACKFILL_CLIENT_SECRET and BACKFILL_SCOPES",
                request=what,
                status=status,
                code=str(body.get("error")) if body.get("error") else None,
            )
        lifetime = float(body.get("expires_in") or 86399)
        # Renew a margin before expiry; for short-lived tokens, a fifth of their life.
        margin = min(self._margin, lifetime / 5)
        self._token = body["access_token"]
        if self._on_token is not None:
            self._on_token(self._token)
        self._renew_at = started + lifetime - margin
        self.renewals += 1
        return self._token
