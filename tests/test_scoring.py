"""Offline tests for strict and paper-compatible scoring, the judges and the response cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from fake_openai import Reply, running_chat_server
from harness.cache import ResponseCache, cache_key
from harness.registry import UnknownNameError
from harness.scoring import (
    COMPAT_RULES,
    MRA_THRESHOLDS,
    ExactMatchJudge,
    JudgeSpec,
    Parse,
    make_judge,
    mean_relative_accuracy,
    score_record,
    score_strict,
)
from harness.scoring.compat import compat_score
from harness.scoring.extract import (
    is_empty,
    normalize_text,
    numbers_in,
    parse_choice,
    parse_number,
    parse_yes_no,
    unwrap,
)
from harness.scoring.judge import Judge, LLMJudge, Verdict, parse_verdict
from harness.types import AnswerType, Status

TASKS_DIR = Path(__file__).resolve().parents[1] / "tasks"


# --------------------------------------------------------------------------- helpers


def make_record(answer_type, gold, prediction, *, status=Status.OK, choices=None, compat_gold=None,
                compat_meta=None, answer_pytype=None, question="How many mugs are there?"):
    """A record shaped like the runner's, holding only what scoring reads."""
    return {
        "id": "s1",
        "task": "t",
        "question": question,
        "answer_type": answer_type,
        "choices": choices,
        "gold": gold,
        "compat_gold": gold if compat_gold is None else compat_gold,
        "compat_meta": compat_meta or {},
        "prediction": prediction,
        "answer_pytype": answer_pytype,
        "status": status,
    }


class ForbiddenJudge(Judge):
    """Fails the test when asked: used where no judge call may happen."""

    name = "forbidden"

    def judge(self, question, gold, prediction):
        raise AssertionError(f"the judge was called for {prediction!r}")


class ScriptedComplete:
    """A ``complete`` function returning scripted replies (or raising scripted exceptions)."""

    def __init__(self, *replies):
        self.replies = list(replies)
        self.calls: list[list[dict]] = []

    def __call__(self, messages):
        self.calls.append(messages)
        reply = self.replies.pop(0)
        if isinstance(reply, BaseException):
            raise reply
        return reply


def strict(answer_type, prediction, gold, choices=None):
    result = score_strict(answer_type, prediction, gold, choices)
    return result.score, result.parse, result.extracted


# --------------------------------------------------------------------------- extraction: numbers


@pytest.mark.parametrize("text, expected", [
    ("three", 3), ("Three.", 3), ("zero", 0), ("nineteen", 19),
    ("twenty-one", 21), ("twenty one", 21), ("seventy-seven", 77), ("forty", 40),
    ("a dozen", 12), ("dozen", 12), ("none", 0), ("None of them", 0),
    ("one hundred", 100), ("a hundred and five", 105), ("two thousand three hundred", 2300),
    ("10", 10), ("1", 1), ("007", 7), ("1,000", 1000), ("-3", -3), ("+4", 4),
    ("3.5", 3.5), ("  2.0  ", 2.0), ("2.5e-1", 0.25), ("1E3", 1000), ("about 1.5e3 metres", 1500),
    ("There are 3 mugs.", 3), ("There are 3.", 3), ("I count 2 red and 3 blue, so 5", 5),
    ("I see three cups", 3), ("two cups and 4 plates", 4), ("The distance is 1.25 m.", 1.25),
])
def test_parse_number_reads_text(text, expected):
    assert parse_number(text) == expected


@pytest.mark.parametrize("value", [
    "", "   ", "many", "someone", "B2", "x10", "nan", "inf", "-inf", True, False, None, [2, 3], {"n": 3},
])
def test_parse_number_refuses(value):
    assert parse_number(value) is None


@pytest.mark.parametrize("value, expected", [
    (3, 3.0), (3.5, 3.5), (np.int64(7), 7.0), (np.float32(2.5), 2.5), (np.array(4), 4.0),
    ([4], 4.0), (("5",), 5.0), ([["6"]], 6.0), ([np.int32(8)], 8.0), (float("nan"), None),
    (float("inf"), None), (np.bool_(True), None),
])
def test_parse_number_values(value, expected):
    assert parse_number(value) == expected


def test_ten_is_never_read_as_one():
    assert numbers_in("10") == [10.0]
    assert numbers_in("there are 10 and 1") == [10.0, 1.0]
    assert numbers_in("B2 and x10") == []
    assert parse_number("10 apples") == 10.0


def test_numbers_in_keeps_reading_order_across_digits_and_words():
    assert numbers_in("two cups, 3 plates and twenty-one forks, 1,200 grains") == [2.0, 3.0, 21.0, 1200.0]


def test_unwrap_and_is_empty():
    assert unwrap([np.float64(1.5)]) == 1.5 and type(unwrap([np.float64(1.5)])) is float
    assert unwrap(np.bool_(False)) is False
    assert unwrap([1, 2]) == [1, 2]
    assert unwrap((("x",),)) == "x"
    for empty in (None, "", "   \n", [""], [None], (" ",)):
        assert is_empty(empty), empty
    for full in ("0", 0, False, "no", [0], [1, 2]):
        assert not is_empty(full), full


def test_normalize_text():
    assert normalize_text("  The Red, car! ") == "red car"
    assert normalize_text("An apple a day") == "apple day"
    assert normalize_text("A") == ""


# --------------------------------------------------------------------------- extraction: yes/no


@pytest.mark.parametrize("value, expected", [
    ("yes", True), ("Yes.", True), ("YES", True), ("no", False), ("No.", False),
    ("No, the cup is left of it", False), ("Yes, it is to the left; no doubt", True),
    ("The cup is on the left, so yes", True), ("I think the answer is no.", False),
    ("true", True), ("false", False), ("True", True), ("FALSE", False),
    (True, True), (False, False), (1, True), (0, False), (1.0, True), (0.0, False),
    (np.bool_(True), True), (np.bool_(False), False), (np.int64(0), False), ([True], True), (["no"], False),
])
def test_parse_yes_no(value, expected):
    assert parse_yes_no(value) is expected


@pytest.mark.parametrize("value", [
    "It could be yes or it could be no", "maybe", "", "   ", "left", 2, -1, 0.5, None, [True, False],
    "correct", "not correct",
])
def test_parse_yes_no_unparsable(value):
    assert parse_yes_no(value) is None


# --------------------------------------------------------------------------- extraction: multiple choice

COLOURS = ["red", "blue", "green", "yellow"]


@pytest.mark.parametrize("text, expected", [
    ("B", 1), ("b", 1), ("(B)", 1), ("B.", 1), ("B)", 1), ("B:", 1), ("(b)", 1),
    ("The answer is (B)", 1), ("The answer is B", 1), ("answer is B.", 1), ("Answer: C", 2),
    ("The correct option is D.", 3), ("The answer would be C", 2), ("B. blue", 1), ("C: green", 2),
    ("blue", 1), ("Blue.", 1), ("the blue one", 1), ("It is yellow", 3),
])
def test_parse_choice_letters_and_text(text, expected):
    assert parse_choice(text, COLOURS) == expected


@pytest.mark.parametrize("text", [
    "The", "The cup", "I", "E", "(E)", "Answer: E", "purple", "red or blue", "", "   ",
    # the article "a" after "answer" is not the letter A
    "The answer: a purple car",
])
def test_parse_choice_unparsable(text):
    assert parse_choice(text, COLOURS) is None


def test_the_is_never_read_as_letter_t():
    options = [f"thing {i}" for i in range(20)]  # letters A..T
    assert parse_choice("T", options) == 19
    assert parse_choice("The", options) is None
    assert parse_choice("The one on the left", options) is None
    assert parse_choice("That.", options) is None


def test_letter_beyond_the_options_is_unparsable():
    assert parse_choice("C", ["yes", "no"]) is None
    assert parse_choice("B", ["yes", "no"]) == 1


@pytest.mark.parametrize("value, expected", [
    ("3", 1), ("3.0", 1), (3, 1), (3.0, 1), (np.int64(3), 1), (["3"], 1), ("three", 1),
    ("There are 3 dogs.", 1), ("C", 2), ("(A)", 0), ("5", 3), ("6", None), ("3.5", None), (True, None),
])
def test_parse_choice_numeric_options(value, expected):
    assert parse_choice(value, ["2", "3", "4", "5"]) == expected


def test_numeric_option_text_beats_its_letter_position():
    # "1" is the text of option B, not option A's position
    assert parse_choice("1", ["0", "1", "10"]) == 1
    assert parse_choice("10", ["0", "1", "10"]) == 2


def test_option_contained_in_another_option():
    options = ["red", "red car", "blue car"]
    assert parse_choice("red car", options) == 1
    assert parse_choice("red", options) == 0
    assert parse_choice("It is the red car.", options) == 1
    assert parse_choice("It is red.", options) == 0
    assert parse_choice("the red car and the blue car", options) is None  # two full options named
    # word boundaries: "scar" does not contain the option "car"
    assert parse_choice("a scar", ["car", "bus"]) is None


# --------------------------------------------------------------------------- MRA


def test_mra_thresholds():
    assert MRA_THRESHOLDS == (0.5, 0.45, 0.4, 0.35, 0.3, 0.25, 0.2, 0.15, 0.1, 0.05)


@pytest.mark.parametrize("prediction, gold, expected", [
    (4.0, 4.0, 1.0),
    (5.0, 4.0, 0.5),    # relative error 0.25, exactly a threshold: 0.25 itself fails (strict <)
    (9.0, 8.0, 0.8),    # 0.125
    (11.0, 10.0, 0.8),  # 0.1 exactly: fails 0.1 and 0.05
    (12.0, 10.0, 0.6),  # 0.2 exactly
    (10.4, 10.0, 1.0),  # 0.04 < 0.05
    (1.5, 1.0, 0.0),    # 0.5 exactly: fails every threshold
    (0.5, 1.0, 0.0),
    (2.0, 1.0, 0.0),
    (-4.0, -4.0, 1.0),
    (-5.0, -4.0, 0.5),  # |gold| in the denominator
    (0.0, 0.0, 1.0),    # gold 0: only an exact 0 scores
    (1e-9, 0.0, 0.0),
    (-0.5, 0.0, 0.0),
])
def test_mean_relative_accuracy(prediction, gold, expected):
    assert mean_relative_accuracy(prediction, gold) == pytest.approx(expected)


def test_mra_just_inside_and_outside_a_threshold():
    assert mean_relative_accuracy(1.2999, 1.0) == pytest.approx(0.5)  # 0.2999 < 0.3 still counts
    assert mean_relative_accuracy(1.3001, 1.0) == pytest.approx(0.4)


# --------------------------------------------------------------------------- strict scoring


@pytest.mark.parametrize("prediction, gold, expected", [
    ("three", 3, (1.0, Parse.OK, 3)),
    ("twenty-one", 21, (1.0, Parse.OK, 21)),
    ("a dozen", 12, (1.0, Parse.OK, 12)),
    ("none", 0, (1.0, Parse.OK, 0)),
    ("10", 1, (0.0, Parse.OK, 10)),
    ("1", 10, (0.0, Parse.OK, 1)),
    ("I count 2 red and 3 blue, so 5", 5, (1.0, Parse.OK, 5)),
    ("3.0", 3, (1.0, Parse.OK, 3)),
    (3.9, 3, (0.0, Parse.OK, 3.9)),
    (np.int64(4), 4, (1.0, Parse.OK, 4)),
    ([4], 4, (1.0, Parse.OK, 4)),
    (True, 1, (0.0, Parse.UNPARSABLE, None)),
    (False, 0, (0.0, Parse.UNPARSABLE, None)),
    ([2, 3], 2, (0.0, Parse.UNPARSABLE, None)),
    ("many", 4, (0.0, Parse.UNPARSABLE, None)),
])
def test_strict_integer(prediction, gold, expected):
    assert strict(AnswerType.INTEGER, prediction, gold) == expected


@pytest.mark.parametrize("prediction, gold, score", [
    ("4.5", 4.0, 0.8),
    ("4.5e0", 4.0, 0.8),
    ("45e-1 metres", 4.0, 0.8),
    ("It is about 4.5 meters away.", 4.0, 0.8),
    (np.float32(4.5), 4.0, 0.8),
    (["5"], 4.0, 0.5),
    ("four", 4.0, 1.0),
    (0, 0.0, 1.0),
    ("0.0", 0.0, 1.0),
    (0.01, 0.0, 0.0),
])
def test_strict_float(prediction, gold, score):
    result = score_strict(AnswerType.FLOAT, prediction, gold)
    assert result.parse == Parse.OK
    assert result.score == pytest.approx(score)


def test_strict_float_refuses_booleans():
    assert strict(AnswerType.FLOAT, True, 1.0) == (0.0, Parse.UNPARSABLE, None)


@pytest.mark.parametrize("prediction, gold, expected", [
    ("No, the cup is left of it", "no", (1.0, Parse.OK, "no")),
    ("No, the cup is left of it", "yes", (0.0, Parse.OK, "no")),
    ("Yes.", "yes", (1.0, Parse.OK, "yes")),
    ("true", "yes", (1.0, Parse.OK, "yes")),
    ("false", "no", (1.0, Parse.OK, "no")),
    (1, "yes", (1.0, Parse.OK, "yes")),
    (0, "no", (1.0, Parse.OK, "no")),
    (np.bool_(False), "no", (1.0, Parse.OK, "no")),
    ([True], "yes", (1.0, Parse.OK, "yes")),
    ("It could be yes or it could be no", "yes", (0.0, Parse.UNPARSABLE, None)),
    ("maybe", "no", (0.0, Parse.UNPARSABLE, None)),
    (2, "yes", (0.0, Parse.UNPARSABLE, None)),
])
def test_strict_yes_no(prediction, gold, expected):
    assert strict(AnswerType.YESNO, prediction, gold) == expected


@pytest.mark.parametrize("prediction, expected", [
    ("B", (1.0, Parse.OK, "B")),
    ("(B)", (1.0, Parse.OK, "B")),
    ("B.", (1.0, Parse.OK, "B")),
    ("The answer is (B)", (1.0, Parse.OK, "B")),
    ("The answer is B", (1.0, Parse.OK, "B")),
    ("blue", (1.0, Parse.OK, "B")),
    ("A", (0.0, Parse.OK, "A")),
    ("red", (0.0, Parse.OK, "A")),
    ("The", (0.0, Parse.UNPARSABLE, None)),
    ("purple", (0.0, Parse.UNPARSABLE, None)),
])
def test_strict_multiple_choice(prediction, expected):
    assert strict(AnswerType.MULTIPLE_CHOICE, prediction, "blue", COLOURS) == expected


def test_strict_multiple_choice_numeric_options():
    options = ["2", "3", "4", "5"]
    assert strict(AnswerType.MULTIPLE_CHOICE, "3.0", "3", options) == (1.0, Parse.OK, "B")
    assert strict(AnswerType.MULTIPLE_CHOICE, 3, "3", options) == (1.0, Parse.OK, "B")
    assert strict(AnswerType.MULTIPLE_CHOICE, "three", "3", options) == (1.0, Parse.OK, "B")
    assert strict(AnswerType.MULTIPLE_CHOICE, "C", "3", options) == (0.0, Parse.OK, "C")
    assert strict(AnswerType.MULTIPLE_CHOICE, "30", "3", options) == (0.0, Parse.UNPARSABLE, None)


def test_strict_multiple_choice_needs_choices():
    with pytest.raises(ValueError, match="choices"):
        score_strict(AnswerType.MULTIPLE_CHOICE, "A", "red", None)


@pytest.mark.parametrize("prediction, gold, score", [
    ("chair", "chair", 1.0),
    ("The chair.", "chair", 1.0),
    ("Chairs", "chair", 1.0),     # singular and plural name the same thing
    ("armchair", "chair", 0.0),   # no substring leniency
    ("north", "N", 1.0),          # compass words equal their letter
    ("N.", "N", 1.0),
    ("West", "W", 1.0),
    ("Northeast", "N", 0.0),
    ("south", "N", 0.0),
    ("3", "3", 1.0),              # numeric gold is compared as a number
    ("three", "3", 1.0),
    ("10", "1", 0.0),
    ("1", "10", 0.0),
    ("3.0", 3, 1.0),
])
def test_strict_word(prediction, gold, score):
    result = score_strict(AnswerType.WORD, prediction, gold)
    assert (result.score, result.parse) == (score, Parse.OK)


def test_strict_word_numeric_gold_unparsable_prediction():
    assert strict(AnswerType.WORD, "several", "3") == (0.0, Parse.UNPARSABLE, None)


@pytest.mark.parametrize("answer_type, gold, choices", [
    (AnswerType.YESNO, "yes", None),
    (AnswerType.INTEGER, 0, None),
    (AnswerType.FLOAT, 0.0, None),
    (AnswerType.MULTIPLE_CHOICE, "red", COLOURS),
    (AnswerType.WORD, "chair", None),
    (AnswerType.OPEN, "a chair", None),
])
@pytest.mark.parametrize("prediction", ["", "   ", None, [""], [None]])
def test_strict_empty_is_a_parse_status_not_a_silent_zero(answer_type, gold, choices, prediction):
    assert strict(answer_type, prediction, gold, choices) == (0.0, Parse.EMPTY, None)


def test_strict_unknown_answer_type():
    with pytest.raises(ValueError, match="unknown answer type"):
        score_strict("essay", "x", "y")


# --------------------------------------------------------------------------- score_record


def test_record_without_answers_is_not_scored():
    record = score_record(make_record(AnswerType.NONE, None, "3"), "tallyqa", ForbiddenJudge())
    assert record["scores"] == {"strict": None, "compat": None}
    assert record["parse"] == Parse.NOT_SCORED
    assert record["extracted"] is None and record["judge"] is None


@pytest.mark.parametrize("status", [s for s in Status.ALL if s != Status.OK and s not in Status.INFRASTRUCTURE])
def test_record_failed_status(status):
    # a sample the model failed keeps its prediction out of strict scoring, whatever it holds
    record = score_record(make_record(AnswerType.INTEGER, 0, "0", status=status), None, ForbiddenJudge())
    assert record["scores"] == {"strict": 0.0, "compat": 0.0}
    assert record["parse"] == Parse.NO_PREDICTION
    assert record["extracted"] is None and record["judge"] is None


@pytest.mark.parametrize("status", Status.INFRASTRUCTURE)
@pytest.mark.parametrize("compat", [None, "tallyqa", "judge"])
def test_infrastructure_failures_are_never_scored(status, compat):
    # not the model's failure: no score at all, under any rule (a TallyQA crash would read as 0 otherwise)
    record = score_record(make_record(AnswerType.INTEGER, 0, "0", status=status), compat, ForbiddenJudge(),
                          ForbiddenJudge())
    assert record["scores"] == {"strict": None, "compat": None}
    assert record["parse"] == Parse.INFRASTRUCTURE and "paper_judge" not in record


@pytest.mark.parametrize("status", [Status.EXCEPTION, Status.TIMEOUT, Status.NO_ANSWER, Status.MISSING])
def test_record_failed_status_tallyqa_compat_counts_zero(status):
    record = score_record(make_record(AnswerType.INTEGER, 0, "7", status=status), "tallyqa", ForbiddenJudge())
    assert record["scores"] == {"strict": 0.0, "compat": 1.0}
    assert record["parse"] == Parse.NO_PREDICTION
    record = score_record(make_record(AnswerType.INTEGER, 2, "2", status=status), "tallyqa", ForbiddenJudge())
    assert record["scores"] == {"strict": 0.0, "compat": 0.0}


def test_record_failed_status_open_answer_skips_judge():
    record = score_record(make_record(AnswerType.OPEN, "a chair", "a chair", status=Status.TIMEOUT),
                          "judge", ForbiddenJudge())
    assert record["scores"] == {"strict": 0.0, "compat": 0.0}
    assert record["parse"] == Parse.NO_PREDICTION
    assert record["judge"] is None


def test_record_without_compat_rule_copies_strict():
    record = score_record(make_record(AnswerType.FLOAT, 4.0, "4.5"), None, ForbiddenJudge())
    assert record["scores"]["strict"] == pytest.approx(0.8)
    assert record["scores"]["compat"] == record["scores"]["strict"]
    assert record["parse"] == Parse.OK and record["extracted"] == 4.5


def test_record_rescoring_is_idempotent():
    record = make_record(AnswerType.INTEGER, 3, "three")
    first = dict(score_record(record, "tallyqa", ForbiddenJudge()))
    second = score_record(record, "tallyqa", ForbiddenJudge())
    assert first == second
    assert second["scores"] == {"strict": 1.0, "compat": 0.0}  # compat does not read number words


def test_record_unknown_compat_rule_raises():
    with pytest.raises(UnknownNameError, match="tallyqaa"):
        score_record(make_record(AnswerType.INTEGER, 3, "3"), "tallyqaa", ForbiddenJudge())


def test_record_empty_prediction_omni3d_str_and_realworldqa_compat():
    meta = {"raw_answer_type": "str"}
    record = score_record(make_record(AnswerType.YESNO, "yes", "", compat_gold="yes", compat_meta=meta),
                          "omni3d", ForbiddenJudge())
    assert record["scores"] == {"strict": 0.0, "compat": 1.0}
    assert record["parse"] == Parse.EMPTY
    record = score_record(make_record(AnswerType.WORD, "chair", "", compat_gold="chair", compat_meta=meta),
                          "omni3d", ForbiddenJudge())
    assert record["scores"] == {"strict": 0.0, "compat": 1.0}
    # only the empty string is in every gold; blank space is empty for strict, not for compat
    record = score_record(make_record(AnswerType.WORD, "chair", "  ", compat_gold="chair", compat_meta=meta),
                          "omni3d", ForbiddenJudge())
    assert record["scores"] == {"strict": 0.0, "compat": 0.0}
    assert record["parse"] == Parse.EMPTY
    record = score_record(make_record(AnswerType.MULTIPLE_CHOICE, "left", "", choices=["left", "right"]),
                          "realworldqa", ForbiddenJudge())
    assert record["scores"] == {"strict": 0.0, "compat": 1.0}
    assert record["parse"] == Parse.EMPTY


def test_record_empty_prediction_elsewhere_scores_zero_in_both_modes():
    record = score_record(make_record(AnswerType.MULTIPLE_CHOICE, "3", "", choices=["2", "3"]),
                          "blink", ForbiddenJudge())
    assert record["scores"] == {"strict": 0.0, "compat": 0.0}
    record = score_record(make_record(AnswerType.INTEGER, 3, ""), "countbench", ForbiddenJudge())
    assert record["scores"] == {"strict": 0.0, "compat": 0.0}
    record = score_record(make_record(AnswerType.WORD, "N", "", compat_meta={"raw_answer_type": "str"}),
                          "omni3d", ForbiddenJudge())
    assert record["scores"] == {"strict": 0.0, "compat": 0.0}  # compass compares pred[0]


def test_record_numpy_bool_robospatial():
    record = make_record(AnswerType.YESNO, "yes", True, compat_gold="yes", answer_pytype="numpy.bool_")
    record = score_record(record, "robospatial", ForbiddenJudge())
    assert record["scores"] == {"strict": 1.0, "compat": 0.0}  # the original read numpy True as "no"
    record = make_record(AnswerType.YESNO, "yes", True, compat_gold="yes", answer_pytype="bool")
    assert score_record(record, "robospatial", ForbiddenJudge())["scores"] == {"strict": 1.0, "compat": 1.0}


def test_record_answer_pytype_overrides_compat_meta():
    record = make_record(AnswerType.YESNO, "yes", True, compat_gold="yes",
                         compat_meta={"answer_pytype": "numpy.bool_"}, answer_pytype="bool")
    assert score_record(record, "robospatial", ForbiddenJudge())["scores"]["compat"] == 1.0


# --------------------------------------------------------------------------- compat rules, one benchmark at a time


def test_compat_rules_registered():
    assert set(COMPAT_RULES.names()) == {
        "omni3d", "tallyqa", "countbench", "vsr", "robospatial", "blink", "realworldqa", "judge",
    }


def test_every_task_names_a_registered_compat_rule():
    names = {}
    for path in sorted(TASKS_DIR.glob("*.yaml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and data.get("compat"):
            names[path.name] = data["compat"]
    assert names, "no task declares a compat rule"
    unknown = {f: n for f, n in names.items() if n not in COMPAT_RULES}
    assert not unknown


def test_compat_unknown_rule_is_an_error_not_a_zero():
    with pytest.raises(UnknownNameError):
        compat_score("omni3dd", "3", "3", {})


INT = {"raw_answer_type": "int"}
FLOAT = {"raw_answer_type": "float"}
STR = {"raw_answer_type": "str"}


@pytest.mark.parametrize("prediction, gold, expected", [
    ("3", "3", 1.0), (3, "3", 1.0), (3.9, "3", 1.0),   # int() truncates
    ("3.0", "3", 0.0),                                # int("3.0") raises
    ("three", "3", 0.0), ("10", "1", 0.0), ("1", "10", 0.0),
    (True, "1", 0.0),                                 # a bool becomes "yes" first
    (None, "0", 0.0), ("", "0", 0.0),
])
def test_compat_omni3d_int(prediction, gold, expected):
    assert compat_score("omni3d", prediction, gold, INT) == expected


@pytest.mark.parametrize("prediction, gold, expected", [
    ("4.5", "4", 0.8), (4.5, 4.0, 0.8), ("4.5e0", "4", 0.8), ("5", "4", 0.5), (11, 10, 0.8),
    ("1.5", "1", 0.0), ("4", "4", 1.0),
    ("4.5 metres", "4", 0.0),   # float() of a sentence fails: no hits
    (None, "4", 0.0),
    (0, 0, 0.0), (0.0, "0", 0.0), (1.0, 0, 0.0),  # gold 0 divides by zero: always 0
    (3, -4.0, 1.0),             # no abs() on the gold: a negative gold passes everything
])
def test_compat_omni3d_float(prediction, gold, expected):
    assert compat_score("omni3d", prediction, gold, FLOAT) == pytest.approx(expected)


def test_strict_and_compat_disagree_on_gold_zero():
    assert mean_relative_accuracy(0.0, 0.0) == 1.0
    assert compat_score("omni3d", 0.0, 0.0, FLOAT) == 0.0


@pytest.mark.parametrize("prediction, gold, expected", [
    ("yes", "yes", 1.0), ("Yes.", "yes", 1.0), ("no", "yes", 0.0),
    ("No, the cup is left of it", "no", 1.0),
    ("I don't know", "no", 1.0),      # "know" contains "no"
    (True, "yes", 1.0), (False, "no", 1.0), (False, "yes", 0.0),
    ("", "yes", 1.0), ("", "chair", 1.0),  # the empty string is in every gold
    ("chair", "chair", 1.0), ("The chair", "chair", 1.0), ("armchair", "chair", 1.0),
    ("chai", "chair", 1.0),          # the prediction inside the gold also passes
    ("table", "chair", 0.0),
    ("1", "10", 1.0), ("10", "1", 1.0),  # substring either way
    (None, "yes", 0.0), (3, "3", 0.0),
])
def test_compat_omni3d_str(prediction, gold, expected):
    assert compat_score("omni3d", prediction, gold, STR) == expected


@pytest.mark.parametrize("prediction, gold, expected", [
    ("N", "N", 1.0), ("North", "N", 1.0), ("Northeast", "N", 1.0),
    ("north", "N", 0.0),          # case-sensitive first character
    ("S", "N", 0.0), ("West", "W", 1.0), ("East", "E", 1.0), ("South", "S", 1.0),
    ("", "N", 0.0), (None, "N", 0.0),
])
def test_compat_omni3d_compass(prediction, gold, expected):
    assert compat_score("omni3d", prediction, gold, STR) == expected


def test_compat_omni3d_numpy_bool_is_yes_no():
    meta = {"raw_answer_type": "str"}
    assert compat_score("omni3d", np.bool_(True), "yes", meta) == 1.0
    assert compat_score("omni3d", np.bool_(False), "no", meta) == 1.0


def test_compat_omni3d_unknown_answer_type():
    assert compat_score("omni3d", "3", "3", {"raw_answer_type": "list"}) == 0.0
    assert compat_score("omni3d", "3", "3", {}) == 0.0


@pytest.mark.parametrize("prediction, gold, expected", [
    (3, 3, 1.0), ("3", 3, 1.0), ("3", "3", 1.0), (3.7, 3, 1.0), ("3.0", 3, 0.0),
    ("three", 3, 0.0), ("10", 1, 0.0), ("1", 10, 0.0),
    (None, 0, 1.0), ("", 0, 1.0), (0, 0, 1.0),   # a crash or empty answer reads as 0
    (None, 2, 0.0), (True, 1, 1.0), (False, 0, 1.0),
])
def test_compat_tallyqa(prediction, gold, expected):
    assert compat_score("tallyqa", prediction, gold, {}) == expected


@pytest.mark.parametrize("prediction, gold, expected", [
    (5, 5, 1.0), ("5", 5, 1.0), (5.9, 5, 1.0), ("5.0", 5, 0.0), ("five", 5, 0.0),
    ("10", 1, 0.0), (None, 0, 0.0), ("", 0, 0.0), (True, 1, 1.0),
    ("5", "5", 0.0),  # int(pred) is compared to the gold as given; a string gold never equals
])
def test_compat_countbench(prediction, gold, expected):
    assert compat_score("countbench", prediction, gold, {}) == expected


@pytest.mark.parametrize("prediction, gold, meta, expected", [
    (True, 1, {}, 1.0), (False, 0, {}, 1.0), (True, 0, {}, 0.0),
    (np.bool_(True), 1, {}, 1.0),
    ("Yes.", 1, {}, 1.0), ("true", 1, {}, 1.0), ("No, it is not", 0, {}, 1.0),
    ("It is not true", 1, {}, 1.0),   # contains "true"
    ("eyes", 1, {}, 1.0),             # contains "yes"
    ("", 0, {}, 1.0),                 # a string without yes/true is 0
    (1, 1, {}, 1.0), (0, 0, {}, 1.0), (1.0, 1, {}, 1.0), ("1", 1, {}, 0.0),
    (None, 0, {}, 0.0), (None, 1, {}, 0.0),
])
def test_compat_vsr(prediction, gold, meta, expected):
    assert compat_score("vsr", prediction, gold, meta) == expected


@pytest.mark.parametrize("prediction, gold, meta, expected", [
    (True, "yes", {}, 1.0), (False, "no", {}, 1.0),
    (np.bool_(True), "yes", {}, 0.0),   # numpy bools read as "no"
    (np.bool_(True), "no", {}, 1.0),
    ("Yes, it fits", "yes", {}, 1.0), ("TRUE", "yes", {}, 1.0), ("No", "no", {}, 1.0),
    ("No, the cup is left of it", "yes", {}, 0.0),
    (1, "yes", {}, 0.0), (1, "no", {}, 1.0),                 # anything else is "no"
    (None, "no", {}, 1.0), (None, "yes", {}, 0.0),
])
def test_compat_robospatial(prediction, gold, meta, expected):
    assert compat_score("robospatial", prediction, gold, meta) == expected


@pytest.mark.parametrize("prediction, gold, expected", [
    ("3", "3", 1.0), (3, "3", 1.0), (3.0, "3", 1.0), (3.9, "3", 1.0),
    ("3.0", "3", 0.0), ("C", "3", 0.0), ("(B)", "3", 0.0),
    (True, "1", 1.0),                 # str(int(True)) == "1"
    ("Left", "left", 1.0), ("left.", "left", 0.0), ("", "left", 0.0), (None, "none", 1.0),
])
def test_compat_blink(prediction, gold, expected):
    assert compat_score("blink", prediction, gold, {}) == expected


@pytest.mark.parametrize("prediction, gold, expected", [
    ("left", "Left", 1.0), ("Left.", "Left", 1.0), ("left,", "left.", 1.0),
    ("", "Left", 1.0),                # the empty string is in every gold
    ("B", "Blue", 1.0),               # a letter inside the option text passes
    ("ef", "Left", 1.0), ("right", "Left", 0.0), ("Left side", "Left", 0.0),
    (None, "Left", 0.0), (3, "3", 1.0),
])
def test_compat_realworldqa(prediction, gold, expected):
    assert compat_score("realworldqa", prediction, gold, {}) == expected


@pytest.mark.parametrize("verdict, expected", [(1, 1.0), (1.0, 1.0), (0, 0.0), (0.0, 0.0), (None, 0.0)])
def test_compat_judge(verdict, expected):
    assert compat_score("judge", "anything", "gold", {"judge_verdict": verdict}) == expected


def test_compat_judge_without_verdict():
    assert compat_score("judge", "anything", "gold", {}) == 0.0


# --------------------------------------------------------------------------- judges


def test_exact_match_judge():
    judge = ExactMatchJudge()
    assert judge.judge("q", "a red car", "Red car.").score == 1.0
    assert judge.judge("q", "a red car", "red cars").score == 0.0
    assert judge.judge("q", 3, "3").score == 1.0


def test_record_open_with_exact_match_judge():
    record = score_record(make_record(AnswerType.OPEN, "a red car", "The red car.", question="What is it?"),
                          "judge", ExactMatchJudge())
    assert record["scores"] == {"strict": 1.0, "compat": 1.0}
    assert record["parse"] == Parse.OK
    assert record["extracted"] == "The red car."
    assert record["judge"] == {"name": "exact_match", "score": 1.0, "error": None, "cached": False}
    record = score_record(make_record(AnswerType.OPEN, "a red car", "a blue car"), "judge", ExactMatchJudge())
    assert record["scores"] == {"strict": 0.0, "compat": 0.0}
    assert record["parse"] == Parse.OK


def test_record_open_empty_prediction_skips_judge():
    record = score_record(make_record(AnswerType.OPEN, "a red car", "  "), "judge", ForbiddenJudge())
    assert record["scores"] == {"strict": 0.0, "compat": 0.0}
    assert record["parse"] == Parse.EMPTY
    assert record["judge"] is None


def test_llm_judge_verdicts_and_prompt():
    complete = ScriptedComplete("1", "0")
    judge = LLMJudge("fake-model@local", complete)
    record = score_record(make_record(AnswerType.OPEN, "a red car", "the crimson automobile",
                                      question="What is parked?"), "judge", judge)
    assert record["scores"] == {"strict": 1.0, "compat": 1.0}
    assert record["parse"] == Parse.OK
    assert record["judge"] == {"name": "fake-model@local", "score": 1.0, "error": None, "cached": False}
    messages = complete.calls[0]
    assert [m["role"] for m in messages] == ["system", "user"]
    assert "What is parked?" in messages[1]["content"]
    assert "Reference answer: a red car" in messages[1]["content"]
    assert "Candidate answer: the crimson automobile" in messages[1]["content"]

    record = score_record(make_record(AnswerType.OPEN, "a red car", "a bus"), "judge", judge)
    assert record["scores"] == {"strict": 0.0, "compat": 0.0}
    assert record["parse"] == Parse.OK
    assert record["judge"]["score"] == 0.0
    assert len(complete.calls) == 2


def test_llm_judge_unreadable_reply_is_a_judge_error():
    judge = LLMJudge("fake", ScriptedComplete("The candidate is probably right."))
    record = score_record(make_record(AnswerType.OPEN, "a red car", "red car"), "judge", judge)
    assert record["scores"] == {"strict": None, "compat": None}  # no verdict is not a 0
    assert record["parse"] == Parse.JUDGE_ERROR
    assert record["judge"]["score"] is None
    assert record["judge"]["error"] == "unreadable verdict: 'The candidate is probably right.'"


def test_llm_judge_exception_is_a_judge_error_with_its_text():
    judge = LLMJudge("fake", ScriptedComplete(ConnectionError("endpoint refused the connection")))
    record = score_record(make_record(AnswerType.OPEN, "a red car", "red car"), "judge", judge)
    assert record["parse"] == Parse.JUDGE_ERROR
    assert record["scores"] == {"strict": None, "compat": None}
    assert record["judge"]["error"] == "ConnectionError: endpoint refused the connection"
    assert record["extracted"] is None


def test_llm_judge_cache(tmp_path):
    cache = ResponseCache(tmp_path / "judge.sqlite")
    complete = ScriptedComplete("1", "0", RuntimeError("boom"), "1")
    judge = LLMJudge("fake", complete, cache)

    first = judge.judge("q?", "a red car", "red car")
    assert (first.score, first.cached, first.error) == (1.0, False, None)
    again = judge.judge("q?", "a red car", "red car")
    assert (again.score, again.cached) == (1.0, True)
    assert len(complete.calls) == 1

    # a 0 verdict is cached too (a falsy value is still a hit)
    assert judge.judge("q?", "a red car", "a bus").score == 0.0
    zero = judge.judge("q?", "a red car", "a bus")
    assert (zero.score, zero.cached) == (0.0, True)
    assert len(complete.calls) == 2

    # errors are not cached: the next call asks again
    failed = judge.judge("q?", "a red car", "a van")
    assert failed.score is None and failed.error == "RuntimeError: boom"
    retried = judge.judge("q?", "a red car", "a van")
    assert (retried.score, retried.cached) == (1.0, False)
    assert len(complete.calls) == 4
    assert len(cache) == 3

    # through score_record, the hit is reported as cached
    record = score_record(make_record(AnswerType.OPEN, "a red car", "red car", question="q?"), "judge", judge)
    assert record["judge"] == {"name": "fake", "score": 1.0, "error": None, "cached": True}
    assert record["scores"] == {"strict": 1.0, "compat": 1.0}
    assert len(complete.calls) == 4

    # a judge with another name does not read these verdicts
    other = LLMJudge("other", ScriptedComplete("0"), cache)
    assert other.judge("q?", "a red car", "red car") == Verdict(0.0)


def test_llm_judge_cache_survives_reopening(tmp_path):
    LLMJudge("fake", ScriptedComplete("1"), ResponseCache(tmp_path / "j.sqlite")).judge("q", "g", "p")
    reopened = LLMJudge("fake", ScriptedComplete(), ResponseCache(tmp_path / "j.sqlite"))
    assert reopened.judge("q", "g", "p") == Verdict(1.0, cached=True)


@pytest.mark.parametrize("text, expected", [
    ("1", 1.0), ("0", 0.0), (" 1\n", 1.0), ("1.", 1.0), ("**0**", 0.0), ('"1"', 1.0),
    ("<answer>1</answer>", 1.0), ("The candidate names another object. <answer> 0 </answer>", 0.0),
    ('{"verdict": 1}', 1.0), ('{"score": "0"}', 0.0), ('{"answer": 1}', 1.0), ('{"verdict": " 1 "}', 1.0),
    ('{"verdict": 2}', None), ('{"verdict": 1', None), ('{"reason": "same"}', None),
    ("10", None), ("01", None), ("0.5", None), ("yes", None), ("", None), ("1 0", None),
    ("Verdict: 1", 1.0), ("<think>is it 0 or 1?</think> 0", 0.0), ('{"verdict": true}', 1.0),
])
def test_parse_verdict(text, expected):
    assert parse_verdict(text) == expected


def test_make_judge_without_model_is_exact_match(tmp_path):
    judge = make_judge(JudgeSpec(), cache_dir=tmp_path)
    assert isinstance(judge, ExactMatchJudge)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- judge over HTTP


@pytest.fixture
def chat_server(monkeypatch):
    with running_chat_server(monkeypatch) as server:
        yield server


def test_llm_judge_over_http(chat_server, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_JUDGE_KEY", "sk-test-123")
    port = chat_server.server_address[1]
    spec = JudgeSpec(model="judge-7b", base_url=f"http://127.0.0.1:{port}/v1", api_key_env="FAKE_JUDGE_KEY")
    judge = make_judge(spec, cache_dir=tmp_path)
    assert judge.name == f"judge-7b@http://127.0.0.1:{port}/v1"
    chat_server.script += [Reply(content="1"), Reply(content="<answer>0</answer>")]

    record = score_record(make_record(AnswerType.OPEN, "two mugs", "2 mugs", question="What is on the desk?"),
                          "judge", judge)
    assert record["scores"] == {"strict": 1.0, "compat": 1.0}
    assert record["parse"] == Parse.OK
    assert record["judge"]["cached"] is False

    request = chat_server.requests[0]
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["authorization"] == "Bearer sk-test-123"
    assert request["body"]["model"] == "judge-7b"
    assert request["body"]["temperature"] == 0.0
    assert request["body"]["messages"][0]["role"] == "system"
    assert "Candidate answer: 2 mugs" in request["body"]["messages"][1]["content"]

    # the same question again is answered from the cache file without a request
    record = score_record(make_record(AnswerType.OPEN, "two mugs", "2 mugs", question="What is on the desk?"),
                          "judge", judge)
    assert record["judge"]["cached"] is True and record["scores"]["strict"] == 1.0
    assert len(chat_server.requests) == 1
    assert (tmp_path / "judge.sqlite").is_file()

    record = score_record(make_record(AnswerType.OPEN, "two mugs", "three cups"), "judge", judge)
    assert record["scores"] == {"strict": 0.0, "compat": 0.0}
    assert record["parse"] == Parse.OK
    assert len(chat_server.requests) == 2


def test_llm_judge_over_http_without_temperature(chat_server, tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    port = chat_server.server_address[1]
    judge = make_judge(JudgeSpec(model="reasoner", base_url=f"http://127.0.0.1:{port}/v1", temperature=None),
                       cache_dir=tmp_path)
    chat_server.script.append(Reply(content=" 0 "))
    assert judge.judge("q", "left", "right") == Verdict(0.0)
    body = chat_server.requests[0]["body"]
    assert "temperature" not in body
    assert chat_server.requests[0]["headers"]["authorization"] == "Bearer EMPTY"


def test_llm_judge_over_http_error_is_reported(chat_server, tmp_path):
    port = chat_server.server_address[1]
    judge = make_judge(JudgeSpec(model="judge-7b", base_url=f"http://127.0.0.1:{port}/v1"), cache_dir=tmp_path)
    chat_server.script += [Reply(status=400, body={"error": {"message": "model judge-7b does not exist",  # not retried
                                                              "type": "invalid_request_error", "code": None}}),
                           Reply(content="1")]
    record = score_record(make_record(AnswerType.OPEN, "two mugs", "2 mugs"), "judge", judge)
    assert record["parse"] == Parse.JUDGE_ERROR
    assert record["scores"] == {"strict": None, "compat": None}
    assert record["judge"]["error"].startswith("BackendError: judge-7b at ")
    assert "HTTP 400" in record["judge"]["error"] and "after 1 attempt" in record["judge"]["error"]
    assert "model judge-7b does not exist" in record["judge"]["error"]
    assert len(chat_server.requests) == 1
    # nothing was cached, so the next scoring asks again and succeeds
    record = score_record(make_record(AnswerType.OPEN, "two mugs", "2 mugs"), "judge", judge)
    assert record["parse"] == Parse.OK and record["scores"]["strict"] == 1.0
    assert len(chat_server.requests) == 2


# --------------------------------------------------------------------------- response cache


def test_cache_key_is_stable_and_order_free():
    assert cache_key("judge", {"b": 1, "a": 2}) == cache_key("judge", {"a": 2, "b": 1})
    assert cache_key("judge", "x", 1) != cache_key("judge", "x", "1")
    assert cache_key("a", "bc") != cache_key("ab", "c")
    assert len(cache_key("x")) == 64


def test_response_cache_roundtrip(tmp_path):
    path = tmp_path / "nested" / "c.sqlite"
    cache = ResponseCache(path)
    assert cache.get("missing") is None
    cache.put("k", {"text": "héllo", "n": [1, 2.5]})
    cache.put("zero", 0.0)
    cache.put("k", {"text": "replaced"})
    assert cache.get("k") == {"text": "replaced"}
    assert cache.get("zero") == 0.0
    assert len(cache) == 2
    cache.close()
    reopened = ResponseCache(path)
    assert reopened.get("k") == {"text": "replaced"} and len(reopened) == 2
    reopened.close()


# --------------------------------------------------------------------------- strict rules a careful reader would dispute

@pytest.mark.parametrize("prediction, expected", [
    ("it is not true", False), ("It isn't true.", False), ("not false", True), ("Yes, it is not on the left", True),
    ("true", True), ("no", False), ("maybe", None), ("It is true and it is not true", None),
    ("1", True), ("0", False), (1, True), (0, False), (2, None), ("2", None),  # "1" and 1 read alike
])
def test_yes_no_reads_negations_and_digits_alike(prediction, expected):
    assert parse_yes_no(prediction) == expected


@pytest.mark.parametrize("prediction, expected", [
    ("3, not 5", 3.0), ("not 5 but 3", 3.0), ("The answer is 3, or perhaps 4", 3.0), ("answer: 7. I counted 9", 7.0),
    ("I count 2 red and 3 blue, so 5", 5.0), ("1,500", 1500.0), ("about 1,500 people", 1500.0),
    ("1,5", None), ("it is 1,5 metres", None), ("not 4", None), ("12,34,567", None),
    (10 ** 400, None), ("1e999", None), (float("nan"), None),
])
def test_numbers_read_the_stated_answer_and_refuse_ambiguous_commas(prediction, expected):
    assert parse_number(prediction) == expected


def test_booleans_answer_yes_no_options():
    assert parse_choice(True, ["yes", "no"]) == 0 and parse_choice(False, ["Yes", "No"]) == 1
    assert parse_choice(np.bool_(True), ["no", "yes"]) == 1
    assert parse_choice(True, ["left", "right"]) is None
    assert score_strict(AnswerType.MULTIPLE_CHOICE, False, "no", ["yes", "no"]).score == 1.0


@pytest.mark.parametrize("prediction, gold, score", [
    ("cups", "cup", 1.0), ("two boxes", "two box", 1.0), ("children", "child", 1.0), ("bus", "bus", 1.0),
    ("glasses", "glass", 1.0), ("batteries", "battery", 1.0), ("cup", "cap", 0.0),
])
def test_word_answers_agree_in_singular_and_plural(prediction, gold, score):
    assert score_strict(AnswerType.WORD, prediction, gold).score == score


def deep(levels: int) -> list:
    value: list = []
    for _ in range(levels):
        value = [value, 1]
    return value


@pytest.mark.parametrize("prediction", [
    10 ** 400, pytest.param(-(10 ** 5000), id="huge-int"), float("inf"), float("nan"),
    pytest.param(deep(5000), id="deep-list"), [[[[[[[[[[3]]]]]]]]]], pytest.param({"a": deep(3000)}, id="deep-dict"),
    np.array([1, 2]), np.array([[True]]), pytest.param("x" * 1_000_000, id="long-text"), b"bytes", object(),
    {1, 2}, (1,), "", "   ",
], ids=str)
@pytest.mark.parametrize("answer_type, gold, choices", [
    (AnswerType.YESNO, "yes", None), (AnswerType.INTEGER, 3, None), (AnswerType.FLOAT, 2.5, None),
    (AnswerType.MULTIPLE_CHOICE, "b", ["a", "b"]), (AnswerType.WORD, "cup", None), (AnswerType.WORD, "3", None),
])
def test_strict_scoring_never_raises(prediction, answer_type, gold, choices):
    result = score_strict(answer_type, prediction, gold, choices)
    assert result.score in (0.0, 1.0) or 0.0 <= result.score <= 1.0


def test_a_scoring_failure_is_that_samples_status_and_the_run_goes_on(tmp_path, monkeypatch):
    import json

    import harness.scoring as scoring
    from harness.cli import main
    from toy import write_system, write_toy_task

    include, data = write_toy_task(tmp_path, n=6)
    write_system(include, "echo-gold", "harness.systems.predictions:PredictionsSystem")
    predictions = tmp_path / "p.jsonl"
    predictions.write_text("".join(json.dumps({"id": str(i), "task": "toy_counting", "prediction": i % 5}) + "\n"
                                   for i in range(6)))
    real = scoring.score_strict

    def flaky(answer_type, prediction, gold, choices=None):
        if prediction == 3:
            raise RuntimeError("a bug")
        return real(answer_type, prediction, gold, choices)

    monkeypatch.setattr(scoring, "score_strict", flaky)
    out = tmp_path / "run"
    main(["run", "--system", "predictions", "--tasks", "toy_counting", "--predictions", str(predictions),
          "--include-path", str(include), "--data-dir", str(data), "--output-path", str(out)])
    records = [json.loads(line) for line in (out / "samples_toy_counting.jsonl").read_text().splitlines()]
    assert len(records) == 6
    failed = [r for r in records if r["status"] == "scoring_error"]
    assert [r["id"] for r in failed] == ["3"] and "RuntimeError: a bug" in failed[0]["detail"]
    assert all(r["scores"]["strict"] == 1.0 for r in records if r["id"] != "3")
    assert json.loads((out / "results.json").read_text())["results"]["toy_counting"]["status_counts"]["scoring_error"] == 1


def test_plurals_of_words_ending_in_s():
    from harness.scoring.extract import singular

    assert [singular(w) for w in ("buses", "gases", "houses", "horses", "glasses", "boxes")] == \
        ["bus", "gas", "house", "horse", "glass", "box"]
