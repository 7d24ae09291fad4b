"""The zygote: forks each program's process ahead of demand and locks it down before any job arrives.

Runs inside the sandbox (standard library only), started by the bootstrap in
``isolation.py`` with its control socket and a config. It imports numpy once,
builds the seccomp program and the Landlock ruleset once, probes which layers
this machine really gives (a probe process tries each and reports), then keeps
``spares`` processes forked and locked down. A spare:

1. closes every inherited descriptor but its channel, dies with the zygote;
2. enters its own PID namespace (it is PID 1 there: it can name no other
   process, and everything it starts dies with it) and its own mount
   namespace (every mount read-only, a private size-capped tmpfs as its
   workspace, a /proc showing only itself);
3. becomes its own unprivileged uid (as root) and drops every capability;
   no_new_privs; Landlock; seccomp;
4. waits for one job from the parent, lowers its resource limits, runs it,
   sends the result.

Control messages, parent to zygote: ``spawn`` (one more spare), ``done``
(kill a slot's process, report its exit or not, and make a successor),
``stop``. Zygote to parent: ``ready`` (layers obtained, layers
missing and why), ``spare`` (slot, with the channel's descriptor), ``exited``
(slot, exit code or signal, CPU seconds), ``error`` (a spare could not be made).
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

from harness.sandbox import channel, lockdown, runtime

_LOCKDOWN_FAILED, _RUNTIME_FAILED = 71, 70
_MAX_FD = 1 << 20


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
        self.kernel = lockdown.Kernel()
        self.pid = os.getpid()
        if config.get("parent_pid"):
            self.kernel.die_with_parent()
            if os.getppid() != config["parent_pid"]:
                sys.exit(0)
        for name in config.get("preload", ()):
            try:
                __import__(name)
            except ImportError:
                pass
        self.inherited_bytes = lockdown.virtual_memory_bytes()
        self.devnull = os.open(os.devnull, os.O_RDWR)
        self.last_cap = lockdown.last_capability()
        try:  # root here is the host's root unless a user namespace maps it
            with open("/proc/self/uid_map") as f:
                self.in_user_namespace = f.read().split() != ["0", "0", "4294967295"]
        except OSError:
            self.in_user_namespace = False
        try:
            self.self_pidfd = os.pidfd_open(self.pid)
        except (OSError, AttributeError):
            self.self_pidfd = -1
        wanted = config["layers"]
        self.layers = dict(wanted)
        self.missing: dict[str, str] = {}
        program = lockdown.seccomp_program() if wanted["seccomp"] else None
        self.seccomp = self.kernel.prepare_seccomp(program) if program else None
        if wanted["seccomp"] and self.seccomp is None:
            self._lose("seccomp", f"no system call table for {os.uname().machine} and pyseccomp is not installed")
        os.environ.clear()
        os.environ.update(config["env"])
        self.kernel.drop_bounding_set(self.last_cap)  # once, for every child (the zygote keeps its own sets)
        self.pidns_fd = os.open("/proc/self/ns/pid", os.O_RDONLY) if wanted["pid_namespace"] else -1
        self.ruleset = -1
        os.makedirs(os.path.join(config["workroot"], "work"), mode=0o711, exist_ok=True)
        if wanted["own_uid"]:
            try:
                self._traversable_view(list(config["readable"]) + [config["workroot"]])
            except OSError as exc:  # the probe then finds what programs cannot read
                self.missing["python-view"] = str(exc)
        if wanted["mount_namespace"]:  # every workspace has the same path
            os.environ["HOME"] = os.environ["TMPDIR"] = os.path.join(config["workroot"], "work")
        self.fatal: str | None = None
        self._probe()
        if self.layers["landlock_abi"] and self.layers["mount_namespace"]:
            # Every workspace is mounted at the same path, so one ruleset serves every program. Its
            # rule names the folder holding the mount point: Landlock ignores rules on a mount point.
            self.ruleset = self.kernel.landlock_ruleset(self.layers["landlock_abi"], config["readable"],
                                                        [config["workroot"], os.devnull])
        self.children: dict[int, tuple[int, int, str]] = {}  # pid -> (slot, uid index, workdir)
        self.slots: dict[int, int] = {}  # slot -> pid, until reaped
        self.silent: set[int] = set()  # slots whose exit the parent does not need to hear about
        self.free_uids: list[int] = []
        self.next_uid = 0
        self.next_slot = 0
        self.pending = int(config.get("spares", 2))
        self.spawn_error: str | None = None

    # ------------------------------------------------------------------ layers

    def _traversable_view(self, paths: list[str]) -> None:
        """Programs run under uids of their own, which must pass through the folders above
        the Python installation (a home folder is often closed to others). In the zygote's
        own mount namespace, each such folder is covered by a tmpfs that holds only the
        paths programs need, mounted back in place; the host sees no change."""
        blocked: dict[str, list[str]] = {}
        for path in paths:
            parts = path.rstrip("/").split("/")
            for depth in range(2, len(parts)):
                ancestor = "/".join(parts[:depth])
                if not os.stat(ancestor).st_mode & stat.S_IXOTH:
                    blocked.setdefault(ancestor, []).append(path)
                    break
        if not blocked:
            return
        kernel = self.kernel
        kernel.unshare(lockdown.CLONE_NEWNS)
        kernel.mount("none", "/", None, lockdown._MS_PRIVATE | lockdown._MS_REC, None)
        for top, inner in blocked.items():
            trees = [(path, kernel.open_tree(path)) for path in inner]
            kernel.mount("tmpfs", top, "tmpfs", lockdown._MS_NOSUID | lockdown._MS_NODEV, "mode=0755,size=1m")
            for path, tree in trees:
                if stat.S_ISDIR(os.fstat(tree).st_mode):
                    os.makedirs(path, mode=0o755, exist_ok=True)
                else:  # a file is mounted on a file
                    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
                    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))
                kernel.move_mount(tree, path)
                os.close(tree)

    def _lose(self, layer: str, why: str) -> None:
        self.missing[layer] = why
        if layer == "landlock":
            self.layers["landlock_abi"] = 0
        elif layer.replace("-", "_") in self.layers:
            self.layers[layer.replace("-", "_")] = False

    def _probe(self) -> None:
        """Fork one process that tries every wanted layer; keep those that worked."""
        read_end, write_end = os.pipe()
        pid = self._fork(probe=True)
        if pid == 0:
            os.close(read_end)
            report: dict = {}
            try:
                report = self._lock_down(self._uid(0), self._workdir(0), write_end, probe=True)
            except BaseException as exc:  # the probe must report, whatever happens
                report = {"fatal": f"{type(exc).__name__}: {exc}"}
            os.write(write_end, json.dumps(report).encode())
            os._exit(0)
        os.close(write_end)
        chunks = []
        while True:
            chunk = os.read(read_end, 65536)
            if not chunk:
                break
            chunks.append(chunk)
        os.close(read_end)
        os.waitpid(pid, 0)
        if not self.layers["mount_namespace"]:
            remove_tree(self._workdir(0))
        try:
            report = json.loads(b"".join(chunks) or b"{}")
        except ValueError:
            report = {}
        if not isinstance(report.get("failures"), dict):
            self.fatal = str(report.get("fatal") or "the probe process sent no report")
            return
        failures = report["failures"]
        if "readable" in failures:
            self.fatal = failures.pop("readable")
        for layer, why in failures.items():
            self._lose(layer, str(why))

    def _fork(self, probe: bool = False) -> int:
        if self.layers["pid_namespace"]:
            try:
                self.kernel.unshare(lockdown.CLONE_NEWPID)
            except OSError as exc:
                if not probe:
                    raise
                self._lose("pid-namespace", str(exc))
        try:
            pid = os.fork()
        finally:
            if self.layers["pid_namespace"] and os.getpid() == self.pid:
                self.kernel.setns(self.pidns_fd, lockdown.CLONE_NEWPID)
        if pid == 0:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        return pid

    def _uid(self, index: int) -> int:
        return int(self.config["uid_base"]) + index

    def _workdir(self, slot: int) -> str:
        """A program's workspace: the mount point of its private tmpfs, else a folder of its own."""
        return os.path.join(self.config["workroot"], "work" if self.layers["mount_namespace"] else f"p{slot}")

    def _lock_down(self, uid: int, workdir: str, keep_fd: int, probe: bool = False) -> dict:
        """Apply every layer to this (new) process, keeping open only stdio and ``keep_fd``.
        In the probe, a failing layer is noted and the next one tried; in a spare any
        failure ends the process."""
        kernel, layers = self.kernel, self.layers
        failures: dict[str, str] = {}

        def step(layer: str, action) -> None:
            try:
                action()
            except OSError as exc:
                if not probe:
                    raise
                failures[layer] = str(exc)

        kernel.die_with_parent()
        if self.self_pidfd >= 0 and select.select([self.self_pidfd], [], [], 0)[0]:
            os._exit(0)  # the zygote died before the line above took effect
        for fd in (0, 1, 2):
            os.dup2(self.devnull, fd)
        try:  # the kernel's out-of-memory killer takes programs first
            fd = os.open("/proc/self/oom_score_adj", os.O_WRONLY)
            os.write(fd, b"1000")
            os.close(fd)
        except OSError:
            pass
        if layers["mount_namespace"]:
            step("mount-namespace", lambda: self._private_mounts(uid, workdir, failures))
        private = layers["mount_namespace"] and "mount-namespace" not in failures
        if not private:
            # Without a size-capped tmpfs of its own, a program gets a read-only workspace (not its
            # owner's uid, and Landlock grants no write), so it cannot fill the host's disk.
            os.makedirs(workdir, mode=0o755, exist_ok=True)
        if workdir != os.environ.get("HOME"):
            os.environ["HOME"] = os.environ["TMPDIR"] = workdir
        if layers["own_uid"]:  # a uid change empties the permitted, effective and ambient sets
            step("own-uid", lambda: self._become(uid))
        else:
            kernel.not_dumpable()  # no process of the same uid may read this one's memory
        step("no-capabilities", kernel.clear_capabilities)  # and the inheritable set
        kernel.no_new_privs()
        os.chdir(workdir)
        if probe:
            failures.update(self._verify(uid))
        if layers["landlock_abi"]:
            step("landlock", lambda: kernel.landlock_restrict(
                self.ruleset if self.ruleset >= 0 else
                kernel.landlock_ruleset(layers["landlock_abi"], [*self.config["readable"], workdir], [os.devnull])))
        # Nothing of the zygote's stays open: only stdio (/dev/null) and the one descriptor kept.
        os.closerange(3, keep_fd)
        os.closerange(keep_fd + 1, _MAX_FD)
        if self.seccomp is not None:
            step("seccomp", lambda: kernel.install_seccomp(self.seccomp))
        return {"failures": failures}

    def _private_mounts(self, uid: int, workdir: str, failures: dict) -> None:
        kernel = self.kernel
        kernel.unshare(lockdown.CLONE_NEWNS)
        try:
            kernel.seal_mounts()
        except OSError as exc:  # before Linux 5.12: private, but not read-only
            failures["read-only-mounts"] = str(exc)
            kernel.mount("none", "/", None, lockdown._MS_PRIVATE | lockdown._MS_REC, None)
        owner = f",uid={uid},gid={uid}" if self.layers["own_uid"] else ""
        kernel.mount("tmpfs", workdir, "tmpfs", lockdown._MS_NOSUID | lockdown._MS_NODEV | lockdown._MS_NOEXEC,
                     f"size={int(self.config['workspace_mb'])}m,nr_inodes={int(self.config['workspace_inodes'])},"
                     f"mode=0700{owner}")
        if self.layers["pid_namespace"]:
            try:  # a /proc of its own PID namespace: no other process is visible
                kernel.mount("proc", "/proc", "proc", lockdown._MS_NOSUID | lockdown._MS_NODEV | lockdown._MS_NOEXEC,
                             None)
            except OSError as exc:
                failures["private-proc"] = str(exc)

    @staticmethod
    def _become(uid: int) -> None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)

    def _verify(self, uid: int) -> dict[str, str]:
        """What the probe checks after the identity layers: no capability left, the right uid."""
        failures = {}
        try:
            with open("/proc/self/status") as f:
                status = dict(line.split(":", 1) for line in f.read().splitlines() if ":" in line)
        except OSError as exc:
            return {"no-capabilities": f"cannot read /proc/self/status: {exc}"}
        held = [k for k in ("CapInh", "CapPrm", "CapEff", "CapAmb") if int(status.get(k, "0").strip(), 16)]
        if held:
            failures["no-capabilities"] = f"capabilities still held: {', '.join(held)}"
        if self.layers["own_uid"] and os.getuid() != uid:
            failures["own-uid"] = f"still uid {os.getuid()}"
        unreadable = [p for p in self.config["readable"] if not os.access(p, os.R_OK)]
        if unreadable:
            failures["readable"] = (f"programs (uid {os.getuid()}) cannot read {', '.join(unreadable)}"
                                    + (f" ({self.missing['python-view']})" if "python-view" in self.missing else ""))
        if os.getuid() == 0 and not self.in_user_namespace:
            failures["own-uid"] = "programs would run as root"
        return failures

    # ------------------------------------------------------------------ spares

    def spawn(self) -> None:
        slot = self.next_slot
        self.next_slot += 1
        index = self.free_uids.pop() if self.free_uids else self._new_uid_index()
        parent_end, child_end = socket.socketpair()
        try:
            pid = self._fork()
        except OSError:
            parent_end.close()
            child_end.close()
            self.free_uids.append(index)
            raise
        if pid == 0:
            code = _LOCKDOWN_FAILED
            try:
                fd = child_end.detach()
                parent_end.close()
                self._lock_down(self._uid(index), self._workdir(slot), fd)
                code = _RUNTIME_FAILED
                self._serve_job(socket.socket(fileno=fd))
                code = 0
            finally:
                os._exit(code)
        child_end.close()
        self.children[pid] = (slot, index, self._workdir(slot))
        self.slots[slot] = pid
        channel.send_message(self.control, {"op": "spare", "slot": slot}, [parent_end.fileno()])
        parent_end.close()

    def _new_uid_index(self) -> int:
        self.next_uid += 1
        return self.next_uid  # index 0 is the probe's

    def _serve_job(self, sock: socket.socket) -> None:
        job = channel.recv_trusted(sock)
        if job.get("op") != "job":
            return
        lockdown.apply_limits(job["limits"], self.inherited_bytes)
        call = runtime.tool_caller(lambda message: channel.send_message(sock, message),
                                   lambda: channel.recv_trusted(sock))
        outcome = runtime.run_job(job, call)
        outcome["op"] = "result"
        channel.send_message(sock, outcome)

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
            channel.send_message(self.control, exited)

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
                                            "missing": self.missing, "fatal": self.fatal})
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
                    except (EOFError, OSError, channel.ProtocolError):
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
                channel.send_message(self.control, {"op": "error", "detail": error})
            time.sleep(0.05)
            return
        self.pending -= 1
        self.spawn_error = None


def main(control: socket.socket, config: dict) -> None:
    Zygote(control, config).serve()
