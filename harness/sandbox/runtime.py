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
import os
import sys
import traceback

STATUSES = ("ok", "no_answer", "exception", "tool_error", "memory")
PROGRAM_FILE = "<program>"
DETAIL_CHARS = 20000


class ToolError(Exception):
    """Raised inside a program when a tool call fails; programs may catch it."""


# ----------------------------------------------------------------------------- values

# Bounds that keep every answer inside what the channel accepts from a program
# (``channel.MAX_DEPTH`` levels of JSON, integers of ``channel.MAX_DIGITS``
# digits): a value beyond them is cut, never an error on either side. The typed
# form takes up to three JSON levels per level of the value (a dict: its tag's
# list, the pairs' list, a pair).
MAX_VALUE_DEPTH = 20
MAX_VALUE_ITEMS = 20000  # elements encoded per value; the rest are cut with a note
MAX_TEXT = 1 << 16  # characters kept of a string inside a value
_INT_BITS = 63  # larger integers travel as text


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


def _small_int(value: int) -> bool:
    return -(1 << _INT_BITS) <= value < (1 << _INT_BITS)


def to_jsonable(value, keep_nonfinite: bool = False, _depth: int = 0, _budget: _Budget | None = None):
    """JSON-safe form of a value a program may produce (numpy scalars and arrays,
    tuples, sets). Non-finite floats become strings for strict JSON files, or
    stay floats for the parent's own use. Values too deep or too large are cut
    (never an error): this form is for display and strict scoring;
    :func:`encode_value` keeps the types."""
    budget = _budget or _Budget()
    budget.items -= 1
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return value if len(value) <= MAX_TEXT else _safe_str(value)
    if isinstance(value, int):
        value = int(value)
        if _small_int(value):
            return value
        return f"<int of {value.bit_length()} bits>" if value.bit_length() > 4000 else str(value)
    if isinstance(value, float):
        return value if keep_nonfinite or math.isfinite(value) else str(value)
    if _depth >= 2 * MAX_VALUE_DEPTH or budget.items < 0:
        return "<value cut: too deep or too large>"
    try:
        if isinstance(value, dict):
            return {_safe_str(k): to_jsonable(v, keep_nonfinite, _depth + 1, budget)
                    for k, v in list(value.items())[:MAX_VALUE_ITEMS]}
        if isinstance(value, (list, tuple, set, frozenset)):
            return [to_jsonable(v, keep_nonfinite, _depth + 1, budget) for v in list(value)[:MAX_VALUE_ITEMS]]
        if hasattr(value, "tolist") and hasattr(value, "dtype"):
            return to_jsonable(value.tolist(), keep_nonfinite, _depth + 1, budget)
    except BaseException:  # a hostile __iter__ or tolist(): shown as text
        pass
    return _safe_str(value)


_BUILTIN_BASES = (bool, int, float, str, bytes, complex, list, tuple, set, frozenset, dict)


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
        return value if _small_int(value) else ["int", hex(value)]
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
    them: ``img_pth`` (the path of the image file, a plain string), the tools, np,
    math and the builtins; no ``image`` and no ``ToolError``. ``depth`` returns a
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
    dialect = job.get("dialect", "harness")
    if dialect == "paper":
        for name, data in (job.get("files") or {}).items():  # inputs the program may open, e.g. its image
            try:
                with open(os.path.basename(name), "wb") as handle:
                    handle.write(data)
            except OSError:  # a read-only workspace: the tools still take img_pth, opening it fails
                pass
        namespace = paper_namespace(job["tools"], call, job["image_path"])
    else:
        namespace = program_namespace(job["tools"], call, ImageHandle(job["image"]["width"], job["image"]["height"]))
    outcome = execute(job["code"], namespace, dialect)
    detail = outcome.get("detail")
    if detail and len(detail) > DETAIL_CHARS:  # a traceback of a deep recursion, or a huge message
        outcome["detail"] = f"{detail[:DETAIL_CHARS // 2]}\n[... {len(detail) - DETAIL_CHARS} characters ...]\n" \
                            f"{detail[-DETAIL_CHARS // 2:]}"
    outcome.update(stdout=stdout.getvalue(), stdout_dropped=stdout.dropped)
    return outcome
