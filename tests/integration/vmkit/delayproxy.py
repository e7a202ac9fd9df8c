"""A TCP proxy on loopback that adds a fixed one-way delay to every byte in
both directions (order kept): a stand-in for `tc netem delay` where the
kernel has no sch_netem (containers, microVMs).

    python3 -m vmkit.delayproxy --listen PORT --target HOST:PORT --delay-ms N
                                [--rate-mbps R]

Prints "READY <port>" once listening; runs until killed.  A round trip
through it takes 2 * N ms more, as with netem on a loopback device.  With
--rate-mbps, each connection carries at most R MB/s (10^6 bytes) in each
direction, as one long-haul TCP stream to a cloud endpoint gets (its window
over the round trip), while several connections together get R each.
Without it there is no bandwidth limit.  At most 4 MiB wait in the proxy per
direction, so a fast sender is slowed down, not buffered whole.
"""
import argparse
import asyncio
import sys
import time


async def _pump(reader, writer, delay, rate):
    """Copy reader -> writer, each chunk released `delay` seconds after it
    arrived, and not before the previous ones went out at `rate` bytes/s."""
    q = asyncio.Queue(maxsize=64)  # chunks of at most 64 KiB

    async def rx():
        try:
            while True:
                data = await reader.read(1 << 16)
                await q.put((time.monotonic() + delay, data))
                if not data:
                    return
        except (ConnectionError, asyncio.CancelledError):
            q.put_nowait((time.monotonic() + delay, b""))

    async def tx():
        free = 0.0  # when the modelled link is idle again
        try:
            while True:
                due, data = await q.get()
                if rate:
                    due = max(due, free)
                    free = due + len(data) / rate
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass

    await asyncio.gather(rx(), tx())


async def _serve(listen, host, port, delay, rate):
    async def handle(cr, cw):
        try:
            sr, sw = await asyncio.open_connection(host, port)
        except OSError:
            cw.close()
            return
        try:
            await asyncio.gather(_pump(cr, sw, delay, rate), _pump(sr, cw, delay, rate))
        finally:
            for w in (cw, sw):
                try:
                    w.close()
                except OSError:
                    pass

    server = await asyncio.start_server(handle, "127.0.0.1", listen)
    print(f"READY {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listen", type=int, default=0)
    ap.add_argument("--target", required=True, help="HOST:PORT")
    ap.add_argument("--delay-ms", type=float, required=True)
    ap.add_argument("--rate-mbps", type=float, default=0.0,
                    help="per connection and direction, MB/s (0: no limit)")
    a = ap.parse_args(argv)
    host, port = a.target.rsplit(":", 1)
    try:
        asyncio.run(_serve(a.listen, host, int(port), a.delay_ms / 1000.0,
                           a.rate_mbps * 1e6))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
