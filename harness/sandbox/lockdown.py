"""Locking a process down: namespaces, uid and capabilities, Landlock, seccomp, resource limits.

Runs inside the sandbox (standard library only). The zygote prepares what can
be prepared once (the C functions, the Landlock ruleset, the seccomp program);
each program's process then applies it with a few system calls.

The seccomp program is assembled here rather than by libseccomp, so it exists
wherever the kernel supports seccomp filters (x86_64 and aarch64 tables below;
other architectures use libseccomp's names when ``pyseccomp`` is installed). It
allows everything except: the calls in ``DENIED`` (new processes and programs,
sockets, reaching other processes, namespaces and mounts, kernel and host
state, memory that outlives or escapes the process's limits), and the calls in
``SELF_ONLY``/``fcntl``/``ioctl`` with arguments that reach another process
(``prlimit64`` on another pid, ``F_SETOWN``/``F_SETSIG``/``O_ASYNC`` signal
ownership, ioctls outside a short list of harmless ones).
"""

from __future__ import annotations

import ctypes
import errno
import os
import resource
import struct

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
_CAPSET_NR = {"x86_64": 126, "aarch64": 91}
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


def last_capability() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 63


# ----------------------------------------------------------------------------- seccomp

DENIED = (
    # new processes, threads and programs (clone3 answers ENOSYS so libc falls back to the denied clone)
    "fork", "vfork", "clone", "execve", "execveat",
    # sockets: no network, no unix sockets to host services
    "socket", "socketpair", "connect", "bind", "listen", "accept", "accept4",
    # reaching other processes
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_open", "pidfd_getfd",
    "pidfd_send_signal", "process_madvise", "process_mrelease",
    "kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo", "setsid", "setpgid",
    # namespaces, mounts, identity
    "unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "mknod", "mknodat",
    "fsopen", "fsconfig", "fsmount", "fspick", "open_tree", "move_mount", "mount_setattr",
    "setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid", "setfsuid", "setfsgid", "setgroups",
    "capset", "personality", "open_by_handle_at", "name_to_handle_at",
    # kernel and host state
    "bpf", "perf_event_open", "userfaultfd", "keyctl", "add_key", "request_key",
    "io_uring_setup", "io_uring_enter", "io_uring_register", "reboot", "kexec_load", "kexec_file_load",
    "init_module", "finit_module", "delete_module", "swapon", "swapoff", "acct", "quotactl", "quotactl_fd",
    "syslog", "vhangup", "iopl", "ioperm", "lookup_dcookie", "nfsservctl", "uselib", "modify_ldt",
    "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "sethostname", "setdomainname",
    "fanotify_init", "fanotify_mark",
    # memory outside the address-space limit, and objects that outlive the process
    "memfd_create", "memfd_secret", "shmget", "shmat", "shmdt", "shmctl", "msgget", "msgsnd", "msgrcv", "msgctl",
    "semget", "semop", "semtimedop", "semctl", "mq_open", "mq_unlink", "mq_timedsend", "mq_timedreceive",
    "mq_notify", "mq_getsetattr",
)
# Allowed only on the calling process itself (first argument 0).
SELF_ONLY = ("prlimit64", "sched_setaffinity", "sched_setscheduler", "sched_setparam", "sched_setattr",
             "migrate_pages", "move_pages", "get_robust_list")
_F_SETFL, _F_SETOWN, _F_SETSIG, _F_SETOWN_EX, _O_ASYNC = 4, 8, 10, 15, 0o20000
# ioctls a program may make: terminal queries (isatty), non-blocking and close-on-exec flags, bytes readable.
ALLOWED_IOCTLS = (0x5401, 0x5413, 0x541B, 0x5421, 0x5450, 0x5451)

# System call numbers (facts of each kernel ABI; tests check them against libseccomp when it is installed).
SYSCALLS = {
    "x86_64": {
        "fork": 57, "vfork": 58, "clone": 56, "clone3": 435, "execve": 59, "execveat": 322, "socket": 41,
        "socketpair": 53, "connect": 42, "bind": 49, "listen": 50, "accept": 43, "accept4": 288, "ptrace": 101,
        "process_vm_readv": 310, "process_vm_writev": 311, "kcmp": 312, "pidfd_open": 434, "pidfd_getfd": 438,
        "pidfd_send_signal": 424, "process_madvise": 440, "process_mrelease": 448, "kill": 62, "tkill": 200,
        "tgkill": 234, "rt_sigqueueinfo": 129, "rt_tgsigqueueinfo": 297, "setsid": 112, "setpgid": 109,
        "unshare": 272, "setns": 308, "mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161, "mknod": 133,
        "mknodat": 259, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433, "open_tree": 428,
        "move_mount": 429, "mount_setattr": 442, "setuid": 105, "setgid": 106, "setreuid": 113, "setregid": 114,
        "setresuid": 117, "setresgid": 119, "setfsuid": 122, "setfsgid": 123, "setgroups": 116, "capset": 126,
        "personality": 135, "open_by_handle_at": 304, "name_to_handle_at": 303, "bpf": 321, "perf_event_open": 298,
        "userfaultfd": 323, "keyctl": 250, "add_key": 248, "request_key": 249, "io_uring_setup": 425,
        "io_uring_enter": 426, "io_uring_register": 427, "reboot": 169, "kexec_load": 246, "kexec_file_load": 320,
        "init_module": 175, "finit_module": 313, "delete_module": 176, "swapon": 167, "swapoff": 168, "acct": 163,
        "quotactl": 179, "quotactl_fd": 443, "syslog": 103, "vhangup": 153, "iopl": 172, "ioperm": 173,
        "lookup_dcookie": 212, "nfsservctl": 180, "uselib": 134, "modify_ldt": 154, "settimeofday": 164,
        "clock_settime": 227, "clock_adjtime": 305, "adjtimex": 159, "sethostname": 170, "setdomainname": 171,
        "fanotify_init": 300, "fanotify_mark": 301, "memfd_create": 319, "memfd_secret": 447, "shmget": 29,
        "shmat": 30, "shmdt": 67, "shmctl": 31, "msgget": 68, "msgsnd": 69, "msgrcv": 70, "msgctl": 71,
        "semget": 64, "semop": 65, "semtimedop": 220, "semctl": 66, "mq_open": 240, "mq_unlink": 241,
        "mq_timedsend": 242, "mq_timedreceive": 243, "mq_notify": 244, "mq_getsetattr": 245, "prlimit64": 302,
        "sched_setaffinity": 203, "sched_setscheduler": 144, "sched_setparam": 142, "sched_setattr": 314,
        "migrate_pages": 256, "move_pages": 279, "get_robust_list": 274, "setpriority": 141, "ioprio_set": 251,
        "fcntl": 72, "ioctl": 16,
    },
    "aarch64": {
        "clone": 220, "clone3": 435, "execve": 221, "execveat": 281, "socket": 198, "socketpair": 199,
        "connect": 203, "bind": 200, "listen": 201, "accept": 202, "accept4": 242, "ptrace": 117,
        "process_vm_readv": 270, "process_vm_writev": 271, "kcmp": 272, "pidfd_open": 434, "pidfd_getfd": 438,
        "pidfd_send_signal": 424, "process_madvise": 440, "process_mrelease": 448, "kill": 129, "tkill": 130,
        "tgkill": 131, "rt_sigqueueinfo": 138, "rt_tgsigqueueinfo": 240, "setsid": 157, "setpgid": 154,
        "unshare": 97, "setns": 268, "mount": 40, "umount2": 39, "pivot_root": 41, "chroot": 51, "mknodat": 33,
        "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433, "open_tree": 428, "move_mount": 429,
        "mount_setattr": 442, "setuid": 146, "setgid": 144, "setreuid": 145, "setregid": 143, "setresuid": 147,
        "setresgid": 149, "setfsuid": 151, "setfsgid": 152, "setgroups": 159, "capset": 91, "personality": 92,
        "open_by_handle_at": 265, "name_to_handle_at": 264, "bpf": 280, "perf_event_open": 241, "userfaultfd": 282,
        "keyctl": 219, "add_key": 217, "request_key": 218, "io_uring_setup": 425, "io_uring_enter": 426,
        "io_uring_register": 427, "reboot": 142, "kexec_load": 104, "kexec_file_load": 294, "init_module": 105,
        "finit_module": 273, "delete_module": 106, "swapon": 224, "swapoff": 225, "acct": 89, "quotactl": 60,
        "quotactl_fd": 443, "syslog": 116, "vhangup": 58, "lookup_dcookie": 18, "nfsservctl": 42,
        "settimeofday": 170, "clock_settime": 112, "clock_adjtime": 266, "adjtimex": 171, "sethostname": 161,
        "setdomainname": 162, "fanotify_init": 262, "fanotify_mark": 263, "memfd_create": 279, "memfd_secret": 447,
        "shmget": 194, "shmat": 196, "shmdt": 197, "shmctl": 195, "msgget": 186, "msgsnd": 189, "msgrcv": 188,
        "msgctl": 187, "semget": 190, "semop": 193, "semtimedop": 192, "semctl": 191, "mq_open": 180,
        "mq_unlink": 181, "mq_timedsend": 182, "mq_timedreceive": 183, "mq_notify": 184, "mq_getsetattr": 185,
        "prlimit64": 261, "sched_setaffinity": 122, "sched_setscheduler": 119, "sched_setparam": 118,
        "sched_setattr": 274, "migrate_pages": 238, "move_pages": 239, "get_robust_list": 100, "setpriority": 140,
        "ioprio_set": 30, "fcntl": 25, "ioctl": 29,
    },
}
AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
_AUDIT_ARCH_LE = 0x40000000
_X32_SYSCALL_BIT = 0x40000000

_LD_W_ABS, _JA, _JEQ_K, _JGT_K, _JGE_K, _JSET_K, _RET_K = 0x20, 0x05, 0x15, 0x25, 0x35, 0x45, 0x06
_RET_ALLOW, _RET_KILL_PROCESS = 0x7FFF0000, 0x80000000
_RET_EPERM, _RET_ENOSYS = 0x00050000 | errno.EPERM, 0x00050000 | errno.ENOSYS


def _native_table() -> tuple[int, dict[str, int]] | None:
    """The audit architecture and system call numbers of this machine, if known."""
    machine = os.uname().machine
    if machine in SYSCALLS:
        return AUDIT_ARCH[machine], SYSCALLS[machine]
    try:
        import pyseccomp
    except ImportError:
        return None
    arch = pyseccomp.system_arch()
    names = set(DENIED) | set(SELF_ONLY) | {"clone3", "setpriority", "ioprio_set", "fcntl", "ioctl"}
    table = {}
    for name in names:
        try:
            number = pyseccomp.resolve_syscall(arch, name)
        except Exception:  # a call this architecture does not have
            continue
        if number >= 0:
            table[name] = number
    return arch, table


def _block(steps: list[tuple]) -> list[tuple]:
    """Instructions deciding one system call from its arguments. Each step is
    ("load", argument) or (jump, constant, if_true, if_false) with targets
    "next", "allow" or "deny"; the block ends with the allow and deny returns."""
    allow_at, deny_at, out = len(steps), len(steps) + 1, []
    for i, step in enumerate(steps):
        if step[0] == "load":
            out.append((_LD_W_ABS, 0, 0, step[1]))
            continue
        code, constant, yes, no = step
        offset = {"next": 0, "allow": allow_at - i - 1, "deny": deny_at - i - 1}
        out.append((code, offset[yes], offset[no], constant))
    return out + [(_RET_K, 0, 0, _RET_ALLOW), (_RET_K, 0, 0, _RET_EPERM)]


def seccomp_program() -> bytes | None:
    """The compiled filter for this machine (sock_filter array), or None where it cannot be built."""
    native = _native_table()
    if native is None:
        return None
    arch, table = native
    low_half = 0 if arch & _AUDIT_ARCH_LE else 4  # where the low 32 bits of a 64-bit argument are

    def argument(index: int) -> int:
        return 16 + 8 * index + low_half

    code: list[tuple] = [(_LD_W_ABS, 0, 0, 4), (_JEQ_K, 1, 0, arch), (_RET_K, 0, 0, _RET_KILL_PROCESS),
                         (_LD_W_ABS, 0, 0, 0)]
    if arch == AUDIT_ARCH["x86_64"]:  # x32 system calls reach the same kernel code under other numbers
        code += [(_JGE_K, 0, 1, _X32_SYSCALL_BIT), (_RET_K, 0, 0, _RET_EPERM)]
    # Denied numbers as runs of consecutive numbers, each jumping to one shared return: a shorter
    # program is faster to load into each program's process.
    runs: list[list[int]] = []
    for number in sorted({table[name] for name in DENIED if name in table}):
        if runs and number == runs[-1][1] + 1:
            runs[-1][1] = number
        else:
            runs.append([number, number])
    chain: list[tuple] = []
    for first, last in runs:
        if first == last:
            chain.append((_JEQ_K, "deny", 0, first))
        else:
            chain += [(_JGE_K, 0, 1, first), (_JGT_K, 0, "deny", last)]
    deny_at = len(chain) + 1  # past the chain's last instruction and the jump over the return
    code += [(op, deny_at - i - 1 if jt == "deny" else jt, deny_at - i - 1 if jf == "deny" else jf, k)
             for i, (op, jt, jf, k) in enumerate(chain)]
    code += [(_JA, 0, 0, 1), (_RET_K, 0, 0, _RET_EPERM)]  # the chain falls through past the return
    if "clone3" in table:
        code += [(_JEQ_K, 0, 1, table["clone3"]), (_RET_K, 0, 0, _RET_ENOSYS)]
    blocks = {name: _block([("load", argument(0)), (_JEQ_K, 0, "allow", "deny")]) for name in SELF_ONLY}
    # setpriority(PRIO_PROCESS, 0, ...) and ioprio_set(IOPRIO_WHO_PROCESS, 0, ...) only.
    blocks["setpriority"] = _block([("load", argument(0)), (_JEQ_K, 0, "next", "deny"),
                                    ("load", argument(1)), (_JEQ_K, 0, "allow", "deny")])
    blocks["ioprio_set"] = _block([("load", argument(0)), (_JEQ_K, 1, "next", "deny"),
                                   ("load", argument(1)), (_JEQ_K, 0, "allow", "deny")])
    blocks["fcntl"] = _block([("load", argument(1)), (_JEQ_K, _F_SETOWN, "deny", "next"),
                              (_JEQ_K, _F_SETSIG, "deny", "next"), (_JEQ_K, _F_SETOWN_EX, "deny", "next"),
                              (_JEQ_K, _F_SETFL, "next", "allow"), ("load", argument(2)),
                              (_JSET_K, _O_ASYNC, "deny", "allow")])
    *others, last = ALLOWED_IOCTLS
    blocks["ioctl"] = _block([("load", argument(1))] + [(_JEQ_K, c, "allow", "next") for c in others]
                             + [(_JEQ_K, last, "allow", "deny")])
    for name, block in blocks.items():
        if name in table:
            code += [(_JEQ_K, 0, len(block), table[name])] + block
    code.append((_RET_K, 0, 0, _RET_ALLOW))
    return b"".join(struct.pack("=HBBI", op, jt, jf, k) for op, jt, jf, k in code)


# ----------------------------------------------------------------------------- resource limits

def _set_limit(kind: int, value: int) -> None:
    _, hard = resource.getrlimit(kind)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(kind, (value, value if hard == resource.RLIM_INFINITY else hard))


def virtual_memory_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def apply_limits(limits: dict, inherited_bytes: int) -> None:
    """A program's resource limits (lowering only: the process has no privilege to raise them)."""
    cpu = int(limits["cpu_seconds"])
    # Soft = hard: the kernel sends SIGKILL at the limit (a PID namespace's first process ignores SIGXCPU).
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
    # The address space is inherited from the zygote; the budget comes on top.
    _set_limit(resource.RLIMIT_AS, inherited_bytes + int(limits["memory_mb"]) * (1 << 20))
    _set_limit(resource.RLIMIT_FSIZE, int(limits["file_mb"]) * (1 << 20))
    _set_limit(resource.RLIMIT_NOFILE, int(limits["open_files"]))
    for kind in (resource.RLIMIT_NPROC, resource.RLIMIT_CORE, resource.RLIMIT_MSGQUEUE, resource.RLIMIT_RTPRIO):
        _set_limit(kind, 0)
