"""Shared pieces of the sandbox tests: the isolation levels this machine offers, sandboxes with
layers taken away (to show each layer stops an attack on its own), and hostile-program helpers."""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from harness.sandbox.executor import Sandbox, SandboxPolicy
from harness.sandbox.isolation import bwrap_works, is_root, landlock_abi, seccomp_works, unshare_prefix

FAST = SandboxPolicy(wall_seconds=3, cpu_seconds=2, memory_mb=256, output_chars=2000, file_mb=4)


def levels() -> list[str]:
    """Every launcher this machine offers without the unsafe opt-in."""
    found = []
    if bwrap_works():
        found.append("bwrap")
    if unshare_prefix():
        found.append("unshare")
    if landlock_abi() and seccomp_works():
        found.append("process")
    return found


# Layers taken away (as root, at the process level) to show what the others still stop.
STRIPPED = {
    "no-seccomp": {"seccomp": False},
    "no-seccomp-no-landlock": {"seccomp": False, "landlock_abi": 0},
    "no-namespaces": {"pid_namespace": False, "mount_namespace": False},
} if is_root() else {}


def stripped(policy: SandboxPolicy, **layers) -> Sandbox:
    box = Sandbox(policy, isolation="process", allow_unsafe=True, spares=2)
    box.plan = dataclasses.replace(box.plan, **layers)
    return box


def make_sandbox(variant: str, policy: SandboxPolicy = FAST) -> Sandbox:
    if variant in STRIPPED:
        return stripped(policy, **STRIPPED[variant])
    return Sandbox(policy, isolation=variant, spares=4)


class Tools:
    """``echo`` returns its arguments, ``fail`` raises, ``inf`` returns infinity, ``slow`` sleeps,
    ``wait``/``release`` coordinate two programs."""

    names = ["echo", "fail", "inf", "slow", "wait", "release"]

    def __init__(self, slow_seconds: float = 0.3) -> None:
        self.calls: list[tuple] = []
        self.slow_seconds = slow_seconds
        self.released = threading.Event()

    def call(self, name, args, kwargs):
        self.calls.append((name, args, kwargs))
        if name == "fail":
            raise ValueError("the detector is broken")
        if name == "inf":
            return float("inf")
        if name == "slow":
            time.sleep(self.slow_seconds)
            return 1
        if name == "wait":
            return self.released.wait(10)
        if name == "release":
            self.released.set()
            return True
        return {"args": args, "kwargs": kwargs}


def run(sandbox: Sandbox, code: str, tools=None, **policy):
    merged = dataclasses.replace(sandbox.policy, **policy) if policy else None
    return sandbox.run(code, tools or Tools(), (64, 48), merged)


def run_all(sandbox: Sandbox, codes: dict[str, str], tools=None, **policy) -> dict:
    """Run programs at once (hostile programs that wait out their limits overlap)."""
    with ThreadPoolExecutor(len(codes)) as pool:
        futures = {name: pool.submit(run, sandbox, code, tools, **policy) for name, code in codes.items()}
        return {name: future.result() for name, future in futures.items()}


# A program prelude that finds the program's own channel to the parent and writes raw bytes on it.
CHANNEL = """\
import os, stat
def _is_socket(fd):
    try:
        return stat.S_ISSOCK(os.fstat(fd).st_mode)
    except OSError:
        return False
channel = next(fd for fd in range(3, 256) if _is_socket(fd))
def raw(data):
    view = memoryview(data)
    while view:
        view = view[os.write(channel, view):]
def send(payload):
    raw(len(payload).to_bytes(4, "big") + payload)
"""

# Names a program's process (its comm), so the test can look for it on the host afterwards.
NAME_ITSELF = """\
import ctypes
ctypes.CDLL(None).prctl(15, NAME, 0, 0, 0)
"""


def processes_named(name: bytes) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm", "rb") as f:
                    if f.read().strip() == name:
                        found.append(int(entry))
            except OSError:
                pass
    return found


def wait_until_gone(name: bytes, seconds: float = 5.0) -> list[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not processes_named(name):
            return []
        time.sleep(0.05)
    return processes_named(name)
