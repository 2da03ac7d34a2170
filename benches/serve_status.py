"""Latency of `status()` through `deploy-code serve` against `deploy-code
status --format json` as a process, and event delivery to a Python
subscriber. One service (a Python HTTP server) is deployed first.

    cargo build --release
    pip install './python[test]'
    python3 benches/serve_status.py target/release/deploy-code [--calls 300]

Prints p50/p99 in milliseconds; docs/serve.md keeps the figures measured.
"""

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))

from deploy_code import DeployCode  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def parse_at(at: str) -> float:
    base = time.mktime(time.strptime(at[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
    frac = at[19:].rstrip("Z")
    return base + (float("0" + frac) if frac.startswith(".") else 0.0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--processes", type=int, default=100)
    a = ap.parse_args()
    binary = str(Path(a.binary).resolve())
    d = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    port = free_port()
    (d / "deploy-code.yaml").write_text(f"""project: servebench{port}
services:
  web:
    command: python3
    args: ["-m", "http.server", "{port}", "--bind", "127.0.0.1"]
    ports: [{{container_port: {port}}}]
    health_check: {{endpoint: /, interval_seconds: 1, retries: 20}}
""")
    env = dict(os.environ)
    env.pop("DEPLOY_CODE_STATE", None)
    subprocess.run([binary, "apply", "--auto-approve", "-q"], cwd=d, env=env, check=True)
    listen = f"127.0.0.1:{free_port()}"
    server = subprocess.Popen([binary, "serve", "--listen", listen], cwd=d, env=env,
                              stdout=subprocess.PIPE, text=True)
    assert "listening" in server.stdout.readline()
    try:
        async def run():
            async with DeployCode(listen) as dc:
                await dc.status()
                lat = []
                for _ in range(a.calls):
                    t = time.perf_counter()
                    s = await dc.status()
                    lat.append((time.perf_counter() - t) * 1000)
                assert [x.name for x in s.services] == ["web"]
                # Event delivery: a restart's events, from their `at` stamp.
                events = dc.monitor_deployment()
                await events.ready()
                run = asyncio.ensure_future(dc.restart())
                delays = [(time.time() - parse_at(e.at)) * 1000 async for e in events]
                await run
                return lat, delays

        lat, delays = asyncio.run(run())
        proc = []
        for _ in range(a.processes):
            t = time.perf_counter()
            subprocess.run([binary, "status", "--format", "json"], cwd=d, env=env,
                           check=True, capture_output=True)
            proc.append((time.perf_counter() - t) * 1000)
        print(f"status() via serve   n={len(lat)}  p50 {pct(lat, 50):6.2f} ms  p99 {pct(lat, 99):6.2f} ms  mean {statistics.mean(lat):6.2f} ms")
        print(f"status as a process  n={len(proc)}  p50 {pct(proc, 50):6.2f} ms  p99 {pct(proc, 99):6.2f} ms  mean {statistics.mean(proc):6.2f} ms")
        print(f"event delivery       n={len(delays)}  p50 {pct(delays, 50):6.2f} ms  p99 {pct(delays, 99):6.2f} ms  max {max(delays):6.2f} ms")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=20)
        subprocess.run([binary, "destroy", "--auto-approve", "-q"], cwd=d, env=env)


if __name__ == "__main__":
    main()
