"""Running untrusted programs: a warm zygote hands out locked-down processes, one per program.

The parent never executes program code. Each program gets its own socket to
the parent; its tool calls arrive there and are answered by a tool handler in
the parent (so one process holding the models can serve every program). The
parent treats everything a program sends as hostile: each message is bounded
in size and must arrive whole before the program's deadline, tool calls are
bounded in number, argument size and total tool time, what is recorded of them
and of the program's output is bounded in bytes, and every way a program can
end becomes a status: ok, no_answer, exception, tool_error, timeout, memory,
killed. When a program's sample ends, its process and everything it started
are killed.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from harness.sandbox import channel, runtime
from harness.sandbox.isolation import (
    IsolationError, IsolationPlan, SANDBOX_ENV, check_isolation, layer_names, plan_isolation, readable_paths,
)
from harness.sandbox.pool import Spare, ZygoteFailure, ZygoteProcess
from harness.sandbox.zygote import LOCKDOWN_FAILED, RUNTIME_FAILED

log = logging.getLogger(__name__)

_SPARE_TIMEOUT = 120.0  # a zygote that says nothing for pool.CONTROL_TIMEOUT fails sooner
_DETAIL_CHARS = 20000
_UID_BASE = 1_600_000_000  # programs' uids: far above any account's


class SandboxError(RuntimeError):
    """The sandbox itself cannot run (not a program's failure)."""


@dataclass(frozen=True)
class SandboxPolicy:
    """Limits for one program.

    ``wall_seconds`` is the program's own time (time in tools excluded);
    ``tool_seconds`` bounds the time its tool calls may take in total, so a
    program holds the parent for at most the sum of the two.
    """

    wall_seconds: float = 60.0
    tool_seconds: float = 300.0
    cpu_seconds: int = 30
    memory_mb: int = 2048
    file_mb: int = 16  # each file, and the whole workspace
    open_files: int = 64
    output_chars: int = 65536
    max_tool_calls: int = 1000
    max_message_bytes: int = 1 << 20
    max_argument_bytes: int = 16384  # one tool call as sent
    max_argument_chars: int = 2000  # each string in a tool call
    max_argument_items: int = 256  # each list or dict in a tool call
    max_recorded_bytes: int = 256 << 10  # tool calls kept in the record


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


def _shown(value: Any) -> Any:
    """Tool arguments as recorded: the image marker becomes "<image>"."""
    if isinstance(value, dict):
        return "<image>" if value.get("__image__") is True and len(value) == 1 else {k: _shown(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shown(v) for v in value]
    return value


def _argument_problem(value: Any, policy: SandboxPolicy) -> str | None:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str) and len(item) > policy.max_argument_chars:
            return f"a string of {len(item)} characters (the limit is {policy.max_argument_chars})"
        if isinstance(item, (list, dict)):
            if len(item) > policy.max_argument_items:
                return f"a {type(item).__name__} of {len(item)} items (the limit is {policy.max_argument_items})"
            stack.extend(item.values() if isinstance(item, dict) else item)
            if isinstance(item, dict):
                stack.extend(item.keys())
    return None


def job_message(code: str, tools: ToolHandler, image_size: tuple[int, int], policy: SandboxPolicy,
                dialect: str = "harness", files: dict[str, bytes] | None = None) -> dict:
    """What a program's process receives: the program, its tools and image, its limits; in the
    paper dialect, ``img_pth`` (the first of ``files``) and the files to place in its workspace."""
    return {"op": "job", "code": code, "tools": list(tools.names), "dialect": dialect,
            "image_path": next(iter(files), "") if files else "", "files": dict(files or {}),
            "image": {"width": image_size[0], "height": image_size[1]}, "output_chars": policy.output_chars,
            "limits": {"cpu_seconds": policy.cpu_seconds, "memory_mb": policy.memory_mb, "file_mb": policy.file_mb,
                       "open_files": policy.open_files}}


class _WarmUpTools:
    names = ["tool"]


# Programs the zygote runs on itself before forking, so each child finds the job path warm.
_WARM_UP = ("final_answer = 6 * 7",
            "total = 0.0\nfor i in range(3):\n    total += tool(image, [i, i + 1])\nfinal_answer = total",
            "import numpy as np\nfinal_answer = float(np.mean(np.array([1.0, 2.0])))")


def _broke(reason: Any) -> ExecutionResult:
    return ExecutionResult("killed", detail=f"the program broke the tool protocol: {str(reason)[:300]}")


def _truncated(text: str, limit: int, dropped: int = 0) -> str:
    dropped += max(0, len(text) - limit)
    return text[:limit] + (f"\n[... {dropped} more characters of output dropped]" if dropped else "")


class Conversation:
    """The parent's side of one program's channel, from its job to its result."""

    def __init__(self, sock: socket.socket, tools: ToolHandler, policy: SandboxPolicy) -> None:
        self.sock, self.tools, self.policy = sock, tools, policy
        self.reader = channel.MessageReader(sock, policy.max_message_bytes)
        self.calls: list[dict[str, Any]] = []
        self.tool_seconds = 0.0
        self.recorded = 0

    def _send(self, data: bytes, deadline: float) -> bool:
        """False when the program stopped reading until its deadline."""
        self.sock.settimeout(max(deadline - time.monotonic(), 0.001))
        try:
            self.sock.sendall(data)
        except socket.timeout:
            return False
        except OSError:
            pass  # it died; reading says how
        return True

    def run(self, job: dict) -> ExecutionResult | None:
        """The program's outcome, or None when it ended without a result (its exit tells why)."""
        policy = self.policy
        deadline = time.monotonic() + policy.wall_seconds
        timeout = ExecutionResult("timeout", detail=f"wall-clock limit of {policy.wall_seconds:g} s reached")
        if not self._send(channel.encode_trusted(job), deadline):
            return timeout
        while True:
            try:
                message, size = self.reader.read(deadline)
            except channel.DeadlineReached:
                return timeout
            except channel.ProtocolError as exc:
                return _broke(exc)
            except (EOFError, OSError):
                return None
            op = message.get("op")
            if op == "result":
                return self._result(message)
            if op != "call":
                return _broke(f"unexpected message {str(op)[:50]!r}")
            if len(self.calls) >= policy.max_tool_calls:
                return ExecutionResult("tool_error", detail=f"more than {policy.max_tool_calls} tool calls")
            if self.tool_seconds >= policy.tool_seconds:
                return ExecutionResult("timeout", detail=f"tool time limit of {policy.tool_seconds:g} s reached")
            started = time.monotonic()
            reply, record = self._answer(message, size)
            spent = time.monotonic() - started
            self.tool_seconds += spent
            deadline += spent  # time in tools is not the program's
            encoded = channel.encode_trusted(reply)
            self.recorded += size + len(encoded)
            if self.recorded > policy.max_recorded_bytes:
                record = {"tool": record["tool"], "truncated": f"arguments and result not recorded: this program's "
                                                                f"tool calls passed {policy.max_recorded_bytes} bytes"}
            record["seconds"] = spent
            self.calls.append(record)
            if not self._send(encoded, deadline):
                return timeout

    def _answer(self, message: dict, size: int) -> tuple[dict, dict]:
        name, args, kwargs = message.get("tool"), message.get("args"), message.get("kwargs")
        if not isinstance(name, str) or not isinstance(args, list) or not isinstance(kwargs, dict):
            reply = {"error": "malformed call"}
            return reply, {"tool": str(name)[:100], **reply}
        record: dict[str, Any] = {"tool": name[:100]}
        problem = None
        if name not in self.tools.names:
            problem = f"unknown tool {name[:100]!r}"
        elif size > self.policy.max_argument_bytes:
            problem = f"arguments of {size} bytes (the limit is {self.policy.max_argument_bytes})"
        else:
            problem = _argument_problem([args, kwargs], self.policy)
        if problem is not None:
            reply = {"error": problem}
        else:
            record.update(args=_shown(args), kwargs=_shown(kwargs))
            try:
                reply = {"result": runtime.to_jsonable(self.tools.call(name, args, kwargs), keep_nonfinite=True)}
            except ValueError as exc:  # bad arguments: the message is for the program's author
                reply = {"error": str(exc)}
            except Exception as exc:  # a tool's failure is reported to the program, never raised here
                reply = {"error": f"{type(exc).__name__}: {exc}"}
                record["tool_failure"] = True  # the tool failed, not the program's call: an infrastructure failure
        record.update(reply)
        return reply, record

    def _result(self, message: dict) -> ExecutionResult:
        status, answer = message.get("status"), message.get("answer")
        pytype, detail, typed = message.get("pytype"), message.get("detail"), message.get("typed")
        stdout, dropped = message.get("stdout", ""), message.get("stdout_dropped", 0)
        if status not in runtime.STATUSES:
            return _broke(f"unknown status {str(status)[:50]!r}")
        if status == "ok" and answer is None:
            return _broke("an ok result without an answer")
        if not (pytype is None or isinstance(pytype, str)) or not (detail is None or isinstance(detail, str)):
            return _broke("a result whose type or detail is not text")
        if not isinstance(stdout, str) or not isinstance(dropped, int) or isinstance(dropped, bool) or dropped < 0:
            return _broke("a result whose output is malformed")
        return ExecutionResult(status, answer=answer, answer_pytype=pytype[:200] if pytype else pytype,
                               answer_typed=typed, detail=_truncated(detail, _DETAIL_CHARS) if detail else detail,
                               stdout=_truncated(stdout, self.policy.output_chars, dropped))


def ended_without_result(exit: dict, policy: SandboxPolicy) -> ExecutionResult:
    if exit.get("lost"):
        return ExecutionResult("killed", detail="the sandbox process died")
    sig = exit.get("signal")
    if sig is not None:
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        # The zygote kills a process only after its program's sample ended (its exit status is then
        # already set), so a SIGKILL here is the kernel's: at the CPU limit (counted in ticks, which may
        # run ahead of the CPU time the exit reports) or out of memory.
        if sig == signal.SIGKILL and exit.get("cpu", 0) >= 0.5 * policy.cpu_seconds:
            return ExecutionResult("timeout", detail=f"CPU limit of {policy.cpu_seconds} s reached")
        return ExecutionResult("killed", detail=f"killed by {name}")
    code = exit.get("code")
    if code == LOCKDOWN_FAILED:
        return ExecutionResult("killed", detail="the sandbox could not lock this program's process down")
    if code == RUNTIME_FAILED:
        return ExecutionResult("killed", detail="the sandbox runtime failed in this process")
    return ExecutionResult("killed", detail=f"the process exited with code {code} before returning a result")


class Sandbox:
    """Sandboxed program executions behind one zygote process.

    Thread-safe: call :meth:`run` from as many threads as programs should run at
    once. The zygote starts on first use (or :meth:`start`), keeps ``spares``
    locked-down processes ready (``warm_up`` first runs a few programs through the
    job path, to make every later one cheaper), and is replaced if it dies or stops
    answering.
    ``allow_unsafe`` accepts isolation that would let programs read the user's
    files or keep root's privileges (see ``isolation.check_isolation``).
    """

    def __init__(self, policy: SandboxPolicy | None = None, isolation: str = "auto",
                 preload: tuple[str, ...] = ("numpy",), spares: int = 2, allow_unsafe: bool = False,
                 warm_up: bool = True) -> None:
        self.policy = policy or SandboxPolicy()
        self.plan: IsolationPlan = plan_isolation(isolation)
        self.preload, self.spares, self.allow_unsafe = preload, max(1, spares), allow_unsafe
        self.warm_up = warm_up  # worth its start-up time only for more than a few programs
        check_isolation(self.plan.launcher, self.plan.wanted(), {}, allow_unsafe)
        self._lock = threading.Lock()
        self._zygote: ZygoteProcess | None = None
        self._obtained: list[str] | None = None
        self._missing: dict[str, str] = {}

    # ------------------------------------------------------------------ zygote lifecycle

    @property
    def isolation(self) -> list[str]:
        """The layers every program runs under, as the zygote obtained them (starts it)."""
        if self._obtained is None:
            self.start()
        return list(self._obtained or [])

    @property
    def missing(self) -> dict[str, str]:
        """Layers this machine did not give, and why (starts the zygote)."""
        if self._obtained is None:
            self.start()
        return dict(self._missing)

    def _ensure(self) -> ZygoteProcess:
        with self._lock:
            if self._zygote is not None and self._zygote.alive:
                return self._zygote
            if self._zygote is not None:
                self._zygote.close()
                self._zygote = None
            if self.plan.launcher == "bwrap":
                workroot, host_dir = "/tmp/sandbox", None  # inside bubblewrap's own /tmp
            else:
                host_dir = workroot = tempfile.mkdtemp(prefix="harness-sandbox-")
                os.chmod(workroot, 0o711)  # programs' uids may pass through, not list it
            config = {"layers": self.plan.wanted(), "uid_base": _UID_BASE, "workroot": workroot,
                      "workspace_mb": self.policy.file_mb, "workspace_inodes": 1024, "readable": readable_paths(),
                      "env": SANDBOX_ENV, "preload": list(self.preload), "spares": self.spares,
                      "parent_pid": os.getpid() if self.plan.launcher == "process" else None,
                      "warm_up": [job_message(code, _WarmUpTools(), (64, 48), self.policy) for code in _WARM_UP]
                      if self.warm_up else []}
            zygote = ZygoteProcess(self.plan, config, host_dir)
            try:
                zygote.start()
                check_isolation(self.plan.launcher, zygote.layers, zygote.missing, self.allow_unsafe)
            except (ZygoteFailure, IsolationError) as exc:
                zygote.close()
                if isinstance(exc, IsolationError):
                    raise
                raise SandboxError(f"the sandbox ({', '.join(self.plan.layers)}) could not start: {exc}") from exc
            obtained = layer_names(self.plan.launcher, zygote.layers, zygote.missing)
            if self._obtained is None:
                log.info("sandbox ready (%s)", ", ".join(obtained))
            self._obtained, self._missing = obtained, dict(zygote.missing)
            self._zygote = zygote
            return zygote

    def _replace(self, zygote: ZygoteProcess, reason: Exception) -> None:
        with self._lock:
            if self._zygote is zygote:
                log.warning("sandbox: replacing the zygote: %s", reason)
                zygote.kill()
                zygote.close()
                self._zygote = None

    def start(self) -> None:
        """Start the zygote now (it also starts on first use); raises SandboxError or IsolationError."""
        self._ensure()

    def close(self) -> None:
        with self._lock:
            if self._zygote is not None:
                self._zygote.close()
                self._zygote = None

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ programs

    def _take(self) -> tuple[ZygoteProcess, Spare]:
        failure: Exception | None = None
        for _ in range(2):  # a zygote that fails is replaced once; a second failure is the sandbox's
            zygote = self._ensure()
            try:
                return zygote, zygote.take(_SPARE_TIMEOUT)
            except ZygoteFailure as exc:
                failure = exc
                self._replace(zygote, exc)
        raise SandboxError(f"the sandbox cannot provide processes for programs: {failure}")

    def run(self, code: str, tools: ToolHandler | None = None, image_size: tuple[int, int] = (0, 0),
            policy: SandboxPolicy | None = None, dialect: str = "harness",
            files: dict[str, bytes] | None = None) -> ExecutionResult:
        """Run one program to its end; never raises for anything the program does.

        ``dialect`` is how the program sees its tools (``runtime.DIALECTS``); in the
        ``paper`` dialect ``img_pth`` is the name of a file the program may open,
        the first of ``files`` (name -> bytes, written into its workspace where the
        workspace is its own to write).
        """
        if dialect not in runtime.DIALECTS:
            raise ValueError(f"unknown program dialect {dialect!r}; known: {', '.join(runtime.DIALECTS)}")
        tools = tools or _NoTools()
        policy = policy or self.policy
        start = time.perf_counter()
        for attempt in range(2):  # a process that could not lock itself down never ran the program: retry once
            zygote, spare = self._take()
            conversation = Conversation(spare.channel, tools, policy)
            result = None
            try:
                result = conversation.run(job_message(code, tools, image_size, policy, dialect, files))
            finally:
                spare.channel.close()
                try:
                    exit = zygote.finish(spare.slot, wait=result is None)
                except ZygoteFailure as exc:
                    self._replace(zygote, exc)
                    exit = {"lost": True}
            if result is not None or exit.get("code") != LOCKDOWN_FAILED:
                break
        if result is None:
            result = ended_without_result(exit, policy)
        result.tool_calls = conversation.calls
        result.seconds = time.perf_counter() - start
        result.isolation = list(self._obtained or [])
        return result
