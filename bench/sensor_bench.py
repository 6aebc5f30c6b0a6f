"""Sensor server benchmark: requests/s of snapshot sensors with wrk, beside aiohttp's
trivial hello handler measured in the same run under the same conditions; and the latency
of a streamed tuple from the packet (the admin sniffer's timestamp) to streaming clients.

Run as root on a prepared node: ``.venv/bin/python bench/sensor_bench.py``. It starts a
private node (node manager, admin sniffer, sensor sidecar on a free port) and removes it
afterwards. The sidecar and the baseline container are pinned to CPU 0; wrk and the
streaming clients run on CPU 1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import time

import aiohttp
import docker

from slicectl.core.labels import LABEL_KIND, LABEL_NODE
from slicectl.core.netplan import node_gateway
from slicectl.ipc.rpc import Client
from slicectl.node.config import NodeConfig
from slicectl.node.daemons import prepare
from slicectl.node.dockerd import Say
from slicectl.node.engine import engine_client
from slicectl.node.services import ensure_service_image, service_container_name
from slicectl.testbed.privnode import free_port, private_node, service_ports

HELLO = """
from aiohttp import web
async def hello(request):
    return web.Response(text="load1\\n0.0\\n", content_type="text/csv", charset="utf-8")
app = web.Application()
app.router.add_get("/", hello)
web.run_app(app, host="127.0.0.1", port={port}, access_log=None, print=None, backlog=1024)
"""


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def wrk(url: str, seconds: int, conns: int) -> float:
    out = subprocess.run(["taskset", "-c", "1", "wrk", "-t1", f"-c{conns}", f"-d{seconds}s",
                          url], capture_output=True, text=True, check=True).stdout
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m is None or non2xx is not None:
        raise RuntimeError(f"wrk {url}: {out}")
    return float(m.group(1))


def wait_http(url: str, timeout_s: float = 30) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url}: no answer")


async def stream_latency(port: int, clients: int, engine: docker.DockerClient, container: str,
                         gw: str, connects: int) -> list[float]:
    """Open ``clients`` streams of /connects; make ``connects`` connection attempts in the
    sliver; return every (client, tuple) latency in ms: receipt time - the tuple's time."""
    lat: list[float] = []
    url = f"http://127.0.0.1:{port}/connects?stream=1"
    target = free_port()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        streams = [await session.get(url) for _ in range(clients)]
        for r in streams:
            await r.content.readline()

        async def read(r: aiohttp.ClientResponse) -> None:
            for _ in range(connects):
                line = await r.content.readline()
                now = time.time()
                fields = line.decode().split(",")
                if fields[3] == gw and fields[4].strip() == str(target):
                    lat.append((now - float(fields[0])) * 1000)

        readers = [asyncio.create_task(read(r)) for r in streams]
        script = ("import socket, time\n"
                  f"for i in range({connects}):\n"
                  "    s = socket.socket(); s.setblocking(False)\n"
                  f"    s.connect_ex(('{gw}', {target})); s.close(); time.sleep(0.02)\n")
        await asyncio.to_thread(engine.containers.get(container).exec_run,
                                ["python3", "-c", script])
        await asyncio.wait_for(asyncio.gather(*readers), 60)
        for r in streams:
            r.close()
    return lat


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument("--clients", type=int, default=100, help="streaming clients")
    ap.add_argument("--connects", type=int, default=50)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("sensor_bench: run as root", file=sys.stderr)
        return 2
    base = NodeConfig.from_env(os.environ)
    say = Say(quiet=True)
    prepare(base, os.environ, say)
    engine = engine_client(base.engine_url)
    os.sched_setaffinity(0, {1})
    image = ensure_service_image(engine, os.environ, say)
    ports = service_ports()
    with private_node(base, engine, "bench", daemons=True, services=ports) as cfg:
        port = ports["sensors"]
        sidecar = engine.containers.get(service_container_name(cfg, "sensors"))
        engine.api.update_container(sidecar.id, cpuset_cpus="0")
        hello_port = free_port()
        engine.containers.run(image, ["/opt/venv/bin/python", "-c", HELLO.format(port=hello_port)],
                              name=f"slicectl-{cfg.node_id}-hello", network_mode="host",
                              cpuset_cpus="0", detach=True,
                              labels={LABEL_KIND: "bench", LABEL_NODE: cfg.node_id})
        wait_http(f"http://127.0.0.1:{hello_port}/")
        nm = Client(cfg.nm_sock)
        slivers = [nm.call("bind", f"b{cfg.state_dir.name}_s{i}", nm.call("acquire", {}))
                   for i in range(3)]
        rows = []
        for label, url in [
            ("aiohttp hello (baseline)", f"http://127.0.0.1:{hello_port}/"),
            ("/load", f"http://127.0.0.1:{port}/load"),
            ("/slices (3 slivers)", f"http://127.0.0.1:{port}/slices"),
            ("/meminfo", f"http://127.0.0.1:{port}/meminfo"),
        ]:
            wrk(url, 1, args.conns)  # warm up
            rows.append((label, wrk(url, args.seconds, args.conns)))
        base_rps = rows[0][1]
        print(f"\nsnapshot sensors, wrk -t1 -c{args.conns} -d{args.seconds}s, server pinned to "
              "CPU 0, wrk on CPU 1")
        print(f"{'URI':28} {'requests/s':>11} {'vs baseline':>12}")
        for label, rps in rows:
            print(f"{label:28} {rps:11.0f} {rps / base_rps:11.2f}x")
        lat = asyncio.run(stream_latency(port, args.clients, engine, slivers[0]["container"],
                                         node_gateway(cfg.subnet), args.connects))
        print(f"\nstreamed /connects tuples: {args.clients} clients x {args.connects} connects "
              f"({len(lat)} deliveries), latency from the packet's capture time")
        print(f"{'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8}")
        print(f"{pct(lat, 0.5):8.1f} {pct(lat, 0.9):8.1f} {pct(lat, 0.99):8.1f} {max(lat):8.1f}")
    engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
