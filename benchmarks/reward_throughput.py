"""Verifier throughput for one GRPO step's rewards: 64 prompts x 5 samples x 4 judgements.

A local OpenAI-compatible server (in its own process, on 127.0.0.1) answers
every judgement after an injected latency (200 ms). Compared:

(a) ours: all 1,280 judgements of the step sent together, asynchronously, at most
    ``--concurrency`` in flight (the floor is 1,280 x latency / concurrency);
(b) the original scheme: 24 threads, each judging one rollout's four parts in sequence;
(c) ours, the whole reward (also the sandboxed syntax checks, two runs per program).

Targets: (a) within 2x of its floor, and at least 5x faster than (b).

    python benchmarks/reward_throughput.py [--latency 0.2] [--concurrency 256]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from harness.backends import OpenAIChat
from harness.training.reward import RewardConfig, RewardModel
from harness.training.verifier import VERIFIED_PARTS, verifier_request

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--port", type=int, default=18765)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.port, args.latency)
        return
    logging.disable(logging.WARNING)
    server = subprocess.Popen([sys.executable, __file__, "--serve", "--port", str(args.port),
                               "--latency", str(args.latency)])
    try:
        time.sleep(1.0)
        url = f"http://127.0.0.1:{args.port}/v1"
        queries, completions = rollouts()
        from harness.systems.parsing import parse_reply

        parsed = [parse_reply(c) for c in completions]
        requests = [verifier_request(part, q, p.plan, p.code) for q, p in zip(queries, parsed) for part in VERIFIED_PARTS]
        judgements = len(requests)

        ours = OpenAIChat("judge", base_url=url, max_concurrency=args.concurrency, timeout_s=60)
        start = time.perf_counter()
        replies = asyncio.run(ours.acomplete_many(requests))
        ours_s = time.perf_counter() - start
        assert all(isinstance(r, str) for r in replies), [r for r in replies if not isinstance(r, str)][:1]

        original = OpenAIChat("judge", base_url=url, max_concurrency=24, timeout_s=60)

        def one_rollout(index: int) -> None:
            for part in range(len(VERIFIED_PARTS)):
                original.complete(requests[index * len(VERIFIED_PARTS) + part])

        start = time.perf_counter()
        with ThreadPoolExecutor(24) as pool:
            list(pool.map(one_rollout, range(PROMPTS * SAMPLES)))
        original_s = time.perf_counter() - start

        model = RewardModel(RewardConfig(cache=False), verifier=OpenAIChat(
            "judge", base_url=url, max_concurrency=args.concurrency, timeout_s=60))
        start = time.perf_counter()
        results = model.score_many(queries, completions)
        full_s = time.perf_counter() - start
        model.close()
        assert all(r.score == 1.0 for r in results)
    finally:
        server.terminate()
        server.wait()

    floor = judgements * args.latency / args.concurrency
    print(f"Verifier throughput: {PROMPTS} prompts x {SAMPLES} samples x {len(VERIFIED_PARTS)} judgements = "
          f"{judgements} requests, {args.latency * 1000:.0f} ms server latency\n")
    print("| scheme | seconds | judgements/s | vs floor | vs original |")
    print("|---|---:|---:|---:|---:|")
    print(f"| floor at concurrency {args.concurrency} | {floor:.2f} | {judgements / floor:.0f} | 1.0x | |")
    print(f"| (a) ours, concurrency {args.concurrency} | {ours_s:.2f} | {judgements / ours_s:.0f} | "
          f"{ours_s / floor:.2f}x | {original_s / ours_s:.1f}x faster |")
    print(f"| (b) original: 24 threads, 4 parts in sequence | {original_s:.2f} | {judgements / original_s:.0f} | "
          f"{original_s / floor:.2f}x | 1.0x |")
    print(f"| (c) ours, whole reward incl. sandboxed syntax checks | {full_s:.2f} | | | |")
    verdict = "meets" if ours_s <= 2 * floor and original_s / ours_s >= 5 else "MISSES"
    print(f"\ntarget (a) <= 2x floor and >= 5x faster than (b): {verdict}")


if __name__ == "__main__":
    main()
