"""A TCP proxy on loopback that adds a fixed one-way delay to every byte in
both directions (no bandwidth limit, order kept): a stand-in for `tc netem
delay` where the kernel has no sch_netem (containers, microVMs).

    python3 -m vmkit.delayproxy --listen PORT --target HOST:PORT --delay-ms N

Prints "READY <port>" once listening; runs until killed.  A round trip
through it takes 2 * N ms more, as with netem on a loopback device.
"""
import argparse
import asyncio
import sys
import time


async def _pump(reader, writer, delay):
    """Copy reader -> writer, each chunk released `delay` seconds after it
    arrived."""
    q = asyncio.Queue()

    async def rx():
        try:
            while True:
                data = await reader.read(1 << 16)
                q.put_nowait((time.monotonic() + delay, data))
                if not data:
                    return
        except (ConnectionError, asyncio.CancelledError):
            q.put_nowait((time.monotonic() + delay, b""))

    async def tx():
        try:
            while True:
                due, data = await q.get()
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


async def _serve(listen, host, port, delay):
    async def handle(cr, cw):
        try:
            sr, sw = await asyncio.open_connection(host, port)
        except OSError:
            cw.close()
            return
        try:
            await asyncio.gather(_pump(cr, sw, delay), _pump(sr, cw, delay))
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
    a = ap.parse_args(argv)
    host, port = a.target.rsplit(":", 1)
    try:
        asyncio.run(_serve(a.listen, host, int(port), a.delay_ms / 1000.0))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
