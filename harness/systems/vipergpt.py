"""A ViperGPT-style baseline: the model writes ``def execute_command(image):`` in Python
over an image-patch API, which we implement here on top of the three tools.

The API (``ImagePatch`` and a few helpers) is the part of this file above the
PRELUDE_END marker. It uses the standard library only (numpy when present)
because its source text is sent into the sandbox, where it is loaded as a
module of its own; the model's program follows as a string literal, is compiled
there under the name ``<execute_command>`` and called with the patch of the
whole image. The evaluating process never runs either. Every API call prints a
trace line (the sandbox keeps the program's stdout).

Coordinates are the tools' own: pixels, x to the right, y downwards, so a
patch's ``top`` is smaller than its ``bottom`` and "above" means a smaller
``vertical_center``. (ViperGPT counted ``lower``/``upper`` from the bottom; we
keep one convention for every system and prompt of the harness.)
"""

from __future__ import annotations

import linecache
import math
import re
from typing import Any, Callable

try:  # programs may use numpy, as in every other program system
    import numpy as np
except ImportError:  # pragma: no cover - the sandbox preloads numpy
    np = None

PROGRAM_FILE = "<execute_command>"

# The image, the tools and the trace sink of the program being run; set by run_command.
_RUNTIME: dict[str, Any] = {}


def _trace(message: str) -> None:
    _RUNTIME.get("log", print)(message)


def _call(tool: str, *args: Any) -> Any:
    return _RUNTIME["tools"][tool](_RUNTIME["image"], *args)


def _box_text(box: list[float]) -> str:
    return "[" + ", ".join(f"{v:.0f}" for v in box) + "]"


def _short(value: Any, limit: int = 80) -> str:
    if isinstance(value, ImagePatch):
        text = f"patch {_box_text(value.box)}"
    elif isinstance(value, list) and value and all(isinstance(v, ImagePatch) for v in value):
        shown = ", ".join(_box_text(v.box) for v in value[:3])
        text = f"{len(value)} patches: {shown}{', ...' if len(value) > 3 else ''}"
    elif isinstance(value, float):
        text = f"{value:.6g}"
    else:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class ImagePatch:
    """A rectangle of the image, and the questions that can be asked about it.

    Attributes (pixels; x grows to the right, y grows downwards):
        left, top, right, bottom: the patch's edges (top < bottom).
        width, height, area: its size.
        horizontal_center, vertical_center: its centre.
        box: [left, top, right, bottom], the form the tools use.
        score: the detector's confidence for a patch returned by find (1.0 otherwise).
        label: the name it was found with (None for the whole image and crops).
    ImagePatch(image) is the whole image.
    """

    def __init__(self, image: Any, left: float | None = None, top: float | None = None,
                 right: float | None = None, bottom: float | None = None, score: float = 1.0,
                 label: str | None = None) -> None:
        """A patch of `image` with these edges (by default the whole image, or a copy of a patch).

        `execute_command` receives the whole image's patch; ImagePatch(image) of it is the same patch.
        """
        if isinstance(image, ImagePatch):  # ImagePatch(patch) copies a patch
            image, edges = image.image, (image.left, image.top, image.right, image.bottom)
        else:
            edges = (0.0, 0.0, float(image.width), float(image.height))
        self.image = image
        given = [edges[i] if value is None else float(value) for i, value in enumerate((left, top, right, bottom))]
        width, height = float(image.width), float(image.height)
        self.left, self.right = (min(max(v, 0.0), width) for v in sorted(given[0::2]))
        self.top, self.bottom = (min(max(v, 0.0), height) for v in sorted(given[1::2]))
        self.score = float(score)
        self.label = label

    # ------------------------------------------------------------------ geometry

    @property
    def width(self) -> float:
        return self.right - self.left

    @property
    def height(self) -> float:
        return self.bottom - self.top

    @property
    def horizontal_center(self) -> float:
        return (self.left + self.right) / 2

    @property
    def vertical_center(self) -> float:
        return (self.top + self.bottom) / 2

    @property
    def area(self) -> float:
        return self.width * self.height

    @property
    def box(self) -> list[float]:
        return [self.left, self.top, self.right, self.bottom]

    def _whole_image(self) -> bool:
        return self.box == [0.0, 0.0, float(self.image.width), float(self.image.height)]

    def __repr__(self) -> str:
        name = f"{self.label!r}, " if self.label else ""
        edges = f"left={self.left:.0f}, top={self.top:.0f}, right={self.right:.0f}, bottom={self.bottom:.0f}"
        return f"ImagePatch({name}{edges})"

    # ------------------------------------------------------------------ tools

    def find(self, object_name: str) -> list[ImagePatch]:
        """Every object called `object_name` whose centre lies in this patch, best detection first.

        `object_name` is a short noun phrase, optionally with an appearance word ("red cube");
        never a spatial phrase ("cube on the left"). Returns [] when nothing is found.
        """
        found = []
        for detection in sorted(_call("gd_detect", object_name), key=lambda d: -float(d.get("score", 0.0))):
            patch = ImagePatch(self.image, *detection["box"], score=detection.get("score", 1.0), label=object_name)
            if self.left <= patch.horizontal_center <= self.right and self.top <= patch.vertical_center <= self.bottom:
                found.append(patch)
        _trace(f"find({object_name!r}) in {_box_text(self.box)} -> {_short(found) if found else 'nothing'}")
        return found

    def exists(self, object_name: str) -> bool:
        """True if an object called `object_name` is found in this patch."""
        return len(self.find(object_name)) > 0

    def simple_query(self, question: str) -> str:
        """A short lowercase answer to a simple question about this patch ("What color is this object?")."""
        box = None if self._whole_image() else self.box  # the whole image is asked about as such, not as a crop
        answer = str(_call("vqa", box, question))
        _trace(f"simple_query({question!r}) on {_box_text(self.box)} -> {answer!r}")
        return answer

    def verify_property(self, object_name: str, property: str) -> bool:
        """True if the `object_name` in this patch has the `property` (a colour, a material, a state)."""
        answer = self.simple_query(f"Is the {object_name} {property}?")
        return answer.strip().lower().startswith("yes")

    def best_text_match(self, option_list: list[str]) -> str:
        """The option (from a list of short descriptions) that best describes this patch."""
        if not option_list:
            raise ValueError("best_text_match needs at least one option")
        options = [str(o) for o in option_list]
        listing = ", ".join(options[:-1]) + f" or {options[-1]}" if len(options) > 1 else options[0]
        answer = self.simple_query(f"Which describes this object best: {listing}?").strip().lower()
        for option in options:  # an exact answer first, then an option the answer mentions
            if answer == option.lower():
                return option
        for option in sorted(options, key=len, reverse=True):
            if re.search(rf"\b{re.escape(option.lower())}\b", answer):
                return option
        return options[0]

    def compute_depth(self) -> float:
        """Distance from the camera, in metres, of what is seen at this patch's centre."""
        value = float(_call("depth", self.box))
        _trace(f"compute_depth() on {_box_text(self.box)} -> {value:.6g}")
        return value

    # ------------------------------------------------------------------ sub-patches

    def crop(self, left: float, top: float, right: float, bottom: float) -> ImagePatch:
        """The part of this patch inside [left, top, right, bottom] (image pixel coordinates)."""
        return ImagePatch(self.image, max(left, self.left), max(top, self.top),
                          min(right, self.right), min(bottom, self.bottom))

    def overlaps_with(self, left: float, top: float, right: float, bottom: float) -> bool:
        """True if this patch and the rectangle [left, top, right, bottom] share any pixel."""
        return self.left <= right and left <= self.right and self.top <= bottom and top <= self.bottom


def best_image_match(list_patches: list[ImagePatch], content: str | list[str]) -> ImagePatch | None:
    """The patch that best shows `content` (a description, or a list of them): the first patch,
    in detector order, that the vision model confirms; else the best detection. None for no patches."""
    if not list_patches:
        return None
    wanted = [content] if isinstance(content, str) else list(content)
    ranked = sorted(list_patches, key=lambda p: -p.score)
    for patch in ranked:
        if any(patch.simple_query(f"Is this {text}?").strip().lower().startswith("yes") for text in wanted):
            return patch
    return ranked[0]


def distance(patch_a: ImagePatch, patch_b: ImagePatch) -> float:
    """Distance in pixels between the centres of two patches, on the image."""
    return math.hypot(patch_a.horizontal_center - patch_b.horizontal_center,
                      patch_a.vertical_center - patch_b.vertical_center)


def _position_3d(patch: ImagePatch) -> tuple[float, float, float]:
    # Back-projection with the focal length assumed to be one image width (the
    # camera's is not given to programs), at the depth of the patch centre.
    z = patch.compute_depth()
    focal = float(patch.image.width)
    return ((patch.horizontal_center - patch.image.width / 2) * z / focal,
            (patch.vertical_center - patch.image.height / 2) * z / focal, z)


def distance_3d(patch_a: ImagePatch, patch_b: ImagePatch) -> float:
    """Approximate distance in metres between two objects in 3D (centre pixels back-projected with their depth)."""
    return math.dist(_position_3d(patch_a), _position_3d(patch_b))


def bool_to_yesno(bool_answer: bool) -> str:
    """The answer "yes" for a true value and "no" otherwise."""
    return "yes" if bool_answer else "no"


def coerce_to_numeric(text: Any) -> float:
    """The first number in a text ("about 3.5 m" -> 3.5); raises ValueError when there is none."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text)
    match = re.search(r"-?\d+(?:\.\d+)?", str(text).replace(",", ""))
    if match is None:
        raise ValueError(f"no number in {text!r}")
    return float(match.group())


# What the model's program sees besides Python's builtins.
API_NAMES = ("ImagePatch", "best_image_match", "distance", "distance_3d", "bool_to_yesno", "coerce_to_numeric")


def run_command(source: str, image: Any, tools: dict[str, Callable[..., Any]],
                tool_error: type[BaseException] = Exception, log: Callable[[str], None] = print) -> Any:
    """Compile the model's program, call its ``execute_command`` with the whole image's patch
    and return the result. Tool failures propagate as ``tool_error`` (the program may catch it)."""
    _RUNTIME.update(image=image, tools=tools, log=log)
    # Registered so that a traceback shows the model's own line.
    linecache.cache[PROGRAM_FILE] = (len(source), None, source.splitlines(True), PROGRAM_FILE)
    namespace: dict[str, Any] = {"__name__": "__execute_command__", "math": math, "np": np, "ToolError": tool_error}
    namespace.update((name, globals()[name]) for name in API_NAMES)
    exec(compile(source, PROGRAM_FILE, "exec"), namespace)
    command = namespace.get("execute_command")
    if not callable(command):
        raise NameError("the program does not define execute_command(image)")
    answer = command(ImagePatch(image))
    log(f"execute_command -> {_short(answer)}")
    return answer


# ---- PRELUDE_END: the sandbox receives this file down to here ----

# The system itself lives in the evaluating process; these imports are below the
# prelude because the sandbox cannot import the harness.
import inspect  # noqa: E402
import textwrap  # noqa: E402

from harness.systems.llm_program import API_PLACEHOLDER, LLMProgramSystem, resolve_prompt_path  # noqa: E402
from harness.systems.parsing import parse_reply  # noqa: E402
from harness.systems.prelude import prelude_source, sandbox_code  # noqa: E402
from harness.systems.program import Program  # noqa: E402

API_FILE = "<vipergpt-api>"
_DEFINES_COMMAND = re.compile(r"^[ \t]*def[ \t]+execute_command[ \t]*\(", re.M)
# Public members of ImagePatch shown to the model, in this order.
_PATCH_MEMBERS = ("__init__", "find", "exists", "verify_property", "best_text_match", "simple_query",
                  "compute_depth", "crop", "overlaps_with")


def _stub(function: Callable[..., Any], indent: str = "") -> str:
    signature = inspect.signature(function)  # annotations stay as written (strings, quotes dropped below)
    text = f"def {function.__name__}{signature}:".replace("'", "")
    doc = inspect.getdoc(function)
    body = f'"""{doc}"""' if doc else "..."
    return textwrap.indent(f"{text}\n{textwrap.indent(body, '    ')}", indent)


def describe_patch_api() -> str:
    """The API as Python stubs with their docstrings (the prompt's ``{api}``), from the code itself."""
    class_doc = textwrap.indent(f'"""{inspect.getdoc(ImagePatch)}\n"""', "    ")
    members = [_stub(getattr(ImagePatch, name), "    ") for name in _PATCH_MEMBERS]
    helpers = [_stub(globals()[name]) for name in API_NAMES if name != "ImagePatch"]
    return "\n\n".join([f"class ImagePatch:\n{class_doc}", *members]) + "\n\n\n" + "\n\n\n".join(helpers)


def api_source() -> str:
    """The API half of this file, exactly as the sandbox runs it."""
    return prelude_source(__file__)


def sandbox_program(source: str) -> str:
    return sandbox_code("ViperGPT-style program over our ImagePatch API, run inside the sandbox.",
                        api_source(), API_FILE, "vipergpt", "run_command", source)


def extract_command(reply: str) -> tuple[str | None, str | None, str | None]:
    """(plan, program, error): the model's program from <answer> tags or a fenced block, else from
    a bare ``def execute_command`` to the end of the reply (a completion-style answer)."""
    parsed = parse_reply(reply)
    code = parsed.code
    if code is None:
        bare = _DEFINES_COMMAND.search(reply)
        if bare is None:
            return parsed.plan, None, "; ".join(parsed.notes)
        code = reply[bare.start():].strip("\n")
    if not _DEFINES_COMMAND.search(code):
        return parsed.plan, None, "the program does not define `def execute_command(image):`"
    return parsed.plan, code.rstrip(), None


class ViperGPTSystem(LLMProgramSystem):
    """The model writes ``execute_command(image)`` over :class:`ImagePatch` (``prompts/vipergpt.md``
    by default, where ``{api}`` becomes :func:`describe_patch_api`); the sandbox runs it.

    Parameters: those of :class:`LLMProgramSystem`.
    """

    kind = "vipergpt"
    original_dialect = False  # its own ImagePatch API over our tool API, under either protocol
    default_prompt = "prompts/vipergpt.md"

    def __init__(self, name: str, params: dict[str, Any], seed: int = 0) -> None:
        super().__init__(name, {"prompt": self.default_prompt, **params}, seed)

    @property
    def prompt(self) -> str:
        if self._prompt is None:
            path = resolve_prompt_path(self.params["prompt"], self.source_dir)
            if not path.is_file():
                raise FileNotFoundError(f"system {self.name}: prompt file {path} does not exist")
            # Plain substitution, not str.format: the examples hold braces of their own.
            self._prompt = path.read_text(encoding="utf-8").replace(API_PLACEHOLDER, describe_patch_api())
        return self._prompt

    def program_from_reply(self, reply: str) -> Program | str:
        plan, code, error = extract_command(reply)
        if code is None:
            return error or "no program"
        return Program(sandbox_program(code), plan=plan, raw=reply, source=code)
