"""The parent's side of one zygote: its process, its control socket, the spares it hands over.

A :class:`ZygoteProcess` starts the zygote under its launcher, sends it the
sandbox modules and its config, and keeps a reader thread that files what the
zygote reports: ready spares (their channels arrive as file descriptors) and
exits. Every wait has a deadline; a zygote that dies or stops answering raises
:class:`ZygoteFailure`, and the executor replaces it. Killing a zygote's
process group ends every program it forked (their PID namespaces die with them,
and each program dies with its zygote).

SIGTERM (and SIGINT, where Python's default handler is installed) first kill
every live zygote, so in-flight programs end at once and each ``finally`` that
removes a temporary directory runs promptly.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import signal
import socket
import subprocess
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any

from harness.sandbox import channel
from harness.sandbox.isolation import SANDBOX_ENV, IsolationPlan, sandbox_sources, zygote_command
from harness.sandbox.zygote import remove_tree

log = logging.getLogger(__name__)

START_TIMEOUT = 60.0
CONTROL_TIMEOUT = 10.0


class ZygoteFailure(RuntimeError):
    """The zygote died, or stopped answering within its deadline."""


@dataclass
class Spare:
    slot: int
    channel: socket.socket


_LIVE: "weakref.WeakSet[ZygoteProcess]" = weakref.WeakSet()
_shutting_down = threading.Event()


def _kill_all() -> None:
    for zygote in list(_LIVE):
        zygote.kill()


def _on_termination(signum, frame) -> None:
    _shutting_down.set()
    _kill_all()
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(128 + signum)


def _install_termination_handlers() -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    for signum, default in ((signal.SIGTERM, signal.SIG_DFL), (signal.SIGINT, signal.default_int_handler)):
        if signal.getsignal(signum) is default:
            signal.signal(signum, _on_termination)


atexit.register(_kill_all)


class ZygoteProcess:
    def __init__(self, plan: IsolationPlan, config: dict[str, Any], workroot: str | None) -> None:
        self.plan, self.config, self.workroot = plan, config, workroot
        self.layers: dict[str, Any] = {}
        self.missing: dict[str, str] = {}
        self._process: subprocess.Popen | None = None
        self._control: socket.socket | None = None
        self._send_lock = threading.Lock()
        self._spares: queue.Queue = queue.Queue()
        self._exits: dict[int, dict] = {}
        self._changed = threading.Condition()
        self._dead: str | None = None
        self._last_heard = time.monotonic()
        self._last_error: str | None = None
        self._closed = False
        self._reader: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if _shutting_down.is_set():
            raise ZygoteFailure("the harness is shutting down")
        _install_termination_handlers()
        parent_end, zygote_end = socket.socketpair()
        self._control = parent_end  # closed by close(), whatever happens below
        try:
            command = zygote_command(self.plan, zygote_end.fileno(), int(self.config["workspace_mb"]) << 20)
            self._process = self._spawn(command, zygote_end.fileno())
        finally:
            zygote_end.close()
        _LIVE.add(self)
        boot = {"modules": list(sandbox_sources()), "config": self.config}
        parent_end.settimeout(START_TIMEOUT)
        try:
            channel.send_message(parent_end, boot)  # JSON: what the bootstrap reads
            ready = channel.recv_trusted(parent_end)
        except (EOFError, OSError, ValueError) as exc:
            self.kill()
            error = self._process.stderr.read().decode(errors="replace")[-3000:] if self._process.stderr else ""
            raise ZygoteFailure(f"the zygote failed to start ({exc}): {error.strip()}") from exc
        if ready.get("op") != "ready":
            self.kill()
            raise ZygoteFailure(f"the zygote sent {str(ready)[:200]} instead of ready")
        if ready.get("fatal"):
            self.kill()
            raise ZygoteFailure(f"a program's process cannot be locked down here: {ready['fatal']}")
        self.layers, self.missing = ready["layers"], ready["missing"]
        parent_end.settimeout(None)
        self._reader = threading.Thread(target=self._read_control, name="sandbox-control", daemon=True)
        self._reader.start()

    def _spawn(self, command: list[str], control_fd: int) -> subprocess.Popen:
        """Start the zygote from a thread that lives exactly as long as it does.

        bubblewrap's --die-with-parent (and the zygote's own parent-death signal)
        fire when the *thread* that started it exits, and ``run`` may be called
        from a short-lived worker thread; a dedicated thread waiting on the
        zygote keeps it alive.
        """
        spawned: queue.Queue = queue.Queue()

        def keeper() -> None:
            try:
                process = subprocess.Popen(
                    command, pass_fds=(control_fd,), env=dict(SANDBOX_ENV), cwd=self.workroot or "/",
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
            raise ZygoteFailure(f"the zygote could not be started: {result}") from result
        return result

    def _read_control(self) -> None:
        reason = "the zygote closed its control channel"
        try:
            while True:
                message, fds = channel.recv_with_fds(self._control)
                self._last_heard = time.monotonic()
                op = message.get("op")
                if op == "spare" and fds:
                    self._spares.put(Spare(int(message["slot"]), socket.socket(fileno=fds[0])))
                    fds = fds[1:]
                elif op == "exited":
                    with self._changed:
                        self._exits[int(message["slot"])] = message
                        self._changed.notify_all()
                elif op == "error" and message.get("detail") != self._last_error:
                    self._last_error = str(message.get("detail"))
                    log.warning("sandbox: %s", self._last_error)
                for fd in fds:
                    os.close(fd)
        except (EOFError, OSError, KeyError, TypeError, ValueError) as exc:
            if not isinstance(exc, EOFError):
                reason = f"the zygote's control channel failed: {exc}"
        if not self._closed:
            reason += self._last_words()
        self._mark_dead(reason)

    def _last_words(self) -> str:
        """What a zygote that died wrote to its stderr (its traceback), if it has ended."""
        process = self._process
        try:
            process.wait(timeout=2)
            text = process.stderr.read().decode(errors="replace").strip() if process.stderr else ""
        except (subprocess.TimeoutExpired, OSError, ValueError):
            return ""
        return f" (exit status {process.returncode}{': ' + text[-1500:] if text else ''})"

    def _mark_dead(self, reason: str) -> None:
        with self._changed:
            if self._dead is None:
                self._dead = reason
            self._changed.notify_all()
        self._spares.put(None)  # wakes a waiting take()

    @property
    def alive(self) -> bool:
        return self._dead is None and self._process is not None and self._process.poll() is None

    def _send(self, message: dict) -> None:
        try:
            with self._send_lock:  # also keeps close() from closing the socket mid-send
                if self._dead is not None:
                    raise ZygoteFailure(self._dead)
                channel.send_before(self._control, message, time.monotonic() + CONTROL_TIMEOUT)
        except OSError as exc:
            self._mark_dead(f"the zygote stopped reading its control channel ({exc})")
            raise ZygoteFailure(self._dead) from exc

    # ------------------------------------------------------------------ programs

    def take(self, timeout: float) -> Spare:
        """A locked-down process waiting for its job. Each finished program's process is
        replaced by a new spare; when none is ready, one more is asked for, so the number
        of spares grows to the number of programs run at once."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                spare = self._spares.get_nowait()
            except queue.Empty:
                self._send({"op": "spawn"})
                spare = self._wait_for_spare(time.monotonic(), deadline, timeout)
            if spare is None:
                self._spares.put(None)
                raise ZygoteFailure(self._dead or "the zygote died")
            with self._changed:
                died = self._exits.pop(spare.slot, None)
            if died is None:
                return spare
            spare.channel.close()  # it died while waiting (e.g. the out-of-memory killer): take another

    def _wait_for_spare(self, asked: float, deadline: float, timeout: float) -> Spare | None:
        """The next spare. A zygote asked for one that says nothing for CONTROL_TIMEOUT is stuck."""
        while True:
            try:
                return self._spares.get(timeout=min(0.25, max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                pass
            silent = time.monotonic() - max(asked, self._last_heard)
            if silent > CONTROL_TIMEOUT or time.monotonic() >= deadline:
                detail = f" (last error: {self._last_error})" if self._last_error else ""
                self._mark_dead(f"the zygote owes program processes and said nothing for {silent:.1f} s{detail}"
                                if silent > CONTROL_TIMEOUT else
                                f"no program process was ready within {timeout:g} s{detail}")
                raise ZygoteFailure(self._dead)

    def finish(self, slot: int, wait: bool, timeout: float = CONTROL_TIMEOUT) -> dict:
        """Kill a program's process (and all it started); with ``wait``, return how it ended."""
        try:
            self._send({"op": "done", "slot": slot, "report": wait})
        except ZygoteFailure:
            return {"lost": True}
        if not wait:
            return {}
        deadline = time.monotonic() + timeout
        with self._changed:
            while slot not in self._exits:
                remaining = deadline - time.monotonic()
                if self._dead is not None:
                    return {"lost": True}
                if remaining <= 0:
                    self._dead = f"the zygote did not report a killed process within {timeout:g} s"
                    self._changed.notify_all()
                    raise ZygoteFailure(self._dead)
                self._changed.wait(remaining)
            return self._exits.pop(slot)

    # ------------------------------------------------------------------ ending

    def kill(self) -> None:
        """End the zygote and every program process at once (safe from a signal handler).

        Under a launcher, the first process of the sandbox's PID namespace goes first: its
        death ends every process in the namespace, and the launcher, its parent, reaps it
        (killing the launcher first would leave it to the host's init to reap)."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        try:
            with open(f"/proc/{process.pid}/task/{process.pid}/children") as f:
                first = [int(pid) for pid in f.read().split()] if self.plan.launcher != "process" else []
        except (OSError, ValueError):
            first = []
        for pid in first:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._control is not None and self._dead is None:
            try:
                self._send({"op": "stop"})
            except ZygoteFailure:
                pass
        if self._process is not None:
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.kill()
                self._process.wait()
            if self._process.stderr:
                self._process.stderr.close()
        self._mark_dead("closed")
        if self._control is not None:
            # The reader may be inside a receive on this descriptor: wake it, and close only once
            # it is out (a descriptor closed under it could be reused by another socket meanwhile).
            try:
                self._control.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            if self._reader is not None:
                self._reader.join(CONTROL_TIMEOUT)
            if self._reader is None or not self._reader.is_alive():
                with self._send_lock:
                    self._control.close()
        while True:
            try:
                spare = self._spares.get_nowait()
            except queue.Empty:
                break
            if spare is not None:
                spare.channel.close()
        _LIVE.discard(self)
        if self.workroot is not None:
            remove_tree(self.workroot)
