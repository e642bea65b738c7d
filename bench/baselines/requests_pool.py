"""Baseline (b): ``requests`` in a ``ThreadPoolExecutor(64)``, one ``Session`` per thread.

    ACCESS_TOKEN=... API_KEY=... ORG_ID=... SANDBOX_NAME=... \\
        python bench/baselines/requests_pool.py BASE_URL BODIES ANSWERS [--workers 64]

BODIES holds one request body per line, exactly what ``backfill`` sends. Each thread keeps
its own session (keep-alive connections, headers set once); every run id is written to
ANSWERS next to its window's body. A failed request fails the script.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import requests

_local = threading.local()


def session() -> requests.Session:
    """This thread's session, made on first use."""
    current: requests.Session | None = getattr(_local, "session", None)
    if current is None:
        current = requests.Session()
        current.trust_env = False  # no proxy between us and the service
        current.headers.update(
            {
                "Authorization": f"Bearer {os.environ['ACCESS_TOKEN']}",
                "x-api-key": os.environ["API_KEY"],
                "x-gw-ims-org-id": os.environ["ORG_ID"],
                "x-sandbox-name": os.environ["SANDBOX_NAME"],
                "Content-Type": "application/json",
            }
        )
        _local.session = current
    return current


def submit(url: str, body: bytes) -> str:
    """POST one window's body; the new run's id."""
    response = session().post(url, data=body, timeout=60)
    response.raise_for_status()
    run_id = response.json()["id"]
    return str(run_id)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("base_url")
    parser.add_argument("bodies")
    parser.add_argument("answers")
    parser.add_argument("--workers", type=int, default=64)
    args = parser.parse_args(argv)
    with open(args.bodies, "rb") as handle:
        bodies = [line.rstrip(b"\n") for line in handle if line.strip()]
    url = args.base_url.rstrip("/") + "/runs"
    with ThreadPoolExecutor(args.workers) as pool:
        run_ids = list(pool.map(lambda body: submit(url, body), bodies))
    with open(args.answers, "ab") as out:
        out.writelines(
            body + b" " + run_id.encode() + b"\n"
            for body, run_id in zip(bodies, run_ids, strict=True)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
