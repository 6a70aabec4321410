"""Load and fault test of the HTTP service (deploy/python/serve.py), on this machine only.

Starts the service as a subprocess on 127.0.0.1 (a free port) over an export and prints:

  throughput  closed-loop clients (1, 4, 16; each sends its next request when the last is
              answered), all with the same settings, each request its own prompt and seed,
              with --max-batch 1 (no batching) and 8: images/s and p50/p95/p99 latency
  overload    twice --max-queue clients for --overload-seconds, three rounds: every request
              must be answered 200 or 429 (a 429 is retried after 0.2 s), none later than
              the service's timeout; /health probed all along; the RSS of the service and its
              sampling process after each round
  faults      malformed JSON, wrong types, a 1 MB prompt (each a 4xx); a client that
              disconnects mid-request (the queue must be empty again, nothing left running)
  same image  one request against deploy/python/infer.py with the same seed and settings

Targets: batching >= 2x the unbatched throughput at 16 clients; p99 <= 3x p50 below the queue
limit; the same image as infer.py. Every loop is bounded in count and time.

    python benchmarks/serve_load.py                      # the configs/tiny.yaml model (random weights)
    python benchmarks/serve_load.py --model output/tiny/export --requests 24 --steps 25
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import io
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

from ernie_vilg2.utils.cpu_report import machine_report
from ernie_vilg2.utils.cpu_tuning import tune_cpu_process

os.environ.setdefault("GLOG_minloglevel", "2")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVE = os.path.join(ROOT, "deploy", "python", "serve.py")
INFER = os.path.join(ROOT, "deploy", "python", "infer.py")
PROMPTS = ["红苹果", "a red apple", "蓝心", "a blue heart", "黄色方块", "a yellow square", "青蛙", "a frog"]
THROUGHPUT_TARGET, TAIL_TARGET = 2.0, 3.0
LISTENING = re.compile(r"serving .* on (http://[\d.]+:\d+)")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="export folder (default: the configs/tiny.yaml model, exported to a temporary folder)")
    p.add_argument("--config", default=os.path.join(ROOT, "configs", "tiny.yaml"), help="model to export without --model")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16], help="concurrent clients of the throughput runs")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="--max-batch of the throughput runs")
    p.add_argument("--requests", type=int, default=32, help="timed requests per throughput run (at least 2 per client)")
    p.add_argument("--steps", type=int, default=25, help="sampling steps per request (DPM-Solver++)")
    p.add_argument("--max-queue", type=int, default=8, help="the service's queue limit in the overload runs")
    p.add_argument("--timeout", type=float, default=30.0, help="the service's request timeout in the overload runs")
    p.add_argument("--overload-seconds", type=float, default=15.0, help="length of each overload round")
    p.add_argument("--threads", type=int, default=1, help="the service's --threads (math library threads per predictor)")
    p.add_argument("--workdir", help="keep the export here (default: a temporary folder)")
    args = p.parse_args(argv)
    for name in ("requests", "steps", "max_queue"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if min(args.clients) < 1 or min(args.batches) < 1 or not args.timeout > 0 or not args.overload_seconds > 0:
        p.error("--clients, --batches, --timeout and --overload-seconds must be positive")
    return args


# -- the export and the server -----------------------------------------------------------------------
def tiny_export(config_path: str, workdir: str) -> str:
    """The model of ``config_path`` (random weights: speed does not depend on them), exported once."""
    export_dir = os.path.join(workdir, "export")
    if os.path.isdir(export_dir):
        return export_dir
    import paddle

    from ernie_vilg2.config import from_dict, read_yaml
    from ernie_vilg2.deploy import export_pipeline
    from ernie_vilg2.models.config import ModelConfig
    from ernie_vilg2.pipelines.building import build_pipeline

    raw = read_yaml(config_path)
    model_cfg = from_dict(ModelConfig, raw.get("model") or {}, "model")
    paddle.seed(0)
    pipe_dir = os.path.join(workdir, "pipeline")
    build_pipeline(model_cfg, (raw.get("data") or {}).get("resolution") or 32).save_pretrained(pipe_dir)
    export_pipeline(pipe_dir, export_dir, log=lambda message: None)
    return export_dir


class Server:
    """deploy/python/serve.py on a free port of 127.0.0.1; its log goes to a file."""

    def __init__(self, model: str, log_path: str, *flags):
        self.log_path = log_path
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen([sys.executable, SERVE, "--model", model, "--port", "0", "--verify", "size",
                                      *map(str, flags)], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while not (match := LISTENING.search(open(log_path).read())):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"error: the service did not start; its log: {log_path}")
            time.sleep(0.1)
        self.url = match.group(1)

    def rss_mib(self) -> float:
        """Resident memory of the service and its sampling process (which holds the predictors)."""
        import psutil

        root = psutil.Process(self.proc.pid)
        return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / 2**20

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            code = self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.log.close()
        return code


# -- clients --------------------------------------------------------------------------------------------
async def post(session, url, body, timeout):
    """(status, seconds, headers) of one POST /generate."""
    import aiohttp

    started = time.monotonic()
    async with session.post(f"{url}/generate", json=body, timeout=aiohttp.ClientTimeout(total=timeout)) as reply:
        await reply.read()
        return reply.status, time.monotonic() - started, reply.headers


def request_body(number: int, steps: int) -> dict:
    return {"prompt": PROMPTS[number % len(PROMPTS)], "seed": number, "steps": steps, "format": "json"}


async def closed_loop(url: str, clients: int, requests: int, steps: int) -> dict:
    """``clients`` clients, each sending its next request when the last is answered, until
    ``requests`` have been sent (after one untimed warm-up request per client)."""
    import aiohttp

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(post(session, url, request_body(i, steps), 600) for i in range(clients)))
        counter = iter(range(requests))
        latencies, statuses = [], []

        async def client():
            for number in counter:
                status, seconds, _ = await post(session, url, request_body(number, steps), 600)
                statuses.append(status)
                latencies.append(seconds)

        started = time.monotonic()
        await asyncio.gather(*(client() for _ in range(clients)))
        wall = time.monotonic() - started
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    return {"images_per_s": statuses.count(200) / wall, "p50": q[49], "p95": q[94], "p99": q[98],
            "failed": len(statuses) - statuses.count(200)}


async def overload(url: str, clients: int, seconds: float, steps: int, timeout: float) -> dict:
    """``clients`` clients sending back to back for ``seconds`` (a 429 retried after 0.2 s),
    /health probed every 50 ms meanwhile."""
    import aiohttp

    statuses, latencies, health = [], [], []
    stop_at = time.monotonic() + seconds
    async with aiohttp.ClientSession() as session:
        async def client(index):
            number = index * 10_000
            while time.monotonic() < stop_at:
                try:
                    status, took, _ = await post(session, url, request_body(number, steps), timeout + 10)
                except asyncio.TimeoutError:
                    status, took = "hung", timeout + 10
                statuses.append(status)
                latencies.append(took)
                number += 1
                if status == 429:
                    await asyncio.sleep(0.2)

        async def probe():
            while time.monotonic() < stop_at:
                started = time.monotonic()
                async with session.get(f"{url}/health", timeout=aiohttp.ClientTimeout(total=10)) as reply:
                    await reply.read()
                health.append(time.monotonic() - started)
                await asyncio.sleep(0.05)

        await asyncio.gather(probe(), *(client(i) for i in range(clients)))
    return {"counts": dict(sorted(collections.Counter(map(str, statuses)).items())), "max_latency": max(latencies),
            "health_p99_ms": 1000 * statistics.quantiles(health, n=100, method="inclusive")[98],
            "health_max_ms": 1000 * max(health)}


async def faults(url: str) -> tuple:
    """(case, answer, message) rows of the malformed requests and of the disconnecting client's
    aftermath, and whether every malformed request got a 4xx and the queue was empty again."""
    import aiohttp

    cases = [("malformed JSON", b'{"prompt": "x",'), ("wrong type (steps: \"5\")", b'{"prompt": "x", "steps": "5"}'),
             ("wrong type (prompt: 5)", b'{"prompt": 5}'), ("1 MB prompt", b'{"prompt": "' + b"a" * 2**20 + b'"}')]
    rows = []
    async with aiohttp.ClientSession() as session:
        for name, content in cases:
            async with session.post(f"{url}/generate", data=content, headers={"Content-Type": "application/json"}) as r:
                rows.append((name, r.status, (await r.json())["error"][:60]))
        # A client that leaves: the request is queued and running, then the connection closes.
        reader, writer = await asyncio.open_connection(*url.rsplit("/", 1)[1].split(":"))
        body = json.dumps({"prompt": "frog", "steps": 400, "sampler": "ddim"}).encode()
        writer.write(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        await asyncio.sleep(1.0)
        writer.close()
        left = time.monotonic()
        depth = None
        while time.monotonic() - left < 10:
            async with session.get(f"{url}/health") as r:
                depth = (await r.json())["queue_depth"]
            if depth == 0:
                break
            await asyncio.sleep(0.05)
        ok = all(400 <= status < 500 for _, status, _ in rows) and depth == 0
        rows.append(("client disconnects mid-request", f"queue depth {depth} after {time.monotonic() - left:.2f} s",
                     "the service's log:"))
    return rows, ok


def same_image(url: str, model: str, steps: int, workdir: str) -> float:
    """Largest pixel difference between the service's image and infer.py's (same seed and settings)."""
    import aiohttp
    import numpy as np
    from PIL import Image

    async def served_png() -> bytes:
        async with aiohttp.ClientSession(raise_for_status=True) as session:
            async with session.post(f"{url}/generate", json={"prompt": "红苹果", "seed": 11, "steps": steps,
                                                             "guidance": 3.0},
                                    headers={"Accept": "image/png"}, timeout=aiohttp.ClientTimeout(total=300)) as r:
                return await r.read()

    png = asyncio.run(served_png())
    out = os.path.join(workdir, "infer", "grid.png")
    subprocess.run([sys.executable, INFER, "--model", model, "--prompt", "红苹果", "--seed", "11", "--steps", str(steps),
                    "--guidance", "3", "--verify", "size", "--out", out], check=True, capture_output=True, timeout=600)
    served = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=int)
    return float(np.abs(served - np.asarray(Image.open(out.replace(".png", "_000.png")).convert("RGB"))).max())


# -- the report -------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    tune_cpu_process()
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="serve_load_") as tmp:
        workdir = args.workdir or tmp
        os.makedirs(workdir, exist_ok=True)
        model = args.model or tiny_export(args.config, workdir)
        print(f"model: {model}; {args.steps} DPM-Solver++ steps per image; --threads {args.threads}; "
              f"server logs in {workdir}")
        rows = {}
        for batch in args.batches:
            server = Server(model, os.path.join(workdir, f"serve-batch{batch}.log"), "--max-batch", batch,
                            "--max-queue", max(32, 2 * max(args.clients)), "--timeout", 600, "--threads", args.threads)
            try:
                for clients in args.clients:
                    rows[batch, clients] = asyncio.run(closed_loop(server.url, clients, max(args.requests, 2 * clients),
                                                                   args.steps))
            finally:
                server.stop()
        print(machine_report())
        print("\n| max batch | clients | images/s | p50 (s) | p95 (s) | p99 (s) | p99/p50 | failed |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|")
        for (batch, clients), r in rows.items():
            print(f"| {batch} | {clients} | {r['images_per_s']:.2f} | {r['p50']:.2f} | {r['p95']:.2f} | {r['p99']:.2f} "
                  f"| {r['p99'] / r['p50']:.2f} | {r['failed']} |")

        server = Server(model, os.path.join(workdir, "serve-overload.log"), "--max-batch", 8, "--max-queue",
                        args.max_queue, "--timeout", args.timeout, "--threads", args.threads)
        try:
            clients = 2 * args.max_queue
            print(f"\noverload: {clients} clients, --max-queue {args.max_queue}, --timeout {args.timeout:g} s, "
                  f"{args.overload_seconds:g} s per round")
            print("\n| round | answers | slowest answer (s) | /health p99 (ms) | /health max (ms) | RSS (MiB) |")
            print("|---:|---|---:|---:|---:|---:|")
            print(f"| before | | | | | {server.rss_mib():.0f} |")
            overload_ok = True
            for number in range(1, 4):
                r = asyncio.run(overload(server.url, clients, args.overload_seconds, args.steps, args.timeout))
                overload_ok &= set(r["counts"]) <= {"200", "429"} and r["max_latency"] <= args.timeout + 1
                answers = ", ".join(f"{n} x {s}" for s, n in r["counts"].items())
                print(f"| {number} | {answers} | {r['max_latency']:.2f} | {r['health_p99_ms']:.1f} "
                      f"| {r['health_max_ms']:.1f} | {server.rss_mib():.0f} |")
            print("\n| fault | answer | message |")
            print("|---|---|---|")
            fault_rows, faults_ok = asyncio.run(faults(server.url))
            for name, status, message in fault_rows:
                if message == "the service's log:":  # what the worker did with the abandoned request
                    with open(server.log_path) as f:
                        message = ([line.split(": ", 1)[-1].strip() for line in f if "every request left" in line]
                                   or ["no call stopped early"])[-1]
                print(f"| {name} | {status} | {message} |")
            difference = same_image(server.url, model, args.steps, workdir)
        finally:
            code = server.stop()
        print(f"\nserver exit status after SIGTERM: {code}")
        most, batched, unbatched = max(args.clients), max(args.batches), min(args.batches)
        speedup = rows[batched, most]["images_per_s"] / max(rows[unbatched, most]["images_per_s"], 1e-9)
        tails = [r["p99"] / r["p50"] for r in rows.values()]
        print(f"--max-batch {batched} at {most} clients: {speedup:.2f}x the throughput of --max-batch {unbatched} "
              f"(target >= {THROUGHPUT_TARGET:g}x): {'met' if speedup >= THROUGHPUT_TARGET else 'NOT met'}")
        print(f"p99/p50 below the queue limit: at most {max(tails):.2f} (target <= {TAIL_TARGET:g}): "
              f"{'met' if max(tails) <= TAIL_TARGET else 'NOT met'}")
        print(f"overload: every request answered 200 or 429 within the timeout: {'yes' if overload_ok else 'NO'}")
        print(f"faults: each malformed request a 4xx, nothing left of the client that left: "
              f"{'yes' if faults_ok else 'NO'}")
        print(f"same seed, same image as infer.py: max pixel difference {difference:g}: "
              f"{'met' if difference == 0 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
