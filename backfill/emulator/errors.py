"""The Flow Service error envelope, raised by the store and the query parser, rendered by the app.

Codes the public documentation names are used as documented (``1401-400``, ``1405-400``,
``1430-400``, ``1434-400``, ``1439-404``, ``1446-400``, ``2105-400``: the catalogue is
help/sources/errors/flow-service-errors.md in AdobeDocs/experience-platform.en, and ``1439-404``
as help/sources/tutorials/api/labels.md shows it). Where it is silent the emulator picks a code
in the same family and says so here, so tests and the README can name them:

======== ======= =================================================================
code     status  meaning
======== ======= =================================================================
1400     400     malformed request: JSON, params, window times, query parameters, a
                 missing ``params.startTime`` with ``--require-start-time``
1401     400     ``count`` given with ``limit`` on ``GET /runs`` (documented)
1404     404     no such route under the Flow Service prefix
1405     400     empty body (documented)
1429     429     too many active runs on the flow (``--max-active-runs``)
1430     400     flow not found on ``POST /runs`` (documented)
1431     404     run not found (``GET /runs/{id}``, re-trigger)
1434     400     unsupported ``op`` on ``/runs/{id}/action`` (documented: "Unsupported
                 operation"); which spellings pass is ``--retrigger-spelling``
1439     404     flow not found on ``GET /flows/{id}`` (documented)
1446     400     flow id null or empty (documented)
1450     400     table-based flow: the first run must carry ``params.deltaColumn``
1451     400     table-based flow: ``deltaColumn`` differs from the flow's
1452     400     file-based flow: ``deltaColumn`` is not accepted
1460     400     re-trigger of a run that is not failed (nor a success with 0 records)
1462     400     ``POST /runs`` on a flow whose schedule is not ``once``

1500     500     injected internal error (``--error-rate``)
2105     400     header ``x-sandbox-name`` missing (documented)
2106     403     sandbox not accessible (strict ``--sandbox`` mismatch)
2120     403     a flow hidden by access labels (``--hidden-flow``; documented)
======== ======= =================================================================
"""

from __future__ import annotations

__all__ = ["FlowServiceError"]

_TITLES = {400: "Bad request", 403: "Forbidden", 404: "Not found", 429: "Too many requests"}


class FlowServiceError(Exception):
    """An answer in the Flow Service error envelope: ``FLOW-{code}-{status}``."""

    def __init__(self, code: int, detail: str, *, status: int = 400, retry_after: bool = False):
        super().__init__(detail)
        self.code = code
        self.status = status
        self.detail = detail
        self.retry_after = retry_after  # the answer carries ``Retry-After`` (429)

    @property
    def error_type(self) -> str:
        """The ``type`` URL of the envelope."""
        return f"https://ns.adobe.com/aep/errors/FLOW-{self.code}-{self.status}"

    @property
    def title(self) -> str:
        """The ``title`` of the envelope, from the status."""
        return _TITLES.get(self.status, "Internal server error")

    def envelope(self, request_id: str) -> dict[str, object]:
        """The JSON body, exactly as Flow Service shapes its errors."""
        return {
            "type": self.error_type,
            "title": self.title,
            "status": self.status,
            "report": {"detailed-message": self.detail, "request-id": request_id},
        }
