"""Soak test of the web server: concurrent clients submit, poll, download and cancel for a while.

    python3 benchmarks/soak.py --model runs/k16 --seconds 180 --clients 4 [--out soak.json]

Starts ``aldm serve`` on 127.0.0.1 (a free port) over a fresh output folder, then runs ``--clients``
client threads for ``--seconds``: each submits a small job (a 429 "busy" answer is accepted and
retried later), polls it, cancels about one job in three while it is queued or running, and
downloads a finished sample (zip and one viewer volume). Afterwards it waits for every accepted job to
end. Reported: requests by status code, 5xx count (must be 0), jobs by final status (each accepted
job must end done or cancelled), and the server's resident memory (RSS, from /proc) sampled every
second: the first and last quarter's means and each half's maximum. ``tests/test_soak.py`` runs it briefly.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

JOB = {"n": 1, "guidance": 2.0, "sampler": "dpmpp2m", "steps": 4, "seed": 0}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class Client:
    """HTTP calls with status-code bookkeeping shared by all client threads."""

    def __init__(self, base: str):
        self.base = base
        self.codes: collections.Counter = collections.Counter()
        self.lock = threading.Lock()

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"} if data else {})
        try:
            with urllib.request.urlopen(request, timeout=60) as resp:
                code, payload = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            code, payload = exc.code, exc.read()
        with self.lock:
            self.codes[code] += 1
        return code, payload


def run_soak(model: str, seconds: float, clients: int, seed: int = 0, max_queue: int = 4) -> dict:
    """Serve ``model`` and drive it with ``clients`` threads for ``seconds``; returns the report."""
    out = tempfile.mkdtemp(prefix="aldm-soak-")
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "aldm.cli", "serve", "--model", model, "--out", out,
                               "--port", str(port), "--max-queue", str(max_queue)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    client = Client(f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + 120
    while True:
        try:
            if client.call("GET", "/api/health")[0] == 200:
                break
        except OSError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the server did not start: {server.stderr.read()[-2000:]}")
        time.sleep(0.2)
    model_id = json.loads(client.call("GET", "/api/models")[1])[0]["id"]
    accepted: list[str] = []
    rss: list[tuple[float, float]] = []
    stop = threading.Event()
    start = time.monotonic()

    def sample_memory():
        while not stop.is_set():
            value = _rss_mb(server.pid)
            if value is not None:
                rss.append((time.monotonic() - start, value))
            time.sleep(1.0)

    def worker(index: int):
        rng = random.Random(seed * 1000 + index)
        submitted = 0
        while time.monotonic() - start < seconds:
            code, payload = client.call("POST", "/api/jobs", {"model": model_id, **JOB, "seed": rng.randrange(10**6)})
            if code == 429:
                time.sleep(0.5 + rng.random())
                continue
            if code != 202:
                continue
            job_id = json.loads(payload)["id"]
            with client.lock:
                accepted.append(job_id)
            # about one job in three, and always the first job of the first client (a short soak on a slow
            # machine accepts few jobs: the cancel path is exercised every time)
            cancel = rng.random() < 1 / 3 or (index == 0 and submitted == 0)
            submitted += 1
            while True:
                job = json.loads(client.call("GET", f"/api/jobs/{job_id}")[1])
                if cancel and job["status"] in ("queued", "running"):
                    client.call("POST", f"/api/jobs/{job_id}/cancel")
                    cancel = False
                if job["status"] not in ("queued", "running"):
                    break
                time.sleep(0.2)
            if job["samples"]:
                sample = job["samples"][0]["sample"]
                client.call("GET", f"/api/jobs/{job_id}/samples/{sample}/download.zip?space=model")
                client.call("GET", f"/api/jobs/{job_id}/samples/{sample}/volume/flair")

    memory = threading.Thread(target=sample_memory, daemon=True)
    memory.start()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # every accepted job must end
    final: dict[str, str] = {}
    wait_until = time.monotonic() + 300
    while time.monotonic() < wait_until:
        final = {j: json.loads(client.call("GET", f"/api/jobs/{j}")[1])["status"] for j in accepted}
        if all(s not in ("queued", "running") for s in final.values()):
            break
        time.sleep(0.5)
    stop.set()
    memory.join()
    server.terminate()  # uvicorn shuts down gracefully, then re-raises SIGTERM: exit status -15
    server.wait(timeout=60)
    stderr = server.stderr.read()
    quarter, half = max(1, len(rss) // 4), len(rss) // 2
    return {
        "seconds": seconds, "clients": clients, "requests": dict(sorted(client.codes.items())),
        "server_errors": sum(n for code, n in client.codes.items() if code >= 500),
        "jobs_accepted": len(accepted), "jobs_by_status": dict(collections.Counter(final.values())),
        "rss_mb_first_quarter": sum(v for _, v in rss[:quarter]) / quarter if rss else None,
        "rss_mb_last_quarter": sum(v for _, v in rss[-quarter:]) / quarter if rss else None,
        "rss_mb_max_first_half": max((v for _, v in rss[:half]), default=None),
        "rss_mb_max_second_half": max((v for _, v in rss[half:]), default=None), "rss_mb_series": rss, "out": out,
        "server_exit": server.returncode, "server_traceback": "Traceback" in stderr,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="a finished run that can generate")
    parser.add_argument("--seconds", type=float, default=180)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--out", default=None, help="write the report as JSON here")
    args = parser.parse_args()
    report = run_soak(args.model, args.seconds, args.clients)
    summary = {k: v for k, v in report.items() if k != "rss_mb_series"}
    print(json.dumps(summary, indent=2))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=2)
    ok = report["server_errors"] == 0 and set(report["jobs_by_status"]) <= {"done", "cancelled"}
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
