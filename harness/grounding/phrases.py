"""The detector phrases a program asks for, read from its syntax tree.

A program is parsed with :mod:`ast` (never searched with patterns) and every
call to ``gd_detect`` is found, its phrases given positionally or by keyword
(``phrases=`` in our tool API, ``prompt=`` in the original's, which the paper
protocol's programs use). The argument is resolved when it is a string literal or simply
built from literals:

- a name assigned such a value earlier (``target = "red mug"``, also inside
  branches when every path assigns the same value);
- ``"a" + "b"``, an f-string whose parts are literals or resolved names;
- ``", ".join([...])`` over literal strings;
- a loop or comprehension variable over a list or tuple of literal strings
  (``for name in ["cup", "plate"]: gd_detect(image, name)``).

Anything else (a value computed at run time, a function parameter, a name
assigned different values on different paths) is reported as unresolved with
its source text and line, never guessed. A resolved string is split into
phrases as the tool splits it (:func:`harness.tools.api.split_phrases`), each
lower-cased with its spaces collapsed; phrases are de-duplicated keeping their
first occurrence.
"""

from __future__ import annotations

import ast
import itertools
from dataclasses import dataclass, field
from typing import Iterable, Union

from harness.tools.api import split_phrases

TOOL = "gd_detect"
PHRASES_ARGUMENTS = ("phrases", "prompt")  # our API's keyword, the original's
_MAX_OPTIONS = 64  # possible values of one expression (loops of loops); more is treated as unknown
_MUTATORS = {"append", "extend", "insert", "remove", "pop", "clear", "sort", "reverse"}


@dataclass(frozen=True)
class _Text:
    """A string expression: one of these values (several inside a loop over literals)."""

    options: tuple[str, ...]


@dataclass(frozen=True)
class _Items:
    """A list or tuple of literal strings."""

    items: tuple[str, ...]


_Value = Union[_Text, _Items, None]  # None: not known before the program runs


@dataclass
class Unresolved:
    """A ``gd_detect`` phrases argument that is not simply built from literals."""

    expression: str  # its source text
    line: int
    reason: str

    def to_dict(self) -> dict[str, object]:
        return {"expression": self.expression, "line": self.line, "reason": self.reason}


@dataclass
class Extraction:
    """What a program asks the detector for."""

    phrases: list[str] = field(default_factory=list)
    unresolved: list[Unresolved] = field(default_factory=list)
    calls: int = 0  # gd_detect calls in the program
    error: str | None = None  # set when the program does not parse


def normalize_phrase(text: str) -> str:
    """Lower case, spaces collapsed: the form labels are compared and stored in."""
    return " ".join(text.lower().split())


def extract_phrases(code: str) -> Extraction:
    """The phrases ``code`` passes to ``gd_detect`` (see the module's docstring)."""
    try:
        tree = ast.parse(code)
    except SyntaxError as exc:
        return Extraction(error=f"the program does not parse: {exc.msg} (line {exc.lineno})")
    except ValueError as exc:  # null bytes in the source
        return Extraction(error=f"the program does not parse: {exc}")
    reader = _Reader(code)
    reader.run(tree.body, {})
    phrases: list[str] = []
    for text in reader.texts:
        for phrase in split_phrases(text):
            phrase = normalize_phrase(phrase)
            if phrase and phrase not in phrases:
                phrases.append(phrase)
    return Extraction(phrases, reader.unresolved, reader.calls)


# ----------------------------------------------------------------------------- values


def _concatenate(left: _Value, right: _Value) -> _Value:
    if isinstance(left, _Text) and isinstance(right, _Text):
        return _text(a + b for a, b in itertools.product(left.options, right.options))
    if isinstance(left, _Items) and isinstance(right, _Items):
        return _Items(left.items + right.items)
    return None


def _text(options: Iterable[str]) -> _Text | None:
    unique = tuple(dict.fromkeys(options))
    return _Text(unique) if 0 < len(unique) <= _MAX_OPTIONS else None


def _merge(first: dict[str, _Value], second: dict[str, _Value]) -> dict[str, _Value]:
    """The names after two possible paths: a value both paths agree on, else unknown."""
    return {name: first[name] if first.get(name) == second.get(name) and name in first and name in second else None
            for name in first.keys() | second.keys()}


# ----------------------------------------------------------------------------- the reader


class _Reader:
    """Walks statements in program order, tracking what each name holds, and
    resolves the phrases argument of every gd_detect call it meets."""

    def __init__(self, code: str) -> None:
        self.code = code
        self.texts: list[str] = []
        self.unresolved: list[Unresolved] = []
        self.calls = 0
        self._collect = True  # off during the first, exploratory pass over a loop's body
        self._seen: set[tuple[int, int]] = set()

    # -- statements

    def run(self, body: list[ast.stmt], env: dict[str, _Value]) -> dict[str, _Value]:
        for statement in body:
            env = self.statement(statement, env)
        return env

    def statement(self, node: ast.stmt, env: dict[str, _Value]) -> dict[str, _Value]:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for decorator in node.decorator_list:
                self.scan(decorator, env)
            self.run(node.body, {**env, **{name: None for name in _parameters(node.args)}})
            return {**env, node.name: None}
        if isinstance(node, ast.ClassDef):
            self.run(node.body, dict(env))
            return {**env, node.name: None}
        if isinstance(node, ast.If):
            self.scan(node.test, env)
            return _merge(self.run(node.body, dict(env)), self.run(node.orelse, dict(env)))
        if isinstance(node, (ast.For, ast.AsyncFor)):
            self.scan(node.iter, env)
            return self.loop(node.body, node.orelse, env, node.target, self.value(node.iter, env))
        if isinstance(node, ast.While):
            self.scan(node.test, env)
            return self.loop(node.body, node.orelse, env)
        if isinstance(node, (ast.Try, getattr(ast, "TryStar", ast.Try))):
            after_body = self.run(node.body, dict(env))
            # A handler may start anywhere in the body: only what holds before and after it is known.
            raised = _merge(env, after_body)
            merged = self.run(node.orelse, after_body)
            for handler in node.handlers:
                handler_env = {**raised, handler.name: None} if handler.name else dict(raised)
                merged = _merge(merged, self.run(handler.body, handler_env))
            return self.run(node.finalbody, merged)
        if isinstance(node, (ast.With, ast.AsyncWith)):
            for item in node.items:
                self.scan(item.context_expr, env)
                if item.optional_vars is not None:
                    env = self.bind(item.optional_vars, None, env)
            return self.run(node.body, env)
        if isinstance(node, ast.Match):
            self.scan(node.subject, env)
            merged: dict[str, _Value] | None = None
            for case in node.cases:
                case_env = {**env, **{name: None for name in _stored_names(case.pattern)}}
                if case.guard is not None:
                    self.scan(case.guard, case_env)
                case_env = self.run(case.body, case_env)
                merged = case_env if merged is None else _merge(merged, case_env)
            return _merge(env, merged) if merged is not None else env
        # Simple statements: find calls first (with the names as they are before the statement).
        self.scan(node, env)
        if isinstance(node, ast.Assign):
            for target in node.targets:
                env = self.bind(target, node.value, env)
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            env = self.bind(node.target, node.value, env)
        elif isinstance(node, ast.AugAssign):
            if isinstance(node.target, ast.Name):
                current = env.get(node.target.id)
                value = _concatenate(current, self.value(node.value, env)) if isinstance(node.op, ast.Add) else None
                env = {**env, node.target.id: value}
            else:
                env = self.bind(node.target, None, env)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            env = {**env, **{(alias.asname or alias.name).split(".")[0]: None for alias in node.names}}
        elif isinstance(node, ast.Delete):
            for target in node.targets:
                env = self.bind(target, None, env)
        return env

    def loop(self, body: list[ast.stmt], orelse: list[ast.stmt], env: dict[str, _Value],
             target: ast.expr | None = None, iterable: _Value = None) -> dict[str, _Value]:
        """A loop body runs any number of times: a first pass finds what it assigns,
        then the body is read again from the state every iteration can start in."""
        element: _Value = _text(iterable.items) if isinstance(iterable, _Items) else None
        collect, self._collect = self._collect, False
        entry = self.bind(target, None, env, element) if target is not None else dict(env)
        after_once = self.run(body, entry)
        self._collect = collect
        entry = _merge(env, after_once)
        if target is not None:
            entry = self.bind(target, None, entry, element)
        after = self.run(body, entry)
        return self.run(orelse, _merge(env, after))

    def bind(self, target: ast.expr, value_node: ast.expr | None, env: dict[str, _Value],
             value: _Value = None) -> dict[str, _Value]:
        """``env`` after assigning ``value_node`` (or an already known ``value``) to ``target``."""
        if value_node is not None:
            value = self.value(value_node, env)
        if isinstance(target, ast.Name):
            return {**env, target.id: value}
        if isinstance(target, (ast.Tuple, ast.List)):
            elements = target.elts
            if (isinstance(value_node, (ast.Tuple, ast.List)) and len(value_node.elts) == len(elements)
                    and not any(isinstance(e, ast.Starred) for e in elements + value_node.elts)):
                for sub_target, sub_value in zip(elements, value_node.elts):
                    env = self.bind(sub_target, sub_value, env)
                return env
            if isinstance(value, _Items) and len(value.items) == len(elements) and not any(
                    isinstance(e, ast.Starred) for e in elements):
                for sub_target, item in zip(elements, value.items):
                    env = self.bind(sub_target, None, env, _Text((item,)))
                return env
            for sub_target in elements:
                env = self.bind(sub_target.value if isinstance(sub_target, ast.Starred) else sub_target,
                                None, env)
            return env
        if isinstance(target, (ast.Subscript, ast.Attribute)):
            # ``names[0] = ...`` changes what ``names`` holds.
            base = target.value
            while isinstance(base, (ast.Subscript, ast.Attribute)):
                base = base.value
            if isinstance(base, ast.Name):
                return {**env, base.id: None}
        return env

    # -- expressions

    def value(self, node: ast.expr, env: dict[str, _Value]) -> _Value:
        if isinstance(node, ast.Constant):
            return _Text((node.value,)) if isinstance(node.value, str) else None
        if isinstance(node, ast.Name):
            return env.get(node.id)
        if isinstance(node, ast.JoinedStr):
            options: list[tuple[str, ...]] = []
            for part in node.values:
                if isinstance(part, ast.Constant) and isinstance(part.value, str):
                    options.append((part.value,))
                    continue
                inner = self.value(part.value, env) if isinstance(part, ast.FormattedValue) else None
                if (not isinstance(inner, _Text) or part.conversion not in (-1, ord("s"))
                        or part.format_spec is not None):
                    return None
                options.append(inner.options)
            return _text("".join(combination) for combination in itertools.product(*options))
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            return _concatenate(self.value(node.left, env), self.value(node.right, env))
        if isinstance(node, (ast.List, ast.Tuple)):
            items = []
            for element in node.elts:
                element_value = self.value(element, env)
                if not isinstance(element_value, _Text) or len(element_value.options) != 1:
                    return None
                items.append(element_value.options[0])
            return _Items(tuple(items))
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "join"
                and len(node.args) == 1 and not node.keywords):
            separator = self.value(node.func.value, env)
            joined = self.value(node.args[0], env)
            if isinstance(separator, _Text) and len(separator.options) == 1 and isinstance(joined, _Items):
                return _Text((separator.options[0].join(joined.items),))
        return None

    def scan(self, node: ast.AST, env: dict[str, _Value]) -> None:
        """Resolve every gd_detect call in an expression (or a simple statement),
        with comprehension and lambda variables bound as they are inside them."""
        if isinstance(node, (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)):
            inner = dict(env)
            for generator in node.generators:
                self.scan(generator.iter, inner)
                iterable = self.value(generator.iter, inner)
                element = _text(iterable.items) if isinstance(iterable, _Items) else None
                inner = self.bind(generator.target, None, inner, element)
                for condition in generator.ifs:
                    self.scan(condition, inner)
            for part in ([node.key, node.value] if isinstance(node, ast.DictComp) else [node.elt]):
                self.scan(part, inner)
            return
        if isinstance(node, ast.Lambda):
            self.scan(node.body, {**env, **{name: None for name in _parameters(node.args)}})
            return
        if isinstance(node, ast.Call):
            self.call(node, env)
        if isinstance(node, ast.NamedExpr):
            self.scan(node.value, env)
            env[node.target.id] = None  # assigned mid-expression: not followed
            return
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in _MUTATORS:
            base = node.func.value
            if isinstance(base, ast.Name):
                env[base.id] = None  # ``names.append(...)``: the list is no longer the literal
        for child in ast.iter_child_nodes(node):
            if not isinstance(child, ast.stmt):
                self.scan(child, env)

    def call(self, node: ast.Call, env: dict[str, _Value]) -> None:
        if not (isinstance(node.func, ast.Name) and node.func.id == TOOL) or not self._collect:
            return
        where = (node.lineno, node.col_offset)
        if where in self._seen:
            return
        self._seen.add(where)
        self.calls += 1
        argument = next((k.value for k in node.keywords if k.arg in PHRASES_ARGUMENTS), None)
        if argument is None and len(node.args) >= 2:
            argument = node.args[1]
        if argument is None or isinstance(argument, ast.Starred) or any(
                isinstance(a, ast.Starred) for a in node.args[:2]) or any(k.arg is None for k in node.keywords):
            self.unresolved.append(Unresolved(self._source(node), node.lineno,
                                              "no phrases argument that can be read without running the program"))
            return
        value = self.value(argument, env)
        if isinstance(value, _Text):
            self.texts.extend(value.options)
        elif isinstance(value, _Items):
            self.unresolved.append(Unresolved(self._source(argument), argument.lineno,
                                              "a list, where gd_detect takes one comma-separated string"))
        else:
            self.unresolved.append(Unresolved(self._source(argument), argument.lineno,
                                              "not built from string literals"))

    def _source(self, node: ast.AST) -> str:
        return ast.get_source_segment(self.code, node) or ast.unparse(node)


def _parameters(arguments: ast.arguments) -> list[str]:
    names = [a.arg for a in arguments.posonlyargs + arguments.args + arguments.kwonlyargs]
    names += [a.arg for a in (arguments.vararg, arguments.kwarg) if a is not None]
    return names


def _stored_names(node: ast.AST) -> list[str]:
    """Names a match pattern binds."""
    found = []
    for child in ast.walk(node):
        name = getattr(child, "name", None) if isinstance(child, (ast.MatchAs, ast.MatchStar)) else None
        if name:
            found.append(name)
        if isinstance(child, ast.MatchMapping) and child.rest:
            found.append(child.rest)
    return found
