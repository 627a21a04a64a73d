"""HTTP load generator for ``bench/serve.py``, run as a process of its own.

    python bench/loadgen.py --url URL/solve --body FILE --concurrency 8 --seconds 15
        [--tries 1] [--timeout 60] [--header NAME:VALUE]...

``concurrency`` workers post the same body back to back over kept-alive connections
(aiohttp) until ``seconds`` have passed. With ``--tries N`` a worker retries a
connection error or a 5xx up to N tries in all, with backoff 0.1 s x 2^k.

It prints ``ready <t>`` as soon as its session is open, then one JSON object: every
request's start and end, whether it got a 200, its tries and failures, and the ingress's
own timing of its Surrogate call. Times are ``time.monotonic()`` seconds, comparable with
the parent's clock (one CLOCK_MONOTONIC per machine), so the parent can start its CPU
probe or kill a replica at a known instant of the load.

Why a separate process and aiohttp: the client shares the 2 cores with the service, so
its CPU counts against what is measured. Against a local fixed-response server, httpx
spent 2.6 core-ms per 87 KB request and aiohttp 0.42; in the Ray driver process the
httpx client also shared a GIL with Ray's driver threads.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from pathlib import Path

import aiohttp

SURROGATE_MS = re.compile(rb'"surrogate":\s*([0-9.eE+-]+)')


async def post(
    session: aiohttp.ClientSession, url: str, body: bytes
) -> tuple[str | None, bool, bytes]:
    """One try: (failure kind or None, retryable, body read)."""
    try:
        async with session.post(url, data=body) as r:
            content = await r.read()
            if r.status == 200:
                return None, False, content
            return f"HTTP {r.status}", r.status >= 500, content
    except (aiohttp.ClientError, asyncio.TimeoutError) as e:
        return type(e).__name__, True, b""


async def run(
    url: str,
    body: bytes,
    concurrency: int,
    seconds: float,
    tries: int,
    timeout: float,
    headers: dict[str, str],
) -> dict:
    requests: list[dict] = []
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    async with aiohttp.ClientSession(
        connector=connector, timeout=client_timeout, headers=headers
    ) as session:
        t_start = time.monotonic()
        print(f"ready {t_start!r}", flush=True)
        t_end = t_start + seconds

        async def worker() -> None:
            while (t0 := time.monotonic()) < t_end:
                failures: list[str] = []
                attempts: list[tuple[float, float, bool]] = []
                for attempt in range(tries):
                    a0 = time.monotonic()
                    bad, retryable, content = await post(session, url, body)
                    attempts.append((a0, time.monotonic(), bad is None))
                    if bad is None:
                        break
                    failures.append(bad)
                    if not retryable or attempt + 1 == tries:
                        break
                    await asyncio.sleep(0.1 * 2**attempt)
                m = SURROGATE_MS.search(content[-300:]) if bad is None else None
                requests.append(
                    {
                        "start": t0,
                        "end": time.monotonic(),
                        "ok": bad is None,
                        "failures": failures,
                        "attempts": attempts,
                        "surrogate_ms": float(m.group(1)) if m else None,
                    }
                )

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {"t_start": t_start, "t_end": time.monotonic(), "requests": requests}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--url", required=True)
    p.add_argument("--body", required=True, type=Path)
    p.add_argument("--concurrency", type=int, required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--tries", type=int, default=1)
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--header", action="append", default=[], help="NAME:VALUE")
    args = p.parse_args()
    headers = dict(h.split(":", 1) for h in args.header)
    out = asyncio.run(
        run(
            args.url,
            args.body.read_bytes(),
            args.concurrency,
            args.seconds,
            args.tries,
            args.timeout,
            headers,
        )
    )
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
