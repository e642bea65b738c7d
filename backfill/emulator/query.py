"""``GET /runs``: property filters, ordering, and keyset pagination with continuation tokens."""

from __future__ import annotations

import base64
import binascii
import bisect
import hashlib
import math
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import orjson

from .errors import FlowServiceError
from .store import Run, Store

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "Filter",
    "Page",
    "Query",
    "count",
    "next_href",
    "parse_query",
    "select",
    "self_href",
]

DEFAULT_PAGE_SIZE = 20
STATUS_PATH = "metrics.statusSummary.status"
_TOKEN_VERSION = 1
_PROPERTY = re.compile(r"^\s*([A-Za-z_][\w.\-]*)\s*(==|!=|>=|<=|>|<)(.*)$", re.DOTALL)

Number = int | float
Value = str | int | float | None
Predicate = Callable[[Run, float], bool]


@dataclass(frozen=True, slots=True)
class Filter:
    """One ``property=`` parameter: ``path op value[,value...]``."""

    path: str
    op: str
    values: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Query:
    """A parsed ``GET /runs`` query."""

    filters: tuple[Filter, ...] = ()
    descending: bool = False
    limit: int = DEFAULT_PAGE_SIZE
    after: tuple[int, str] | None = None  # the keyset cursor: last (createdAt, id) returned
    count: bool = False
    fingerprint: str = ""  # what a continuation token must have been issued for


@dataclass(frozen=True, slots=True)
class Page:
    """One page of runs, and the cursor of the next page if there is one."""

    runs: list[Run]
    next_cursor: tuple[int, str] | None


def parse_query(
    params: Sequence[tuple[str, str]], max_page_size: int, *, bare_tokens: bool = False
) -> Query:
    """Parse the query string of ``GET /runs``; any mistake is a ``1400-400`` naming it.

    A continuation token is refused with other filters than it was issued for, unless
    ``bare_tokens`` (``--token-only-links``): then a token is only a position, and the request's
    own filters apply -- none at all if the client followed the bare link as given.
    """
    filters: list[Filter] = []
    raw_filters: list[str] = []
    descending = False
    limit = DEFAULT_PAGE_SIZE
    token: str | None = None
    want_count = False
    for name, value in params:
        if name == "property":
            filters.append(_parse_property(value))
            raw_filters.append(value.strip())
        elif name == "orderby":
            descending = _parse_order(value)
        elif name == "limit":
            limit = _parse_limit(value, max_page_size)
        elif name == "continuationToken":
            token = value
        elif name == "count":
            want_count = value.strip().lower() == "true"
        # Unknown parameters (``start``, ``properties``, ...) are ignored, as by the service.
    if want_count and any(name == "limit" for name, _ in params):
        # FLOW-1401-400 (help/sources/errors/flow-service-errors.md).
        raise FlowServiceError(
            1401,
            "The limit and count parameters cannot be given together in the same request. "
            "Please provide either only the limit or the count parameter and try again.",
        )

    fingerprint = _fingerprint(raw_filters, descending)
    issued_for = None if bare_tokens else fingerprint
    after = _decode_token(token, issued_for) if token is not None else None
    return Query(tuple(filters), descending, limit, after, want_count, fingerprint)


def _parse_property(text: str) -> Filter:
    match = _PROPERTY.match(text)
    if match is None:
        raise FlowServiceError(
            1400,
            f"property={text!r} is not a filter: write path==value (or !=, >, <, >=, <=), "
            "e.g. property=flowId==<id>.",
        )
    path, op, raw = match.group(1), match.group(2), match.group(3)
    values = tuple(v.strip() for v in raw.split(",")) if op == "==" else (raw.strip(),)
    if any(not v for v in values):
        raise FlowServiceError(1400, f"property={text!r} has an empty value.")
    return Filter(path, op, values)


def _parse_order(text: str) -> bool:
    # A "+" sign arrives as a space once the query string is decoded.
    value = text.strip()
    if value in ("createdAt", "+createdAt"):
        return False
    if value == "-createdAt":
        return True
    raise FlowServiceError(1400, f"orderby={text!r} is not supported: use createdAt or -createdAt.")


def _parse_limit(text: str, max_page_size: int) -> int:
    try:
        limit = int(text)
    except ValueError:
        limit = 0
    if limit < 1:
        raise FlowServiceError(1400, f"limit={text!r} must be a positive integer.")
    return min(limit, max_page_size)


def _fingerprint(raw_filters: list[str], descending: bool) -> str:
    canonical = orjson.dumps([sorted(raw_filters), descending])
    return hashlib.sha256(canonical).hexdigest()[:16]


def encode_token(cursor: tuple[int, str], fingerprint: str) -> str:
    """A continuation token: the keyset cursor plus the query it belongs to, URL-safe."""
    raw = orjson.dumps([_TOKEN_VERSION, cursor[0], cursor[1], fingerprint])
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _decode_token(token: str, fingerprint: str | None) -> tuple[int, str]:
    bad = FlowServiceError(
        1400,
        "continuationToken is invalid or was issued for another query: "
        "follow _links.next.href as given.",
    )
    try:
        padded = token.strip() + "=" * (-len(token.strip()) % 4)
        data = orjson.loads(base64.urlsafe_b64decode(padded))
    except (binascii.Error, ValueError):
        raise bad from None
    if not (
        isinstance(data, list)
        and len(data) == 4
        and data[0] == _TOKEN_VERSION
        and isinstance(data[1], int)
        and isinstance(data[2], str)
        and (fingerprint is None or data[3] == fingerprint)
    ):
        raise bad
    return data[1], data[2]


def next_href(params: Iterable[tuple[str, str]], token: str, *, bare: bool = False) -> str:
    """``_links.next.href``: the same query, relative to the base URL, with the new token.

    ``bare``: the token alone, as the spec's ``PageLink`` example is written
    (``/connections?continuationToken=...``, static/swagger-specs/flow-service.yaml in
    AdobeDocs/experience-platform-apis).
    """
    kept = [] if bare else [(k, v) for k, v in params if k != "continuationToken"]
    kept.append(("continuationToken", token))
    return self_href(kept)


def self_href(params: Iterable[tuple[str, str]]) -> str:
    """The link of a request to ``/runs`` with these parameters, relative to the base URL."""
    # Keep ``==`` and comma lists readable; everything else is percent-encoded.
    return "/runs?" + urlencode(list(params), safe="=,")


# -- evaluation ------------------------------------------------------------------------------


def select(store: Store, query: Query, now: float, lag: float = 0.0) -> Page:
    """One page of the runs matching ``query``, after its cursor, in its order.

    ``lag``: a run shows in listings only this many seconds after its creation.
    """
    predicate = _lagging(_compile(store, query.filters), lag)
    picked: list[Run] = []
    limit = query.limit
    for run in _scan(store, query):
        if predicate(run, now):
            if len(picked) == limit:
                return Page(picked, picked[-1].key)
            picked.append(run)
    return Page(picked, None)


def count(store: Store, query: Query, now: float, lag: float = 0.0) -> int:
    """How many runs match the filters (``count=true``; the cursor and limit do not apply)."""
    predicate = _lagging(_compile(store, query.filters), lag)
    return sum(1 for run in _candidates(store, query.filters) if predicate(run, now))


def _scan(store: Store, query: Query) -> Iterator[Run]:
    runs = _candidates(store, query.filters)
    after = query.after
    if query.descending:
        stop = len(runs) if after is None else bisect.bisect_left(runs, after, key=_key)
        return (runs[i] for i in range(stop - 1, -1, -1))
    start = 0 if after is None else bisect.bisect_right(runs, after, key=_key)
    return (runs[i] for i in range(start, len(runs)))


def _candidates(store: Store, filters: tuple[Filter, ...]) -> Sequence[Run]:
    """The smallest indexed list that holds every match, in listing order."""
    for f in filters:
        if f.path == "id" and f.op == "==":
            found = {run.id: run for v in f.values if (run := store.runs.get(v)) is not None}
            return sorted(found.values(), key=_key)
    for f in filters:
        if f.path == "flowId" and f.op == "==":
            if len(f.values) == 1:
                return store.runs_of_flow(f.values[0])
            merged = [run for v in dict.fromkeys(f.values) for run in store.runs_of_flow(v)]
            return sorted(merged, key=_key)
    return store.all_runs()


def _key(run: Run) -> tuple[int, str]:
    return run.key


def _compile(store: Store, filters: tuple[Filter, ...]) -> Predicate:
    predicates = [_compile_one(store, f) for f in filters]
    if not predicates:
        return _always
    if len(predicates) == 1:
        return predicates[0]

    def all_of(run: Run, now: float) -> bool:
        return all(p(run, now) for p in predicates)

    return all_of


def _always(run: Run, now: float) -> bool:
    return True


def _lagging(predicate: Predicate, lag: float) -> Predicate:
    if lag <= 0:
        return predicate

    def listed(run: Run, now: float) -> bool:
        return run.created_at + lag <= now and predicate(run, now)

    return listed


_FIELDS: dict[str, Callable[[Run, float], Value]] = {
    "id": lambda run, now: run.id,
    "flowId": lambda run, now: run.flow_id,
    STATUS_PATH: lambda run, now: run.status(now).value,
    "createdAt": lambda run, now: run.created_ms,
    "updatedAt": lambda run, now: run.updated_ms(now),
    "etag": lambda run, now: run.etag,
    "params.windowStartTime": lambda run, now: run.params.get("windowStartTime"),
    "params.windowEndTime": lambda run, now: run.params.get("windowEndTime"),
    "params.deltaColumn.name": lambda run, now: run.delta_column,
}


def _compile_one(store: Store, f: Filter) -> Predicate:
    getter = _FIELDS.get(f.path) or _path_getter(store, f.path)
    # Statuses are compared without case: clients and consoles spell them differently.
    fold = f.path == STATUS_PATH
    wanted = [(v.lower() if fold else v, _number(v)) for v in f.values]
    op = f.op

    if op == "==":
        texts = {w for w, _ in wanted}
        numbers = {n for _, n in wanted if n is not None}

        def equals(run: Run, now: float) -> bool:
            value = getter(run, now)
            if value is None:
                return False
            text = str(value)
            if (text.lower() if fold else text) in texts:
                return True
            # "0100" equals 100: numbers compare as numbers when both sides are numbers.
            if numbers:
                number = _number(value)
                return number is not None and number in numbers
            return False

        return equals

    target_text, target_number = wanted[0]

    def compares(run: Run, now: float) -> bool:
        value = getter(run, now)
        if value is None:
            return op == "!="
        number = _number(value)
        left: Any
        right: Any
        if number is not None and target_number is not None:
            left, right = number, target_number
        else:
            left = str(value).lower() if fold else str(value)
            right = target_text
        return _OPS[op](left, right)

    return compares


_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "!=": lambda a, b: a != b,
    ">": lambda a, b: a > b,
    "<": lambda a, b: a < b,
    ">=": lambda a, b: a >= b,
    "<=": lambda a, b: a <= b,
}


def _number(value: object) -> Number | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
        try:
            number = float(value)
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def _path_getter(store: Store, path: str) -> Callable[[Run, float], Value]:
    """Any other dotted path, read from the rendered run (slower, but complete)."""
    parts = path.split(".")

    def get(run: Run, now: float) -> Value:
        node: Any = store.render_run(run, now)
        for part in parts:
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        if isinstance(node, str | int | float) and not isinstance(node, bool):
            return node
        if isinstance(node, bool):
            return "true" if node else "false"
        return None

    return get
