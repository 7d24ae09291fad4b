"""What a program sees: its namespace, the tool stubs, how it is compiled and run.

This module runs inside the sandbox (standard library only; programs may import
numpy): the zygote (``zygote.py``) calls :func:`run_job` in each program's
locked-down process. The parent imports it too, for the tool API's argument
encoding and for in-process checks of generated programs.
"""

from __future__ import annotations

import ast
import builtins
import io
import math
import sys
import traceback

STATUSES = ("ok", "no_answer", "exception", "tool_error", "memory")
PROGRAM_FILE = "<program>"
DETAIL_CHARS = 20000


class ToolError(Exception):
    """Raised inside a program when a tool call fails; programs may catch it."""


# ----------------------------------------------------------------------------- values

def to_jsonable(value, keep_nonfinite: bool = False):
    """JSON-safe form of a value a program may produce (numpy scalars and arrays,
    tuples, sets). Non-finite floats become strings for strict JSON files, or
    stay floats on the channel, whose JSON both ends read with Python."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if keep_nonfinite or math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {str(k): to_jsonable(v, keep_nonfinite) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_jsonable(v, keep_nonfinite) for v in value]
    if hasattr(value, "tolist"):
        return to_jsonable(value.tolist(), keep_nonfinite)
    return str(value)


def python_type_name(value) -> str:
    kind = type(value)
    return f"{kind.__module__}.{kind.__qualname__}"


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


def _program_traceback(exc: BaseException) -> str:
    """The traceback from the program's own frames on (runtime frames dropped)."""
    if isinstance(exc, SyntaxError):
        return "".join(traceback.format_exception_only(type(exc), exc))
    frames = traceback.extract_tb(exc.__traceback__)
    start = next((i for i, f in enumerate(frames) if f.filename == PROGRAM_FILE), 0)
    lines = traceback.format_list(frames[start:]) + traceback.format_exception_only(type(exc), exc)
    return "Traceback (most recent call last):\n" + "".join(lines)


def execute(code: str, namespace: dict) -> dict:
    """Run a program; returns status, answer, its Python type and detail."""
    try:
        compiled = compile_program(code)
        exec(compiled, namespace)
        answer = namespace["__program__"]()
    except ToolError as exc:
        return {"status": "tool_error", "detail": _program_traceback(exc)}
    except MemoryError:
        return {"status": "memory", "detail": "the program ran out of memory"}
    except SystemExit as exc:
        return {"status": "exception", "detail": f"the program called exit({exc.code!r})"}
    except BaseException as exc:  # anything a program raises is its outcome, not ours
        return {"status": "exception", "detail": _program_traceback(exc)}
    if answer is None:
        return {"status": "no_answer", "detail": "the program finished without setting final_answer"}
    return {"status": "ok", "answer": to_jsonable(answer), "pytype": python_type_name(answer)}


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


# ----------------------------------------------------------------------------- one job

def tool_caller(send, receive):
    """The function behind every tool stub: one request to the parent, one reply."""

    def call(name, args, kwargs):
        try:
            request = {"op": "call", "tool": name, "args": encode_argument(list(args)),
                       "kwargs": encode_argument(dict(kwargs))}
        except TypeError as exc:
            raise ToolError(f"{name}: {exc}") from None
        send(request)
        reply = receive()
        if "error" in reply:
            raise ToolError(f"{name}: {reply['error']}")
        return reply.get("result")

    return call


def run_job(job: dict, call) -> dict:
    """Run a job's program with its output captured; the fields of its result message."""
    stdout = CappedText(int(job["output_chars"]))
    sys.stdout = sys.stderr = stdout
    sys.stdin = io.StringIO("")
    image = ImageHandle(job["image"]["width"], job["image"]["height"])
    outcome = execute(job["code"], program_namespace(job["tools"], call, image))
    detail = outcome.get("detail")
    if detail and len(detail) > DETAIL_CHARS:  # a traceback of a deep recursion, or a huge message
        outcome["detail"] = f"{detail[:DETAIL_CHARS // 2]}\n[... {len(detail) - DETAIL_CHARS} characters ...]\n" \
                            f"{detail[-DETAIL_CHARS // 2:]}"
    outcome.update(stdout=stdout.getvalue(), stdout_dropped=stdout.dropped)
    return outcome
