#!/usr/bin/env python3
"""Clients for perf/connmem.sh (Python 3 standard library only; loopback only; bounded).

  connmem.py hold HOST PORT --kind idle|partial --conns N [--concurrency C] [--max-seconds S]
      Opens N connections to HOST:PORT, at most C of them being opened at a time. `idle` sends
      one GET on each and reads its whole response, leaving the connection idle in keep-alive;
      `partial` sends the first part of a request header and then nothing. Prints
      `ready OPENED FAILED` once all are open, then holds them until SIGTERM or SIGINT (or
      --max-seconds), closes them all and prints `closed_by_peer K` (how many the proxy closed
      or answered while they were held).

  connmem.py latency HOST PORT [--rate R] [--seconds S] [--path P]
      Open loop: R requests a second for S seconds, each on a new connection
      (`Connection: close`), timed from the connect to the end of the response. Prints
      `requests OK ERRORS p50_ms p99_ms max_ms`.
"""

import argparse
import asyncio
import signal
import sys
import time

HOST_HEADER = b"Host: 127.0.0.1\r\n"


def request(path, close=False):
    conn = b"Connection: close\r\n" if close else b""
    return b"GET " + path.encode() + b" HTTP/1.1\r\n" + HOST_HEADER + b"User-Agent: connmem\r\n" + conn + b"\r\n"


# The first part of a request header: the request line and two fields, then a field left open.
PARTIAL = b"GET /small HTTP/1.1\r\n" + HOST_HEADER + b"User-Agent: connmem\r\nX-Slow: "


async def read_response(reader):
    """Reads one response with a Content-Length (or up to EOF); returns its status code."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = None
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    if length is None:
        await reader.read()
    else:
        await reader.readexactly(length)
    return status


async def hold(args):
    conns = []
    failed = 0
    closed = 0
    sem = asyncio.Semaphore(args.concurrency)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def watch(reader):
        # Data or EOF on a held connection: the proxy answered (e.g. 408) or closed it.
        nonlocal closed
        try:
            await reader.read(1)
        except (ConnectionError, OSError):
            pass
        closed += 1

    async def open_one():
        nonlocal failed
        async with sem:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(args.host, args.port), 10)
                if args.kind == "idle":
                    writer.write(request("/small"))
                    await writer.drain()
                    status = await asyncio.wait_for(read_response(reader), 10)
                    if status != 200:
                        raise ConnectionError(f"status {status}")
                else:
                    writer.write(PARTIAL)
                    await writer.drain()
                conns.append((writer, asyncio.create_task(watch(reader))))
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError):
                failed += 1

    start = time.monotonic()
    await asyncio.gather(*(open_one() for _ in range(args.conns)))
    print(f"ready {len(conns)} {failed} {time.monotonic() - start:.2f}", flush=True)
    try:
        await asyncio.wait_for(stop.wait(), args.max_seconds)
    except asyncio.TimeoutError:
        pass
    print(f"closed_by_peer {closed}", flush=True)
    for writer, task in conns:
        task.cancel()
        writer.transport.abort()


async def latency(args):
    times = []
    errors = 0
    req = request(args.path, close=True)

    async def one():
        nonlocal errors
        t0 = time.perf_counter()
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(args.host, args.port), 10)
            try:
                writer.write(req)
                await writer.drain()
                status = await asyncio.wait_for(read_response(reader), 10)
            finally:
                writer.transport.abort()
            if status != 200:
                errors += 1
                return
            times.append(time.perf_counter() - t0)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError):
            errors += 1

    n = int(args.rate * args.seconds)
    tasks = []
    start = time.perf_counter()
    for i in range(n):
        delay = start + i / args.rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one()))
    await asyncio.gather(*tasks)
    times.sort()

    def pct(p):
        return times[min(len(times) - 1, int(p * len(times)))] * 1000 if times else 0.0

    print(f"{n} {len(times)} {errors} {pct(0.50):.3f} {pct(0.99):.3f} {pct(1.0):.3f}", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["hold", "latency"])
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--kind", choices=["idle", "partial"], default="idle")
    p.add_argument("--conns", type=int, default=10000)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--max-seconds", type=float, default=120)
    p.add_argument("--rate", type=float, default=200)
    p.add_argument("--seconds", type=float, default=5)
    p.add_argument("--path", default="/small")
    args = p.parse_args()
    if not args.host.startswith("127.") and args.host not in ("localhost", "::1"):
        sys.exit("connmem.py sends traffic to loopback addresses only")
    if args.conns > 50000 or args.max_seconds > 600 or args.rate * args.seconds > 100000:
        sys.exit("connmem.py: bounds exceeded (conns <= 50000, max-seconds <= 600, rate*seconds <= 100000)")
    asyncio.run(hold(args) if args.mode == "hold" else latency(args))


if __name__ == "__main__":
    main()
