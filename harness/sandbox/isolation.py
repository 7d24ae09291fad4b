"""Which isolation layers this machine offers, and the command that starts the zygote.

Layers, strongest first; ``auto`` uses every one that works here and each
program's record lists those it ran under:

- ``bwrap``: bubblewrap namespaces (no network, own PID space, a filesystem
  holding only the Python installation read-only and a private /tmp, user
  ``nobody``); falls back to ``unshare`` (a network namespace) when missing;
- ``landlock``: per program, reads only from the Python installation, writes only
  to the program's own directory, no TCP, no signals out of the sandbox;
- ``seccomp``: per program, a deny-list of system calls (new processes and
  programs, sockets, tracing, signals, namespaces, mounts, kernel state);
- ``rlimits``: per program, CPU time, address space, file size, open files,
  processes; plus a wall-clock timeout enforced by the parent;
- always: a separate process with a scrubbed environment.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import site
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from harness.sandbox import runtime

MODES = ("auto", "bwrap", "unshare", "process")

# The only environment a program sees: nothing from the parent (no API keys).
SANDBOX_ENV = {
    "PATH": "/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONHASHSEED": "0",
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}
_SYSTEM_READABLE = ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/etc/ld.so.cache", "/etc/ld.so.conf",
                    "/etc/ld.so.conf.d", "/etc/localtime", "/dev/null", "/dev/urandom", "/dev/zero")


class IsolationError(RuntimeError):
    """The requested isolation layer is not available on this machine."""


@dataclass(frozen=True)
class IsolationPlan:
    launcher: str  # bwrap | unshare | process
    landlock_abi: int
    seccomp: bool

    @property
    def layers(self) -> list[str]:
        layers = [self.launcher]
        if self.landlock_abi:
            layers.append(f"landlock-v{self.landlock_abi}")
        if self.seccomp:
            layers.append("seccomp")
        return layers + ["rlimits", "scrubbed-env"]


def _works(command: list[str]) -> bool:
    try:
        return subprocess.run(command, capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@functools.lru_cache(maxsize=None)
def bwrap_works() -> bool:
    return shutil.which("bwrap") is not None and _works(
        ["bwrap", "--unshare-all", "--die-with-parent", "--ro-bind", "/", "/", "--uid", "65534", "true"])


@functools.lru_cache(maxsize=None)
def unshare_prefix() -> tuple[str, ...] | None:
    """``unshare`` arguments that give a network namespace here, if any do."""
    if shutil.which("unshare") is None:
        return None
    for prefix in (("unshare", "--net"), ("unshare", "--user", "--map-root-user", "--net")):
        if _works([*prefix, "true"]):
            return prefix
    return None


@functools.lru_cache(maxsize=None)
def seccomp_works() -> bool:
    if importlib.util.find_spec("pyseccomp") is None:
        return False
    try:
        runtime.build_seccomp_filter()
    except Exception:  # libseccomp missing or unusable
        return False
    return True


def plan_isolation(mode: str = "auto") -> IsolationPlan:
    if mode not in MODES:
        raise IsolationError(f"unknown isolation mode {mode!r}; choose one of {', '.join(MODES)}")
    if mode in ("auto", "bwrap") and bwrap_works():
        launcher = "bwrap"
    elif mode == "bwrap":
        raise IsolationError("bubblewrap is not installed or cannot create namespaces here (apt install bubblewrap)")
    elif mode in ("auto", "unshare") and unshare_prefix():
        launcher = "unshare"
    elif mode == "unshare":
        raise IsolationError("unshare cannot create a network namespace here")
    else:
        launcher = "process"
    return IsolationPlan(launcher, runtime.landlock_abi(), seccomp_works())


def readable_paths() -> list[str]:
    """What a program may read: the Python installation and its packages, system libraries."""
    paths = {sys.base_prefix, sys.prefix, *site.getsitepackages()}
    paths.update(p for p in _SYSTEM_READABLE if os.path.exists(p))
    # Drop paths inside others so bind mounts do not shadow each other.
    ordered = sorted(paths, key=len)
    return [p for i, p in enumerate(ordered) if not any(p.startswith(q.rstrip("/") + "/") for q in ordered[:i])]


def _bwrap_binds(paths: list[str]) -> list[str]:
    args: list[str] = []
    for path in paths:
        if path.startswith("/dev/"):
            continue  # --dev provides these
        if os.path.islink(path) and os.path.dirname(path) == "/":
            args += ["--symlink", os.readlink(path), path]
        else:
            args += ["--ro-bind", path, path]
    return args


def zygote_command(plan: IsolationPlan, control_fd: int, config_json: str) -> list[str]:
    """The command that starts the zygote under the plan's launcher."""
    python = [sys.executable, "-I", "-c", Path(runtime.__file__).read_text(encoding="utf-8"),
              str(control_fd), config_json]
    if plan.launcher == "bwrap":
        env = [arg for key, value in SANDBOX_ENV.items() for arg in ("--setenv", key, value)]
        # The private /tmp comes first: a later mount over it would hide a Python
        # installation that lives under /tmp.
        return ["bwrap", "--unshare-all", "--die-with-parent", "--new-session", "--clearenv", *env,
                "--setenv", "HOME", "/tmp", "--tmpfs", "/tmp", *_bwrap_binds(readable_paths()),
                "--proc", "/proc", "--dev", "/dev",
                "--uid", "65534", "--gid", "65534", "--chdir", "/tmp", "--", *python]
    if plan.launcher == "unshare":
        return [*unshare_prefix(), "--", *python]
    return python
