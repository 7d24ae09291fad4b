"""Question families with exact answers (their balanced choice per scene: ``choice``).

Each family mirrors a skill of the paper's benchmarks:

| family | answer | mirrors |
|---|---|---|
| count | integer 0-4 | CountBenchQA, TallyQA |
| count_choice | 4 numeric options | BLINK Counting |
| relation_2d | yes/no | BLINK Spatial_Relation, GQA |
| relation_vsr | yes/no ("Is it true that ...") | VSR |
| depth_order | yes/no | RoboSpatial, Omni3D-Bench |
| depth_choice | 3 object options | RealWorldQA, BLINK |
| distance_3d | word (an object) | Omni3D-Bench |
| size_reference | float (MRA) | Omni3D-Bench |
| attribute | word (a colour or shape) | GQA |

Answers come from the scene geometry (true 3D centres and sizes, true
colours), never from the tools. An instance is generated only when it is
unambiguous: unique referring expressions ("the red cube" names one object),
2D relations apart by PIXEL_MARGIN, depth comparisons apart by DEPTH_MARGIN
in every sense of "closer" (centre distance, centre depth, nearest surface,
and the depth at the box centre a program reads).
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable

import numpy as np

from harness.synthetic import programs
from harness.tools.api import probe_pixel
from harness.synthetic.scene import COLORS, SHAPES, Scene, SceneObject
from harness.tasks.formats import options_question
from harness.types import AnswerType

FAMILIES = ("count", "count_choice", "relation_2d", "relation_vsr", "depth_order", "depth_choice",
            "distance_3d", "size_reference", "attribute")

PIXEL_MARGIN = 15.0  # 2D relations: box centres at least this far apart on the asked axis
DEPTH_MARGIN = 0.4  # metres between the two sides of any depth comparison
DISTANCE_MARGIN = 0.4  # metres between true 3D centre distances
ESTIMATE_MARGIN = 0.25  # metres between back-projected distances, for every assumed focal length
FOCAL_RANGE = (0.6, 1.6)  # assumed focal lengths, in image widths, the 3D answers must not depend on
SIZE_TOLERANCE = 0.02  # relative error of the box-height x depth estimate allowed in size questions
MAX_COUNT = 4


@dataclass
class Question:
    family: str
    question: str
    answer: Any
    answer_type: str
    program: str
    choices: list[str] | None = None


@dataclass
class Candidate:
    """A question not yet written out, with the keys it is balanced on (most important first)."""

    keys: tuple[tuple[str, Any], ...]
    make: Callable[[], Question]


@dataclass
class SceneContext:
    """A rendered scene and what the generators read from it, computed once."""

    scene: Scene
    depth: np.ndarray
    ids: np.ndarray
    centres: list[tuple[float, float]] = field(init=False)
    probe_depth: list[float] = field(init=False)
    probe_ok: list[bool] = field(init=False)  # the box-centre pixel shows the object itself
    name_counts: Counter = field(init=False)

    def __post_init__(self) -> None:
        cam = self.scene.camera
        self.centres, self.probe_depth, self.probe_ok = [], [], []
        for obj in self.objects:
            box = obj.visible_box
            self.centres.append(((box[0] + box[2]) / 2, (box[1] + box[3]) / 2))
            col, row = probe_pixel(box, cam.width, cam.height)
            self.probe_depth.append(float(self.depth[row, col]))
            self.probe_ok.append(int(self.ids[row, col]) == obj.id)
        self.name_counts = Counter(o.name for o in self.objects)

    @property
    def objects(self) -> list[SceneObject]:
        return self.scene.objects

    def referable(self, probed: bool = False) -> list[SceneObject]:
        """Objects that "the <colour> <shape>" names uniquely (and whose depth probe hits them)."""
        return [o for o in self.objects if self.name_counts[o.name] == 1 and (self.probe_ok[o.id] or not probed)]

    def clearly_nearer(self, a: SceneObject, b: SceneObject) -> bool:
        """``a`` is nearer the camera than ``b`` by DEPTH_MARGIN in every reading of "nearer"."""
        return (b.distance - a.distance >= DEPTH_MARGIN and b.center[2] - a.center[2] >= DEPTH_MARGIN
                and b.nearest_z - a.nearest_z >= DEPTH_MARGIN
                and self.probe_depth[b.id] - self.probe_depth[a.id] >= DEPTH_MARGIN)


def _plural(noun: str) -> str:
    return noun + "s"


def _count_noun(color: str | None, shape: str | None) -> str:
    return " ".join(w for w in (color, _plural(shape or "object")) if w)


def _pick(rng: np.random.Generator, items: list | tuple) -> Any:
    return items[int(rng.integers(len(items)))]


# ----------------------------------------------------------------------------- counting

def _count_filters() -> list[tuple[str, str | None, str | None]]:
    filters = [("color", c, None) for c in COLORS] + [("shape", None, s) for s in SHAPES]
    return filters + [("both", c, s) for c in COLORS for s in SHAPES]


def _count_program(rng: np.random.Generator, style: str, color: str | None, shape: str | None) -> str:
    if style == "detect":
        noun = _count_noun(color, shape)
        phrase = noun if rng.random() < 0.5 else noun[:-1]  # singular and plural phrases both work
        return programs.count_detect(phrase)
    if color and shape:
        if rng.random() < 0.5:
            return programs.count_filter(_plural(shape), "color", color)
        return programs.count_filter(f"{color} objects", "shape", shape)
    if color:
        return programs.count_filter("objects", "color", color)
    return programs.count_filter("objects", "shape", shape)


_COUNT_FORMS = ("How many {} are there?", "How many {} are in the image?", "How many {} can you see?")


def _count_question(rng, family, color, shape, answer, style) -> Question:
    text = _pick(rng, _COUNT_FORMS).format(_count_noun(color, shape))
    return Question(family, text, answer, AnswerType.INTEGER, _count_program(rng, style, color, shape))


def count_candidates(ctx: SceneContext, rng: np.random.Generator) -> list[Candidate]:
    out = []
    for kind, color, shape in _count_filters():
        answer = sum((color is None or o.color == color) and (shape is None or o.shape == shape) for o in ctx.objects)
        if answer > MAX_COUNT:
            continue
        for style in ("detect", "filter"):
            out.append(Candidate((("answer", answer), ("kind", kind), ("style", style)),
                                 partial(_count_question, rng, "count", color, shape, answer, style)))
    return out


def _count_choice_question(rng, color, shape, answer, style, letter) -> Question:
    base = _count_question(rng, "count_choice", color, shape, answer, style)
    options = [str(answer - letter + i) for i in range(4)]
    return Question("count_choice", options_question(base.question, options), options[letter],
                    AnswerType.MULTIPLE_CHOICE, base.program, options)


def count_choice_candidates(ctx: SceneContext, rng: np.random.Generator) -> list[Candidate]:
    out = []
    for kind, color, shape in _count_filters():
        answer = sum((color is None or o.color == color) and (shape is None or o.shape == shape) for o in ctx.objects)
        if not 1 <= answer <= MAX_COUNT:
            continue
        for letter in range(min(answer, 3) + 1):  # options are consecutive and never negative
            for style in ("detect", "filter"):
                out.append(Candidate((("letter", letter), ("answer", answer), ("style", style)),
                                     partial(_count_choice_question, rng, color, shape, answer, style, letter)))
    return out


# ----------------------------------------------------------------------------- relations

_REL_2D = {
    "left": "Is the {a} to the left of the {b}?",
    "right": "Is the {a} to the right of the {b}?",
    "above": "In the image, is the {a} above the {b}?",
    "below": "In the image, is the {a} below the {b}?",
}
_REL_VSR = {
    "left": "Is it true that the {a} is to the left of the {b}?",
    "right": "Is it true that the {a} is to the right of the {b}?",
    "closer": "Is it true that the {a} is in front of the {b}?",
    "farther": "Is it true that the {a} is behind the {b}?",
}


def _relation_question(family: str, text: str, a: SceneObject, b: SceneObject, kind: str, answer: str) -> Question:
    return Question(family, text.format(a=a.name, b=b.name), answer, AnswerType.YESNO,
                    programs.relation(a.name, b.name, kind))


def _image_relations(ctx: SceneContext, a: SceneObject, b: SceneObject) -> dict[str, bool]:
    """Image-plane relations of a to b that hold or fail by a clear margin."""
    (ua, va), (ub, vb) = ctx.centres[a.id], ctx.centres[b.id]
    out = {}
    if abs(ua - ub) >= PIXEL_MARGIN:
        out.update(left=ua < ub, right=ua > ub)
    if abs(va - vb) >= PIXEL_MARGIN:
        out.update(above=va < vb, below=va > vb)
    return out


def relation_2d_candidates(ctx: SceneContext, rng: np.random.Generator) -> list[Candidate]:
    out = []
    for a, b in itertools.permutations(ctx.referable(), 2):
        for kind, holds in _image_relations(ctx, a, b).items():
            answer = "yes" if holds else "no"
            out.append(Candidate((("answer", answer), ("relation", kind)),
                                 partial(_relation_question, "relation_2d", _REL_2D[kind], a, b, kind, answer)))
    return out


def _depth_relations(ctx: SceneContext, a: SceneObject, b: SceneObject) -> dict[str, bool]:
    if not (ctx.probe_ok[a.id] and ctx.probe_ok[b.id]):
        return {}
    if ctx.clearly_nearer(a, b):
        return {"closer": True, "farther": False}
    if ctx.clearly_nearer(b, a):
        return {"closer": False, "farther": True}
    return {}


def relation_vsr_candidates(ctx: SceneContext, rng: np.random.Generator) -> list[Candidate]:
    out = []
    for a, b in itertools.permutations(ctx.referable(), 2):
        relations = {k: v for k, v in _image_relations(ctx, a, b).items() if k in ("left", "right")}
        relations.update(_depth_relations(ctx, a, b))
        for kind, holds in relations.items():
            answer = "yes" if holds else "no"
            out.append(Candidate((("answer", answer), ("relation", kind)),
                                 partial(_relation_question, "relation_vsr", _REL_VSR[kind], a, b, kind, answer)))
    return out


_DEPTH_ORDER = {
    "closer": "Is the {a} closer to the camera than the {b}?",
    "farther": "Is the {a} farther from the camera than the {b}?",
}


def depth_order_candidates(ctx: SceneContext, rng: np.random.Generator) -> list[Candidate]:
    out = []
    for a, b in itertools.permutations(ctx.referable(probed=True), 2):
        for kind, holds in _depth_relations(ctx, a, b).items():
            answer = "yes" if holds else "no"
            out.append(Candidate((("answer", answer), ("comparison", kind)),
                                 partial(_relation_question, "depth_order", _DEPTH_ORDER[kind], a, b, kind, answer)))
    return out


def _depth_choice_question(gold: SceneObject, others: list[SceneObject], letter: int, nearest: bool) -> Question:
    names = [o.name for o in others]
    names.insert(letter, gold.name)
    text = ("Which of these objects is closest to the camera?" if nearest
            else "Which of these objects is farthest from the camera?")
    return Question("depth_choice", options_question(text, names), gold.name, AnswerType.MULTIPLE_CHOICE,
                    programs.extreme_depth_choice(names, nearest), names)


def depth_choice_candidates(ctx: SceneContext, rng: np.random.Generator) -> list[Candidate]:
    out = []
    for trio in itertools.combinations(ctx.referable(probed=True), 3):
        for gold in trio:
            others = [o for o in trio if o is not gold]
            for nearest in (True, False):
                clear = all(ctx.clearly_nearer(gold, o) if nearest else ctx.clearly_nearer(o, gold) for o in others)
                if not clear:
                    continue
                for letter in range(3):
                    out.append(Candidate((("letter", letter), ("variant", "nearest" if nearest else "farthest")),
                                         partial(_depth_choice_question, gold, others, letter, nearest)))
    return out


# ----------------------------------------------------------------------------- 3D distances and sizes

def _back_projected(ctx: SceneContext, objects: list[SceneObject]) -> np.ndarray:
    """(focal lengths, objects, 3) points as the reference program computes them."""
    cam = ctx.scene.camera
    focals = np.append(np.linspace(*FOCAL_RANGE, 11) * cam.width, cam.focal)
    uv = np.array([ctx.centres[o.id] for o in objects]) - (cam.width / 2, cam.height / 2)
    z = np.array([ctx.probe_depth[o.id] for o in objects])
    lateral = uv[None, :, :] * z[None, :, None] / focals[:, None, None]
    return np.concatenate([lateral, np.broadcast_to(z[None, :, None], lateral.shape[:2] + (1,))], axis=2)


def _distance_question(anchor, first, second, closer: bool, gold: SceneObject) -> Question:
    text = (f"Which object is {'closer to' if closer else 'farther from'} the {anchor.name} in 3D space: "
            f"the {first.name} or the {second.name}?")
    return Question("distance_3d", text, gold.name, AnswerType.WORD,
                    programs.closer_in_3d(anchor.name, first.name, second.name, closer))


def distance_3d_candidates(ctx: SceneContext, rng: np.random.Generator) -> list[Candidate]:
    objects = ctx.referable(probed=True)
    if len(objects) < 3:
        return []
    estimated = _back_projected(ctx, objects)
    centres = np.array([o.center for o in objects])
    out = []
    for k, i, j in itertools.permutations(range(len(objects)), 3):
        if i > j:
            continue
        true_i, true_j = (float(np.linalg.norm(centres[n] - centres[k])) for n in (i, j))
        if abs(true_i - true_j) < DISTANCE_MARGIN:
            continue
        est = np.linalg.norm(estimated[:, [i, j]] - estimated[:, [k]], axis=2)
        diff = est[:, 0] - est[:, 1]
        if not (np.all(np.sign(diff) == np.sign(true_i - true_j)) and np.all(np.abs(diff) >= ESTIMATE_MARGIN)):
            continue
        near, far = (objects[i], objects[j]) if true_i < true_j else (objects[j], objects[i])
        for first, second in ((objects[i], objects[j]), (objects[j], objects[i])):
            for closer in (True, False):
                gold = near if closer else far
                out.append(Candidate((("position", 0 if gold is first else 1), ("variant", closer)),
                                     partial(_distance_question, objects[k], first, second, closer, gold)))
    return out


def _size_question(reference: SceneObject, stated: float, target: SceneObject) -> Question:
    gold = round(stated * target.height / reference.height, 3)
    text = f"If the {reference.name} is {stated:.2f} m tall, how tall is the {target.name}, in metres?"
    return Question("size_reference", text, gold, AnswerType.FLOAT,
                    programs.height_from_reference(reference.name, stated, target.name))


def size_reference_candidates(ctx: SceneContext, rng: np.random.Generator) -> list[Candidate]:
    """Only cubes and cylinders: for them, with this camera, pixel height x depth is exact."""
    objects = [o for o in ctx.referable(probed=True) if o.shape in ("cube", "cylinder")]
    out = []
    for reference, target in itertools.permutations(objects, 2):
        extent = {o.id: (o.visible_box[3] - o.visible_box[1]) * ctx.probe_depth[o.id] for o in (reference, target)}
        estimate = extent[target.id] / extent[reference.id]
        truth = target.height / reference.height
        scale = float(rng.uniform(0.5, 2.0))
        if abs(estimate / truth - 1) >= SIZE_TOLERANCE:
            continue
        # The stated height is not the true one, so the answer cannot be read off the scene's sizes.
        if abs(scale - 1) < 0.15:
            scale += 0.3
        stated = max(round(reference.height * scale, 2), 0.1)
        out.append(Candidate((("pair", f"{reference.shape}-{target.shape}"),),
                             partial(_size_question, reference, stated, target)))
    return out


# ----------------------------------------------------------------------------- attributes

def _attribute_question(text: str, program: str, answer: str) -> Question:
    return Question("attribute", text, answer, AnswerType.WORD, program)


def attribute_candidates(ctx: SceneContext, rng: np.random.Generator) -> list[Candidate]:
    objects = ctx.objects
    found: list[tuple[str, str, str, str]] = []  # (variant, text, program, answer)

    for attribute in ("color", "shape"):
        value = (lambda o: o.color) if attribute == "color" else (lambda o: o.shape)
        for nearest in (True, False):
            for gold in objects:
                others = [o for o in objects if o is not gold]
                if all(ctx.clearly_nearer(gold, o) if nearest else ctx.clearly_nearer(o, gold) for o in others):
                    where = "closest to" if nearest else "farthest from"
                    found.append((f"{attribute}-{'near' if nearest else 'far'}",
                                  f"What {attribute} is the object {where} the camera?",
                                  programs.attribute_of_extreme_depth(attribute, nearest), value(gold)))
        order = sorted(objects, key=lambda o: ctx.centres[o.id][0])
        if ctx.centres[order[1].id][0] - ctx.centres[order[0].id][0] >= PIXEL_MARGIN:
            found.append((f"{attribute}-leftmost", f"What {attribute} is the leftmost object?",
                          programs.attribute_of_extreme_side(attribute, True), value(order[0])))
        if ctx.centres[order[-1].id][0] - ctx.centres[order[-2].id][0] >= PIXEL_MARGIN:
            found.append((f"{attribute}-rightmost", f"What {attribute} is the rightmost object?",
                          programs.attribute_of_extreme_side(attribute, False), value(order[-1])))
        for anchor in ctx.referable():
            ua = ctx.centres[anchor.id][0]
            offsets = [ctx.centres[o.id][0] - ua for o in objects if o is not anchor]
            if any(abs(d) < PIXEL_MARGIN for d in offsets):
                continue
            for right in (True, False):
                beside = [o for o in objects if o is not anchor and (ctx.centres[o.id][0] > ua) == right]
                if len(beside) == 1:
                    side = "right" if right else "left"
                    found.append((f"{attribute}-beside", f"What {attribute} is the object to the {side} of the {anchor.name}?",
                                  programs.attribute_beside(attribute, anchor.name, right), value(beside[0])))
    colors, shapes = Counter(o.color for o in objects), Counter(o.shape for o in objects)
    for obj in objects:
        if colors[obj.color] == 1:
            found.append(("shape-named", f"What shape is the {obj.color} object?",
                          programs.attribute_of_named("shape", f"{obj.color} object"), obj.shape))
        if shapes[obj.shape] == 1:
            found.append(("color-named", f"What color is the {obj.shape}?",
                          programs.attribute_of_named("color", obj.shape), obj.color))
    return [Candidate((("answer", answer), ("variant", variant)), partial(_attribute_question, text, program, answer))
            for variant, text, program, answer in found]


BUILDERS: dict[str, Callable[[SceneContext, np.random.Generator], list[Candidate]]] = {
    "count": count_candidates,
    "count_choice": count_choice_candidates,
    "relation_2d": relation_2d_candidates,
    "relation_vsr": relation_vsr_candidates,
    "depth_order": depth_order_candidates,
    "depth_choice": depth_choice_candidates,
    "distance_3d": distance_3d_candidates,
    "size_reference": size_reference_candidates,
    "attribute": attribute_candidates,
}
