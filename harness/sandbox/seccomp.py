"""The seccomp filter every program's process loads last: a classic BPF program assembled here.

Runs inside the sandbox (standard library only). Assembling the filter here
rather than with libseccomp means it exists wherever the kernel supports
seccomp filters (x86_64 and aarch64 tables below; other architectures use
libseccomp's names when ``pyseccomp`` is installed). It allows everything
except: the calls in ``DENIED`` (new processes and programs, sockets, reaching
other processes, namespaces and mounts, identity, kernel and host state,
memory that escapes the address-space limit or outlives the process), and
calls whose arguments reach another process: ``SELF_ONLY`` calls on any pid
but the caller's, ``setpriority``/``ioprio_set`` on others, ``fcntl`` setting
signal ownership (``F_SETOWN``, ``F_SETOWN_EX``, ``F_SETSIG``, ``O_ASYNC``),
and ioctls outside a short list of harmless ones.
"""

from __future__ import annotations

import errno
import os
import struct

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
