"""Locking a process down: namespaces and mounts, uid and capabilities, Landlock, resource limits.

Runs inside the sandbox (standard library only). The zygote prepares what can
be prepared once (the C functions and their arguments, the Landlock ruleset);
each program's process then applies it with a few system calls. The seccomp
filter is assembled in ``seccomp.py``.
"""

from __future__ import annotations

import ctypes
import errno
import os
import resource
import stat

# ----------------------------------------------------------------------------- the C side

_PR_SET_PDEATHSIG, _PR_SET_DUMPABLE, _PR_CAPBSET_DROP = 1, 4, 24
_PR_SET_SECCOMP, _PR_SET_NO_NEW_PRIVS = 22, 38
_SECCOMP_MODE_FILTER = 2
CLONE_NEWNS, CLONE_NEWPID = 0x00020000, 0x20000000
_MS_NOSUID, _MS_NODEV, _MS_NOEXEC, _MS_PRIVATE = 2, 4, 8, 1 << 18
_MOUNT_ATTR_RDONLY, _MOUNT_ATTR_NOSUID, _MOUNT_ATTR_NODEV = 1, 2, 4
_AT_FDCWD, _AT_RECURSIVE = -100, 0x8000
# The same numbers on every architecture (added in Linux 5.2 and 5.12).
_SYS_OPEN_TREE, _SYS_MOVE_MOUNT, _SYS_MOUNT_SETATTR = 428, 429, 442
_OPEN_TREE_CLONE, _MOVE_MOUNT_F_EMPTY_PATH, _MS_REC = 1, 4, 0x4000
_SYS_LANDLOCK = (444, 445, 446)  # create_ruleset, add_rule, restrict_self (same everywhere)
_CAPGET_NR, _CAPSET_NR = {"x86_64": 125, "aarch64": 90}, {"x86_64": 126, "aarch64": 91}
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("fs", ctypes.c_uint64), ("net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


class Kernel:
    """The system calls the lock-down needs, bound once (ctypes lookups are slow)."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.syscall, self.prctl, self.unshare_call = libc.syscall, libc.prctl, libc.unshare
        self.setns_call, self.mount_call = libc.setns, libc.mount
        self.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
        self.mount_call.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                                    ctypes.c_char_p]
        self.machine = os.uname().machine
        # Arguments built once: each program's process only passes them to the kernel.
        self._seal = _MountAttr(_MOUNT_ATTR_RDONLY | _MOUNT_ATTR_NOSUID | _MOUNT_ATTR_NODEV, 0, _MS_PRIVATE, 0)
        self._cap_header, self._cap_data = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0), (_CapData * 2)()

    @staticmethod
    def check(result: int, what: str) -> int:
        if result < 0:
            code = ctypes.get_errno()
            raise OSError(code, f"{what}: {os.strerror(code)}")
        return result

    def set_prctl(self, option: int, value: int, what: str) -> None:
        self.check(self.prctl(option, value, 0, 0, 0), what)

    def unshare(self, flags: int) -> None:
        self.check(self.unshare_call(flags), "unshare")

    def setns(self, fd: int, flags: int) -> None:
        self.check(self.setns_call(fd, flags), "setns")

    def mount(self, source: str, target: str, fstype: str | None, flags: int, data: str | None) -> None:
        self.check(self.mount_call(source.encode(), target.encode(), fstype.encode() if fstype else None, flags,
                                   data.encode() if data else None), f"mount {fstype or source} on {target}")

    def seal_mounts(self) -> None:
        """Every mount of this (new, private) mount namespace read-only, nosuid, nodev, in one call."""
        self.check(self.syscall(ctypes.c_long(_SYS_MOUNT_SETATTR), ctypes.c_int(_AT_FDCWD), ctypes.c_char_p(b"/"),
                                ctypes.c_uint(_AT_RECURSIVE), ctypes.byref(self._seal),
                                ctypes.c_size_t(ctypes.sizeof(self._seal))), "mount_setattr")

    def drop_bounding_set(self, last_cap: int) -> None:
        """No capability can ever be gained again by this process's children (their own sets are
        emptied by a uid change or :meth:`clear_capabilities`)."""
        for cap in range(last_cap + 1):
            if self.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and ctypes.get_errno() != errno.EINVAL:
                return  # without CAP_SETPCAP the bounding set stays as it is

    def clear_inheritable(self) -> None:
        """Empty this process's inheritable (and so ambient) set, keeping what it holds."""
        get_number, set_number = _CAPGET_NR.get(self.machine), _CAPSET_NR.get(self.machine)
        if get_number is None or set_number is None:
            return
        header, data = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0), (_CapData * 2)()
        self.check(self.syscall(ctypes.c_long(get_number), ctypes.byref(header), ctypes.byref(data)), "capget")
        for half in data:
            half.inheritable = 0
        self.check(self.syscall(ctypes.c_long(set_number), ctypes.byref(header), ctypes.byref(data)), "capset")

    def clear_capabilities(self) -> None:
        """Empty the effective, permitted and inheritable sets (the ambient set follows)."""
        number = _CAPSET_NR.get(self.machine)
        if number is None:
            raise OSError(errno.ENOSYS, f"capset: no system call number for {self.machine}")
        self.check(self.syscall(ctypes.c_long(number), ctypes.byref(self._cap_header), ctypes.byref(self._cap_data)),
                   "capset")

    def no_new_privs(self) -> None:
        self.set_prctl(_PR_SET_NO_NEW_PRIVS, 1, "prctl(NO_NEW_PRIVS)")

    def die_with_parent(self) -> None:
        self.set_prctl(_PR_SET_PDEATHSIG, 9, "prctl(PDEATHSIG)")

    def not_dumpable(self) -> None:
        self.set_prctl(_PR_SET_DUMPABLE, 0, "prctl(DUMPABLE)")

    def open_tree(self, path: str) -> int:
        """A detached copy of the mounts at ``path`` (a file descriptor), to attach elsewhere."""
        return self.check(self.syscall(ctypes.c_long(_SYS_OPEN_TREE), ctypes.c_int(_AT_FDCWD),
                                       ctypes.c_char_p(path.encode()),
                                       ctypes.c_uint(_OPEN_TREE_CLONE | _AT_RECURSIVE | os.O_CLOEXEC)),
                          f"open_tree {path}")

    def move_mount(self, tree: int, target: str) -> None:
        self.check(self.syscall(ctypes.c_long(_SYS_MOVE_MOUNT), ctypes.c_int(tree), ctypes.c_char_p(b""),
                                ctypes.c_int(_AT_FDCWD), ctypes.c_char_p(target.encode()),
                                ctypes.c_uint(_MOVE_MOUNT_F_EMPTY_PATH)), f"move_mount {target}")

    @staticmethod
    def prepare_seccomp(program: bytes) -> _SockFprog:
        return _SockFprog(len(program) // 8, program)

    def install_seccomp(self, prepared: _SockFprog) -> None:
        self.check(self.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.addressof(prepared), 0, 0),
                   "prctl(SECCOMP)")

    # ------------------------------------------------------------------------- Landlock

    def landlock_abi(self) -> int:
        try:
            return max(0, self.syscall(ctypes.c_long(_SYS_LANDLOCK[0]), None, ctypes.c_size_t(0), ctypes.c_uint32(1)))
        except OSError:
            return 0

    def landlock_ruleset(self, abi: int, readable: list[str], writable: list[str]) -> int:
        """A ruleset (file descriptor): reads only beneath ``readable``, writes only beneath ``writable``,
        no TCP (ABI 4+), no signals or abstract sockets out of the domain (ABI 6+)."""
        fs_all = _FS_ALL_BY_ABI.get(abi, _FS_ALL_BY_ABI[max(_FS_ALL_BY_ABI)])
        attr = _RulesetAttr(fs_all, _NET_ALL if abi >= 4 else 0, _SCOPE_ALL if abi >= 6 else 0)
        size = 24 if abi >= 6 else (16 if abi >= 4 else 8)
        ruleset = self.check(self.syscall(ctypes.c_long(_SYS_LANDLOCK[0]), ctypes.byref(attr), ctypes.c_size_t(size),
                                          ctypes.c_uint32(0)), "landlock_create_ruleset")
        try:
            for path, rights in [(p, _FS_READ) for p in readable] + [(p, fs_all) for p in writable]:
                try:
                    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
                except OSError:
                    continue
                try:
                    # Directory-only rights cannot be granted on a file.
                    allowed = rights if os.path.isdir(path) else rights & _FS_FILE_RIGHTS
                    rule = _PathBeneath(allowed & fs_all, fd)
                    self.check(self.syscall(ctypes.c_long(_SYS_LANDLOCK[1]), ctypes.c_int(ruleset), ctypes.c_int(1),
                                            ctypes.byref(rule), ctypes.c_uint32(0)), f"landlock_add_rule {path}")
                finally:
                    os.close(fd)
        except BaseException:
            os.close(ruleset)
            raise
        return ruleset

    def landlock_restrict(self, ruleset: int) -> None:
        self.check(self.syscall(ctypes.c_long(_SYS_LANDLOCK[2]), ctypes.c_int(ruleset), ctypes.c_uint32(0)),
                   "landlock_restrict_self")


# Landlock filesystem rights by ABI version (bits), and network and scope rights.
_FS_READ = (1 << 0) | (1 << 2) | (1 << 3)  # execute, read file, read dir
_FS_ALL_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 4: (1 << 15) - 1, 5: (1 << 16) - 1}
_FS_FILE_RIGHTS = (1 << 0) | (1 << 1) | (1 << 2) | (1 << 14) | (1 << 15)  # execute, write, read, truncate, ioctl
_NET_ALL = (1 << 0) | (1 << 1)  # bind and connect TCP
_SCOPE_ALL = (1 << 0) | (1 << 1)  # abstract unix sockets, signals


def make_traversable(kernel: Kernel, paths: list[str]) -> None:
    """Let every uid pass through the folders above ``paths`` (a home folder is often closed to
    others), in this process's own mount namespace: each closed folder is covered by a tmpfs that
    holds only those paths, mounted back in place. The host sees no change."""
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
    kernel.unshare(CLONE_NEWNS)
    kernel.mount("none", "/", None, _MS_PRIVATE | _MS_REC, None)
    for top, inner in blocked.items():
        trees = [(path, kernel.open_tree(path)) for path in inner]
        kernel.mount("tmpfs", top, "tmpfs", _MS_NOSUID | _MS_NODEV, "mode=0755,size=1m")
        for path, tree in trees:
            if stat.S_ISDIR(os.fstat(tree).st_mode):
                os.makedirs(path, mode=0o755, exist_ok=True)
            else:  # a file is mounted on a file
                os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
                os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))
            kernel.move_mount(tree, path)
            os.close(tree)


def last_capability() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 63


# ----------------------------------------------------------------------------- resource limits

_LIMITED = (resource.RLIMIT_CPU, resource.RLIMIT_AS, resource.RLIMIT_FSIZE, resource.RLIMIT_NOFILE,
            resource.RLIMIT_NPROC, resource.RLIMIT_CORE, resource.RLIMIT_MSGQUEUE, resource.RLIMIT_RTPRIO)


def hard_limits() -> dict[int, int]:
    """The zygote's hard limits, which bound every child's (read once)."""
    return {kind: resource.getrlimit(kind)[1] for kind in _LIMITED}


def virtual_memory_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def apply_limits(limits: dict, inherited_bytes: int, hard: dict[int, int]) -> None:
    """A program's resource limits (soft = hard; lowering only: the process cannot raise them).
    At the CPU limit the kernel sends SIGKILL (a PID namespace's first process ignores SIGXCPU)."""
    wanted = {resource.RLIMIT_CPU: int(limits["cpu_seconds"]),
              # The address space is inherited from the zygote; the budget comes on top.
              resource.RLIMIT_AS: inherited_bytes + int(limits["memory_mb"]) * (1 << 20),
              resource.RLIMIT_FSIZE: int(limits["file_mb"]) * (1 << 20),
              resource.RLIMIT_NOFILE: int(limits["open_files"]),
              resource.RLIMIT_NPROC: 0, resource.RLIMIT_CORE: 0, resource.RLIMIT_MSGQUEUE: 0, resource.RLIMIT_RTPRIO: 0}
    for kind, value in wanted.items():
        if hard[kind] != resource.RLIM_INFINITY:
            value = min(value, hard[kind])
        resource.setrlimit(kind, (value, value))
