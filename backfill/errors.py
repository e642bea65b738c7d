"""Every error backfill raises on purpose, and the exit code each one maps to.

BackfillError
 +-- ConfigError ............... bad flag, variable or config key (exit 2)
 +-- CheckpointError ........... the checkpoint cannot be used (exit 3)
 |    +-- CheckpointLocked ..... another process holds it
 |    +-- CheckpointMissing .... there is none where one must be (retry, status)
 |    +-- CheckpointCorrupt .... a line in the middle does not parse, or the header is wrong
 |    +-- PlanMismatch ......... it was written for another plan
 |    +-- CheckpointStale ...... an older copy was put back where a newer one was written
 +-- CheckpointWriteError ...... it cannot be written: disk full, read-only (exit 74)
 |    +-- CheckpointLost ....... removed, replaced or truncated under the running process
 +-- ApiUnavailable ............ retryable errors went on past every retry, or the service
 |                                asked for a pause longer than --max-retry-after (exit 75)
 +-- RequestNotSent ............ the backfill stopped before this request got its permit
 +-- ServiceDataError .......... the service's runs cannot be matched to windows safely (exit 2)
 +-- ApiError .................. the Flow Service (or IMS) answered with an error
      +-- RetryableError ....... worth sending again: 429, 5xx, connection errors, timeouts
      |    +-- RateLimited ..... 429: nothing was done; the whole pool pauses
      |    +-- ServerError ..... any 5xx or a proxy's 408: maybe done (Retry-After pauses all)
      |    +-- TransportError .. no HTTP answer at all
      +-- PermanentError ....... any other 4xx: sending it again cannot help (exit 2)
           +-- AuthError ....... 401/403: the credentials are wrong or the token expired
           +-- NotFlowService .. first contact: TLS to plain http, a host that does not
                                 resolve, an answer that is not Flow Service's (exit 2)

Each API error carries the request it concerns (method and path, never headers) and, where
there is one, the window or run; ``in_doubt`` says whether the service may have acted on a
request whose answer never arrived, which is what decides reconciliation before a resend.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """The process exit codes, documented in the README."""

    OK = 0
    WINDOWS_FAILED = 1
    USAGE = 2
    CHECKPOINT_REFUSED = 3
    DUPLICATES = 4  # the service holds more than one live run for some window
    CHECKPOINT_UNWRITABLE = 74  # sysexits EX_IOERR
    API_UNAVAILABLE = 75  # sysexits EX_TEMPFAIL: run again later to resume
    SIGHUP = 129  # 128 + the signal's number, as a shell reports it
    SIGINT = 130
    SIGTERM = 143


class BackfillError(Exception):
    """Base of every error backfill raises on purpose."""

    exit_code: ExitCode = ExitCode.USAGE

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigError(BackfillError):
    """A flag, environment variable or config key is missing or wrong."""

    exit_code = ExitCode.USAGE

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class CheckpointError(BackfillError):
    """The checkpoint cannot be used as it is; nothing was changed in it."""

    exit_code = ExitCode.CHECKPOINT_REFUSED


class CheckpointLocked(CheckpointError):
    """Another process holds the checkpoint's lock."""

    def __init__(self, path: str, pid: int | None, host: str | None = None) -> None:
        holder = f"process {pid}" if pid is not None else "another process"
        holder += f" on {host}" if host else ""
        super().__init__(
            f"checkpoint {path} is in use by {holder}; "
            "wait for it to finish or stop it, then run the same command again"
        )
        self.path = path
        self.pid = pid
        self.host = host


class CheckpointMissing(CheckpointError):
    """``retry`` and ``status`` read a checkpoint that must already exist."""

    def __init__(self, path: str) -> None:
        super().__init__(
            f"there is no checkpoint at {path}; give the --checkpoint of an earlier run"
        )
        self.path = path


class CheckpointCorrupt(CheckpointError):
    """A record that is not the torn tail of the file cannot be read."""

    def __init__(self, path: str, line: int | None, problem: str) -> None:
        where = f"{path}:{line}" if line is not None else path
        super().__init__(
            f"checkpoint {where} is corrupt: {problem}; it was left untouched "
            "(restore the newest copy from a backup, or move it aside to start over)"
        )
        self.path = path
        self.line = line


class PlanMismatch(CheckpointError):
    """The checkpoint was written for a different plan."""

    def __init__(self, path: str, differences: list[str], *, extendable: bool) -> None:
        hint = (
            "run with --extend to add the new windows and keep what is recorded"
            if extendable
            else "use the original plan, or another --checkpoint for the new one"
        )
        super().__init__(
            f"checkpoint {path} was written for another plan: {'; '.join(differences)}; {hint}"
        )
        self.differences = differences


class CheckpointStale(CheckpointError):
    """The checkpoint holds fewer records than this host last wrote to it: an older copy."""

    def __init__(self, path: str, holds: int, written: int, sidecar: str) -> None:
        super().__init__(
            f"checkpoint {path} is an older copy: it holds {holds:,} records, but {written:,} "
            "were written to it here; windows recorded since could be sent twice. Put the "
            f"newest copy back; to continue from this one anyway, delete {sidecar}"
        )
        self.path = path


class CheckpointWriteError(BackfillError):
    """Writing or syncing the checkpoint failed; what was recorded before is intact."""

    exit_code = ExitCode.CHECKPOINT_UNWRITABLE

    def __init__(self, path: str, cause: OSError) -> None:
        super().__init__(
            f"checkpoint {path} could not be written ({cause.strerror or cause}); "
            "records written before are intact: free space or fix permissions, "
            "then run the same command again to resume"
        )
        self.path = path


class CheckpointLost(CheckpointWriteError):
    """The open checkpoint is no longer the file its path names: nothing more is sent."""

    def __init__(self, path: str, what: str) -> None:
        BackfillError.__init__(
            self,
            f"checkpoint {path} {what} while this run was using it; the run stopped and sent "
            "nothing more. Put the checkpoint back (the newest copy) and run the same command "
            "again",
        )
        self.path = path
        self.what = what


class ApiError(BackfillError):
    """The service answered a request with an error, or did not answer at all."""

    exit_code = ExitCode.USAGE
    in_doubt = False

    def __init__(
        self,
        message: str,
        *,
        request: str,
        status: int | None = None,
        code: str | None = None,
    ) -> None:
        detail = f"{status} " if status is not None else ""
        detail += f"[{code}] " if code else ""
        super().__init__(f"{request}: {detail}{message}")
        self.request = request
        self.status = status
        self.code = code
        self.detail = message


class RetryableError(ApiError):
    """Sending the request again may succeed; ``retry_after`` (seconds) if the service said."""

    def __init__(
        self,
        message: str,
        *,
        request: str,
        status: int | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, request=request, status=status, code=code)
        self.retry_after = retry_after


class RateLimited(RetryableError):
    """The service asked us to slow down (429): nothing was done."""


class ServerError(RetryableError):
    """A 5xx (or 408) answer: the service may or may not have acted on the request."""

    in_doubt = True


class TransportError(RetryableError):
    """No HTTP answer: refused, reset, dropped or timed out."""

    def __init__(self, message: str, *, request: str, in_doubt: bool) -> None:
        super().__init__(message, request=request)
        self.in_doubt = in_doubt


class PermanentError(ApiError):
    """A 4xx answer other than 429: the request itself is wrong."""


class AuthError(PermanentError):
    """The credentials were refused, or the token expired and cannot be renewed."""


class ServiceDataError(BackfillError):
    """What the service lists cannot be matched to windows safely: nothing more is sent."""

    exit_code = ExitCode.USAGE


class ApiUnavailable(BackfillError):
    """Retryable errors did not stop; the checkpoint is durable and the run resumable."""

    exit_code = ExitCode.API_UNAVAILABLE


class NotFlowService(PermanentError):
    """The base URL does not lead to Flow Service: a configuration error, not an outage."""


class RequestNotSent(BackfillError):
    """The backfill stopped while this request waited for its rate permit: it was never sent.

    The engine catches it; a window whose request raised it goes back to where it was.
    """

    exit_code = ExitCode.API_UNAVAILABLE

    def __init__(self, request: str) -> None:
        super().__init__(f"{request}: not sent, the backfill is stopping")
        self.request = request
