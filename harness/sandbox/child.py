"""A program's process: locked down as soon as it is forked, then one job.

Runs inside the sandbox (standard library only). A :class:`ChildSetup` is built
once in the zygote from the layers it obtained: everything that can be
prepared ahead (the C functions and their arguments, the Landlock ruleset,
the seccomp program, warm code paths) is, and whatever a child would inherit anyway (no_new_privs, a
non-dumpable zygote, empty supplementary groups and inheritable capabilities,
an empty bounding set) is set on the zygote itself. Each child then makes only
the calls that must be its own, in order:

1. dies with the zygote; stdio on /dev/null; first in line for the out-of-memory killer;
2. its own mount namespace: every mount read-only, a private tmpfs workspace,
   a /proc showing only its own PID namespace (which the zygote entered it in);
3. its own uid (as root), or no capability left;
4. its Landlock domain; every descriptor but its channel closed; seccomp.

The zygote's probe runs the same steps tolerantly, noting each layer that fails.
"""

from __future__ import annotations

import marshal
import os
import select
import socket
import sys

from harness.sandbox import channel, lockdown, runtime

_MAX_FD = 1 << 20
_MOUNT_FLAGS = lockdown._MS_NOSUID | lockdown._MS_NODEV | lockdown._MS_NOEXEC


class ChildSetup:
    def __init__(self, kernel: lockdown.Kernel, layers: dict, config: dict) -> None:
        self.kernel, self.layers, self.config = kernel, layers, config
        self.inherited_bytes = lockdown.virtual_memory_bytes()
        self.devnull = os.open(os.devnull, os.O_RDWR)
        try:  # readable when the zygote has exited: how a child tells it missed its parent-death signal
            self.zygote_pidfd = os.pidfd_open(os.getpid())
        except (OSError, AttributeError):
            self.zygote_pidfd = -1
        self.seccomp = None
        self.ruleset = -1
        self.hard_limits = lockdown.hard_limits()

    def prepare(self, seccomp_program: bytes | None) -> None:
        """What every child will apply, computed once (after the probe settled the layers)."""
        layers, kernel = self.layers, self.kernel
        self.seccomp = kernel.prepare_seccomp(seccomp_program) if layers["seccomp"] and seccomp_program else None
        if layers["landlock_abi"] and layers["mount_namespace"]:
            # Every workspace is mounted at the same path, so one ruleset serves every child. Its
            # rule names the folder holding the mount point: Landlock ignores rules on a mount point.
            self.ruleset = kernel.landlock_ruleset(layers["landlock_abi"], self.config["readable"],
                                                   [self.config["workroot"], os.devnull])
        if layers["mount_namespace"]:  # every workspace has the same path
            os.environ["HOME"] = os.environ["TMPDIR"] = self.workdir(0)

    def workdir(self, slot: int) -> str:
        """A program's workspace: the mount point of its private tmpfs, else a folder of its own."""
        return os.path.join(self.config["workroot"], "work" if self.layers["mount_namespace"] else f"p{slot}")

    # ------------------------------------------------------------------ the steps

    def _detach(self) -> None:
        self.kernel.die_with_parent()
        if self.zygote_pidfd >= 0 and select.select([self.zygote_pidfd], [], [], 0)[0]:
            os._exit(0)  # the zygote died before the line above took effect
        for fd in (0, 1, 2):
            os.dup2(self.devnull, fd)
        try:  # the kernel's out-of-memory killer takes programs first
            fd = os.open("/proc/self/oom_score_adj", os.O_WRONLY)
            os.write(fd, b"1000")
            os.close(fd)
        except OSError:
            pass

    def _private_mounts(self, uid: int, workdir: str, failures: dict | None) -> None:
        kernel = self.kernel
        kernel.unshare(lockdown.CLONE_NEWNS)
        try:
            kernel.seal_mounts()
        except OSError as exc:  # before Linux 5.12: private, but not read-only
            if failures is None:
                raise
            failures["read-only-mounts"] = str(exc)
            kernel.mount("none", "/", None, lockdown._MS_PRIVATE | lockdown._MS_REC, None)
        owner = f",uid={uid},gid={uid}" if self.layers["own_uid"] else ""
        kernel.mount("tmpfs", workdir, "tmpfs", _MOUNT_FLAGS,
                     f"size={int(self.config['workspace_mb'])}m,nr_inodes={int(self.config['workspace_inodes'])},"
                     f"mode=0700{owner}")
        if self.layers["pid_namespace"]:
            try:  # a /proc of its own PID namespace: no other process is visible
                kernel.mount("proc", "/proc", "proc", _MOUNT_FLAGS, None)
            except OSError as exc:
                if failures is None:
                    raise
                failures["private-proc"] = str(exc)

    def _read_only_workspace(self, workdir: str) -> None:
        # Without a size-capped tmpfs of its own, a program gets a read-only workspace (not its
        # uid's, and Landlock grants no write), so it cannot fill the host's disk.
        os.makedirs(workdir, mode=0o755, exist_ok=True)
        os.environ["HOME"] = os.environ["TMPDIR"] = workdir

    def _landlock(self, workdir: str) -> None:
        kernel = self.kernel
        ruleset = self.ruleset if self.ruleset >= 0 else kernel.landlock_ruleset(
            self.layers["landlock_abi"], [*self.config["readable"], workdir], [os.devnull])
        kernel.landlock_restrict(ruleset)

    def lock_down(self, uid: int, workdir: str, keep_fd: int) -> None:
        """Every layer, in order; any failure raises (the spare then exits)."""
        layers, kernel = self.layers, self.kernel
        self._detach()
        if layers["mount_namespace"]:
            self._private_mounts(uid, workdir, None)
        else:
            self._read_only_workspace(workdir)
        if layers["own_uid"]:  # a uid change empties the permitted, effective and ambient sets
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
        else:
            kernel.clear_capabilities()
        os.chdir(workdir)
        if layers["landlock_abi"]:
            self._landlock(workdir)
        # Nothing of the zygote's stays open: only stdio (/dev/null) and the one descriptor kept.
        os.closerange(3, keep_fd)
        os.closerange(keep_fd + 1, _MAX_FD)
        if self.seccomp is not None:
            kernel.install_seccomp(self.seccomp)

    def probe(self, uid: int, workdir: str, keep_fd: int, seccomp_program: bytes | None,
              in_user_namespace: bool) -> dict[str, str]:
        """The same steps, each failure noted (by layer) and the next tried; then what they achieved."""
        layers, kernel = self.layers, self.kernel
        failures: dict[str, str] = {}

        def step(layer: str, action, *args) -> None:
            try:
                action(*args)
            except OSError as exc:
                failures[layer] = str(exc)

        self._detach()
        if layers["mount_namespace"]:
            step("mount-namespace", self._private_mounts, uid, workdir, failures)
        if not layers["mount_namespace"] or "mount-namespace" in failures:
            self._read_only_workspace(workdir)
        if layers["own_uid"]:
            step("own-uid", lambda: (os.setresgid(uid, uid, uid), os.setresuid(uid, uid, uid)))
        else:
            step("no-capabilities", kernel.clear_capabilities)
        os.chdir(workdir)
        failures.update(self._verify(uid, in_user_namespace))
        if layers["landlock_abi"]:
            step("landlock", self._landlock, workdir)
        os.closerange(3, keep_fd)
        os.closerange(keep_fd + 1, _MAX_FD)
        if seccomp_program is not None:
            step("seccomp", kernel.install_seccomp, kernel.prepare_seccomp(seccomp_program))
        return failures

    def _verify(self, uid: int, in_user_namespace: bool) -> dict[str, str]:
        """After the identity layers: no capability left, the right uid, the Python installation readable."""
        failures = {}
        try:
            with open("/proc/self/status") as f:
                status = dict(line.split(":", 1) for line in f.read().splitlines() if ":" in line)
        except OSError as exc:
            return {"no-capabilities": f"cannot read /proc/self/status: {exc}"}
        held = [k for k in ("CapInh", "CapPrm", "CapEff", "CapAmb") if int(status.get(k, "0").strip(), 16)]
        if held:
            failures["no-capabilities"] = f"capabilities still held: {', '.join(held)}"
        if not status.get("NoNewPrivs", "0").strip() == "1":
            failures["no-capabilities"] = "no_new_privs is not set"
        if self.layers["own_uid"] and os.getuid() != uid:
            failures["own-uid"] = f"still uid {os.getuid()}"
        if os.getuid() == 0 and not in_user_namespace:
            failures["own-uid"] = "programs would run as root"
        unreadable = [p for p in self.config["readable"] if not os.access(p, os.R_OK)]
        if unreadable:
            failures["readable"] = f"programs (uid {os.getuid()}) cannot read {', '.join(unreadable)}"
        return failures

    # ------------------------------------------------------------------ the job

    def serve_job(self, sock: socket.socket) -> None:
        job = channel.recv_trusted(sock)
        if job.get("op") != "job":
            return
        lockdown.apply_limits(job["limits"], self.inherited_bytes, self.hard_limits)
        call = runtime.tool_caller(lambda message: channel.send_message(sock, message),
                                   lambda: channel.recv_trusted(sock))
        sock.sendall(self._result(job, call))

    @staticmethod
    def _result(job: dict, call) -> bytes:
        """The result message of a job's program."""
        try:
            outcome = runtime.run_job(job, call)
            outcome["op"] = "result"
            data = channel.encode(outcome)
            channel.decode(data[channel.HEADER.size:])  # what the parent would refuse is an exception here
        except Exception as exc:  # e.g. a cycle, or an integer past the bounds
            data = channel.encode({"op": "result", "status": "exception",
                                   "detail": f"the program's answer cannot be recorded: {type(exc).__name__}: "
                                             f"{str(exc)[:500]}"})
        return data

    def warm_up(self, jobs: list[dict], rounds: int = 24) -> None:
        """Run the job path on the parent's warm-up jobs (trusted programs) in the zygote, with
        tool replies looped back, until Python's adaptive interpreter has specialised it and
        every lazily filled cache is full: each child then writes, and so copies, fewer pages."""
        reply = channel.encode_trusted({"result": 2.5})[channel.HEADER.size:]
        call = runtime.tool_caller(channel.encode, lambda: marshal.loads(reply))
        saved = sys.stdin, sys.stdout, sys.stderr
        try:
            for _ in range(rounds):
                for job in jobs:
                    self._result(marshal.loads(channel.encode_trusted(job)[channel.HEADER.size:]), call)
        finally:
            sys.stdin, sys.stdout, sys.stderr = saved
