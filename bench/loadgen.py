"""HTTP load generator for ``bench/serve.py``, run as a process of its own.

    python -m bench.loadgen --url URL/solve --body FILE --concurrency 8 --seconds 15
        [--tries 1] [--timeout 60] [--header NAME:VALUE]...

``concurrency`` workers post the same body back to back over kept-alive HTTP/1.1
connections until ``seconds`` have passed. With ``--tries N`` a worker retries a
connection error or a 5xx up to N tries in all, with backoff 0.1 s x 2^k.

It prints ``ready <t>`` as soon as its session is open, then one JSON object: every
request's start and end, whether it got a 200, its tries and failures, and the ingress's
own timing of its Surrogate call. Times are ``time.monotonic()`` seconds, comparable with
the parent's clock (one CLOCK_MONOTONIC per machine), so the parent can start its CPU
probe or kill a replica at a known instant of the load.

Why a separate process and a bare client: the client shares the 2 cores with the
service, so its CPU counts against what is measured. Against a local fixed-response
server, httpx spent 2.6 core-ms per 87 KB request and aiohttp 0.42; in the Ray driver
process the httpx client also shared a GIL with Ray's driver threads. Here each worker
writes one prepared request (headers and body) to an asyncio transport and httptools
(uvicorn's C parser) reads the answer: under the c=32 load it took 0.24 ms of CPU per
request with aiohttp and 0.13 ms with this.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import httptools

SURROGATE_MS = re.compile(rb'"surrogate":\s*([0-9.eE+-]+)')


class Connection(asyncio.Protocol):
    """One kept-alive HTTP/1.1 connection: one request at a time, the answer parsed by
    httptools as it arrives."""

    def __init__(self):
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.answer: asyncio.Future | None = None
        self.body: list[bytes] = []
        self.closed = False

    # asyncio.Protocol
    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._fail(ConnectionError(f"bad HTTP answer: {e}"))

    def connection_lost(self, exc) -> None:
        self.closed = True
        self._fail(ConnectionError("connection closed"))

    # httptools callbacks
    def on_body(self, data: bytes) -> None:
        self.body.append(data)

    def on_message_complete(self) -> None:
        if self.answer is not None and not self.answer.done():
            self.answer.set_result((self.parser.get_status_code(), b"".join(self.body)))
        if not self.parser.should_keep_alive():
            self.transport.close()

    def _fail(self, error: Exception) -> None:
        if self.answer is not None and not self.answer.done():
            self.answer.set_exception(error)

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        self.answer, self.body = asyncio.get_running_loop().create_future(), []
        self.transport.write(raw)
        return await self.answer


class Client:
    """POSTs one prepared request over a connection of its own, opened again when lost."""

    def __init__(self, url: str, body: bytes, headers: dict[str, str], timeout: float):
        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port or 80
        head = {"Host": parts.netloc, "Content-Length": str(len(body)), **headers}
        lines = [f"POST {parts.path or '/'} HTTP/1.1", *(f"{k}: {v}" for k, v in head.items())]
        self.raw = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
        self.timeout = timeout
        self.connection: Connection | None = None

    async def post(self) -> tuple[str | None, bool, bytes]:
        """One try: (failure kind or None, retryable, body read)."""
        try:
            if self.connection is None or self.connection.closed:
                loop = asyncio.get_running_loop()
                _, self.connection = await loop.create_connection(Connection, self.host, self.port)
            status, content = await asyncio.wait_for(
                self.connection.request(self.raw), self.timeout
            )
        except (OSError, asyncio.TimeoutError) as e:
            self.close()  # an answer may still come: the next try opens a new connection
            return type(e).__name__, True, b""
        if status == 200:
            return None, False, content
        return f"HTTP {status}", status >= 500, content

    def close(self) -> None:
        if self.connection is not None and self.connection.transport is not None:
            self.connection.transport.close()
        self.connection = None


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
    clients = [Client(url, body, headers, timeout) for _ in range(concurrency)]
    t_start = time.monotonic()
    print(f"ready {t_start!r}", flush=True)
    t_end = t_start + seconds

    async def worker(client: Client) -> None:
        while (t0 := time.monotonic()) < t_end:
            failures: list[str] = []
            attempts: list[tuple[float, float, bool]] = []
            for attempt in range(tries):
                a0 = time.monotonic()
                bad, retryable, content = await client.post()
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

    try:
        await asyncio.gather(*(worker(c) for c in clients))
    finally:
        for c in clients:
            c.close()
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
