"""Running untrusted programs: a warm zygote forks one locked-down child per program.

The parent never executes program code. Each program gets its own socket to
the parent; its tool calls arrive there and are answered by a tool handler in
the parent (so one process holding the models can serve every program). The
parent enforces the wall-clock limit and turns every way a program can end into
a status: ok, no_answer, exception, tool_error, timeout, memory, killed.
"""

from __future__ import annotations

import base64
import itertools
import json
import logging
import os
import queue
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from harness.sandbox import runtime
from harness.sandbox.isolation import SANDBOX_ENV, IsolationPlan, plan_isolation, readable_paths, zygote_command

log = logging.getLogger(__name__)

_CHILD_FAILURE = 70  # exit code of a child whose runtime (not the program) failed


class SandboxError(RuntimeError):
    """The sandbox itself cannot run (not a program's failure)."""


@dataclass(frozen=True)
class SandboxPolicy:
    """Limits for one program. Wall time excludes time spent waiting for tools."""

    wall_seconds: float = 60.0
    cpu_seconds: int = 30
    memory_mb: int = 2048
    file_mb: int = 16
    open_files: int = 64
    output_chars: int = 65536
    max_tool_calls: int = 1000
    max_message_bytes: int = 8 << 20


@dataclass
class ExecutionResult:
    status: str
    answer: Any = None
    answer_pytype: str | None = None
    answer_typed: Any = None  # the answer with its Python types (runtime.encode_value)
    detail: str | None = None
    stdout: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    isolation: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ToolHandler(Protocol):
    """Answers a program's tool calls (arguments as JSON; the image as ``{"__image__": true}``)."""

    names: list[str]

    def call(self, name: str, args: list, kwargs: dict) -> Any:
        """Return a JSON-serialisable result, or raise to send the program a ToolError."""


class _NoTools:
    names: list[str] = []

    def call(self, name: str, args: list, kwargs: dict) -> Any:
        raise ValueError(f"unknown tool {name!r}")


@dataclass
class _Job:
    started: threading.Event = field(default_factory=threading.Event)
    exited: threading.Event = field(default_factory=threading.Event)
    exit: dict[str, Any] = field(default_factory=dict)


def _shown(value: Any) -> Any:
    """Tool arguments as recorded: the image marker becomes "<image>"."""
    if isinstance(value, dict):
        return "<image>" if value.get("__image__") is True and len(value) == 1 else {k: _shown(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shown(v) for v in value]
    return value


class Sandbox:
    """A pool of sandboxed program executions behind one zygote process.

    Thread-safe: call :meth:`run` from as many threads as programs should run
    at once. The zygote starts on first use and restarts if it dies.
    """

    def __init__(self, policy: SandboxPolicy | None = None, isolation: str = "auto",
                 preload: tuple[str, ...] = ("numpy",)) -> None:
        self.policy = policy or SandboxPolicy()
        self.plan: IsolationPlan = plan_isolation(isolation)
        self.preload = preload
        self._lock = threading.Lock()  # guards start/stop and writes to the control socket
        self._jobs: dict[int, _Job] = {}
        self._ids = itertools.count(1)
        self._process: subprocess.Popen | None = None
        self._control: socket.socket | None = None
        self._reader: threading.Thread | None = None
        self._workroot: str | None = None

    @property
    def isolation(self) -> list[str]:
        return self.plan.layers

    # ------------------------------------------------------------------ zygote lifecycle

    def _start(self) -> None:
        if self._process is not None and self._process.poll() is None:
            return
        self._stop_locked()
        if self.plan.launcher == "bwrap":
            self._workroot = "/tmp"  # the sandbox's own tmpfs
        else:
            self._workroot = tempfile.mkdtemp(prefix="harness-sandbox-")
            os.chmod(self._workroot, 0o711)
        parent_end, zygote_end = socket.socketpair()
        config = {"seccomp": self.plan.seccomp, "landlock_abi": self.plan.landlock_abi, "workroot": self._workroot,
                  "readable": readable_paths(), "env": SANDBOX_ENV, "preload": list(self.preload)}
        command = zygote_command(self.plan, zygote_end.fileno(), json.dumps(config))
        self._process = self._spawn(command, zygote_end.fileno())
        zygote_end.close()
        parent_end.settimeout(60)
        try:
            ready = runtime.recv_message(parent_end)
        except (EOFError, OSError, runtime.ProtocolError) as exc:
            error = self._process.stderr.read().decode(errors="replace")[-2000:] if self._process.stderr else ""
            self._process.kill()
            raise SandboxError(f"the sandbox ({', '.join(self.isolation)}) failed to start ({exc}): {error}") from exc
        if ready.get("op") != "ready":
            raise SandboxError(f"the sandbox sent {ready!r} instead of ready")
        parent_end.settimeout(None)
        self._control = parent_end
        self._reader = threading.Thread(target=self._read_control, args=(parent_end,), daemon=True,
                                        name="sandbox-control")
        self._reader.start()
        log.info("sandbox ready (%s)", ", ".join(self.isolation))

    def _spawn(self, command: list[str], control_fd: int) -> subprocess.Popen:
        """Start the zygote from a thread that lives exactly as long as it does.

        bubblewrap's --die-with-parent kills the sandbox when the *thread* that
        started it exits, and ``run`` may be called from a short-lived worker
        thread; a dedicated thread waiting on the zygote keeps it alive.
        """
        spawned: queue.Queue = queue.Queue()

        def keeper() -> None:
            try:
                process = subprocess.Popen(
                    command, pass_fds=(control_fd,), env=dict(SANDBOX_ENV), cwd=self._workroot,
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                    start_new_session=True)
            except BaseException as exc:
                spawned.put(exc)
                return
            spawned.put(process)
            process.wait()

        threading.Thread(target=keeper, name="sandbox-zygote", daemon=True).start()
        result = spawned.get()
        if isinstance(result, BaseException):
            raise SandboxError(f"the sandbox could not be started: {result}") from result
        return result

    def _read_control(self, control: socket.socket) -> None:
        while True:
            try:
                message = runtime.recv_message(control)
            except (EOFError, OSError, runtime.ProtocolError):
                break
            job = self._jobs.get(message.get("id"))
            if job is None:
                continue
            if message.get("op") == "started":
                job.started.set()
            elif message.get("op") == "exited":
                job.exit = message
                job.exited.set()
        for job in list(self._jobs.values()):  # the zygote is gone: nothing will exit any more
            job.exit.setdefault("lost", True)
            job.started.set()
            job.exited.set()

    def _send_control(self, message: dict, fds: list[int] | None = None) -> None:
        with self._lock:
            self._start()
            runtime.send_message(self._control, message, fds)

    def _stop_locked(self) -> None:
        if self._control is not None:
            try:
                runtime.send_message(self._control, {"op": "stop"})
            except OSError:
                pass
            self._control.close()
            self._control = None
        if self._process is not None:
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self._process.pid, signal.SIGKILL)
                self._process.wait()
            if self._process.stderr:
                self._process.stderr.close()
            self._process = None

    def start(self) -> None:
        """Start the zygote now (it also starts on first use); raises SandboxError."""
        with self._lock:
            self._start()

    def close(self) -> None:
        with self._lock:
            self._stop_locked()

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ programs

    def run(self, code: str, tools: ToolHandler | None = None, image_size: tuple[int, int] = (0, 0),
            policy: SandboxPolicy | None = None, dialect: str = "harness",
            files: dict[str, bytes] | None = None) -> ExecutionResult:
        """Run one program to its end; never raises for anything the program does.

        ``dialect`` is how the program sees its tools (``runtime.DIALECTS``); in the
        ``paper`` dialect ``img_pth`` is the name of a file the program may open,
        the first of ``files`` (name -> bytes, written into its work directory).
        """
        if dialect not in runtime.DIALECTS:
            raise ValueError(f"unknown program dialect {dialect!r}; known: {', '.join(runtime.DIALECTS)}")
        tools = tools or _NoTools()
        policy = policy or self.policy
        start = time.perf_counter()
        job_id = next(self._ids)
        job = self._jobs[job_id] = _Job()
        ours, theirs = socket.socketpair()
        calls: list[dict[str, Any]] = []
        try:
            with theirs, self._lock:
                self._start()
                workdir = os.path.join(self._workroot, f"job-{job_id}")
                request = {"op": "run", "id": job_id, "code": code, "tools": list(tools.names),
                           "image": {"width": image_size[0], "height": image_size[1]}, "workdir": workdir,
                           "dialect": dialect, "image_path": next(iter(files), "") if files else "",
                           "files": {name: base64.b64encode(data).decode("ascii") for name, data in (files or {}).items()},
                           "policy": {"cpu_seconds": policy.cpu_seconds, "memory_mb": policy.memory_mb,
                                      "file_mb": policy.file_mb, "open_files": policy.open_files,
                                      "output_chars": policy.output_chars}}
                runtime.send_message(self._control, request, [theirs.fileno()])
            result = self._converse(job_id, job, ours, tools, policy, calls)
        finally:
            ours.close()
            self._jobs.pop(job_id, None)
        result.tool_calls = calls
        result.seconds = time.perf_counter() - start
        result.isolation = self.isolation
        return result

    def _kill(self, job_id: int, job: _Job) -> None:
        try:
            self._send_control({"op": "kill", "id": job_id})
        except OSError:
            pass
        job.exited.wait(10)

    def _converse(self, job_id: int, job: _Job, channel: socket.socket, tools: ToolHandler,
                  policy: SandboxPolicy, calls: list[dict[str, Any]]) -> ExecutionResult:
        deadline = time.monotonic() + policy.wall_seconds
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._kill(job_id, job)
                return ExecutionResult("timeout", detail=f"wall-clock limit of {policy.wall_seconds:g} s reached")
            channel.settimeout(remaining)
            try:
                message = runtime.recv_message(channel, policy.max_message_bytes)
            except socket.timeout:
                continue  # the loop head kills it
            except EOFError:
                job.exited.wait(10)
                return self._ended_without_result(job, policy)
            except (runtime.ProtocolError, OSError) as exc:
                self._kill(job_id, job)
                return ExecutionResult("killed", detail=f"the program broke the tool protocol: {exc}")
            op = message.get("op")
            if op == "call":
                waited = time.monotonic()
                reply = self._answer(message, tools, calls, policy)
                deadline += time.monotonic() - waited  # time in tools is not the program's
                try:
                    runtime.send_message(channel, reply)
                except OSError:
                    pass  # it died; the next read says how
            elif op == "result" and message.get("status") in runtime.STATUSES:
                stdout = str(message.get("stdout", ""))
                if message.get("stdout_dropped"):
                    stdout += f"\n[... {message['stdout_dropped']} more characters of output dropped]"
                return ExecutionResult(message["status"], answer=message.get("answer"),
                                       answer_pytype=message.get("pytype"), answer_typed=message.get("typed"),
                                       detail=message.get("detail"), stdout=stdout)
            else:
                self._kill(job_id, job)
                return ExecutionResult("killed", detail=f"the program broke the tool protocol: unexpected {str(message)[:200]}")

    def _answer(self, message: dict, tools: ToolHandler, calls: list[dict[str, Any]],
                policy: SandboxPolicy) -> dict:
        name, args, kwargs = message.get("tool"), message.get("args"), message.get("kwargs")
        record: dict[str, Any] = {"tool": name, "args": _shown(args), "kwargs": _shown(kwargs)}
        calls.append(record)
        start = time.perf_counter()
        if len(calls) > policy.max_tool_calls:
            reply = {"error": f"more than {policy.max_tool_calls} tool calls"}
        elif name not in tools.names or not isinstance(args, list) or not isinstance(kwargs, dict):
            reply = {"error": f"unknown tool {name!r}" if name not in tools.names else "malformed call"}
        else:
            try:
                reply = {"result": runtime.to_jsonable(tools.call(name, args, kwargs), keep_nonfinite=True)}
            except ValueError as exc:  # bad arguments: the message is for the program's author
                reply = {"error": str(exc)}
            except Exception as exc:  # a tool's failure is reported to the program, never raised here
                reply = {"error": f"{type(exc).__name__}: {exc}"}
                record["tool_failure"] = True  # the tool failed, not the program's call: an infrastructure failure
        record.update(reply)
        record["seconds"] = time.perf_counter() - start
        return reply

    def _ended_without_result(self, job: _Job, policy: SandboxPolicy) -> ExecutionResult:
        exit = job.exit
        if exit.get("lost"):
            return ExecutionResult("killed", detail="the sandbox process died")
        sig = exit.get("signal")
        if sig is not None:
            name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
            if sig == signal.SIGXCPU or (sig == signal.SIGKILL and exit.get("cpu", 0) >= policy.cpu_seconds):
                return ExecutionResult("timeout", detail=f"CPU limit of {policy.cpu_seconds} s reached")
            return ExecutionResult("killed", detail=f"killed by {name}")
        code = exit.get("code")
        if code == _CHILD_FAILURE:
            return ExecutionResult("killed", detail="the sandbox runtime failed in this process")
        return ExecutionResult("killed", detail=f"the process exited with code {code} before returning a result")
