"""The zygote: forks each program's process ahead of demand; the process locks itself down at once.

Runs inside the sandbox (standard library only), started by the bootstrap in
``isolation.py`` with its control socket and a config. Once, at start, it
imports numpy, settles on itself what children inherit (no_new_privs, not
dumpable, no supplementary groups, empty inheritable and bounding capability
sets), builds the seccomp program and the Landlock ruleset, and probes which
layers this machine really gives: a probe process tries each (``child.py``)
and reports. Then it keeps ``spares`` processes forked, each in a PID
namespace of its own, locked down and waiting for one job.

Control messages, parent to zygote: ``spawn`` (one more spare), ``done``
(kill a slot's process, report its exit or not, and make a successor),
``stop``. Zygote to parent: ``ready`` (layers obtained, layers missing and
why, or why nothing can run), ``spare`` (slot, with the channel's descriptor),
``exited`` (slot, exit code or signal, CPU seconds), ``error`` (a spare could
not be made).
"""

from __future__ import annotations

import gc
import json
import os
import select
import signal
import socket
import stat
import sys
import time

from harness.sandbox import channel, lockdown, seccomp
from harness.sandbox.child import ChildSetup

LOCKDOWN_FAILED, RUNTIME_FAILED = 71, 70  # exit codes of a process whose sandbox code (not the program) failed


def remove_tree(root: str, budget: int = 1_000_000) -> None:
    """Delete a directory tree a program left, whatever its depth (no recursion, one
    open descriptor at a time), never following links; gives up after ``budget`` steps."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    try:
        fd = os.open(root, flags)
    except OSError:
        return
    names: list[str] = []  # the path from root to fd
    try:
        while budget > 0:
            budget -= 1
            child = None
            try:
                with os.scandir(fd) as entries:
                    for entry in entries:
                        budget -= 1
                        if entry.is_dir(follow_symlinks=False):
                            child = entry.name
                            break
                        try:
                            os.unlink(entry.name, dir_fd=fd)
                        except OSError:
                            pass
            except OSError:
                pass
            if child is not None:
                try:
                    os.chmod(child, stat.S_IRWXU, dir_fd=fd, follow_symlinks=False)
                    deeper = os.open(child, flags, dir_fd=fd)
                except OSError:
                    try:
                        os.rmdir(child, dir_fd=fd)
                    except OSError:
                        return  # cannot enter or remove it: stop rather than loop
                    continue
                os.close(fd)
                fd = deeper
                names.append(child)
                continue
            if not names:
                break
            parent = os.open("..", flags, dir_fd=fd)
            os.close(fd)
            fd = parent
            try:
                os.rmdir(names.pop(), dir_fd=fd)
            except OSError:
                return
    finally:
        os.close(fd)
    try:
        os.rmdir(root)
    except OSError:
        pass


class Zygote:
    def __init__(self, control: socket.socket, config: dict) -> None:
        self.control, self.config = control, config
        self.kernel = kernel = lockdown.Kernel()
        self.pid = os.getpid()
        if config.get("parent_pid"):
            kernel.die_with_parent()
            if os.getppid() != config["parent_pid"]:
                sys.exit(0)
        for name in config.get("preload", ()):
            try:
                __import__(name)
            except ImportError:
                pass
        os.environ.clear()
        os.environ.update(config["env"])
        try:  # root here is the host's root unless a user namespace maps it
            with open("/proc/self/uid_map") as f:
                self.in_user_namespace = f.read().split() != ["0", "0", "4294967295"]
        except OSError:
            self.in_user_namespace = False
        self.layers = dict(config["layers"])
        self.missing: dict[str, str] = {}
        self.fatal: str | None = None
        self.pidns_fd = os.open("/proc/self/ns/pid", os.O_RDONLY) if self.layers["pid_namespace"] else -1
        os.makedirs(os.path.join(config["workroot"], "work"), mode=0o711, exist_ok=True)
        if self.layers["own_uid"]:
            try:
                lockdown.make_traversable(kernel, [*config["readable"], config["workroot"]])
            except OSError as exc:  # the probe then finds what programs cannot read
                self.missing["python-view"] = str(exc)
            os.setgroups([])
        # What every child inherits, set once here (the zygote keeps the capabilities it holds).
        kernel.drop_bounding_set(lockdown.last_capability())
        kernel.clear_inheritable()
        kernel.no_new_privs()
        kernel.not_dumpable()
        seccomp_program = seccomp.seccomp_program() if self.layers["seccomp"] else None
        if self.layers["seccomp"] and seccomp_program is None:
            self._lose("seccomp", f"no system call table for {os.uname().machine} and pyseccomp is not installed")
        self.setup = ChildSetup(kernel, self.layers, config)
        self._probe(seccomp_program)
        self.setup.prepare(seccomp_program)
        self.setup.warm_up(config.get("warm_up", []))
        # What a child inherits of address space; its program's memory budget comes on top.
        self.setup.inherited_bytes = lockdown.virtual_memory_bytes()
        self.children: dict[int, tuple[int, int, str]] = {}  # pid -> (slot, uid index, workdir)
        self.slots: dict[int, int] = {}  # slot -> pid, until reaped
        self.silent: set[int] = set()  # slots whose exit the parent does not need to hear about
        self.free_uids: list[int] = []
        self.next_uid = 0
        self.next_slot = 0
        self.pending = int(config.get("spares", 2))
        self.spawn_error: str | None = None

    # ------------------------------------------------------------------ layers

    def _lose(self, layer: str, why: str) -> None:
        self.missing[layer] = why
        if layer == "landlock":
            self.layers["landlock_abi"] = 0
        elif layer.replace("-", "_") in self.layers:
            self.layers[layer.replace("-", "_")] = False

    def _probe(self, seccomp_program: bytes | None) -> None:
        """Fork one process that tries every wanted layer; keep those that worked."""
        read_end, write_end = os.pipe()
        pid = self._fork(probe=True)
        if pid == 0:
            os.close(read_end)
            try:
                report = {"failures": self.setup.probe(self._uid(0), self.setup.workdir(0), write_end,
                                                       seccomp_program, self.in_user_namespace)}
            except BaseException as exc:  # the probe must report, whatever happens
                report = {"fatal": f"{type(exc).__name__}: {exc}"}
            os.write(write_end, json.dumps(report).encode())
            os._exit(0)
        os.close(write_end)
        chunks = []
        while chunk := os.read(read_end, 65536):
            chunks.append(chunk)
        os.close(read_end)
        _, status = os.waitpid(pid, 0)
        if not self.layers["mount_namespace"]:
            remove_tree(self.setup.workdir(0))
        try:
            report = json.loads(b"".join(chunks) or b"{}")
        except ValueError:
            report = {}
        if not isinstance(report.get("failures"), dict):
            ended = f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else f"code {os.WEXITSTATUS(status)}"
            self.fatal = str(report.get("fatal") or f"the probe process ended ({ended}) without a report")
            return
        failures = report["failures"]
        if "readable" in failures:
            view = f" ({self.missing['python-view']})" if "python-view" in self.missing else ""
            self.fatal = failures.pop("readable") + view
        for layer, why in failures.items():
            self._lose(layer, str(why))

    def _fork(self, probe: bool = False) -> int:
        """Fork a child, which is the first process of a new PID namespace when that layer is on."""
        if self.layers["pid_namespace"]:
            try:
                self.kernel.unshare(lockdown.CLONE_NEWPID)
            except OSError as exc:
                if not probe:
                    raise
                self._lose("pid-namespace", str(exc))
        pid = -1
        try:
            pid = os.fork()
        finally:
            if self.layers["pid_namespace"] and pid != 0:  # the zygote (the child has its own PID 1)
                self.kernel.setns(self.pidns_fd, lockdown.CLONE_NEWPID)
        if pid == 0:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        return pid

    def _uid(self, index: int) -> int:
        return int(self.config["uid_base"]) + index

    # ------------------------------------------------------------------ spares

    def spawn(self) -> None:
        slot = self.next_slot
        self.next_slot += 1
        index = self.free_uids.pop() if self.free_uids else self._new_uid_index()
        ours, theirs = (end.detach() for end in socket.socketpair())
        workdir = self.setup.workdir(slot)
        try:
            pid = self._fork()
        except OSError:
            os.close(ours)
            os.close(theirs)
            self.free_uids.append(index)
            raise
        if pid == 0:
            code = LOCKDOWN_FAILED
            try:
                self.setup.lock_down(self._uid(index), workdir, theirs)
                code = RUNTIME_FAILED
                self.setup.serve_job(socket.socket(fileno=theirs))
                code = 0
            finally:
                os._exit(code)
        os.close(theirs)
        self.children[pid] = (slot, index, workdir)
        self.slots[slot] = pid
        try:
            channel.send_message(self.control, {"op": "spare", "slot": slot}, [ours], trusted=True)
        finally:
            os.close(ours)

    def _new_uid_index(self) -> int:
        self.next_uid += 1
        return self.next_uid  # index 0 is the probe's

    def reap(self) -> None:
        while self.children:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            entry = self.children.pop(pid, None)
            if entry is None:
                continue
            slot, index, workdir = entry
            self.slots.pop(slot, None)
            if not self.layers["mount_namespace"]:
                remove_tree(workdir)
            self.free_uids.append(index)
            if slot in self.silent:
                self.silent.discard(slot)
                continue
            exited = {"op": "exited", "slot": slot, "cpu": usage.ru_utime + usage.ru_stime}
            if os.WIFSIGNALED(status):
                exited["signal"] = os.WTERMSIG(status)
            else:
                exited["code"] = os.WEXITSTATUS(status)
            channel.send_message(self.control, exited, trusted=True)

    def kill(self, slot, report: bool) -> None:
        pid = self.slots.get(slot)
        if pid is None:
            return
        if not report:
            self.silent.add(slot)
        os.kill(pid, signal.SIGKILL)  # not yet reaped: the pid is still this process's

    def serve(self) -> None:
        gc.collect()
        gc.freeze()  # the children never scan (and so never copy) what they inherit
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        channel.send_message(self.control, {"op": "ready", "pid": self.pid, "layers": self.layers,
                                            "missing": self.missing, "fatal": self.fatal}, trusted=True)
        if self.fatal:
            return
        try:
            while True:
                # Kills and exits first, then at most one new spare: a burst of forks never delays a kill.
                readable, _, _ = select.select([self.control, wake_r], [], [], 0 if self.pending else 1.0)
                if wake_r in readable:
                    os.read(wake_r, 4096)
                while self.control in readable:
                    try:
                        message, fds = channel.recv_with_fds(self.control)
                    except (EOFError, OSError, ValueError):
                        return
                    for fd in fds:
                        os.close(fd)
                    op = message.get("op")
                    if op == "spawn":
                        self.pending += 1
                    elif op == "done":  # a program's sample ended: kill its process, make its successor
                        self.kill(message.get("slot"), report=bool(message.get("report")))
                        self.pending += 1
                    elif op == "stop":
                        return
                    readable = select.select([self.control], [], [], 0)[0]
                self.reap()
                if self.pending:
                    self._spawn_one()
        except OSError:  # the parent is gone
            return
        finally:
            for pid in list(self.children):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def _spawn_one(self) -> None:
        try:
            self.spawn()
        except OSError as exc:  # no memory or processes for now: tell the parent, try again soon
            error = f"cannot fork a program's process: {exc}"
            if error != self.spawn_error:
                self.spawn_error = error
                channel.send_message(self.control, {"op": "error", "detail": error}, trusted=True)
            time.sleep(0.05)
            return
        self.pending -= 1
        self.spawn_error = None


def main(control: socket.socket, config: dict) -> None:
    Zygote(control, config).serve()
