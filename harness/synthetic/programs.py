"""Reference programs: the Python a careful tool-using reasoner would write.

Each function returns the body of a program in the sandbox's contract: the
globals ``image``, ``gd_detect``, ``depth``, ``vqa``, ``np`` and ``math``; the
answer goes in ``final_answer`` (a bare ``return`` ends early keeping it).
The programs only use the tools, never the ground truth, so running them
through the oracle tools checks that each question is answerable from the
image the way the benchmark's systems are meant to answer it.
"""

from __future__ import annotations

# Every program that needs "the" object named by a phrase takes its best detection.
_BEST_BOX = 'max({dets}, key=lambda d: d["score"])["box"]'


def _best(dets: str) -> str:
    return _BEST_BOX.format(dets=dets)


def _detect_or_stop(variable: str, phrase: str, fallback: str) -> str:
    """Detect a phrase; when nothing is found, answer ``fallback`` and stop (the
    nothing-detected path every program must handle)."""
    return (f"{variable} = gd_detect(image, {phrase})\n"
            f"if not {variable}:\n"
            f"    final_answer = {fallback}\n"
            f"    return\n")


def count_detect(phrase: str, as_text: bool = False) -> str:
    """Count by detecting the full phrase."""
    result = "str(len(detections))" if as_text else "len(detections)"
    return (f"# Detect the objects the question names and count the detections.\n"
            f"detections = gd_detect(image, {phrase!r})\n"
            f"final_answer = {result}\n")


def count_filter(broad: str, attribute: str, value: str, as_text: bool = False) -> str:
    """Count by detecting a broader phrase and checking an attribute of each detection with vqa."""
    result = "str(count)" if as_text else "count"
    empty = "'0'" if as_text else "0"
    return (f"# Detect the broader class, then keep the detections whose {attribute} is {value}.\n"
            + _detect_or_stop("candidates", repr(broad), empty) +
            f"count = 0\n"
            f"for detection in candidates:\n"
            f"    answer = vqa(image, detection[\"box\"], 'What {attribute} is this object?')\n"
            f"    if answer.strip().lower() == {value!r}:\n"
            f"        count += 1\n"
            f"final_answer = {result}\n")


# Relations between the best boxes of two phrases: (what each side is measured by, comparison).
_MEASURES = {
    "left": ("(a[0] + a[2]) / 2", "(b[0] + b[2]) / 2", "<", "horizontal box centres"),
    "right": ("(a[0] + a[2]) / 2", "(b[0] + b[2]) / 2", ">", "horizontal box centres"),
    "above": ("(a[1] + a[3]) / 2", "(b[1] + b[3]) / 2", "<", "vertical box centres (y grows downwards)"),
    "below": ("(a[1] + a[3]) / 2", "(b[1] + b[3]) / 2", ">", "vertical box centres (y grows downwards)"),
    "closer": ("depth(image, a)", "depth(image, b)", "<", "metric depth at the box centres"),
    "farther": ("depth(image, a)", "depth(image, b)", ">", "metric depth at the box centres"),
}


def relation(first: str, second: str, kind: str) -> str:
    """Yes/no: does ``first`` stand in relation ``kind`` to ``second``?"""
    a_value, b_value, op, what = _MEASURES[kind]
    return (f"first = gd_detect(image, {first!r})\n"
            f"second = gd_detect(image, {second!r})\n"
            f"if not first or not second:\n"
            f"    final_answer = 'no'\n"
            f"    return\n"
            f"a = {_best('first')}\n"
            f"b = {_best('second')}\n"
            f"# Compare the {what}.\n"
            f"final_answer = 'yes' if {a_value} {op} {b_value} else 'no'\n")


def extreme_depth_choice(options: list[str], nearest: bool) -> str:
    """Multiple choice: which option is nearest to (or farthest from) the camera."""
    better = "<" if nearest else ">"
    return (f"options = {options!r}\n"
            f"best, best_depth = None, None\n"
            f"for name in options:\n"
            f"    detections = gd_detect(image, name)\n"
            f"    if not detections:\n"
            f"        continue\n"
            f"    z = depth(image, {_best('detections')})\n"
            f"    if best is None or z {better} best_depth:\n"
            f"        best, best_depth = name, z\n"
            f"final_answer = best if best is not None else options[0]\n")


def closer_in_3d(anchor: str, first: str, second: str, closer: bool) -> str:
    """Word answer: which of two objects is closer to (farther from) a third, in 3D.

    The focal length is not given to programs; one image width is a common
    guess, and the benchmark only asks questions whose answer does not depend on it.
    """
    pick = "<" if closer else ">"
    return (f"focal = image.width  # assumed focal length in pixels\n"
            f"\n"
            f"def locate(phrase):\n"
            f"    # Back-project the box centre with its depth: 3D = 2D x depth / focal.\n"
            f"    detections = gd_detect(image, phrase)\n"
            f"    if not detections:\n"
            f"        return None\n"
            f"    box = {_best('detections')}\n"
            f"    z = depth(image, box)\n"
            f"    u = (box[0] + box[2]) / 2 - image.width / 2\n"
            f"    v = (box[1] + box[3]) / 2 - image.height / 2\n"
            f"    return np.array([u * z / focal, v * z / focal, z])\n"
            f"\n"
            f"anchor = locate({anchor!r})\n"
            f"first = locate({first!r})\n"
            f"second = locate({second!r})\n"
            f"if anchor is None or first is None or second is None:\n"
            f"    final_answer = {first!r}\n"
            f"    return\n"
            f"d_first = float(np.linalg.norm(first - anchor))\n"
            f"d_second = float(np.linalg.norm(second - anchor))\n"
            f"final_answer = {first!r} if d_first {pick} d_second else {second!r}\n")


def height_from_reference(reference: str, reference_height: float, target: str) -> str:
    """Float: a height scaled from a reference object of known height."""
    return (f"reference = gd_detect(image, {reference!r})\n"
            f"target = gd_detect(image, {target!r})\n"
            f"if not reference or not target:\n"
            f"    final_answer = {reference_height!r}\n"
            f"    return\n"
            f"ref_box = {_best('reference')}\n"
            f"tgt_box = {_best('target')}\n"
            f"# Metric height = pixel height x depth / focal; the focal length cancels in the ratio.\n"
            f"ref_extent = (ref_box[3] - ref_box[1]) * depth(image, ref_box)\n"
            f"tgt_extent = (tgt_box[3] - tgt_box[1]) * depth(image, tgt_box)\n"
            f"final_answer = round({reference_height!r} * tgt_extent / ref_extent, 3)\n")


_ASK = {"color": "What color is this object?", "shape": "What shape is this object?"}


def attribute_of_extreme_depth(attribute: str, nearest: bool) -> str:
    pick = "min" if nearest else "max"
    return (_detect_or_stop("detections", "'objects'", "'none'") +
            f"target = {pick}(detections, key=lambda d: depth(image, d[\"box\"]))\n"
            f"final_answer = vqa(image, target[\"box\"], {_ASK[attribute]!r})\n")


def attribute_of_extreme_side(attribute: str, leftmost: bool) -> str:
    pick = "min" if leftmost else "max"
    return (_detect_or_stop("detections", "'objects'", "'none'") +
            f"target = {pick}(detections, key=lambda d: d[\"box\"][0] + d[\"box\"][2])\n"
            f"final_answer = vqa(image, target[\"box\"], {_ASK[attribute]!r})\n")


def attribute_beside(attribute: str, anchor: str, right: bool) -> str:
    side = ">" if right else "<"
    nearest = "min" if right else "max"
    return (f"anchors = gd_detect(image, {anchor!r})\n"
            f"objects = gd_detect(image, 'objects')\n"
            f"if not anchors or not objects:\n"
            f"    final_answer = 'none'\n"
            f"    return\n"
            f"anchor_box = {_best('anchors')}\n"
            f"anchor_x = (anchor_box[0] + anchor_box[2]) / 2\n"
            f"# The anchor is among the objects too; keep the ones clearly beside it.\n"
            f"beside = [d for d in objects if (d[\"box\"][0] + d[\"box\"][2]) / 2 {side} anchor_x + ({'1' if right else '-1'})]\n"
            f"if not beside:\n"
            f"    final_answer = 'none'\n"
            f"    return\n"
            f"target = {nearest}(beside, key=lambda d: d[\"box\"][0] + d[\"box\"][2])\n"
            f"final_answer = vqa(image, target[\"box\"], {_ASK[attribute]!r})\n")


def attribute_of_named(attribute: str, phrase: str) -> str:
    return (_detect_or_stop("detections", repr(phrase), "'none'") +
            f"final_answer = vqa(image, {_best('detections')}, {_ASK[attribute]!r})\n")
