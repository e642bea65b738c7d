"""The API gateway's header checks and the IMS token endpoint that issues expiring tokens."""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from typing import Any

from .config import EmulatorConfig
from .errors import FlowServiceError
from .faults import rng_from_state, rng_state, seeded
from .store import Identity

__all__ = ["Gatekeeper", "GatewayError", "ImsError"]

GRANT_TYPE = "client_credentials"


class GatewayError(Exception):
    """A refusal by Adobe's API gateway: ``{"error_code", "message"}``, before Flow Service."""

    def __init__(self, status: int, error_code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code
        self.message = message

    def body(self) -> dict[str, str]:
        """The JSON body, as the gateway shapes it."""
        return {"error_code": self.error_code, "message": self.message}


class ImsError(Exception):
    """A refusal by the IMS token endpoint: OAuth's ``{"error", "error_description"}``."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description

    def body(self) -> dict[str, str]:
        """The JSON body, as IMS shapes it."""
        return {"error": self.error, "error_description": self.description}


class Gatekeeper:
    """Checks the four headers of every Flow Service request, in the gateway's order.

    By default any non-empty value passes; each of ``--token``, ``--api-key``, ``--org`` and
    ``--sandbox`` makes its header strict. Tokens issued by the IMS endpoint are always valid
    until they expire, and an expired issued token is refused even when tokens are not
    strict: that is how a long backfill meets the 24-hour expiry without waiting a day.
    """

    def __init__(self, config: EmulatorConfig, now: Callable[[], float]) -> None:
        self._config = config
        self._now = now
        self._rng = seeded(config.seed, "tokens")
        self._issued: dict[str, float] = {}  # access token -> expiry, epoch seconds
        self.tokens_issued = 0

    def check(self, headers: Mapping[str, str]) -> Identity:
        """Who is calling; raises :class:`GatewayError` or the ``2105-400`` envelope."""
        config = self._config
        authorization = headers.get("Authorization", "").strip()
        if not authorization:
            raise GatewayError(403, "403010", "Oauth token is missing.")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or not self._token_valid(token):
            raise GatewayError(401, "401013", "Oauth token is not valid")
        api_key = headers.get("x-api-key", "").strip()
        if not api_key:
            raise GatewayError(403, "403000", "Api Key is required")
        if config.api_key is not None and api_key != config.api_key:
            raise GatewayError(403, "403003", "Api Key is invalid")
        org = headers.get("x-gw-ims-org-id", "").strip()
        if not org:
            raise GatewayError(400, "400003", "Missing header")
        if config.org is not None and org != config.org:
            raise GatewayError(403, "403025", "Profile is not valid")
        sandbox = headers.get("x-sandbox-name", "").strip()
        if not sandbox:
            raise FlowServiceError(2105, "The header x-sandbox-name is missing")
        if config.sandbox is not None and sandbox != config.sandbox:
            raise FlowServiceError(
                2106, f"The sandbox {sandbox!r} does not exist or is not accessible.", status=403
            )
        return Identity.of(org, sandbox, api_key)

    def _token_valid(self, token: str) -> bool:
        expiry = self._issued.get(token)
        if expiry is not None:
            return self._now() < expiry
        return self._config.token is None or token == self._config.token

    def issue(self, form: Mapping[str, str]) -> dict[str, Any]:
        """Answer ``POST /ims/token/v3`` (client credentials), or raise :class:`ImsError`."""
        config = self._config
        grant = form.get("grant_type", "")
        if grant != GRANT_TYPE:
            raise ImsError(
                400, "unsupported_grant_type", f"grant_type must be {GRANT_TYPE}, got {grant!r}"
            )
        client_id = form.get("client_id", "")
        client_secret = form.get("client_secret", "")
        if not client_id:
            raise ImsError(400, "invalid_request", "client_id is required")
        if not client_secret:
            raise ImsError(400, "invalid_request", "client_secret is required")
        if (config.client_id is not None and client_id != config.client_id) or (
            config.client_secret is not None and client_secret != config.client_secret
        ):
            raise ImsError(401, "invalid_client", "invalid client_id or client_secret")
        token = "eyJhbGciOiJSUzI1NiIsIng1dSI6ImVtdWxhdG9yIn0." + base64.urlsafe_b64encode(
            self._rng.getrandbits(384).to_bytes(48, "big")
        ).decode("ascii")
        self._issued[token] = self._now() + config.token_lifetime
        self.tokens_issued += 1
        return {
            "access_token": token,
            "token_type": "bearer",
            # Whole seconds, rounded down: a client never believes a token lives too long.
            "expires_in": int(config.token_lifetime),
        }

    def revoke(self) -> int:
        """Every token issued so far stops being valid now (as if revoked in the console)."""
        now = self._now()
        for token in self._issued:
            self._issued[token] = min(self._issued[token], now)
        return len(self._issued)

    def snapshot(self) -> dict[str, Any]:
        """Issued tokens and the token stream, so a restart does not log clients out."""
        return {"issued": dict(self._issued), "rng": rng_state(self._rng)}

    def restore(self, snapshot: dict[str, Any]) -> None:
        """Load what :meth:`snapshot` saved."""
        for token, expiry in dict(snapshot.get("issued", {})).items():
            self._issued[str(token)] = float(expiry)
        rng_from_state(self._rng, snapshot.get("rng"))
