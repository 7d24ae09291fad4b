"""The interpreter of VisProg-style step programs, one step per line.

    BOXES=DETECT(phrase='red cube')
    N=COUNT(boxes=BOXES)
    ANSWER=EVAL(expr='{N} > 2')
    FINAL=RESULT(value=ANSWER)

This module is our own small interpreter: it reads the lines and runs each
step by calling the vision tools. It runs inside the sandbox, never in the
evaluating process: the source of this whole file is sent to the sandbox
together with the model's step program (as a string literal, by
:mod:`harness.systems.visprog`, the system), so nothing the model writes is
ever read by more than the standard library outside it. That is also why this
file uses the standard library only (like harness/sandbox/runtime.py), stays
self-contained, and is not split further although it is long: the sandbox
loads it as one module of its own and cannot import the harness.

The interpreter checks the whole program before the first tool call (syntax,
step names, argument names, variables used before they are set), names the
line in every error, and prints one trace line per step (the sandbox keeps
the program's stdout).

Values: a box is [x1, y1, x2, y2] in pixels (y grows downwards), a box list
is what DETECT returns (best detection first), and numbers, strings and
booleans. ``IMAGE`` is predefined as the box of the whole image.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from typing import Any, Callable

# ----------------------------------------------------------------------------- errors and values


class VisProgError(Exception):
    """A step program that cannot run: bad syntax, an unknown step or variable, a wrong argument."""


class Ref:
    """An argument that names a variable set by an earlier line."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


def is_box(value: Any) -> bool:
    return (isinstance(value, (list, tuple)) and len(value) == 4
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value))


def is_box_list(value: Any) -> bool:
    # An empty list is a (possibly empty) detection result; a single box is not a list of boxes.
    return isinstance(value, list) and not is_box(value) and all(is_box(v) for v in value)


def describe_value(value: Any, limit: int = 90) -> str:
    """A short human summary of a value, for trace lines and error messages."""
    if is_box(value):
        text = "box [" + ", ".join(f"{v:.0f}" for v in value) + "]"
    elif is_box_list(value):
        shown = ", ".join("[" + ", ".join(f"{v:.0f}" for v in box) + "]" for box in value[:3])
        more = ", ..." if len(value) > 3 else ""
        text = f"{len(value)} box{'es' if len(value) != 1 else ''}" + (f": {shown}{more}" if value else "")
    elif isinstance(value, float):
        text = f"{value:.6g}"
    else:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _kind_of(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if is_box(value):
        return "a box"
    if is_box_list(value):
        return "a list of boxes"
    return type(value).__name__


# ----------------------------------------------------------------------------- the safe expression evaluator

_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}
_COMPARE: dict[type, Callable[[Any, Any], bool]] = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
    ast.Gt: operator.gt, ast.GtE: operator.ge,
    ast.In: lambda a, b: operator.contains(b, a), ast.NotIn: lambda a, b: not operator.contains(b, a),
}
# What the evaluator refuses, in words a model can act on.
_REFUSED: dict[type, str] = {
    ast.Call: "function calls are", ast.Attribute: "attribute access is", ast.Subscript: "indexing is",
    ast.Lambda: "lambdas are", ast.ListComp: "comprehensions are", ast.SetComp: "comprehensions are",
    ast.DictComp: "comprehensions are", ast.GeneratorExp: "comprehensions are", ast.NamedExpr: "assignments are",
    ast.List: "lists are", ast.Tuple: "tuples are", ast.Dict: "dicts are", ast.Set: "sets are",
    ast.Starred: "unpacking is", ast.JoinedStr: "f-strings are", ast.Await: "await is", ast.Yield: "yield is",
    ast.YieldFrom: "yield is",
}
MAX_TEXT = 10_000  # longest string an expression may build
MAX_EXPONENT = 1_000  # larger powers are refused rather than left to exhaust memory

# "{N}" names a variable; a quoted "'{N}'" (as in textual substitution) names it too.
_QUOTED_PLACEHOLDER = re.compile(r"""(['"])\{\s*([A-Za-z_]\w*)\s*\}\1""")
_PLACEHOLDER = re.compile(r"\{\s*([A-Za-z_]\w*)\s*\}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float))


def _binary(op: ast.operator, left: Any, right: Any) -> Any:
    if type(op) not in _BINARY:
        raise VisProgError(f"the operator {type(op).__name__} is not allowed")
    if isinstance(op, ast.Add) and isinstance(left, str) and isinstance(right, str):
        if len(left) + len(right) > MAX_TEXT:
            raise VisProgError("the string is too long")
        return left + right
    if not (_is_number(left) and _is_number(right)):
        raise VisProgError(f"arithmetic needs numbers, got {describe_value(left)} and {describe_value(right)}")
    if isinstance(op, ast.Pow) and abs(right) > MAX_EXPONENT:
        raise VisProgError(f"the exponent {right} is too large")
    try:
        return _BINARY[type(op)](left, right)
    except ZeroDivisionError:
        raise VisProgError("division by zero") from None
    except OverflowError:
        raise VisProgError("the number is too large") from None


def _compare(op: ast.cmpop, left: Any, right: Any) -> bool:
    if isinstance(op, (ast.In, ast.NotIn)):
        if not (isinstance(left, str) and isinstance(right, str)):
            raise VisProgError("'in' tests whether a string occurs in another string")
    elif isinstance(op, (ast.Is, ast.IsNot)) or type(op) not in _COMPARE:
        raise VisProgError(f"the comparison {type(op).__name__} is not allowed; use == or !=")
    try:
        return bool(_COMPARE[type(op)](left, right))
    except TypeError:
        raise VisProgError(f"cannot compare {describe_value(left)} with {describe_value(right)}") from None


def _evaluate(node: ast.AST, variables: dict[str, Any]) -> Any:
    if isinstance(node, ast.Constant):
        if isinstance(node.value, (bool, int, float, str)):
            return node.value
        raise VisProgError(f"the constant {node.value!r} is not allowed")
    if isinstance(node, ast.Name):
        if node.id not in variables:
            known = ", ".join(sorted(variables)) or "none"
            raise VisProgError(f"unknown variable {node.id!r} (defined so far: {known})")
        value = variables[node.id]
        if isinstance(value, (bool, int, float, str)):
            return value
        raise VisProgError(f"{node.id} is {_kind_of(value)}; expressions work on numbers, strings and booleans "
                           f"(use COUNT, MEASURE or DEPTH to get a number from boxes)")
    if isinstance(node, ast.BinOp):
        return _binary(node.op, _evaluate(node.left, variables), _evaluate(node.right, variables))
    if isinstance(node, ast.UnaryOp):
        operand = _evaluate(node.operand, variables)
        if isinstance(node.op, ast.Not):
            return not operand
        if not _is_number(operand) or not isinstance(node.op, (ast.USub, ast.UAdd)):
            raise VisProgError(f"the operator {type(node.op).__name__} needs a number")
        return -operand if isinstance(node.op, ast.USub) else +operand
    if isinstance(node, ast.BoolOp):
        # Short-circuit like Python, so "{N} > 0 and {S} / {N} > 1" is safe.
        value = _evaluate(node.values[0], variables)
        for operand in node.values[1:]:
            if (isinstance(node.op, ast.And) and not value) or (isinstance(node.op, ast.Or) and value):
                return value
            value = _evaluate(operand, variables)
        return value
    if isinstance(node, ast.Compare):
        left = _evaluate(node.left, variables)
        for op, comparator in zip(node.ops, node.comparators):
            right = _evaluate(comparator, variables)
            if not _compare(op, left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.IfExp):
        chosen = node.body if _evaluate(node.test, variables) else node.orelse
        return _evaluate(chosen, variables)
    what = _REFUSED.get(type(node), f"{type(node).__name__} is")
    raise VisProgError(f"{what} not allowed in expressions (only numbers, strings, booleans, variables, "
                       f"arithmetic, comparisons, and/or/not and 'a if test else b')")


def safe_eval(expression: str, variables: dict[str, Any]) -> Any:
    """Evaluate an expression over numbers, strings and booleans: arithmetic, comparisons,
    ``and``/``or``/``not`` and ``a if test else b``; ``{NAME}`` (or a bare NAME) reads a variable.

    Nothing else is allowed: no calls, attribute access, indexing, imports or names
    other than the program's variables, so an expression can compute but never act.
    """
    if not isinstance(expression, str) or not expression.strip():
        raise VisProgError("the expression must be a non-empty string")
    text = _PLACEHOLDER.sub(r"\1", _QUOTED_PLACEHOLDER.sub(r"\2", expression)).strip()
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise VisProgError(f"cannot read the expression {expression!r}: {exc.msg} "
                           f"(EVAL takes one expression, not statements)") from None
    return _evaluate(tree.body, variables)


# ----------------------------------------------------------------------------- parsing step programs

class Line:
    """One parsed step: ``target=STEP(name=value, ...)`` on line ``number``."""

    __slots__ = ("number", "text", "target", "step", "args")

    def __init__(self, number: int, text: str, target: str, step: str, args: dict[str, Any]) -> None:
        self.number, self.text, self.target, self.step, self.args = number, text, target, step, args


_ASSIGNMENT = re.compile(r"^\s*([A-Za-z_]\w*)\s*=(?!=)\s*(.*)$", re.S)
SHAPE_HINT = "expected NAME=STEP(arg=value, ...), e.g. BOXES=DETECT(phrase='red cube')"


def _argument(node: ast.AST) -> Any:
    """A literal (string, number, boolean) or a variable reference; nothing is evaluated."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (str, int, float, bool)):
        return node.value
    if (isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd))
            and isinstance(node.operand, ast.Constant) and _is_number(node.operand.value)
            and not isinstance(node.operand.value, bool)):
        return -node.operand.value if isinstance(node.op, ast.USub) else node.operand.value
    if isinstance(node, ast.Name):
        return Ref(node.id)
    raise VisProgError("an argument must be a quoted string, a number, True/False or a variable name, "
                       f"got {ast.unparse(node)!r}")


def parse_line(number: int, text: str) -> Line:
    """Read one line without evaluating anything (errors do not name the line yet)."""
    match = _ASSIGNMENT.match(text)
    if not match:
        raise VisProgError(SHAPE_HINT)
    target, call = match.groups()
    try:
        tree = ast.parse(call.strip(), mode="eval")
    except SyntaxError as exc:
        raise VisProgError(f"{exc.msg}; {SHAPE_HINT}") from None
    node = tree.body
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
        raise VisProgError(SHAPE_HINT)
    step = node.func.id.upper()  # steps are written in capitals, but "detect(...)" means the same
    if node.args:
        raise VisProgError(f"{step}: name every argument, e.g. {step}({_example_args(step)})")
    args: dict[str, Any] = {}
    for keyword in node.keywords:
        if keyword.arg is None:
            raise VisProgError(f"{step}: '**' arguments are not allowed")
        if keyword.arg in args:
            raise VisProgError(f"{step}: argument {keyword.arg!r} is given twice")
        try:
            args[keyword.arg] = _argument(keyword.value)
        except VisProgError as exc:
            raise VisProgError(f"{step}: argument {keyword.arg!r}: {exc}") from None
    return Line(number, text.strip(), target, step, args)


def _check_line(line: Line, defined: set[str]) -> None:
    """Step name, argument names and variables, checked before anything runs."""
    spec = STEPS.get(line.step)
    if spec is None:
        raise VisProgError(f"unknown step {line.step!r}; the steps are {', '.join(STEPS)}")
    params = spec["params"]
    for name in line.args:
        if name not in params:
            raise VisProgError(f"{line.step} has no argument {name!r}; its arguments: {', '.join(params)}")
    for name, (_, required) in params.items():
        if required and name not in line.args:
            raise VisProgError(f"{line.step} needs the argument {name!r}, e.g. {line.step}({_example_args(line.step)})")
    used = [(name, value.name) for name, value in line.args.items() if isinstance(value, Ref)]
    if line.step == "EVAL" and isinstance(line.args.get("expr"), str):
        used += [("expr", name) for name in _PLACEHOLDER.findall(line.args["expr"])]
    for argument, name in used:
        if name not in defined:
            raise VisProgError(f"unknown variable {name!r} in {line.step}({argument}=...); "
                               f"defined so far: {', '.join(sorted(defined))}")


def parse_program(text: str) -> list[Line]:
    """Parse and check every line before anything runs; errors name the line."""
    lines: list[Line] = []
    defined = {"IMAGE"}
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip() or raw.strip().startswith("#"):
            continue
        try:
            line = parse_line(number, raw)
            _check_line(line, defined)
        except VisProgError as exc:
            raise VisProgError(f"line {number}: {raw.strip()}: {exc}") from None
        defined.add(line.target)
        lines.append(line)
    if not lines:
        raise VisProgError("the program has no steps")
    return lines


# ----------------------------------------------------------------------------- steps

class Context:
    """What steps see: the image, the tools and the variables."""

    def __init__(self, image: Any, tools: dict[str, Callable[..., Any]]) -> None:
        self.image = image
        self.tools = tools
        self.width, self.height = float(image.width), float(image.height)
        self.variables: dict[str, Any] = {"IMAGE": [0.0, 0.0, self.width, self.height]}
        self._depths: dict[tuple[float, ...], float] = {}

    def depth(self, box: list[float]) -> float:
        # Sorting and selecting by depth may read a box several times; ask the tool once.
        key = tuple(box)
        if key not in self._depths:
            self._depths[key] = float(self.tools["depth"](self.image, list(box)))
        return self._depths[key]


def _centre(box: list[float]) -> tuple[float, float]:
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def _detect(ctx: Context, phrase: str) -> list[list[float]]:
    detections = ctx.tools["gd_detect"](ctx.image, phrase)
    ranked = sorted(detections, key=lambda d: -float(d.get("score", 0.0)))
    return [[float(v) for v in d["box"]] for d in ranked]


def _count(ctx: Context, boxes: list) -> int:
    return len(boxes)


_SORT_KEYS: dict[str, Callable[[Context, list[float]], float]] = {
    "x": lambda ctx, b: _centre(b)[0],
    "y": lambda ctx, b: _centre(b)[1],
    "depth": lambda ctx, b: ctx.depth(b),
    "area": lambda ctx, b: (b[2] - b[0]) * (b[3] - b[1]),
    "width": lambda ctx, b: b[2] - b[0],
    "height": lambda ctx, b: b[3] - b[1],
}
# which= of SELECT: (sort key, take the largest); "best" is the detector's order.
_SELECT: dict[str, tuple[str, bool]] = {
    "leftmost": ("x", False), "rightmost": ("x", True), "topmost": ("y", False), "bottommost": ("y", True),
    "nearest": ("depth", False), "farthest": ("depth", True), "smallest": ("area", False),
    "largest": ("area", True),
}


def _choice(value: str, allowed: list[str], what: str) -> str:
    key = value.strip().lower()
    if key not in allowed:
        raise VisProgError(f"{what} must be one of {', '.join(repr(a) for a in allowed)}, got {value!r}")
    return key


def _nonempty(boxes: list, step: str) -> None:
    if not boxes:
        raise VisProgError(f"{step}: the box list is empty (nothing was detected)")


def _select(ctx: Context, boxes: list, which: str) -> list[float]:
    which = _choice(which, ["best", *_SELECT], "which")
    _nonempty(boxes, "SELECT")
    if which == "best":
        return boxes[0]
    key, largest = _SELECT[which]
    pick = max if largest else min
    return pick(boxes, key=lambda b: _SORT_KEYS[key](ctx, b))


def _sort(ctx: Context, boxes: list, by: str, reverse: bool = False) -> list[list[float]]:
    by = _choice(by, list(_SORT_KEYS), "by")
    return sorted(boxes, key=lambda b: _SORT_KEYS[by](ctx, b), reverse=bool(reverse))


def _pick(ctx: Context, boxes: list, index: int) -> list[float]:
    _nonempty(boxes, "PICK")
    if not -len(boxes) <= index < len(boxes):
        raise VisProgError(f"PICK: index {index} is out of range for {len(boxes)} boxes")
    return boxes[index]


_SIDES = ("left", "right", "above", "below", "nearer", "farther")


def _side(ctx: Context, boxes: list, of: list[float], side: str) -> list[list[float]]:
    side = _choice(side, list(_SIDES), "side")
    (ax, ay), others = _centre(of), [b for b in boxes if list(b) != list(of)]
    if side in ("nearer", "farther"):
        anchor = ctx.depth(of)
        return [b for b in others if (ctx.depth(b) < anchor if side == "nearer" else ctx.depth(b) > anchor)]
    tests = {"left": lambda x, y: x < ax, "right": lambda x, y: x > ax,
             "above": lambda x, y: y < ay, "below": lambda x, y: y > ay}
    return [b for b in others if tests[side](*_centre(b))]


def _answer_matches(answer: str, expected: str) -> bool:
    answer, expected = answer.strip().lower(), expected.strip().lower()
    return answer == expected or re.search(rf"\b{re.escape(expected)}\b", answer) is not None


def _filter(ctx: Context, boxes: list, question: str, answer: str) -> list[list[float]]:
    return [b for b in boxes if _answer_matches(str(ctx.tools["vqa"](ctx.image, list(b), question)), answer)]


def _ask(ctx: Context, question: str, box: list[float] | None = None) -> str:
    # The whole image goes to the tool without a box, so its answer is not about a padded crop.
    whole = box is None or list(box) == ctx.variables["IMAGE"]
    return str(ctx.tools["vqa"](ctx.image, None if whole else list(box), question))


def _depth(ctx: Context, box: list[float]) -> float:
    return ctx.depth(box)


_MEASURES: dict[str, Callable[[list[float]], float]] = {
    "center_x": lambda b: _centre(b)[0], "center_y": lambda b: _centre(b)[1],
    "width": lambda b: b[2] - b[0], "height": lambda b: b[3] - b[1], "area": lambda b: (b[2] - b[0]) * (b[3] - b[1]),
    "left": lambda b: b[0], "top": lambda b: b[1], "right": lambda b: b[2], "bottom": lambda b: b[3],
}


def _measure(ctx: Context, box: list[float], what: str) -> float:
    return float(_MEASURES[_choice(what, list(_MEASURES), "what")](box))


def _point_3d(ctx: Context, box: list[float]) -> tuple[float, float, float]:
    # Back-projection with the focal length assumed to be one image width (it is not
    # given to programs); the depth is read at the box centre, like DEPTH.
    z = ctx.depth(box)
    u, v = _centre(box)
    return (u - ctx.width / 2) * z / ctx.width, (v - ctx.height / 2) * z / ctx.width, z


def _distance3d(ctx: Context, a: list[float], b: list[float]) -> float:
    return math.dist(_point_3d(ctx, a), _point_3d(ctx, b))


def _eval(ctx: Context, expr: str) -> Any:
    return safe_eval(expr, ctx.variables)


def _result(ctx: Context, value: Any) -> Any:
    return value


# name -> the function and its parameters: {argument: (kind, required)}. Kinds: boxes,
# box, text, int, bool, value (anything). Order here is the order the prompt lists them.
STEPS: dict[str, dict[str, Any]] = {
    "DETECT": {"run": _detect, "params": {"phrase": ("text", True)}},
    "COUNT": {"run": _count, "params": {"boxes": ("boxes", True)}},
    "SELECT": {"run": _select, "params": {"boxes": ("boxes", True), "which": ("text", True)}},
    "SORT": {"run": _sort, "params": {"boxes": ("boxes", True), "by": ("text", True), "reverse": ("bool", False)}},
    "PICK": {"run": _pick, "params": {"boxes": ("boxes", True), "index": ("int", True)}},
    "SIDE": {"run": _side, "params": {"boxes": ("boxes", True), "of": ("box", True), "side": ("text", True)}},
    "FILTER": {"run": _filter, "params": {"boxes": ("boxes", True), "question": ("text", True),
                                          "answer": ("text", True)}},
    "ASK": {"run": _ask, "params": {"question": ("text", True), "box": ("box", False)}},
    "DEPTH": {"run": _depth, "params": {"box": ("box", True)}},
    "MEASURE": {"run": _measure, "params": {"box": ("box", True), "what": ("text", True)}},
    "DISTANCE3D": {"run": _distance3d, "params": {"a": ("box", True), "b": ("box", True)}},
    "EVAL": {"run": _eval, "params": {"expr": ("text", True)}},
    "RESULT": {"run": _result, "params": {"value": ("value", True)}},
}
_EXAMPLES = {"DETECT": "phrase='red cube'", "COUNT": "boxes=BOXES", "SELECT": "boxes=BOXES, which='leftmost'",
             "SORT": "boxes=BOXES, by='x'", "PICK": "boxes=BOXES, index=0",
             "SIDE": "boxes=BOXES, of=BOX, side='left'",
             "FILTER": "boxes=BOXES, question='What color is this object?', answer='red'",
             "ASK": "box=BOX, question='What color is this object?'", "DEPTH": "box=BOX",
             "MEASURE": "box=BOX, what='height'", "DISTANCE3D": "a=BOX1, b=BOX2", "EVAL": "expr='{N} > 2'",
             "RESULT": "value=ANSWER"}


def _example_args(step: str) -> str:
    return _EXAMPLES.get(step, "name=value")


def _checked(step: str, name: str, kind: str, value: Any) -> Any:
    ok = {"boxes": is_box_list(value), "box": is_box(value), "text": isinstance(value, str),
          "int": isinstance(value, int) and not isinstance(value, bool), "bool": isinstance(value, bool),
          "value": isinstance(value, (bool, int, float, str)) or is_box(value) or is_box_list(value)}[kind]
    if not ok:
        wanted = {"boxes": "a list of boxes (from DETECT, FILTER, SORT or SIDE)",
                  "box": "one box (from SELECT or PICK, or IMAGE)", "text": "a string", "int": "a whole number",
                  "bool": "True or False", "value": "a number, string, boolean or box"}[kind]
        raise VisProgError(f"{step}: {name} must be {wanted}, got {_kind_of(value)} ({describe_value(value)})")
    return value


# ----------------------------------------------------------------------------- running

def run_program(text: str, image: Any, tools: dict[str, Callable[..., Any]],
                tool_error: type[BaseException] = Exception, log: Callable[[str], None] = print) -> Any:
    """Run a step program; returns the value of its last RESULT step (None without one).

    Step errors raise VisProgError and tool failures ``tool_error``, both naming the line;
    ``log`` receives one trace line per step.
    """
    lines = parse_program(text)
    ctx = Context(image, tools)
    answer = None
    for line in lines:
        params = STEPS[line.step]["params"]
        try:
            args = {}
            for name, value in line.args.items():
                value = ctx.variables[value.name] if isinstance(value, Ref) else value
                args[name] = _checked(line.step, name, params[name][0], value)
            value = STEPS[line.step]["run"](ctx, **args)
        except VisProgError as exc:
            message = str(exc) if str(exc).startswith(line.step) else f"{line.step}: {exc}"
            log(f"line {line.number}: {line.target}={line.step} failed: {message}")
            raise VisProgError(f"line {line.number}: {line.text}: {message}") from None
        except tool_error as exc:
            log(f"line {line.number}: {line.target}={line.step} failed: tool error: {exc}")
            raise tool_error(f"line {line.number}: {line.text}: {exc}") from None
        ctx.variables[line.target] = value
        log(f"line {line.number}: {line.target}={line.step} -> {describe_value(value)}")
        if line.step == "RESULT":
            answer = value
    return answer
