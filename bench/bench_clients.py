"""Client throughput against a local server with a fixed latency; prints a markdown table (docs/eval.md).

    .venv/bin/python bench/bench_clients.py [--latency 0.2] [--concurrency 1 4 16 64] [--repeats 2]

The server (a separate process, asyncio, HTTP/1.1 keep-alive) answers every request after exactly
`--latency` seconds, so a client with c requests in flight can at best do c / latency requests per second.
Each row sends max(20, 10 * c) requests through one client (`OpenAIChatClient.generate`: the openai SDK;
`NemoServerClient.complete` with batch_size 1: urllib), cache and progress bar off, best of --repeats.
"client CPU ms/req" is this process's CPU time per request (user + system): the cost of the client itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from eval.clients import NemoServerClient, OpenAIChatClient, SamplingParams  # noqa: E402

CHAT = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                   "choices": [{"index": 0, "finish_reason": "stop",
                                "message": {"role": "assistant", "content": "ok " * 20}}]}).encode()


async def _handle(reader, writer, latency: float):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            length = next((int(h.split(":", 1)[1]) for h in lines if h.lower().startswith("content-length:")), 0)
            body = await reader.readexactly(length)
            await asyncio.sleep(latency)
            if lines[0].startswith("PUT"):  # NeMo: prompt + continuation
                sentences = [s + " ok" for s in json.loads(body)["sentences"]]
                data = json.dumps({"sentences": sentences}).encode()
            else:
                data = CHAT
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(data), data))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


def serve(port_queue, latency: float) -> None:
    async def main():
        server = await asyncio.start_server(lambda r, w: _handle(r, w, latency), "127.0.0.1", 0, backlog=512)
        port_queue.put(server.sockets[0].getsockname()[1])
        await server.serve_forever()

    asyncio.run(main())


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def measure(make_client, method: str, n: int) -> tuple[float, float]:
    """(requests per second, client CPU ms per request) of one run of n requests."""
    client = make_client()
    conversations = [[{"role": "user", "content": f"question {i}"}] for i in range(n)]
    params = SamplingParams(max_new_tokens=16)
    items = conversations if method == "generate" else [f"prompt {i}" for i in range(n)]
    t0, c0 = time.perf_counter(), cpu_s()
    out = getattr(client, method)(items, params)
    wall, cpu = time.perf_counter() - t0, cpu_s() - c0
    assert all(o is not None for o in out), "a request failed"
    return n / wall, 1000 * cpu / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    ports = mp.Queue()
    server = mp.Process(target=serve, args=(ports, args.latency), daemon=True)
    server.start()
    url = f"http://127.0.0.1:{ports.get(timeout=30)}"
    clients = {
        "OpenAIChatClient (openai SDK)": ("generate", lambda c: OpenAIChatClient(
            url + "/v1", "m", max_concurrency=c, progress=False, timeout_s=30)),
        "NemoServerClient (urllib)": ("complete", lambda c: NemoServerClient(
            url, batch_size=1, max_concurrency=c, progress=False, timeout_s=30)),
    }
    print(f"server latency {args.latency * 1000:.0f} ms; load average before: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; {os.cpu_count()} CPUs\n")
    print("| client | max_concurrency | requests | ideal req/s | measured req/s | measured / ideal | client CPU ms/req |")
    print("|---|---|---|---|---|---|---|")
    try:
        for name, (method, make) in clients.items():
            measure(lambda: make(1), method, 4)  # warm-up: imports, first connections
            for c in args.concurrency:
                n = max(20, 10 * c)
                runs = [measure(lambda: make(c), method, n) for _ in range(args.repeats)]
                rate, cpu = max(runs)
                ideal = c / args.latency
                print(f"| {name} | {c} | {n} | {ideal:.1f} | {rate:.1f} | {rate / ideal:.3f} | {cpu:.2f} |",
                      flush=True)
    finally:
        server.terminate()
        server.join(5)
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
