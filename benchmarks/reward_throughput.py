"""Verifier throughput for one GRPO step's rewards: 64 prompts x 5 samples x 4 judgements.

A local OpenAI-compatible server (in its own process, on 127.0.0.1) answers
every judgement after an injected latency (200 ms). Compared:

(a) ours: all 1,280 judgements of the step sent together, asynchronously, at most
    ``--concurrency`` in flight (the floor is 1,280 x latency / concurrency);
(b) the original scheme: 24 threads, each judging one rollout's four parts in sequence;
(c) ours, the whole reward (also the sandboxed syntax checks, two runs per program).

Targets: (a) within 1.4x of its floor, and at least 5x faster than (b). The client's
CPU per request is shown, and the server's: both share the machine's cores.

    python benchmarks/reward_throughput.py [--latency 0.2] [--concurrency 256] [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from figures import Figure, table  # noqa: E402

from harness.backends import OpenAIChat  # noqa: E402
from harness.training.reward import RewardConfig, RewardModel  # noqa: E402
from harness.training.verifier import VERIFIED_PARTS, verifier_request  # noqa: E402

NAME = "reward_throughput"
PROMPTS, SAMPLES = 64, 5


def serve(port: int, latency: float) -> None:
    reply = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "judge", "choices": [
        {"index": 0, "finish_reason": "stop", "message": {"role": "assistant",
                                                          "content": '{"reason": "ok", "score": 1}'}}]}).encode()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: the client reuses its connections

        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            time.sleep(latency)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args) -> None:
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 2048

    Server(("127.0.0.1", port), Handler).serve_forever()


def rollouts() -> tuple[list[str], list[str]]:
    queries, completions = [], []
    for p in range(PROMPTS):
        for s in range(SAMPLES):
            queries.append(f"How many red mugs are on table {p}?")
            completions.append(f"<plan>Detect the mugs; keep the red ones (variant {s}).</plan>\n<answer>\n"
                               f"mugs = gd_detect(image, 'mug')\nfinal_answer = sum(1 for m in mugs if "
                               f"'red' in vqa(image, m['box'], 'What color is this mug?'))\n</answer>")
    return queries, completions


def _process_cpu(pid: int) -> float:
    """CPU seconds a process has used (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _one_run(url: str, server: int, requests: list, concurrency: int, full: bool,
             queries: list[str], completions: list[str]) -> dict[str, float]:
    ours = OpenAIChat("judge", base_url=url, max_concurrency=concurrency, timeout_s=60)
    cpu, server_cpu, start = time.process_time(), _process_cpu(server), time.perf_counter()
    replies = asyncio.run(ours.acomplete_many(requests))
    out = {"ours": time.perf_counter() - start, "client_ms": 1000 * (time.process_time() - cpu) / len(requests),
           "server_ms": 1000 * (_process_cpu(server) - server_cpu) / len(requests)}
    ours.close()
    assert all(isinstance(r, str) for r in replies), [r for r in replies if not isinstance(r, str)][:1]
    if not full:
        return out
    original = OpenAIChat("judge", base_url=url, max_concurrency=24, timeout_s=60)

    def one_rollout(index: int) -> None:
        for part in range(len(VERIFIED_PARTS)):
            original.complete(requests[index * len(VERIFIED_PARTS) + part])

    start = time.perf_counter()
    with ThreadPoolExecutor(24) as pool:
        list(pool.map(one_rollout, range(PROMPTS * SAMPLES)))
    out["original"] = time.perf_counter() - start
    original.close()
    model = RewardModel(RewardConfig(protocol="harness", cache=False), verifier=OpenAIChat(
        "judge", base_url=url, max_concurrency=concurrency, timeout_s=60))
    start = time.perf_counter()
    results = model.score_many(queries, completions)
    out["full"] = time.perf_counter() - start
    model.close()
    assert all(r.score == 1.0 for r in results)
    return out


def measure(quick: bool = False, latency: float = 0.2, concurrency: int = 256, port: int = 18765,
            repeats: int = 3) -> list[Figure]:
    logging.disable(logging.WARNING)
    server = subprocess.Popen([sys.executable, __file__, "--serve", "--port", str(port), "--latency", str(latency)])
    runs = []
    try:
        url = f"http://127.0.0.1:{port}/v1"
        _wait_for(port)
        queries, completions = rollouts()
        from harness.systems.parsing import parse_reply

        parsed = [parse_reply(c) for c in completions]
        requests = [verifier_request(part, q, p.plan, p.code) for q, p in zip(queries, parsed) for part in VERIFIED_PARTS]
        for _ in range(repeats):
            runs.append(_one_run(url, server.pid, requests, concurrency, not quick, queries, completions))
    finally:
        server.terminate()
        server.wait()
    floor = len(requests) * latency / concurrency
    note = (f"{len(requests)} judgements ({PROMPTS} prompts x {SAMPLES} samples x {len(VERIFIED_PARTS)}), "
            f"{latency * 1000:g} ms each, {concurrency} in flight; floor {floor:.2f} s")
    figures = [
        Figure(NAME, "(a) ours: one step's judgements", "s", [r["ours"] for r in runs], note=note),
        Figure(NAME, "(a) / concurrency floor", "x", [r["ours"] / floor for r in runs], "<= 1.4", note),
        Figure(NAME, "(a) client CPU per request", "ms", [r["client_ms"] for r in runs],
               note="this process: building, sending and reading each request"),
        Figure(NAME, "(a) server CPU per request", "ms", [r["server_ms"] for r in runs],
               note="the local test server (Python's threading HTTP server), on the same cores"),
    ]
    if not quick:
        figures += [
            Figure(NAME, "(b) the original scheme: 24 threads, 4 parts in sequence", "s",
                   [r["original"] for r in runs], note=note),
            Figure(NAME, "(b) / (a)", "x", [r["original"] / r["ours"] for r in runs], ">= 5", "each run's own ratio"),
            Figure(NAME, "(c) ours, the whole reward (with sandboxed syntax checks)", "s", [r["full"] for r in runs],
                   note=note),
        ]
    return figures


def _wait_for(port: int, seconds: float = 30.0) -> None:
    """Until the server accepts connections."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--port", type=int, default=18765)
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure (the median is shown)")
    parser.add_argument("--quick", action="store_true", help="only (a)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.port, args.latency)
        return
    figures = measure(args.quick, args.latency, args.concurrency, args.port, args.repeats)
    print(f"Verifier throughput ({os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}), medians of "
          f"{args.repeats} runs\n")
    print(table(figures))


if __name__ == "__main__":
    main()
