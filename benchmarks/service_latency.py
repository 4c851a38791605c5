"""Compare the served latency and throughput with the bare TorchScript call.

Measures, in one run on one machine:

1. the bare in-process model: latency of single calls, and throughput of
   `explain_batch` at several batch sizes (the best one is the reference);
2. the service under uvicorn on 127.0.0.1: p50/p95 latency and requests per
   second at each concurrency level, with the same image.

and prints a Markdown table. Run it from the repository root:

    python benchmarks/service_latency.py --store model_store --class-name magnetic_tile

The bare model runs before the server starts so the two never share the CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
# A real 125 x 289 gray magnetic tile photograph with a blowhole, shipped in the repository.
DEFAULT_IMAGE = REPO_ROOT / "samples" / "magnetic_tile" / "test" / "blowhole" / "exp1_num_40410.jpg"
sys.path.insert(0, str(REPO_ROOT))

from service.imaging import decode_image  # noqa: E402 - needs the repository on sys.path


@dataclass
class Row:
    """One line of the result table."""

    setup: str
    level: int
    count: int
    p50_ms: float
    p95_ms: float
    per_second: float


def percentile(values: list[float], fraction: float) -> float:
    """Return the `fraction` quantile by linear interpolation (numpy's default method)."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    lower = int(position)
    upper = min(lower + 1, len(ordered) - 1)
    return ordered[lower] + (ordered[upper] - ordered[lower]) * (position - lower)


def bare_single(module, image: torch.Tensor, count: int, warmup: int) -> Row:
    """Time `count` single-image calls of the loaded module."""
    with torch.inference_mode():
        for _ in range(warmup):
            module(image, 1.0)
        latencies = []
        started = time.perf_counter()
        for _ in range(count):
            call_started = time.perf_counter()
            module(image, 1.0)
            latencies.append(time.perf_counter() - call_started)
        elapsed = time.perf_counter() - started
    return Row("bare model, single call", 1, count, percentile(latencies, 0.5) * 1e3,
               percentile(latencies, 0.95) * 1e3, count / elapsed)


def bare_batched(module, image: torch.Tensor, batch_size: int, count: int, warmup: int) -> Row:
    """Time `explain_batch` on `batch_size` copies of the image, counting images in `per_second`."""
    images = [image] * batch_size
    thresholds = [1.0] * batch_size
    calls = max(1, count // batch_size)
    with torch.inference_mode():
        for _ in range(warmup):
            module.explain_batch(images, thresholds)
        latencies = []
        started = time.perf_counter()
        for _ in range(calls):
            call_started = time.perf_counter()
            module.explain_batch(images, thresholds)
            latencies.append(time.perf_counter() - call_started)
        elapsed = time.perf_counter() - started
    return Row("bare model, explain_batch", batch_size, calls * batch_size, percentile(latencies, 0.5) * 1e3,
               percentile(latencies, 0.95) * 1e3, calls * batch_size / elapsed)


def free_port() -> int:
    """Ask the kernel for a free TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(store: Path, port: int, environment: dict[str, str], log_path: Path) -> subprocess.Popen:
    """Start uvicorn serving `service.main:app` on 127.0.0.1 and wait for /readyz."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "AEXAD_MODEL_STORE": str(store), **environment}
    log = open(log_path, "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "service.main:app", "--host", "127.0.0.1", "--port", str(port),
         "--no-access-log"],
        cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"uvicorn exited with {process.returncode}; see {log_path}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2.0).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    process.kill()
    raise TimeoutError(f"uvicorn was not ready after 300 s; see {log_path}")


async def served(url: str, data: bytes, file_name: str, concurrency: int, count: int, warmup: int) -> Row:
    """Send `count` requests from `concurrency` concurrent clients and time each one."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=300.0, limits=limits) as client:

        async def one() -> float:
            started = time.perf_counter()
            response = await client.post(url, files={"file": (file_name, data, "application/octet-stream")})
            if response.status_code != 200:
                raise RuntimeError(f"{url} returned {response.status_code}: {response.text[:200]}")
            return time.perf_counter() - started

        for _ in range(warmup):
            await one()

        latencies: list[float] = []
        remaining = count

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                latencies.append(await one())

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return Row("service", concurrency, count, percentile(latencies, 0.5) * 1e3, percentile(latencies, 0.95) * 1e3,
               count / elapsed)


def markdown(rows: list[Row], single_ratio: float, throughput_ratio: float) -> str:
    """Format the rows and the two target ratios as Markdown."""
    lines = [
        "| setup | concurrency or batch size | images | p50 ms | p95 ms | images/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        lines.append(f"| {row.setup} | {row.level} | {row.count} | {row.p50_ms:.1f} | {row.p95_ms:.1f} "
                     f"| {row.per_second:.1f} |")
    lines += [
        "",
        f"- service p50 at the lowest concurrency / faster bare single-call p50: **{single_ratio:.2f}x** (target at most 1.2x)",
        f"- service images/s at the highest concurrency / best bare batched images/s: "
        f"**{throughput_ratio:.0%}** (target at least 90 %)",
    ]
    return "\n".join(lines)


def main() -> None:
    """Parse the arguments, run both measurements and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=Path, required=True, help="model store folder with the class to serve")
    parser.add_argument("--class-name", required=True, help="class to benchmark, a folder in the store")
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE,
                        help="image file sent with every request (default: %(default)s)")
    parser.add_argument("--requests", type=int, default=200, help="requests per concurrency level (default: %(default)s)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16],
                        help="concurrency levels (default: %(default)s)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16],
                        help="bare explain_batch sizes to try (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls before each measurement (default: %(default)s)")
    parser.add_argument("--format", choices=["json", "png"], default="json",
                        help="response format the service is asked for (default: %(default)s)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="device of both setups (default: %(default)s)")
    parser.add_argument("--server-env", nargs="*", default=[], metavar="NAME=VALUE",
                        help="extra AEXAD_* settings for the server, for example AEXAD_MAX_BATCH_SIZE=16")
    arguments = parser.parse_args()

    store = arguments.store.resolve()
    data = arguments.image.read_bytes()
    image = decode_image(data, max_pixels=1 << 40).tensor.to(arguments.device)

    # Every torch call runs in one worker thread, as in the service. With GNU
    # OpenMP, once a second thread has run torch operators, later calls in
    # either thread ran about twice as slow on a 2-core CPU (19 ms against
    # 35 ms for one 224 px image), which would distort the reference.
    worker = ThreadPoolExecutor(max_workers=1)
    module = worker.submit(
        torch.jit.load, str(store / arguments.class_name / "model.pt"), map_location=arguments.device
    ).result()
    print(f"image {arguments.image.name}: {image.shape[2]}x{image.shape[1]}, model input "
          f"{module.image_size} px, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"device {arguments.device}, load average {os.getloadavg()[0]:.1f}", file=sys.stderr)

    singles = [worker.submit(bare_single, module, image, arguments.requests, arguments.warmup).result()]
    batched = []
    for size in arguments.batch_sizes:
        batched.append(worker.submit(bare_batched, module, image, size, arguments.requests, arguments.warmup).result())
    worker.shutdown()
    rows = singles + batched
    best_single = min(singles, key=lambda row: row.p50_ms)
    best_batched = max(row.per_second for row in batched)
    del module

    port = free_port()
    environment = {"AEXAD_DEVICE": arguments.device, "AEXAD_ENERGY_TRACKING": "false", "AEXAD_LOG_LEVEL": "WARNING"}
    environment.update(item.split("=", 1) for item in arguments.server_env)
    log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"aexad-benchmark-{port}.log"
    process = start_server(store, port, environment, log_path)
    try:
        url = f"http://127.0.0.1:{port}/explain/{arguments.class_name}?format={arguments.format}"
        if arguments.format == "png":
            url += "&output=overlay"
        for concurrency in arguments.concurrency:
            rows.append(asyncio.run(served(url, data, arguments.image.name, concurrency, arguments.requests,
                                           arguments.warmup)))
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)

    service_rows = [row for row in rows if row.setup == "service"]
    lowest = min(service_rows, key=lambda row: row.level)
    highest = max(service_rows, key=lambda row: row.level)
    single_ratio = lowest.p50_ms / best_single.p50_ms
    throughput_ratio = highest.per_second / best_batched
    print(markdown(rows, single_ratio, throughput_ratio))


if __name__ == "__main__":
    main()
