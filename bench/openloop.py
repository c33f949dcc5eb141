"""An open-loop load generator for scenario E's latency at a fixed arrival rate, and scenario I's spends.

Debian's wrk (4.1) is closed-loop: a connection sends its next request only
after the previous response, so a slow server also slows the load and a
latency "at half of the maximum throughput" cannot be set or trusted
(coordinated omission). This sends the same mixed traffic as
``lua/mixed.lua`` on a Poisson schedule at a fixed mean rate, whatever the
server does, and measures each latency from the request's *scheduled* start,
so a stall counts in full. It reports how late it sent requests (lag) and the
CPU it used itself, which show whether it, not the server, was the limit.

``--mix spend`` sends only scenario A's spends instead (scenario I), and
``--acks PATH`` writes, for each 201, the wall-clock time its last byte
arrived and the transaction's id: the moment its commit was acknowledged,
which scenario I compares with the moment its webhook reached the receiver.
With ``--acks``, a latency ends at that byte rather than at the close.

Usage: ``python -m bench.openloop --url http://127.0.0.1:PORT --data run.json --rate 300 --duration 30``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import sys
import time
from collections import Counter
from typing import Any
from urllib.parse import urlsplit

USAGE_BODY = (
    '{{"user_id":"{user}","type":"usage","amount":"0","credits":-1,'
    '"description":"Image generation (1024x1024)","status":"completed"}}'
)
PURCHASE_BODY = (
    '{{"user_id":"{user}","type":"purchase","amount":"9.99","credits":500,'
    '"description":"Starter pack: 500 credits","status":"completed"}}'
)


class Traffic:
    """Requests for the run's users; each write with an Idempotency-Key of its own (``name`` keeps generators apart)."""

    def __init__(self, data: dict[str, Any], host: str, rng: random.Random, name: str) -> None:
        self.data, self.host, self.rng, self.name = data, host, rng, name
        self.sent = 0

    def _post(self, token: str, body: str) -> bytes:
        self.sent += 1
        key = f"{self.data['run']}-{self.name}-{self.sent}"
        return (f"POST /api/transactions HTTP/1.1\r\nHost: {self.host}\r\nAuthorization: Bearer {token}\r\n"
                f"Content-Type: application/json\r\nIdempotency-Key: {key}\r\nContent-Length: {len(body)}\r\n"
                f"Connection: close\r\n\r\n{body}").encode()

    def next_request(self) -> bytes:
        raise NotImplementedError


class MixedTraffic(Traffic):
    """80% history reads, 15% usage, 5% purchases; the same mix and bodies as lua/mixed.lua."""

    def __init__(self, data: dict[str, Any], host: str, rng: random.Random, name: str) -> None:
        super().__init__(data, host, rng, name)
        self.reads = [
            (f"GET /api/transactions?limit=20 HTTP/1.1\r\nHost: {host}\r\n"
             f"Authorization: Bearer {user['token']}\r\nConnection: close\r\n\r\n").encode()
            for user in data["users"]
        ]

    def next_request(self) -> bytes:
        index = self.rng.randrange(len(self.reads))
        draw = self.rng.random()
        if draw < 0.80:
            return self.reads[index]
        user = self.data["users"][index]["id"]
        if draw < 0.95:
            return self._post(self.data["generation_token"], USAGE_BODY.format(user=user))
        return self._post(self.data["payment_token"], PURCHASE_BODY.format(user=user))


class SpendTraffic(Traffic):
    """Completed usage of 1 credit for one of scenario A's spenders: the requests of lua/spend.lua."""

    def next_request(self) -> bytes:
        user = self.data["spenders"][self.rng.randrange(len(self.data["spenders"]))]
        return self._post(self.data["generation_token"], USAGE_BODY.format(user=user))


TRAFFIC = {"mixed": MixedTraffic, "spend": SpendTraffic}


async def read_whole(reader: asyncio.StreamReader) -> tuple[bytes, float]:
    """A response up to the last byte its Content-Length names, and the wall-clock time that byte came:
    the moment it was answered, which a close that follows late (a busy worker) would otherwise move."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    body = await reader.readexactly(length)
    return head + body, time.time()


def created_id(response: bytes) -> str | None:
    """The id in a 201's JSON body (gunicorn sends it whole, with a Content-Length)."""
    try:
        return json.loads(response.split(b"\r\n\r\n", 1)[1])["id"]
    except (IndexError, KeyError, TypeError, ValueError):
        return None


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def generate(url: str, data: dict[str, Any], rate: float, duration: float, max_in_flight: int,
                   mix: str = "mixed", name: str = "openloop",
                   acks: list[tuple[float, str | None]] | None = None) -> dict[str, Any]:
    """Send ``mix`` at ``rate``; when ``acks`` is a list, append (wall-clock time, transaction id) per 201 to it."""
    parts = urlsplit(url)
    host, port = parts.hostname, parts.port
    loop = asyncio.get_running_loop()
    rng = random.Random()
    traffic = TRAFFIC[mix](data, f"{host}:{port}", rng, name)
    latencies: list[float] = []
    lags: list[float] = []
    statuses: Counter[int] = Counter()
    tasks: set[asyncio.Task] = set()
    skipped = 0

    async def one(request: bytes, scheduled: float) -> None:
        lags.append(loop.time() - scheduled)
        status = 0
        try:
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(request)
            if acks is None:
                response = await asyncio.wait_for(reader.read(), timeout=30)  # gunicorn's sync workers close after each
            else:
                response, acknowledged = await asyncio.wait_for(read_whole(reader), timeout=30)
            writer.close()
            status = int(response[9:12]) if len(response) >= 12 else 0
            if acks is not None and status == 201:
                acks.append((acknowledged, created_id(response)))
        except (OSError, EOFError, asyncio.LimitOverrunError, asyncio.TimeoutError, ValueError):
            pass
        latencies.append(loop.time() - scheduled)
        statuses[status] += 1

    started = loop.time() + 0.05
    next_at, end = started, started + duration
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    while next_at < end:
        wait = next_at - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        # Send everything that is due: the schedule never waits for responses.
        while next_at <= loop.time() and next_at < end:
            if len(tasks) >= max_in_flight:
                skipped += 1
            else:
                task = asyncio.create_task(one(traffic.next_request(), next_at))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            next_at += rng.expovariate(rate)
    sending_ended = loop.time()
    if tasks:
        await asyncio.wait(tasks, timeout=60)
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    ok = sum(count for status, count in statuses.items() if 200 <= status < 300)
    return {
        "rate": rate,
        "duration_s": round(sending_ended - started, 3),
        "scheduled": len(latencies) + skipped,
        "completed": len(latencies),
        "achieved_rps": round(len(latencies) / (sending_ended - started), 1),
        "non_2xx": len(latencies) - ok,
        "statuses": {str(status): count for status, count in sorted(statuses.items())},
        "skipped_over_max_in_flight": skipped,
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 2),
        "p95_ms": round(percentile(latencies, 0.95) * 1000, 2),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
        "max_ms": round(max(latencies, default=float("nan")) * 1000, 2),
        "lag_p50_ms": round(percentile(lags, 0.50) * 1000, 2),
        "lag_p99_ms": round(percentile(lags, 0.99) * 1000, 2),
        "generator_cpu_share": round(cpu / (loop.time() - started), 3),  # of one core
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--data", required=True, help="the run's users and tokens, as JSON")
    parser.add_argument("--rate", type=float, required=True, help="mean requests per second")
    parser.add_argument("--duration", type=float, required=True, help="seconds of sending")
    parser.add_argument("--max-in-flight", type=int, default=512, help="requests beyond this are skipped and counted")
    parser.add_argument("--mix", choices=sorted(TRAFFIC), default="mixed",
                        help="mixed: scenario E's traffic; spend: scenario A's spends")
    parser.add_argument("--name", default="openloop", help="this invocation's part of the Idempotency-Keys")
    parser.add_argument("--acks", help="write [wall-clock time, transaction id] of each 201 here, as JSON")
    args = parser.parse_args(argv)
    with open(args.data) as handle:
        data = json.load(handle)
    acks: list[tuple[float, str | None]] | None = [] if args.acks else None
    started = time.monotonic()
    result = asyncio.run(generate(args.url, data, args.rate, args.duration, args.max_in_flight, args.mix, args.name,
                                  acks))
    result["wall_s"] = round(time.monotonic() - started, 3)
    if args.acks:
        with open(args.acks, "w") as handle:
            json.dump(acks, handle)
    print("OPENLOOP " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
