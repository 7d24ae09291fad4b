"""Everything that runs inside the sandbox: the zygote and the program runner.

This module must stay self-contained (standard library only; programs may
import numpy): its source text is handed to the isolated interpreter, which
sees neither the repository nor the installed harness. The parent imports the
same module for the message framing, so both sides share one protocol.

Protocol: every message is a 4-byte big-endian length and a UTF-8 JSON object.
- parent -> zygote (control socket): ``run`` (with the program's channel as an
  SCM_RIGHTS file descriptor), ``kill``, ``stop``;
- zygote -> parent: ``ready``, ``started`` (pid), ``exited`` (wait status, CPU time);
- program <-> parent (its own channel): ``call`` / reply, then one ``result``.
"""

from __future__ import annotations

import ast
import base64
import builtins
import ctypes
import gc
import io
import json
import math
import os
import resource
import select
import shutil
import signal
import socket
import struct
import sys
import traceback

HEADER = struct.Struct("!I")
MAX_MESSAGE = 8 << 20
STATUSES = ("ok", "no_answer", "exception", "tool_error", "memory")
PROGRAM_FILE = "<program>"


class ProtocolError(RuntimeError):
    """A peer sent something that is not a well-formed message."""


class ToolError(Exception):
    """Raised inside a program when a tool call fails; programs may catch it."""


# ----------------------------------------------------------------------------- values and framing

MAX_VALUE_DEPTH = 48  # deeper values are cut, never a RecursionError on either side
MAX_VALUE_ITEMS = 20000  # elements encoded per value; the rest are cut with a note
MAX_TEXT = 1 << 16  # characters kept of a string inside a value


class _Budget:
    def __init__(self) -> None:
        self.items = MAX_VALUE_ITEMS


def _safe_str(value) -> str:
    try:
        text = str(value)
    except BaseException:  # str() of a program's object may raise anything, even digit-limit ValueErrors
        try:
            text = object.__repr__(value)
        except BaseException:
            text = "<unprintable>"
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + f"...[{len(text) - MAX_TEXT} more characters]"


def _plain_int(value: int):
    """An int as JSON can carry it: too many digits for str() (or for a reader) becomes a string."""
    if -(1 << 63) <= value < (1 << 63):
        return value
    return f"<int of {value.bit_length()} bits>" if value.bit_length() > 4000 else str(value)


def to_jsonable(value, keep_nonfinite: bool = False, _depth: int = 0, _budget: _Budget | None = None):
    """JSON-safe form of a value a program may produce (numpy scalars and arrays,
    tuples, sets). Non-finite floats become strings for strict JSON files, or
    stay floats on the channel, whose JSON both ends read with Python. Values
    too deep or too large are cut (never an error): this is for display and
    strict scoring; :func:`encode_value` keeps the types."""
    budget = _budget or _Budget()
    budget.items -= 1
    if value is None or isinstance(value, (bool, str)):
        return value if not isinstance(value, str) or len(value) <= MAX_TEXT else _safe_str(value)
    if isinstance(value, int):
        return _plain_int(int(value))
    if isinstance(value, float):
        return value if keep_nonfinite or math.isfinite(value) else str(value)
    if _depth >= MAX_VALUE_DEPTH or budget.items < 0:
        return "<value cut: too deep or too large>"
    if isinstance(value, dict):
        return {_safe_str(k): to_jsonable(v, keep_nonfinite, _depth + 1, budget) for k, v in list(value.items())[:MAX_VALUE_ITEMS]}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_jsonable(v, keep_nonfinite, _depth + 1, budget) for v in list(value)[:MAX_VALUE_ITEMS]]
    if hasattr(value, "tolist") and hasattr(value, "dtype"):
        try:
            return to_jsonable(value.tolist(), keep_nonfinite, _depth + 1, budget)
        except BaseException:
            return _safe_str(value)
    return _safe_str(value)


_CONTAINERS = (list, tuple, set, frozenset, dict)
_BUILTIN_BASES = (bool, int, float, str, bytes, complex) + _CONTAINERS


def encode_value(value, _depth: int = 0, _budget: _Budget | None = None):
    """A program's answer with its Python types, for scoring that depends on them
    (the paper protocol's rules call ``int()``, ``str()``, ``isinstance(x, bool)``
    on the original value). JSON scalars stand for themselves (str, finite float,
    bool, null, int within 64 bits); everything else is a list whose first item
    names the type:

    ["int", hex] | ["float", "nan"|"inf"|"-inf"] | ["list"|"tuple"|"set"|"frozenset", [items]]
    | ["dict", [[key, value], ...]] | ["np", dtype, item] | ["ndarray", dtype, shape, [items]]
    | ["complex", re, im] | ["fraction", numerator, denominator] | ["decimal", text]
    | ["bytes", latin-1 text] | ["sub", "module.qualname", str(value), base value]
    | ["object", "module.qualname", str(value)] | ["cut", reason]

    ``sub`` is an instance of a subclass of a built-in type (a namedtuple, an
    int subclass): its base value and its text. Items are encoded the same
    way. Decoded by ``harness.scoring.values``.
    """
    budget = _budget or _Budget()
    budget.items -= 1
    kind = type(value)
    if value is None or kind is bool:
        return value
    if kind is str:
        return value if len(value) <= MAX_TEXT else ["cut", f"a string of {len(value)} characters"]
    if kind is int:
        return value if -(1 << 63) <= value < (1 << 63) else ["int", hex(value)]
    if kind is float:
        return value if math.isfinite(value) else ["float", repr(value)]
    if _depth >= MAX_VALUE_DEPTH:
        return ["cut", f"nested deeper than {MAX_VALUE_DEPTH} levels"]
    if budget.items < 0:
        return ["cut", f"more than {MAX_VALUE_ITEMS} elements"]
    down = _depth + 1
    try:
        if kind in (list, tuple, set, frozenset):
            return [kind.__name__, [encode_value(v, down, budget) for v in list(value)[:MAX_VALUE_ITEMS]]]
        if kind is dict:
            return ["dict", [[encode_value(k, down, budget), encode_value(v, down, budget)]
                             for k, v in list(value.items())[:MAX_VALUE_ITEMS]]]
        module = getattr(kind, "__module__", "") or ""
        name = f"{module}.{getattr(kind, '__qualname__', kind.__name__)}"
        if module == "numpy" and kind.__name__ == "ndarray":
            if value.size > MAX_VALUE_ITEMS:
                return ["cut", f"an array of {value.size} elements"]
            return ["ndarray", str(value.dtype), list(value.shape),
                    [encode_value(v, down, budget) for v in value.reshape(-1).tolist()]]
        if module == "numpy" and hasattr(value, "dtype") and hasattr(value, "item"):
            return ["np", str(value.dtype), encode_value(value.item(), down, budget)]
        if kind is complex:
            return ["complex", encode_value(value.real), encode_value(value.imag)]
        if name == "fractions.Fraction":
            return ["fraction", encode_value(value.numerator), encode_value(value.denominator)]
        if name == "decimal.Decimal":
            return ["decimal", _safe_str(value)]
        if kind is bytes:
            return ["bytes", value[:MAX_TEXT].decode("latin-1")]
        for base in _BUILTIN_BASES:
            if isinstance(value, base):
                return ["sub", name, _safe_str(value), encode_value(base(value), down, budget)]
        return ["object", name, _safe_str(value)]
    except BaseException as exc:  # a hostile __iter__, __len__ or tolist(): the value is cut, the run goes on
        return ["cut", f"{type(exc).__name__} while encoding a {kind.__name__}"]


def python_type_name(value) -> str:
    kind = type(value)
    return f"{kind.__module__}.{kind.__qualname__}"


def encode(message: dict) -> bytes:
    data = json.dumps(message, ensure_ascii=False).encode("utf-8")
    return HEADER.pack(len(data)) + data


def send_message(sock: socket.socket, message: dict, fds: list[int] | None = None) -> None:
    data = encode(message)
    if fds:
        sent = socket.send_fds(sock, [data], fds)
        if sent < len(data):
            sock.sendall(data[sent:])
    else:
        sock.sendall(data)


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks, remaining = [], size
    while remaining:
        chunk = sock.recv(min(remaining, 1 << 20))
        if not chunk:
            raise EOFError("peer closed the channel")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _decode(payload: bytes) -> dict:
    try:
        message = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"malformed message: {exc}") from None
    if not isinstance(message, dict):
        raise ProtocolError("a message must be a JSON object")
    return message


def recv_message(sock: socket.socket, max_size: int = MAX_MESSAGE) -> dict:
    (size,) = HEADER.unpack(_recv_exact(sock, HEADER.size))
    if size > max_size:
        raise ProtocolError(f"message of {size} bytes exceeds the {max_size}-byte limit")
    return _decode(_recv_exact(sock, size))


def recv_message_with_fds(sock: socket.socket, max_fds: int = 1) -> tuple[dict, list[int]]:
    """A message whose first bytes carry file descriptors (the zygote's ``run``)."""
    head, fds, _, _ = socket.recv_fds(sock, HEADER.size, max_fds)
    if not head:
        raise EOFError("parent closed the control channel")
    if len(head) < HEADER.size:
        head += _recv_exact(sock, HEADER.size - len(head))
    (size,) = HEADER.unpack(head)
    return _decode(_recv_exact(sock, size)), list(fds)


# ----------------------------------------------------------------------------- programs

class _ReturnFinalAnswer(ast.NodeTransformer):
    """A bare ``return`` at program level returns ``final_answer``, so the
    early-exit idiom keeps the answer set so far. Nested functions are left alone."""

    def visit_FunctionDef(self, node):
        return node

    visit_AsyncFunctionDef = visit_FunctionDef
    visit_Lambda = visit_FunctionDef
    visit_ClassDef = visit_FunctionDef

    def visit_Return(self, node):
        if node.value is None:
            node.value = ast.Name(id="final_answer", ctx=ast.Load())
        return node


def compile_program(code: str):
    """Compile a program body into a code object that defines ``__program__()``.

    The body runs as a function: ``final_answer`` starts as None, the answer is
    ``final_answer`` at the end, and ``return value`` ends early with that value.
    """
    tree = ast.parse(code, PROGRAM_FILE, "exec")
    module = ast.parse("def __program__():\n    final_answer = None\n    return final_answer\n")
    function = module.body[0]
    function.body[1:1] = _ReturnFinalAnswer().visit(tree).body
    ast.fix_missing_locations(module)
    return compile(module, PROGRAM_FILE, "exec")


# The paper dialect's execution wrapper, as the original evaluation ran programs:
# the body, indented line by line (lines inside multi-line strings included), is
# the body of a function whose ``finally`` hands back ``final_answer``, so
# ``return x`` yields ``final_answer``, not x; an exception means no answer.
PAPER_INDENT = " " * 8
_PAPER_WRAPPER = """\
def __paper_program__():
    final_answer = None
    __paper_failure = None
    try:
{body}
    except BaseException as __paper_error:
        __paper_failure = __paper_error
    finally:
        if __paper_failure is not None:
            raise __paper_failure
        return locals().get("final_answer", None)
"""


_PAPER_BODY_LINE = 5  # the wrapper's line that holds the body's first line


def compile_paper_program(code: str):
    body = "".join(PAPER_INDENT + line if line.strip() else line for line in code.splitlines(True))
    shift = _PAPER_BODY_LINE - 1
    try:
        tree = ast.parse(_PAPER_WRAPPER.format(body=body), PROGRAM_FILE, "exec")
    except SyntaxError as exc:  # report the line as the program numbers it
        if exc.lineno is not None and exc.lineno > shift:
            exc.lineno -= shift
        raise
    for statement in tree.body[0].body[2].body:  # the try block: the program's own statements
        ast.increment_lineno(statement, -shift)
    return compile(tree, PROGRAM_FILE, "exec")


class ImageHandle:
    """What a program sees as ``image``: its size, and a token the tools resolve."""

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = int(width), int(height)

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height

    def __repr__(self) -> str:
        return f"<image {self.width}x{self.height}>"


def encode_argument(value):
    if isinstance(value, ImageHandle):
        return {"__image__": True}
    if isinstance(value, float) and not math.isfinite(value):
        raise TypeError(f"tool arguments must be finite numbers, got {value}")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): encode_argument(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode_argument(v) for v in value]
    if hasattr(value, "tolist"):
        return encode_argument(value.tolist())
    raise TypeError(f"tool arguments must be numbers, strings, lists, dicts or the image, "
                    f"got {type(value).__name__}")


def program_namespace(tool_names, call, image: ImageHandle) -> dict:
    """Globals of a program: the tools, the image (also as ``img_pth``), np and math."""
    namespace = {"__builtins__": builtins, "__name__": "__program__", "image": image, "img_pth": image,
                 "math": math, "ToolError": ToolError}
    try:
        import numpy
        namespace["np"] = numpy
    except ImportError:
        pass
    for name in tool_names:
        def stub(*args, _tool=name, **kwargs):
            return call(_tool, args, kwargs)
        stub.__name__ = stub.__qualname__ = name
        namespace[name] = stub
    return namespace


def paper_namespace(tool_names, call, image_path: str) -> dict:
    """Globals of a program in the paper dialect, as the original evaluation set
    them: ``img_pth`` (the path of the image file, a plain string), the tools with
    the original signatures, np, math and the builtins; no ``image`` and no
    ``ToolError``. Arguments are checked by the parent; ``depth`` returns a
    numpy float32, standing in for the original's 0-d float32 tensor."""
    namespace = {"__builtins__": builtins, "__name__": "__main__", "img_pth": image_path, "math": math}
    try:
        import numpy
    except ImportError:
        numpy = None
    else:
        namespace["np"] = numpy

    # The arguments go as the program wrote them: the parent binds them to the signatures of
    # the tools it serves (the evaluation's, or the training syntax check's stubs).
    def gd_detect(*args, **kwargs):
        return call("gd_detect", args, kwargs)

    def vqa(*args, **kwargs):
        return call("vqa", args, kwargs)

    def depth(*args, **kwargs):
        value = call("depth", args, kwargs)
        return numpy.float32(value) if numpy is not None and isinstance(value, float) else value

    for tool in (gd_detect, vqa, depth):
        if tool.__name__ in tool_names:
            namespace[tool.__name__] = tool
    return namespace


DIALECTS = ("harness", "paper")


def _program_traceback(exc: BaseException) -> str:
    """The traceback from the program's own frames on (runtime frames dropped)."""
    if isinstance(exc, SyntaxError):
        return "".join(traceback.format_exception_only(type(exc), exc))
    frames = traceback.extract_tb(exc.__traceback__)
    start = next((i for i, f in enumerate(frames) if f.filename == PROGRAM_FILE), 0)
    lines = traceback.format_list(frames[start:]) + traceback.format_exception_only(type(exc), exc)
    return "Traceback (most recent call last):\n" + "".join(lines)


def execute(code: str, namespace: dict, dialect: str = "harness") -> dict:
    """Run a program; returns status, answer (plain and typed), its Python type and detail."""
    try:
        if dialect == "paper":
            exec(compile_paper_program(code), namespace)
            answer = namespace["__paper_program__"]()
            if answer is None:  # a program may set the answer as a global, which the original also read
                answer = namespace.get("final_answer")
        else:
            exec(compile_program(code), namespace)
            answer = namespace["__program__"]()
    except ToolError as exc:
        return {"status": "tool_error", "detail": _program_traceback(exc)}
    except MemoryError:
        return {"status": "memory", "detail": "the program ran out of memory"}
    except SystemExit as exc:
        return {"status": "exception", "detail": f"the program called exit({_safe_str(exc.code)})"}
    except BaseException as exc:  # anything a program raises is its outcome, not ours
        return {"status": "exception", "detail": _program_traceback(exc)}
    if answer is None:
        return {"status": "no_answer", "detail": "the program finished without setting final_answer"}
    return {"status": "ok", "answer": to_jsonable(answer), "typed": encode_value(answer),
            "pytype": python_type_name(answer)}


class CappedText(io.TextIOBase):
    """A stdout that keeps the first ``limit`` characters and counts the rest."""

    def __init__(self, limit: int) -> None:
        self.limit, self.parts, self.kept, self.dropped = limit, [], 0, 0

    def writable(self) -> bool:
        return True

    def write(self, text) -> int:
        text = str(text)
        room = self.limit - self.kept
        if room > 0:
            self.parts.append(text[:room])
            self.kept += min(room, len(text))
        self.dropped += max(0, len(text) - max(room, 0))
        return len(text)

    def getvalue(self) -> str:
        return "".join(self.parts)


# ----------------------------------------------------------------------------- lock-down layers

_LANDLOCK_CREATE_RULESET, _LANDLOCK_ADD_RULE, _LANDLOCK_RESTRICT_SELF = 444, 445, 446
_PR_SET_NO_NEW_PRIVS = 38
# Filesystem rights by Landlock ABI version (bits), and network/scope rights.
_FS_READ = (1 << 0) | (1 << 2) | (1 << 3)  # execute, read file, read dir
_FS_ALL_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 4: (1 << 15) - 1, 5: (1 << 16) - 1}
_FS_FILE_RIGHTS = (1 << 0) | (1 << 1) | (1 << 2) | (1 << 14) | (1 << 15)  # execute, write, read, truncate, ioctl
_NET_ALL = (1 << 0) | (1 << 1)  # bind and connect TCP
_SCOPE_ALL = (1 << 0) | (1 << 1)  # abstract unix sockets, signals


def landlock_abi() -> int:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return max(0, libc.syscall(_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(1)))
    except (OSError, AttributeError):
        return 0


def apply_landlock(abi: int, readable: list[str], writable: list[str], reads_too: bool = True) -> None:
    """Restrict this process and its future children (a Landlock layer).

    With ``reads_too`` only ``readable`` paths can be read; in every case only
    ``writable`` ones can be written. With ABI 4+ TCP is denied, and with ABI 6+
    signals and abstract sockets cannot reach processes outside the layer.
    Layers stack: the zygote restricts itself once, each child adds its own.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    fs_all = _FS_ALL_BY_ABI.get(abi, _FS_ALL_BY_ABI[5])
    handled = fs_all if reads_too else fs_all & ~_FS_READ

    class RulesetAttr(ctypes.Structure):
        _fields_ = [("fs", ctypes.c_uint64), ("net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]

    class PathBeneath(ctypes.Structure):
        _pack_ = 1
        _fields_ = [("allowed", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]

    attr = RulesetAttr(handled, _NET_ALL if abi >= 4 else 0, _SCOPE_ALL if abi >= 6 else 0)
    size = 24 if abi >= 6 else (16 if abi >= 4 else 8)
    ruleset = libc.syscall(_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset failed")
    try:
        rules = [(p, _FS_READ) for p in (readable if reads_too else [])] + [(p, fs_all) for p in writable]
        for path, rights in rules:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                # Directory-only rights cannot be granted on a file.
                allowed = rights if os.path.isdir(path) else rights & _FS_FILE_RIGHTS
                rule = PathBeneath(allowed & handled, fd)
                if libc.syscall(_LANDLOCK_ADD_RULE, ruleset, 1, ctypes.byref(rule), 0) < 0:
                    raise OSError(ctypes.get_errno(), f"landlock_add_rule failed for {path}")
            finally:
                os.close(fd)
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(NO_NEW_PRIVS) failed")
        if libc.syscall(_LANDLOCK_RESTRICT_SELF, ruleset, 0) < 0:
            raise OSError(ctypes.get_errno(), "landlock_restrict_self failed")
    finally:
        os.close(ruleset)


# System calls a program never needs: new processes or programs, sockets,
# debugging other processes, signals to others, namespaces, mounts, kernel state.
DENIED_SYSCALLS = (
    "fork", "vfork", "clone", "clone3", "execve", "execveat",
    "socket", "socketpair", "connect", "bind", "listen", "accept", "accept4",
    "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_open", "pidfd_getfd", "pidfd_send_signal",
    "kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo",
    "unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "mknod", "mknodat",
    "bpf", "perf_event_open", "userfaultfd", "keyctl", "add_key", "request_key", "io_uring_setup",
    "personality", "reboot", "kexec_load", "init_module", "finit_module", "delete_module",
    "swapon", "swapoff", "setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid",
)


def build_seccomp_filter() -> bytes:
    """The deny-list (EPERM) compiled to a BPF program, once, in the zygote."""
    import pyseccomp

    denied = pyseccomp.SyscallFilter(defaction=pyseccomp.ALLOW)
    for name in DENIED_SYSCALLS:
        try:
            denied.add_rule(pyseccomp.ERRNO(1), name)
        except Exception:  # a system call this architecture does not have
            pass
    fd = os.memfd_create("seccomp-bpf")
    with os.fdopen(fd, "w+b") as exported:
        denied.export_bpf(exported)
        exported.seek(0)
        return exported.read()


_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 22, 2


def install_seccomp(bpf: bytes) -> None:
    """Load a compiled filter into this process (a few microseconds, unlike compiling it)."""
    libc = ctypes.CDLL(None, use_errno=True)

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]

    program = SockFprog(len(bpf) // 8, bpf)
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(NO_NEW_PRIVS) failed")
    if libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(program), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(SECCOMP) failed")


def _set_limit(kind: int, value: int) -> None:
    soft, hard = resource.getrlimit(kind)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(kind, (value, value if hard == resource.RLIM_INFINITY else hard))


def virtual_memory_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def apply_limits(policy: dict, inherited_bytes: int) -> None:
    cpu = int(policy["cpu_seconds"])
    soft_hard = (cpu, cpu + 1)  # SIGXCPU first, SIGKILL one second later
    resource.setrlimit(resource.RLIMIT_CPU, soft_hard)
    # The address space is inherited from the zygote; the budget comes on top.
    _set_limit(resource.RLIMIT_AS, inherited_bytes + int(policy["memory_mb"]) * (1 << 20))
    _set_limit(resource.RLIMIT_FSIZE, int(policy["file_mb"]) * (1 << 20))
    _set_limit(resource.RLIMIT_NOFILE, int(policy["open_files"]))
    _set_limit(resource.RLIMIT_NPROC, 0)
    _set_limit(resource.RLIMIT_CORE, 0)


# ----------------------------------------------------------------------------- the child

def run_child(job: dict, channel: socket.socket, config: dict, seccomp_filter) -> None:
    """Lock the process down, run the program, send the result. Never returns."""
    code = 0
    try:
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        workdir = job["workdir"]
        os.mkdir(workdir, 0o700)
        os.chdir(workdir)
        for name, data in (job.get("files") or {}).items():  # inputs the program may open, e.g. its image
            with open(os.path.basename(name), "wb") as handle:
                handle.write(base64.b64decode(data))
        os.environ.clear()
        os.environ.update(config["env"])
        os.environ["HOME"] = os.environ["TMPDIR"] = workdir
        policy = job["policy"]
        apply_limits(policy, config["zygote_bytes"])
        if config["landlock_abi"]:  # reads are already limited by the zygote's own layer
            apply_landlock(config["landlock_abi"], [], [workdir], reads_too=False)
        if seccomp_filter is not None:
            install_seccomp(seccomp_filter)
        stdout = CappedText(int(policy["output_chars"]))
        sys.stdout = sys.stderr = stdout
        sys.stdin = io.StringIO("")
        channel.settimeout(None)

        def call(name, args, kwargs):
            try:
                request = {"op": "call", "tool": name, "args": encode_argument(list(args)),
                           "kwargs": encode_argument(dict(kwargs))}
            except TypeError as exc:
                raise ToolError(f"{name}: {exc}") from None
            send_message(channel, request)
            reply = recv_message(channel)
            if "error" in reply:
                raise ToolError(f"{name}: {reply['error']}")
            return reply.get("result")

        dialect = job.get("dialect", "harness")
        if dialect == "paper":
            namespace = paper_namespace(job["tools"], call, job["image_path"])
        else:
            namespace = program_namespace(job["tools"], call, ImageHandle(job["image"]["width"], job["image"]["height"]))
        outcome = execute(job["code"], namespace, dialect)
        outcome.update(op="result", stdout=stdout.getvalue(), stdout_dropped=stdout.dropped)
        send_message(channel, outcome)
    except BaseException:
        code = 70  # the runtime itself failed; the parent reports it from the exit status
    finally:
        os._exit(code)


# ----------------------------------------------------------------------------- the zygote

def zygote(control_fd: int, config: dict) -> None:
    """Wait for programs and fork one locked-down child per program."""
    control = socket.socket(fileno=control_fd)
    seccomp_filter = build_seccomp_filter() if config["seccomp"] else None
    for name in config.get("preload", ()):
        try:
            __import__(name)
        except ImportError:
            pass
    config["zygote_bytes"] = virtual_memory_bytes()
    if config["landlock_abi"]:
        apply_landlock(config["landlock_abi"], config["readable"], [config["workroot"], os.devnull])
    # Objects the children inherit are never scanned by their garbage collector, so
    # the pages holding them are not copied into each child.
    gc.collect()
    gc.freeze()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    children: dict[int, tuple[int, str]] = {}  # pid -> (job id, workdir)
    send_message(control, {"op": "ready", "pid": os.getpid()})

    while True:
        readable, _, _ = select.select([control, wake_r], [], [], 1.0)
        if wake_r in readable:
            os.read(wake_r, 4096)
        if control in readable:
            try:
                message, fds = recv_message_with_fds(control)
            except (EOFError, ConnectionError):
                break
            op = message.get("op")
            if op == "run":
                pid = os.fork()
                if pid == 0:
                    signal.set_wakeup_fd(-1)
                    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                    for fd in (wake_r, wake_w, control.fileno()):
                        os.close(fd)
                    run_child(message, socket.socket(fileno=fds[0]), config, seccomp_filter)
                for fd in fds:
                    os.close(fd)
                children[pid] = (message["id"], message["workdir"])
                send_message(control, {"op": "started", "id": message["id"], "pid": pid})
            elif op == "kill":
                for pid, (job, _) in children.items():
                    if job == message["id"]:
                        os.kill(pid, signal.SIGKILL)
            elif op == "stop":
                break
        while children:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            job, workdir = children.pop(pid)
            try:
                os.rmdir(workdir)  # the usual case: the program wrote nothing
            except OSError:
                shutil.rmtree(workdir, ignore_errors=True)
            cpu = usage.ru_utime + usage.ru_stime
            exited = {"op": "exited", "id": job, "cpu": cpu}
            if os.WIFSIGNALED(status):
                exited["signal"] = os.WTERMSIG(status)
            else:
                exited["code"] = os.WEXITSTATUS(status)
            send_message(control, exited)
    for pid in children:
        os.kill(pid, signal.SIGKILL)


if __name__ == "__main__":
    zygote(int(sys.argv[1]), json.loads(sys.argv[2]))
