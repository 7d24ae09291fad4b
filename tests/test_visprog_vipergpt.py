"""The VisProg-style and ViperGPT-style baselines: the step interpreter, its expression
evaluator, the ImagePatch API, reading replies, and end-to-end runs in the sandbox with
oracle tools and a scripted chat model."""

from __future__ import annotations

import ast
import json
import math
import re
from pathlib import Path
from typing import Any

import pytest

from harness.sandbox.runtime import compile_program
from harness.systems import SYSTEM_KINDS, system_class
from harness.systems import vipergpt, visprog
from harness.systems.program import Program
from harness.systems.vipergpt import ImagePatch, ViperGPTSystem
from harness.systems.visprog import VisProgSystem
from harness.systems.visprog_interpreter import STEPS, VisProgError, parse_program, run_program, safe_eval
from toy import synthetic_task

PROMPTS = Path(__file__).resolve().parents[1] / "baselines" / "prompts"


# --------------------------------------------------------------------------- fake tools

class FakeImage:
    width, height = 320, 240


class FakeToolError(Exception):
    pass


class FakeTools:
    """Tools over a fixed list of objects; every call is logged."""

    def __init__(self) -> None:
        # name, colour, box, depth at the box centre
        self.objects = [
            ("cube", "red", [20.0, 100.0, 60.0, 140.0], 2.0),
            ("cube", "blue", [100.0, 90.0, 160.0, 150.0], 3.0),
            ("sphere", "red", [200.0, 110.0, 230.0, 140.0], 1.5),
            ("cone", "green", [260.0, 60.0, 300.0, 130.0], 4.0),
        ]
        self.calls: list[tuple[str, tuple]] = []

    def _matches(self, phrase: str, shape: str, colour: str) -> bool:
        words = [w.rstrip("s") for w in phrase.lower().split()]
        return all(w in (shape, colour, "object") for w in words)

    def gd_detect(self, image: Any, phrase: str) -> list[dict[str, Any]]:
        self.calls.append(("gd_detect", (phrase,)))
        if not phrase.strip():
            raise FakeToolError("gd_detect(): phrases must be a non-empty string")
        found = [{"box": list(box), "label": phrase, "score": 0.5 + i / 10}
                 for i, (shape, colour, box, _) in enumerate(self.objects) if self._matches(phrase, shape, colour)]
        return found[::-1]

    def depth(self, image: Any, box: list[float]) -> float:
        self.calls.append(("depth", (tuple(box),)))
        return next(d for _, _, b, d in self.objects if b == list(box))

    def vqa(self, image: Any, box: list[float] | None, question: str) -> str:
        self.calls.append(("vqa", (None if box is None else tuple(box), question)))
        if box is None:
            return "a table"
        shape, colour = next((s, c) for s, c, b, _ in self.objects if b == list(box))
        if "color" in question:
            return colour
        if question.lower().startswith("is"):
            return "yes" if colour in question or shape in question.split("?")[0].split()[-1] else "no"
        if "describes" in question:
            return f"a {colour} {shape}"
        return shape

    def as_dict(self) -> dict[str, Any]:
        return {"gd_detect": self.gd_detect, "depth": self.depth, "vqa": self.vqa}


@pytest.fixture
def tools() -> FakeTools:
    return FakeTools()


def run_steps(program: str, tools: FakeTools, trace: list[str] | None = None) -> Any:
    return run_program(program, FakeImage(), tools.as_dict(), FakeToolError,
                       log=(trace.append if trace is not None else lambda line: None))


def step_error(program: str, tools: FakeTools) -> str:
    with pytest.raises(VisProgError) as caught:
        run_steps(program, tools)
    return str(caught.value)


# --------------------------------------------------------------------------- the step interpreter

def test_detect_count_select_and_result(tools):
    trace: list[str] = []
    program = """
    # comments and blank lines are skipped
    CUBES=DETECT(phrase='cubes')
    N=COUNT(boxes=CUBES)
    BEST=SELECT(boxes=CUBES, which='best')
    LEFT=SELECT(boxes=CUBES, which='leftmost')
    FINAL=RESULT(value=N)
    """
    assert run_steps(program, tools, trace) == 2
    assert trace[0] == "line 3: CUBES=DETECT -> 2 boxes: [100, 90, 160, 150], [20, 100, 60, 140]"
    assert trace[1] == "line 4: N=COUNT -> 2"
    assert trace[2].endswith("BEST=SELECT -> box [100, 90, 160, 150]")  # the higher score first
    assert trace[3].endswith("LEFT=SELECT -> box [20, 100, 60, 140]")
    assert trace[-1] == "line 7: FINAL=RESULT -> 2"


@pytest.mark.parametrize("which, expected", [
    ("leftmost", 0), ("rightmost", 3), ("topmost", 3), ("bottommost", 2), ("nearest", 2), ("farthest", 3),
    ("largest", 1), ("smallest", 2), ("best", 3),
])
def test_select_every_criterion(tools, which, expected):
    program = f"ALL=DETECT(phrase='objects')\nONE=SELECT(boxes=ALL, which='{which}')\nFINAL=RESULT(value=ONE)"
    assert run_steps(program, tools) == tools.objects[expected][2]


def test_sort_pick_and_side(tools):
    program = """ALL=DETECT(phrase='objects')
    BY_DEPTH=SORT(boxes=ALL, by='depth')
    FAR_FIRST=SORT(boxes=ALL, by='depth', reverse=True)
    SECOND=PICK(boxes=BY_DEPTH, index=1)
    LAST=PICK(boxes=FAR_FIRST, index=-1)
    BLUE=SELECT(boxes=ALL, which='largest')
    RIGHT=SIDE(boxes=ALL, of=BLUE, side='right')
    LEFT=SIDE(boxes=ALL, of=BLUE, side='left')
    ABOVE=SIDE(boxes=ALL, of=BLUE, side='above')
    NEARER=SIDE(boxes=ALL, of=BLUE, side='nearer')
    FARTHER=SIDE(boxes=ALL, of=BLUE, side='farther')
    FINAL=RESULT(value=SECOND)"""
    trace: list[str] = []
    assert run_steps(program, tools, trace) == tools.objects[0][2]  # depths 1.5, 2.0, 3.0, 4.0
    lines = {line.split("=")[0].split(": ")[1]: line for line in trace}
    assert lines["LAST"].endswith("box [200, 110, 230, 140]")
    assert "2 boxes" in lines["RIGHT"] and "1 box:" in lines["LEFT"] and "[260, 60, 300, 130]" in lines["ABOVE"]
    assert "2 boxes" in lines["NEARER"] and lines["FARTHER"].endswith("1 box: [260, 60, 300, 130]")
    # SORT by depth reads each box once, however often it is compared.
    assert sum(1 for tool, _ in tools.calls if tool == "depth") == 4


def test_filter_and_ask(tools):
    program = """ALL=DETECT(phrase='objects')
    RED=FILTER(boxes=ALL, question='What color is this object?', answer='Red')
    N=COUNT(boxes=RED)
    CONE=SELECT(boxes=ALL, which='rightmost')
    COLOR=ASK(box=CONE, question='What color is this object?')
    SCENE=ASK(question='What is in the image?')
    WHOLE=ASK(box=IMAGE, question='What is in the image?')
    FINAL=RESULT(value=COLOR)"""
    trace: list[str] = []
    assert run_steps(program, tools, trace) == "green"
    assert trace[2].endswith("N=COUNT -> 2")
    assert trace[5].endswith("SCENE=ASK -> 'a table'") and trace[6].endswith("WHOLE=ASK -> 'a table'")
    # The whole image (no box, or IMAGE) is asked about without a crop.
    assert [args for tool, args in tools.calls if tool == "vqa"][-2:] == [(None, "What is in the image?")] * 2


def test_depth_measure_distance_and_eval(tools):
    program = """RED=DETECT(phrase='red cube')
    A=SELECT(boxes=RED, which='best')
    BLUE=DETECT(phrase='blue cube')
    B=SELECT(boxes=BLUE, which='best')
    DA=DEPTH(box=A)
    HA=MEASURE(box=A, what='height')
    HB=MEASURE(box=B, what='height')
    DB=DEPTH(box=B)
    W=MEASURE(box=IMAGE, what='width')
    CX=MEASURE(box=A, what='center_x')
    D3=DISTANCE3D(a=A, b=B)
    RATIO=EVAL(expr='0.5 * ({HB} * {DB}) / ({HA} * {DA})')
    FINAL=RESULT(value=RATIO)"""
    trace: list[str] = []
    assert run_steps(program, tools, trace) == pytest.approx(0.5 * (60 * 3.0) / (40 * 2.0))
    values = {line.split(": ")[1].split("=")[0]: line.rsplit("-> ", 1)[1] for line in trace}
    assert values["W"] == "320" and values["CX"] == "40" and values["DA"] == "2"
    # Back-projection with the focal length taken as one image width.
    a = ((40 - 160) * 2.0 / 320, (120 - 120) * 2.0 / 320, 2.0)
    b = ((130 - 160) * 3.0 / 320, (120 - 120) * 3.0 / 320, 3.0)
    assert float(values["D3"]) == pytest.approx(math.dist(a, b), rel=1e-5)


def test_lower_case_steps_and_quoted_placeholders(tools):
    program = """cubes = detect(phrase="cubes")
    n = count(boxes=cubes)
    c = ASK(box=IMAGE, question='What is this?')
    answer = EVAL(expr="'many' if {n} >= 2 and '{c}' == 'a table' else 'few'")
    final = RESULT(value=answer)"""
    assert run_steps(program, tools) == "many"


def test_a_program_without_result_answers_none(tools):
    assert run_steps("CUBES=DETECT(phrase='cubes')", tools) is None


@pytest.mark.parametrize("program, message", [
    ("A=DETECT(phrase='cube')\nthis is not a step", r"^line 2: this is not a step: expected NAME=STEP"),
    ("A=DETECT(phrase='cube'", r"^line 1: .*'\(' was never closed"),
    ("A=DETECT(phrase='cube')\nB=DETECT(phrase='cone')\nN=COUNT(boxes=C)",
     r"^line 3: N=COUNT\(boxes=C\): unknown variable 'C' in COUNT\(boxes=...\); defined so far: A, B, IMAGE"),
    ("A=DETECT(phrase='cube')\nN=EVAL(expr='{A2} + 1')", r"^line 2: .*unknown variable 'A2' in EVAL"),
    ("A=LOCATE(phrase='cube')", r"^line 1: .*unknown step 'LOCATE'; the steps are DETECT, COUNT"),
    ("A=DETECT(phrase='cube')\nN=COUNT(box=A)", r"^line 2: .*COUNT has no argument 'box'; its arguments: boxes"),
    ("A=DETECT()", r"^line 1: .*DETECT needs the argument 'phrase'"),
    ("A=DETECT('cube')", r"^line 1: .*DETECT: name every argument, e.g. DETECT\(phrase='red cube'\)"),
    ("A=DETECT(phrase='cube', phrase='cone')",
     r"^line 1: .*(argument 'phrase' is given twice|keyword argument repeated)"),
    ("A=DETECT(phrase=foo())", r"^line 1: .*an argument must be a quoted string, a number"),
    ("A=DETECT(phrase='cube').x", r"^line 1: .*expected NAME=STEP"),
    ("# only a comment", r"the program has no steps"),
])
def test_static_errors_name_the_line_before_any_tool_call(tools, program, message):
    assert re.search(message, step_error(program, tools)), step_error(program, tools)
    assert tools.calls == []


@pytest.mark.parametrize("program, message", [
    ("A=DETECT(phrase='cube')\nN=COUNT(boxes='A')",
     r"^line 2: N=COUNT\(boxes='A'\): COUNT: boxes must be a list of boxes"),
    ("A=DETECT(phrase='cube')\nB=SELECT(boxes=A, which='best')\nN=COUNT(boxes=B)", r"^line 3: .*got a box"),
    ("A=DETECT(phrase='pyramid')\nB=SELECT(boxes=A, which='leftmost')",
     r"^line 2: .*SELECT: the box list is empty \(nothing was detected\)"),
    ("A=DETECT(phrase='cube')\nB=PICK(boxes=A, index=5)", r"^line 2: .*PICK: index 5 is out of range for 2 boxes"),
    ("A=DETECT(phrase='cube')\nB=SELECT(boxes=A, which='middle')", r"^line 2: .*SELECT: which must be one of 'best'"),
    ("A=DETECT(phrase='cube')\nB=SORT(boxes=A, by='x', reverse='yes')", r"^line 2: .*reverse must be True or False"),
    ("A=DETECT(phrase='cube')\nB=EVAL(expr='{A} + 1')", r"^line 2: .*EVAL: A is a list of boxes; expressions work on"),
    ("Z=EVAL(expr='1 / 0')", r"^line 1: .*EVAL: division by zero"),
])
def test_runtime_errors_name_the_line(tools, program, message):
    assert re.search(message, step_error(program, tools)), step_error(program, tools)


def test_tool_errors_keep_their_type_and_name_the_line(tools):
    trace: list[str] = []
    with pytest.raises(FakeToolError, match=r"^line 2: B=DETECT\(phrase=''\): gd_detect\(\): phrases must be"):
        run_steps("A=DETECT(phrase='cube')\nB=DETECT(phrase='')", tools, trace)
    assert trace[-1].startswith("line 2: B=DETECT failed: tool error")


# --------------------------------------------------------------------------- the expression evaluator

@pytest.mark.parametrize("expression, expected", [
    ("1 + 2 * 3", 7), ("7 // 2 + 7 % 2", 4), ("2 ** 10", 1024), ("-{N} + +1", -2), ("{X} / 4", 0.625),
    ("{N} > 2", True), ("1 < {N} <= 3", True), ("{S} == 'red' and not {B}", True), ("{B} or 'fallback'", "fallback"),
    ("'yes' if {X} < 3 else 'no'", "yes"), ("'re' in {S}", True), ("'blue' not in {S}", True),
    ("'{S}' + 'dish'", "reddish"), ("N * 2", 6), ("False or {N} == 3", True),
    ("{N} == 0 or {X} / {N} > 0", True),  # short-circuit: the right side is not evaluated when it need not be
    ("{Z} > 0 and 1 / {Z} > 0", False),
])
def test_safe_eval_computes(expression, expected):
    result = safe_eval(expression, {"N": 3, "X": 2.5, "S": "red", "B": False, "Z": 0})
    assert result == expected and type(result) is type(expected)


@pytest.mark.parametrize("expression, message", [
    ("__import__('os').system('true')", "function calls are not allowed"),
    ("len('abc')", "function calls are not allowed"),
    ("(1).__class__", "attribute access is not allowed"),
    ("'abc'.upper", "attribute access is not allowed"),
    ("import os", "cannot read the expression"),
    ("x = 1", "cannot read the expression"),
    ("'abc'[0]", "indexing is not allowed"),
    ("(lambda: 1)", "lambdas are not allowed"),
    ("[c for c in 'ab']", "comprehensions are not allowed"),
    ("[1, 2]", "lists are not allowed"),
    ("(y := 3)", "assignments are not allowed"),
    ("f'{1}'", "f-strings are not allowed"),
    ("None", "the constant None is not allowed"),
    ("__builtins__", "unknown variable '__builtins__'"),
    ("{N} is 3", "comparison Is is not allowed"),
    ("'ab' * 3", "arithmetic needs numbers"),
    ("'%s' % 'x'", "arithmetic needs numbers"),
    ("'a' < 3", "cannot compare"),
    ("3 in 'abc'", "'in' tests whether a string occurs"),
    ("10 ** 100000", "the exponent 100000 is too large"),
    ("10.0 ** 400", "the number is too large"),
    ("", "non-empty"),
])
def test_safe_eval_refuses(expression, message):
    with pytest.raises(VisProgError, match=re.escape(message)):
        safe_eval(expression, {"N": 3})


def test_safe_eval_never_evaluates_python():
    # Placeholders are variable references, not text pasted into the expression.
    variables = {"S": "__import__('os').getcwd()"}
    assert safe_eval("{S}", variables) == "__import__('os').getcwd()"
    assert safe_eval("'{S}' == 'x'", variables) is False


# --------------------------------------------------------------------------- the prelude and the system

def test_interpreter_prelude_runs_on_its_own(tools):
    """The text sent to the sandbox needs nothing but the standard library."""
    namespace: dict[str, Any] = {"__name__": "prelude"}
    exec(compile(visprog.interpreter_source(), visprog.INTERPRETER_FILE, "exec"), namespace)
    assert not re.search(r"^\s*(from|import)\s+harness", visprog.interpreter_source(), re.M)
    answer = namespace["run_program"]("A=DETECT(phrase='cube')\nN=COUNT(boxes=A)\nF=RESULT(value=N)",
                                      FakeImage(), tools.as_dict(), FakeToolError, lambda line: None)
    assert answer == 2


def test_prompt_documents_every_step_and_its_examples_parse():
    prompt = (PROMPTS / "visprog.md").read_text()
    for step in STEPS:
        assert f"| {step} |" in prompt, step
    examples = re.findall(r"<answer>\n(.*?)</answer>", prompt, re.S)
    assert len(examples) >= 4
    for example in examples:
        lines = parse_program(example)
        assert lines[-1].step == "RESULT"


def test_registered_and_prompt_defaults():
    assert system_class("visprog") is VisProgSystem and system_class("vipergpt") is ViperGPTSystem
    assert {"visprog", "vipergpt"} <= set(SYSTEM_KINDS.names())
    system = VisProgSystem("vp", {"llm": {"backend": "scripted", "path": "x.jsonl"}})
    assert "| DETECT |" in system.prompt and "{api}" not in system.prompt
    viper = ViperGPTSystem("vg", {"llm": {"backend": "scripted", "path": "x.jsonl"}})
    assert "def find(self, object_name: str) -> list[ImagePatch]:" in viper.prompt
    assert "{api}" not in viper.prompt


def _visprog_system() -> VisProgSystem:
    return VisProgSystem("vp", {"llm": {"backend": "scripted", "path": "unused.jsonl"}})


def test_visprog_reply_to_program():
    steps = "A=DETECT(phrase='cube')\nN=COUNT(boxes=A)\nF=RESULT(value=N)"
    reply = f"<plan>count cubes</plan>\n<answer>\n{steps}\n</answer>"
    program = _visprog_system().program_from_reply(reply)
    assert isinstance(program, Program)
    assert program.source == steps
    assert program.plan == "count cubes" and program.raw == reply
    # The sandbox program carries the interpreter and the steps as string literals.
    assert repr(program.source) in program.code and repr(visprog.interpreter_source()) in program.code
    compile_program(program.code)


@pytest.mark.parametrize("reply, message", [
    ("I cannot see the image.", "no program"),
    ("<answer>count the cubes</answer>", "no step program"),
])
def test_visprog_format_errors(reply, message):
    error = _visprog_system().program_from_reply(reply)
    assert isinstance(error, str) and message in error


# --------------------------------------------------------------------------- the ImagePatch API

@pytest.fixture
def api(tools):
    trace: list[str] = []
    vipergpt._RUNTIME.update(image=FakeImage(), tools=tools.as_dict(), log=trace.append)
    yield trace
    vipergpt._RUNTIME.clear()


def test_patch_geometry_and_crops(api):
    root = ImagePatch(FakeImage())
    assert (root.left, root.top, root.right, root.bottom) == (0, 0, 320, 240)
    assert (root.width, root.height, root.horizontal_center, root.vertical_center) == (320, 240, 160, 120)
    patch = ImagePatch(FakeImage(), 10, 20, 50, 100)
    assert patch.box == [10, 20, 50, 100] and patch.area == 40 * 80
    assert ImagePatch(patch).box == patch.box and ImagePatch(FakeImage(), -5, 0, 400, 300).box == [0, 0, 320, 240]
    crop = patch.crop(0, 50, 30, 500)
    assert crop.box == [10, 50, 30, 100]
    assert patch.overlaps_with(45, 90, 60, 120) and not patch.overlaps_with(60, 0, 70, 10)


def test_find_exists_and_queries(api, tools):
    root = ImagePatch(FakeImage())
    cubes = root.find("cube")
    assert [c.box for c in cubes] == [tools.objects[1][2], tools.objects[0][2]]  # best first
    assert cubes[0].score > cubes[1].score and cubes[0].label == "cube"
    left_half = root.crop(0, 0, 80, 240)
    assert [c.box for c in left_half.find("cube")] == [tools.objects[0][2]]  # centres inside the crop only
    assert root.exists("cone") and not root.exists("pyramid")
    assert cubes[1].simple_query("What color is this object?") == "red"
    assert root.simple_query("What is here?") == "a table"
    assert tools.calls[-1] == ("vqa", (None, "What is here?"))  # the whole image, not a crop
    assert cubes[1].verify_property("cube", "red") and not cubes[0].verify_property("cube", "red")
    assert cubes[0].compute_depth() == 3.0
    assert cubes[0].best_text_match(["red cube", "blue cube", "cube"]) == "blue cube"
    assert api[0].startswith("find('cube') in [0, 0, 320, 240] -> 2 patches: [100, 90, 160, 150], [20, 100, 60, 140]")
    assert any(line.startswith("compute_depth() on [100, 90, 160, 150] -> 3") for line in api)


def test_helpers(api, tools):
    root = ImagePatch(FakeImage())
    red_cube, blue_cube = root.find("red cube")[0], root.find("blue cube")[0]
    assert vipergpt.distance(red_cube, blue_cube) == pytest.approx(math.hypot(90, 0))
    a = ((40 - 160) * 2.0 / 320, 0.0, 2.0)
    b = ((130 - 160) * 3.0 / 320, 0.0, 3.0)
    assert vipergpt.distance_3d(red_cube, blue_cube) == pytest.approx(math.dist(a, b))
    assert vipergpt.best_image_match([blue_cube, red_cube], "red object") is red_cube
    assert vipergpt.best_image_match([], "anything") is None
    assert vipergpt.bool_to_yesno(True) == "yes" and vipergpt.bool_to_yesno(0) == "no"
    assert vipergpt.coerce_to_numeric("about 1,250.5 m") == 1250.5 and vipergpt.coerce_to_numeric(3) == 3.0
    with pytest.raises(ValueError):
        vipergpt.coerce_to_numeric("none")


def test_api_prelude_runs_a_command_on_its_own(tools):
    namespace: dict[str, Any] = {"__name__": "prelude"}
    exec(compile(vipergpt.api_source(), vipergpt.API_FILE, "exec"), namespace)
    trace: list[str] = []
    source = ("def execute_command(image):\n"
              "    image_patch = ImagePatch(image)\n"
              "    cubes = image_patch.find('cube')\n"
              "    return bool_to_yesno(len(cubes) == 2 and math.isfinite(np.float64(cubes[0].compute_depth())))\n")
    assert namespace["run_command"](source, FakeImage(), tools.as_dict(), FakeToolError, trace.append) == "yes"
    assert trace[-1] == "execute_command -> 'yes'"
    with pytest.raises(NameError, match="does not define execute_command"):
        namespace["run_command"]("x = 1", FakeImage(), tools.as_dict(), FakeToolError, trace.append)


def test_vipergpt_prompt_examples_define_execute_command():
    prompt = (PROMPTS / "vipergpt.md").read_text()
    examples = re.findall(r"<answer>\n(.*?)</answer>", prompt, re.S)
    assert len(examples) >= 4
    api_names = set(vipergpt.API_NAMES)
    for example in examples:
        tree = ast.parse(example)
        assert [node.name for node in tree.body] == ["execute_command"]
        called = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
        assert called <= api_names | {"len", "min", "max", "sorted"}, called


def _viper_system() -> ViperGPTSystem:
    return ViperGPTSystem("vg", {"llm": {"backend": "scripted", "path": "unused.jsonl"}})


@pytest.mark.parametrize("reply", [
    "<plan>p</plan><answer>\ndef execute_command(image):\n    return 1\n</answer>",
    "Here it is:\n```python\ndef execute_command(image):\n    return 1\n```\n",
    "def execute_command(image):\n    return 1\n",  # a bare completion, as the original prompt format produced
])
def test_vipergpt_reply_to_program(reply):
    program = _viper_system().program_from_reply(reply)
    assert isinstance(program, Program)
    assert program.source == "def execute_command(image):\n    return 1"
    assert repr(program.source) in program.code and repr(vipergpt.api_source()) in program.code
    compile_program(program.code)


@pytest.mark.parametrize("reply, message", [
    ("No idea.", "no program"),
    ("<answer>\nreturn 3\n</answer>", "does not define `def execute_command(image):`"),
])
def test_vipergpt_format_errors(reply, message):
    error = _viper_system().program_from_reply(reply)
    assert isinstance(error, str) and message in error


# --------------------------------------------------------------------------- end to end: CLI, sandbox, oracle tools

FAMILIES = ("count", "relation_2d", "depth_order")
MINI_TASK = synthetic_task("synthetic_mini", "synthetic/mini")
_COUNT = re.compile(r"^How many (.+?) (?:are there|are in the image|can you see)\?$")
_RELATION = re.compile(r"^(?:In the image, )?[Ii]s the (\w+ \w+) (to the left of|to the right of|above|below|"
                       r"closer to the camera than|farther from the camera than) the (\w+ \w+)\?$")
_COLORS = ("red", "green", "blue", "yellow", "purple", "orange")


def visprog_program(question: str) -> str:
    """A correct step program for the three families, written as a model would."""
    count = _COUNT.match(question)
    if count:
        words = count.group(1).split()
        if len(words) == 2 and words[0] in _COLORS and words[1] != "objects":
            # Colour and shape: detect the shape, keep the colour by asking (exercises FILTER).
            return (f"SHAPES=DETECT(phrase='{words[1]}')\n"
                    f"KEPT=FILTER(boxes=SHAPES, question='What color is this object?', answer='{words[0]}')\n"
                    "N=COUNT(boxes=KEPT)\nFINAL=RESULT(value=N)")
        return f"BOXES=DETECT(phrase='{count.group(1)}')\nN=COUNT(boxes=BOXES)\nFINAL=RESULT(value=N)"
    first, relation, second = _RELATION.match(question).groups()
    measure, op = {"to the left of": ("X", "<"), "to the right of": ("X", ">"), "above": ("Y", "<"),
                   "below": ("Y", ">"), "closer to the camera than": ("D", "<"),
                   "farther from the camera than": ("D", ">")}[relation]
    lines = [f"AS=DETECT(phrase='{first}')", "A=SELECT(boxes=AS, which='best')",
             f"BS=DETECT(phrase='{second}')", "B=SELECT(boxes=BS, which='best')"]
    if measure == "D":
        lines += ["VA=DEPTH(box=A)", "VB=DEPTH(box=B)"]
    else:
        what = "center_x" if measure == "X" else "center_y"
        lines += [f"VA=MEASURE(box=A, what='{what}')", f"VB=MEASURE(box=B, what='{what}')"]
    lines += [f"ANSWER=EVAL(expr=\"'yes' if {{VA}} {op} {{VB}} else 'no'\")", "FINAL=RESULT(value=ANSWER)"]
    return "\n".join(lines)


def vipergpt_program(question: str) -> str:
    count = _COUNT.match(question)
    if count:
        words = count.group(1).split()
        if len(words) == 2 and words[0] in _COLORS and words[1] != "objects":
            return ("def execute_command(image):\n"
                    "    image_patch = ImagePatch(image)\n"
                    f"    shapes = image_patch.find({words[1]!r})\n"
                    f"    return len([s for s in shapes if s.verify_property('object', {words[0]!r})])\n")
        return ("def execute_command(image):\n"
                f"    return len(ImagePatch(image).find({count.group(1)!r}))\n")
    first, relation, second = _RELATION.match(question).groups()
    value, op = {"to the left of": ("horizontal_center", "<"), "to the right of": ("horizontal_center", ">"),
                 "above": ("vertical_center", "<"), "below": ("vertical_center", ">"),
                 "closer to the camera than": ("compute_depth()", "<"),
                 "farther from the camera than": ("compute_depth()", ">")}[relation]
    return ("def execute_command(image):\n"
            "    image_patch = ImagePatch(image)\n"
            f"    firsts = image_patch.find({first!r})\n"
            f"    seconds = image_patch.find({second!r})\n"
            "    if not firsts or not seconds:\n"
            "        return 'no'\n"
            f"    return bool_to_yesno(firsts[0].{value} {op} seconds[0].{value})\n")


@pytest.fixture(scope="module")
def mini_benchmark(tmp_path_factory) -> tuple[Path, Path, list[dict]]:
    """A 12-scene synthetic benchmark cut down to counting, left/right and nearer questions,
    read as a local copy (--data-dir) by a task in an include folder."""
    from harness.synthetic.dataset import QUESTIONS, build_benchmark

    root = tmp_path_factory.mktemp("mini")
    data = root / "data" / "synthetic" / "mini"
    build_benchmark(data, seed=5, n_scenes=12)
    rows = [json.loads(line) for line in (data / QUESTIONS).read_text().splitlines()]
    rows = [row for row in rows if row["family"] in FAMILIES]
    (data / QUESTIONS).write_text("".join(json.dumps(row) + "\n" for row in rows))
    include = root / "include"
    include.mkdir()
    (include / "synthetic_mini.yaml").write_text(MINI_TASK)
    assert {row["family"] for row in rows} == set(FAMILIES) and len(rows) >= 12
    return include, root / "data", rows


def write_script(path: Path, replies: dict[str, str], errors: dict[str, str] | None = None) -> Path:
    """A scripted model: one line per question, matched by the question as the prompt ends."""
    with path.open("w") as f:
        for question, reply in replies.items():
            f.write(json.dumps({"match": f"Question: {question}", "response": reply}) + "\n")
        for question, error in (errors or {}).items():
            f.write(json.dumps({"match": f"Question: {question}", "error": error}) + "\n")
    return path


def write_system(include: Path, name: str, kind: str, script: Path) -> None:
    (include / f"{name}.yaml").write_text(
        f"system: {name}\nkind: {kind}\nparams:\n  llm: {{backend: scripted, path: {script}}}\n"
        f"  tools: oracle\n  concurrency: 2\n  limits: {{wall_seconds: 20, cpu_seconds: 10}}\n")


def run_cli(include: Path, data: Path, system: str, out: Path, code: int = 0) -> tuple[dict, list[dict]]:
    """A run's results and records; ``code``: the exit code it must end with (3: infrastructure failures)."""
    from harness.cli import main

    assert main(["run", "--system", system, "--tasks", "synthetic_mini", "--include-path", str(include),
                 "--data-dir", str(data), "--output-path", str(out), "--log-samples"]) == code
    results = json.loads((out / "results.json").read_text())["results"]["synthetic_mini"]
    records = [json.loads(line) for line in (out / "samples_synthetic_mini.jsonl").read_text().splitlines()]
    return results, records


@pytest.mark.parametrize("kind, writer", [("visprog", visprog_program), ("vipergpt", vipergpt_program)])
def test_correct_programs_score_everything(mini_benchmark, tmp_path, kind, writer):
    include, data, rows = mini_benchmark
    questions = {row["question"] for row in rows}
    replies = {q: f"<plan>Answer from the tools.</plan>\n<answer>\n{writer(q)}\n</answer>" for q in questions}
    system = f"{kind}-scripted-{tmp_path.name}"
    write_system(include, system, kind, write_script(tmp_path / "script.jsonl", replies))
    try:
        results, records = run_cli(include, data, system, tmp_path / "run")
    finally:
        (include / f"{system}.yaml").unlink()
    n = len(rows)
    assert results["n"] == n and results["status_counts"] == {"ok": n}, results["status_counts"]
    assert results["accuracy,strict"] == 1.0
    assert set(results["subsets"]) == set(FAMILIES)
    for record in records:
        program = writer(record["question"]).strip()
        assert record["program"] == program  # the model's program, not our prelude
        assert record["plan"] == "Answer from the tools." and record["raw"].startswith("<plan>")
        assert record["tool_calls"] and {c["tool"] for c in record["tool_calls"]} <= {"gd_detect", "depth", "vqa"}
        assert record["isolation"]
        if kind == "visprog":  # one trace line per step, in order
            steps = [line.split("=")[1].split("(")[0] for line in program.splitlines()]
            traced = re.findall(r"^line \d+: \w+=(\w+) -> ", record["stdout"], re.M)
            assert traced == steps, record["stdout"]
        else:
            assert record["stdout"].startswith("find(") and "execute_command -> " in record["stdout"]


def test_failures_get_their_statuses(mini_benchmark, tmp_path):
    include, data, rows = mini_benchmark
    questions = sorted({row["question"] for row in rows})[:5]
    bad_visprog = {
        questions[0]: "I would need to see the image.",  # format_error: no program
        questions[1]: "<answer>\nA=DETECT(phrase='cube')\nN=COUNT(boxes=B)\nF=RESULT(value=N)\n</answer>",
        questions[2]: "<answer>\nA=DETECT(phrase='')\nF=RESULT(value=A)\n</answer>",  # rejected by the tool API
        questions[3]: "<answer>\nA=DETECT(phrase='cube')\n</answer>",  # no RESULT
    }
    bad_viper = {
        questions[0]: "<answer>\nreturn 1\n</answer>",
        questions[1]: ("<answer>\ndef execute_command(image):\n    patch = ImagePatch(image)\n"
                       "    return 1 / 0\n</answer>"),
        questions[2]: "<answer>\ndef execute_command(image):\n    return ImagePatch(image).find('')\n</answer>",
        questions[3]: "<answer>\ndef execute_command(image):\n    ImagePatch(image).find('cube')\n</answer>",
    }
    expected = {questions[0]: "format_error", questions[1]: "exception", questions[2]: "tool_error",
                questions[3]: "no_answer", questions[4]: "api_error"}
    for kind, replies in (("visprog", bad_visprog), ("vipergpt", bad_viper)):
        script = write_script(tmp_path / f"{kind}.jsonl", replies, {questions[4]: "the model refused"})
        others = {row["question"]: "nothing useful" for row in rows if row["question"] not in expected}
        with script.open("a") as f:
            f.writelines(json.dumps({"match": f"Question: {q}", "response": r}) + "\n" for q, r in others.items())
        system = f"{kind}-broken"
        write_system(include, system, kind, script)
        try:
            _, records = run_cli(include, data, system, tmp_path / kind, code=3)  # the api_error
        finally:
            (include / f"{system}.yaml").unlink()
        by_question = {record["question"]: record for record in records}
        for question, status in expected.items():
            assert by_question[question]["status"] == status, (kind, by_question[question])
        assert {r["status"] for q, r in by_question.items() if q not in expected} == {"format_error"}
        failed = by_question[questions[1]]
        if kind == "visprog":
            assert "VisProgError: line 2: N=COUNT(boxes=B): unknown variable 'B'" in failed["detail"]
            assert failed["tool_calls"] == []  # checked before the first step ran
            assert failed["program"] == "A=DETECT(phrase='cube')\nN=COUNT(boxes=B)\nF=RESULT(value=N)"
            tool_failure = by_question[questions[2]]
            assert "line 1: A=DETECT(phrase=''): gd_detect" in tool_failure["detail"]
            assert "line 1: A=DETECT failed: tool error" in tool_failure["stdout"]
        else:
            assert 'File "<execute_command>", line 3, in execute_command' in failed["detail"]
            assert "return 1 / 0" in failed["detail"] and "ZeroDivisionError" in failed["detail"]
            assert failed["program"].startswith("def execute_command(image):")
            assert "gd_detect" in by_question[questions[2]]["detail"]
        assert "the model refused" in by_question[questions[4]]["detail"]
