"""Which isolation layers this machine offers, what each missing one costs, and how the zygote starts.

The launcher wraps the zygote (strongest first): ``bwrap`` (bubblewrap: own
PID, network, IPC and UTS namespaces, a filesystem holding only the Python
installation read-only and a size-capped /tmp), ``unshare`` (network, IPC, UTS
and PID namespaces) or a plain ``process``. Inside it, every program's process
gets the per-program layers (``child.py``): its own PID and mount namespaces, its
own uid without capabilities, Landlock, seccomp, rlimits, a scrubbed
environment. ``docs/sandbox.md`` says what each layer stops.

The plan is what this machine should give; the zygote's probe reports what it
really gave, and :func:`check_isolation` turns each missing layer into a
WARNING naming what it no longer stops, or an error where the rest would leave
a program free to read the user's files or act as root (unless the caller
explicitly accepts running unsafely).
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import site
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from harness.sandbox import lockdown, seccomp

log = logging.getLogger(__name__)

MODES = ("auto", "bwrap", "unshare", "process")
UNSAFE_OPT_IN = "--allow-unsafe-isolation (exec) or allow_unsafe_isolation=true (system arguments)"

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
# What the zygote keeps under bubblewrap to set up each program (and nothing else).
_ZYGOTE_CAPABILITIES = ("CAP_SYS_ADMIN", "CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP", "CAP_KILL", "CAP_CHOWN",
                        "CAP_DAC_OVERRIDE", "CAP_FOWNER")
SANDBOX_MODULES = ("channel", "lockdown", "seccomp", "runtime", "child", "zygote")  # sent to the zygote, in import order

# What each layer stops, said when it is missing.
COSTS = {
    "bwrap": "programs see the host's filesystem (only Landlock limits what they read), and share its "
             "IPC objects and hostname with the harness",
    "network-namespace": "programs share the host's network: only seccomp (no sockets) and Landlock (no TCP) "
                         "keep them off it",
    "pid-namespace": "programs can name the harness, the zygote and each other by PID, and what a program "
                     "starts is not killed with it: only seccomp's argument filters, Landlock's signal scope and "
                     "separate uids stop them from signalling those processes or changing their limits",
    "mount-namespace": "programs get a read-only workspace (no private, size-capped tmpfs to write in), and "
                       "the filesystem is not remounted read-only for them: only file permissions and Landlock "
                       "keep them from writing elsewhere",
    "own-uid": "programs run as the same user as the harness",
    "no-capabilities": "programs keep capabilities",
    "landlock": "nothing but file permissions (and bubblewrap's view, when present) limits what a program "
                "reads and writes, and Landlock no longer denies TCP or signals out of the program",
    "landlock-net": "Landlock does not deny TCP (needs Landlock ABI 4, Linux 6.7); seccomp's socket ban still does",
    "landlock-scope": "Landlock does not deny signals and abstract unix sockets out of a program "
                      "(needs Landlock ABI 6, Linux 6.12)",
    "seccomp": "programs can open sockets, start threads, use System V and POSIX IPC and memory files that "
               "escape their memory limit, and call prlimit64, fcntl(F_SETOWN) and ioctl on anything their "
               "uid and namespaces let them reach",
    "read-only-mounts": "the filesystem is not remounted read-only for programs (needs mount_setattr, Linux 5.12)",
    "private-proc": "programs see the zygote's /proc (Landlock still denies reading it)",
}


class IsolationError(RuntimeError):
    """The requested isolation is not available, or is unsafe and was not explicitly accepted."""


@dataclass(frozen=True)
class IsolationPlan:
    launcher: str  # bwrap | unshare | process
    landlock_abi: int
    seccomp: bool
    pid_namespace: bool = False
    mount_namespace: bool = False
    own_uid: bool = False

    @property
    def layers(self) -> list[str]:
        return layer_names(self.launcher, self.wanted())

    def wanted(self) -> dict:
        return {"pid_namespace": self.pid_namespace, "mount_namespace": self.mount_namespace,
                "own_uid": self.own_uid, "landlock_abi": self.landlock_abi, "seccomp": self.seccomp}


def layer_names(launcher: str, layers: dict, missing: dict | None = None) -> list[str]:
    """The layers as recorded with every program."""
    names = [launcher]
    names += [name for key, name in (("pid_namespace", "pid-namespace"), ("mount_namespace", "mount-namespace"),
                                     ("own_uid", "own-uid")) if layers.get(key)]
    if "no-capabilities" not in (missing or {}):
        names.append("no-capabilities")
    if layers.get("landlock_abi"):
        names.append(f"landlock-v{layers['landlock_abi']}")
    if layers.get("seccomp"):
        names.append("seccomp")
    return names + ["rlimits", "scrubbed-env"]


def is_root() -> bool:
    return os.geteuid() == 0


def _works(command: list[str]) -> bool:
    try:
        return subprocess.run(command, capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _bwrap_namespaces() -> list[str]:
    """As root the zygote stays in the host's user namespace, where each program can get its
    own uid; otherwise bubblewrap's user namespace makes the zygote root inside it."""
    if is_root():
        unshare = ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
    else:
        unshare = ["--unshare-all", "--uid", "0", "--gid", "0"]
    return unshare + [arg for cap in _ZYGOTE_CAPABILITIES for arg in ("--cap-add", cap)]


@functools.lru_cache(maxsize=None)
def bwrap_works() -> bool:
    return shutil.which("bwrap") is not None and _works(
        ["bwrap", *_bwrap_namespaces(), "--die-with-parent", "--ro-bind", "/", "/", "--size", "65536", "--tmpfs", "/tmp",
         "true"])


@functools.lru_cache(maxsize=None)
def unshare_prefix() -> tuple[str, ...] | None:
    """``unshare`` arguments that give network, IPC, UTS and PID namespaces here, if any do. The
    zygote is the first process of its PID namespace (``--fork``; ``--kill-child`` ends it with
    ``unshare``), which it needs to return to after making each program's namespace."""
    if shutil.which("unshare") is None:
        return None
    namespaces = ("--net", "--ipc", "--uts", "--pid", "--fork", "--kill-child")
    prefixes = [("unshare", *namespaces)] if is_root() else []
    prefixes.append(("unshare", "--user", "--map-root-user", *namespaces))
    for prefix in prefixes:
        if _works([*prefix, "true"]):
            return prefix
    return None


@functools.lru_cache(maxsize=None)
def landlock_abi() -> int:
    return lockdown.Kernel().landlock_abi()


@functools.lru_cache(maxsize=None)
def seccomp_works() -> bool:
    return seccomp.seccomp_program() is not None


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
        raise IsolationError("unshare cannot create network, IPC, UTS and PID namespaces here")
    else:
        launcher = "process"
    # The zygote can make namespaces when it is root, or root of a user namespace its launcher made.
    namespaces = is_root() or launcher in ("bwrap", "unshare")
    # A uid per program needs the host's root (a user namespace maps only one uid).
    own_uid = is_root() and not (launcher == "unshare" and "--user" in unshare_prefix())
    return IsolationPlan(launcher, landlock_abi(), seccomp_works(), namespaces, namespaces, own_uid)


_warned: set[str] = set()


def check_isolation(launcher: str, layers: dict, missing: dict[str, str], allow_unsafe: bool) -> None:
    """Warn once per process for each missing layer; refuse unsafe isolation unless accepted."""
    gaps: dict[str, str] = {}
    if launcher != "bwrap":
        gaps["bwrap"] = "bubblewrap is not available or not chosen"
        if launcher == "process":
            gaps["network-namespace"] = "neither bubblewrap nor unshare is used"
    for key, name in (("pid_namespace", "pid-namespace"), ("mount_namespace", "mount-namespace")):
        if not layers.get(key):
            gaps[name] = missing.get(name, "the zygote cannot create namespaces (not root, no user namespace)")
    if is_root() and not layers.get("own_uid"):
        gaps["own-uid"] = missing.get("own-uid", "not available")
    abi = int(layers.get("landlock_abi") or 0)
    if not abi:
        gaps["landlock"] = missing.get("landlock", "the kernel has no Landlock (Linux 5.13+, enabled in the LSM list)")
    else:
        if abi < 4:
            gaps["landlock-net"] = f"Landlock ABI {abi}"
        if abi < 6:
            gaps["landlock-scope"] = f"Landlock ABI {abi}"
    if not layers.get("seccomp"):
        gaps["seccomp"] = missing.get("seccomp", "seccomp filters are not available")
    for name in ("no-capabilities", "read-only-mounts", "private-proc"):
        if name in missing:
            gaps[name] = missing[name]
    for name, why in gaps.items():
        message = f"sandbox: no {name} ({why}): {COSTS[name]}"
        if message not in _warned:
            _warned.add(message)
            log.warning("%s", message)
    unsafe = []
    if launcher != "bwrap" and (not abi or not layers.get("seccomp")):
        unsafe.append("without bubblewrap, both Landlock and seccomp are needed to keep programs from reading "
                      "your files and reaching the network")
    if "own-uid" in gaps or "no-capabilities" in gaps:
        unsafe.append("programs would keep root's privileges")
    if unsafe and not allow_unsafe:
        raise IsolationError(f"unsafe sandbox ({launcher}; missing {', '.join(gaps)}): {'; '.join(unsafe)}. "
                             f"Install bubblewrap, or pass {UNSAFE_OPT_IN} to run generated programs anyway")


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


# The zygote's first lines: read the sandbox modules and the config from the control
# socket, register the modules under their package names, run the zygote.
BOOTSTRAP = """\
import json, socket, struct, sys, types
control = socket.socket(fileno=int(sys.argv[1]))
def read(size):
    data = b""
    while len(data) < size:
        chunk = control.recv(size - len(data))
        if not chunk:
            raise SystemExit(0)
        data += chunk
    return data
boot = json.loads(read(struct.unpack("!I", read(4))[0]))
for name in ("harness", "harness.sandbox"):
    sys.modules[name] = types.ModuleType(name)
    sys.modules[name].__path__ = []
for name, source in boot["modules"]:
    module = sys.modules["harness.sandbox." + name] = types.ModuleType("harness.sandbox." + name)
    setattr(sys.modules["harness.sandbox"], name, module)
    exec(compile(source, "<sandbox " + name + ">", "exec"), module.__dict__)
sys.modules["harness.sandbox.zygote"].main(control, boot["config"])
"""


@functools.lru_cache(maxsize=None)
def sandbox_sources() -> tuple[tuple[str, str], ...]:
    here = Path(__file__).resolve().parent
    return tuple((name, (here / f"{name}.py").read_text(encoding="utf-8")) for name in SANDBOX_MODULES)


def zygote_command(plan: IsolationPlan, control_fd: int, tmp_bytes: int = 1 << 20) -> list[str]:
    """The command that starts the zygote under the plan's launcher."""
    python = [sys.executable, "-I", "-c", BOOTSTRAP, str(control_fd)]
    if plan.launcher == "bwrap":
        env = [arg for key, value in SANDBOX_ENV.items() for arg in ("--setenv", key, value)]
        # The private /tmp comes first: a later mount over it would hide a Python
        # installation that lives under /tmp.
        return ["bwrap", *_bwrap_namespaces(), "--die-with-parent", "--new-session", "--clearenv", *env,
                "--setenv", "HOME", "/tmp", "--size", str(tmp_bytes), "--tmpfs", "/tmp",
                *_bwrap_binds(readable_paths()), "--proc", "/proc", "--dev", "/dev", "--chdir", "/tmp", "--", *python]
    if plan.launcher == "unshare":
        return [*unshare_prefix(), "--", *python]
    return python
