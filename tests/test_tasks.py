"""Offline tests of the task registry and loaders, on tiny copies of the real datasets.

Every dataset is written by ``tests/dataset_fixtures.py`` in the layout and
schema of its Hugging Face repository and read through the same
``datasets.load_dataset`` calls a real run makes. The Hugging Face caches are
redirected to temporary folders and the hub is switched off, so nothing here
touches the user's caches or the network.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

import datasets
import datasets.config
import huggingface_hub.constants
import PIL.Image
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dataset_fixtures as fx  # noqa: E402

from harness.registry import UnknownNameError  # noqa: E402
from harness.tasks import TaskConfigError, TaskRegistry  # noqa: E402
from harness.tasks.sources import DatasetUnavailableError  # noqa: E402
from harness.tasks.task import resolve_limit  # noqa: E402
from harness.types import BytesImage, FileImage, ImageError, LazyImage, UrlImage  # noqa: E402

PAPER_TASKS = ["blink", "countbenchqa", "gqa", "omni3d_bench", "realworldqa", "robospatial", "tallyqa", "vsr"]
OTHER_TASKS = ["blink_counting", "blink_spatial_relation", "omni3d_bench_full", "omni3d_bench_train",  # variants
               "realworldqa_valor", "vsr_random"]  # and the training split
ALL_TASKS = PAPER_TASKS + OTHER_TASKS  # tasks read from (fixture copies of) hub datasets
GENERATED_TASKS = ["synthetic"]  # generated offline; tested in test_synthetic.py
PSEUDO_LABEL_TASKS = ["gqa_train", "tallyqa_train", "vsr_train"]  # image pools; tested in test_pseudolabels.py

IMAGE_KIND = {
    "omni3d_bench": LazyImage, "omni3d_bench_full": LazyImage, "omni3d_bench_train": LazyImage,
    "robospatial": LazyImage, "blink": LazyImage, "blink_counting": LazyImage, "blink_spatial_relation": LazyImage,
    "realworldqa": LazyImage, "realworldqa_valor": LazyImage, "countbenchqa": LazyImage,
    "vsr": UrlImage, "vsr_random": UrlImage, "gqa": FileImage, "tallyqa": FileImage,
}


# --------------------------------------------------------------------------- environment and data

@pytest.fixture(scope="module", autouse=True)
def offline_hub(tmp_path_factory):
    """Hugging Face and harness caches in a temporary folder, the hub switched off.

    ``datasets`` and ``huggingface_hub`` read these variables when imported, so
    the module constants they were copied into are patched as well.
    """
    root = tmp_path_factory.mktemp("caches")
    hf_datasets, hf_hub = root / "hf-datasets", root / "hf-hub"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_DATASETS_CACHE", str(hf_datasets))
        mp.setenv("HF_HUB_CACHE", str(hf_hub))
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("HARNESS_CACHE_DIR", str(root / "harness"))
        mp.delenv("HARNESS_DATA_DIR", raising=False)
        mp.setattr(datasets.config, "HF_DATASETS_CACHE", hf_datasets)
        mp.setattr(datasets.config, "DOWNLOADED_DATASETS_PATH", hf_datasets / "downloads")
        mp.setattr(datasets.config, "EXTRACTED_DATASETS_PATH", hf_datasets / "downloads" / "extracted")
        mp.setattr(datasets.config, "HF_MODULES_CACHE", root / "hf-modules")
        mp.setattr(datasets.config, "HF_HUB_OFFLINE", True)
        mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        mp.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hf_hub))
        yield root


@pytest.fixture(scope="module")
def built(tmp_path_factory, offline_hub):
    data_dir = tmp_path_factory.mktemp("data")
    return data_dir, fx.build_all(data_dir)


@pytest.fixture(scope="module")
def data_dir(built) -> Path:
    return built[0]


@pytest.fixture(scope="module")
def written(built) -> dict[str, fx.Written]:
    return built[1]


@pytest.fixture(scope="module")
def registry() -> TaskRegistry:
    return TaskRegistry()


@pytest.fixture(scope="module")
def loaded(registry, data_dir):
    """Every task's samples, read once for the tests that only look at them."""
    return {name: list(registry.task(name, data_dir).samples()) for name in ALL_TASKS}


@pytest.fixture()
def no_network(monkeypatch):
    """Fail any image download instead of reaching the network."""
    attempts = []

    def refuse(url, *args, **kwargs):
        attempts.append(getattr(url, "full_url", url))
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    return attempts


def assert_colour(image: PIL.Image.Image, rgb: tuple[int, int, int], tolerance: int = 4) -> None:
    pixel = image.getpixel((image.width // 2, image.height // 2))
    assert all(abs(a - b) <= tolerance for a, b in zip(pixel, rgb)), f"pixel {pixel}, expected about {rgb}"


# --------------------------------------------------------------------------- registry

def test_registry_holds_exactly_the_task_files(registry):
    assert registry.names() == sorted(ALL_TASKS + GENERATED_TASKS + PSEUDO_LABEL_TASKS)
    names = ALL_TASKS + GENERATED_TASKS + PSEUDO_LABEL_TASKS
    assert {Path(registry.config(n).source_file).name for n in names} == {f"{n}.yaml" for n in names}


def test_all_expands_to_the_eight_paper_tasks(registry):
    assert registry.expand("all") == PAPER_TASKS
    assert registry.expand("paper") == PAPER_TASKS


def test_expand_names_tags_and_duplicates(registry):
    assert registry.expand("vsr, blink,vsr") == ["vsr", "blink"]
    assert registry.expand("variant") == sorted(set(OTHER_TASKS) - {"omni3d_bench_train"})
    assert registry.expand("train") == sorted(["omni3d_bench_train"] + PSEUDO_LABEL_TASKS)
    assert registry.expand("all,omni3d_bench_full") == PAPER_TASKS + ["omni3d_bench_full"]
    with pytest.raises(ValueError, match="no tasks selected"):
        registry.expand(" , ")


def test_unknown_task_suggests_a_close_name(registry, data_dir):
    with pytest.raises(UnknownNameError) as info:
        registry.task("omni3d_bnech", data_dir)
    message = str(info.value)
    assert "unknown task 'omni3d_bnech'" in message
    assert "Did you mean 'omni3d_bench'" in message
    with pytest.raises(UnknownNameError, match="Did you mean 'vsr_random'"):
        registry.expand("vsr,vsr_randm")
    with pytest.raises(UnknownNameError, match="unknown task 'qqqqqqqq'"):
        registry.config("qqqqqqqq")


def test_paper_task_settings(registry):
    """The YAML values the loaders below depend on."""
    omni = registry.config("omni3d_bench")
    assert (omni.rows, omni.size, omni.formatter, omni.answers) == ((0, 100), 100, "omni3d", True)
    train = registry.config("omni3d_bench_train")
    assert (train.rows, train.answers, train.answer_type, train.fields.answer) == ((100, 501), False, "none", None)
    assert registry.config("omni3d_bench_full").rows is None
    assert [p.config for p in registry.config("blink").dataset.parts] == ["Counting", "Spatial_Relation"]
    assert [p.split for p in registry.config("robospatial").dataset.parts] == ["compatibility", "configuration"]
    assert registry.config("vsr").question_template == "Is {caption}?"
    assert registry.config("gqa").dataset.image_root == "gqa"
    assert registry.config("tallyqa").dataset.image_root == "tallyqa"


# --------------------------------------------------------------------------- samples, task by task

@pytest.mark.parametrize("name", ALL_TASKS)
def test_samples_match_the_rows(name, loaded, written):
    samples = loaded[name]
    expected = fx.expected_samples(written, name)
    assert len(samples) == len(expected) > 0
    withheld = name == "omni3d_bench_train"
    for sample, want in zip(samples, expected):
        assert sample.error is None, sample.error
        assert sample.task == name
        assert sample.id == want.id
        assert sample.question == want.question
        assert sample.subset == want.subset
        assert sample.cluster == want.cluster
        assert isinstance(sample.image, IMAGE_KIND[name])
        if withheld:
            assert (sample.answer, sample.answer_type, sample.compat_gold, sample.choices) == (None, "none", None, None)
        else:
            assert sample.answer == want.answer
            assert type(sample.answer) is type(want.answer)
            assert sample.answer_type == want.answer_type
            assert sample.choices == want.choices
            assert sample.compat_gold == want.compat_gold


@pytest.mark.parametrize("name", ALL_TASKS)
def test_len_and_revision(name, registry, data_dir, written):
    task = registry.task(name, data_dir)
    assert len(task) == len(fx.expected_samples(written, name))
    assert task.revision == "local"
    assert task.source.root == data_dir / registry.config(name).dataset.path


def test_omni3d_rows_types_and_clusters(loaded):
    test, full, train = loaded["omni3d_bench"], loaded["omni3d_bench_full"], loaded["omni3d_bench_train"]
    assert [s.id for s in test] == [str(i) for i in range(100)]
    assert [s.id for s in full] == [str(i) for i in range(110)]
    assert [s.id for s in train] == [str(i) for i in range(100, 110)]
    # the seven kinds of row, in the order the fixture cycles through them
    first = test[:7]
    assert [s.answer_type for s in first] == ["integer", "float", "yesno", "yesno", "word", "word", "word"]
    assert [s.answer for s in first] == [1, 1.25, "yes", "no", "fridge", "same", "W"]
    assert [s.compat_gold for s in first] == ["1", "1.25", "yes", "No", "fridge", "same", "W"]
    assert [s.meta["compat"]["raw_answer_type"] for s in first] == ["int", "float", "str", "str", "str", "str", "str"]
    assert [s.cluster for s in test[:6]] == ["0", "0", "0", "1", "1", "2"]
    assert len({s.cluster for s in test}) == 40  # 2.5 questions per image
    assert {s.subset for s in full} == {"train"}


def test_omni3d_train_withholds_answers(loaded):
    for sample in loaded["omni3d_bench_train"]:
        assert sample.answer is None and sample.compat_gold is None
        assert sample.answer_type == "none"
        assert sample.meta == {"compat": {}}
    assert loaded["omni3d_bench_train"][0].question == "Is the lamp taller than the chair?"  # row 100 (100 % 7 == 2)


def test_blink_options_and_subsets(loaded):
    blink = loaded["blink"]
    assert [s.id for s in blink] == ["val_Counting_1", "val_Counting_2", "val_Counting_3",
                                     "val_Spatial_Relation_1", "val_Spatial_Relation_2", "val_Spatial_Relation_3"]
    assert blink[0].question == "How many blue floats are there? Options: {2,3,4,5}."
    assert (blink[0].answer, blink[0].choices) == ("3", ["2", "3", "4", "5"])
    assert blink[3].question == "Is the car beneath the cat? Options: {yes,no}."
    assert (blink[4].answer, blink[4].choices) == ("no", ["yes", "no"])
    assert [s.subset for s in blink] == ["Counting"] * 3 + ["Spatial_Relation"] * 3
    assert all(s.answer_type == "multiple_choice" for s in blink)
    # neither the Art_Style config nor the test split is read
    assert not any("Art_Style" in s.id or s.id.startswith("test_") for s in blink)
    assert [s.id for s in loaded["blink_counting"]] == [s.id for s in blink[:3]]
    assert [s.id for s in loaded["blink_spatial_relation"]] == [s.id for s in blink[3:]]


def test_robospatial_reads_two_of_three_splits(loaded):
    samples = loaded["robospatial"]
    assert [s.id for s in samples] == ["compatibility/0", "compatibility/1", "compatibility/2",
                                       "configuration/0", "configuration/1", "configuration/2"]
    assert [s.answer for s in samples] == ["yes", "no", "yes", "no", "yes", "no"]
    assert [s.compat_gold for s in samples] == ["yes", "no", "yes", "no", "yes", "no"]
    assert samples[0].question == "Can the mug fit on the shelf to the left of the plant?"
    assert "context" not in {s.subset for s in samples}


def test_vsr_questions_are_built_from_the_caption(loaded):
    vsr = loaded["vsr"]
    assert [s.question for s in vsr] == [
        "Is The cat is on the bed.?", "Is The cat is under the bed.?",
        "Is The umbrella is above the bench.?", "Is The truck is left of the motorcycle.?",
    ]
    assert [s.answer for s in vsr] == ["yes", "no", "yes", "no"]
    assert [s.compat_gold for s in vsr] == [1, 0, 1, 0]
    assert [s.cluster for s in vsr] == ["000000085637.jpg", "000000085637.jpg", "000000173371.jpg",
                                        "000000459153.jpg"]
    assert {s.subset for s in vsr} == {"dev"}
    assert [s.question for s in loaded["vsr_random"]][0] == "Is The person is touching the horse.?"
    image = vsr[0].image
    assert image.url == "http://images.cocodataset.org/train2017/000000085637.jpg"
    assert image.local_path.endswith("cambridgeltl/vsr_zeroshot/images/000000085637.jpg")


def test_realworldqa_options_are_parsed_out(loaded):
    rwqa = loaded["realworldqa"]
    assert rwqa[0].question == "Which object is closer? Options: {The car,The tree,The sign}."
    assert (rwqa[0].answer, rwqa[0].choices, rwqa[0].answer_type) == (
        "The tree", ["The car", "The tree", "The sign"], "multiple_choice")
    assert rwqa[1].answer == "Right"
    assert "Please answer" not in rwqa[1].question and "\n" not in rwqa[1].question
    assert rwqa[2].question == "How many lanes are there?\nPlease answer directly with a single word or number."
    assert (rwqa[2].answer, rwqa[2].answer_type, rwqa[2].choices) == ("3", "word", None)
    assert rwqa[3].choices == ["Yes", "No"] and rwqa[3].answer == "Yes"
    mirror = loaded["realworldqa_valor"]
    assert [(s.id, s.question, s.answer) for s in mirror] == [(s.id, s.question, s.answer) for s in rwqa]


def test_grit_tasks(loaded):
    gqa, tally = loaded["gqa"], loaded["tallyqa"]
    assert [(s.question, s.answer, s.answer_type) for s in gqa] == [
        ("Is the sky dark?", "yes", "open"),
        ("What is the man to the left of the bus wearing?", "jacket", "open"),
        ("Which side of the photo is the lamp on?", "left", "open"),
    ]
    assert [s.cluster for s in gqa] == ["images/2354786.jpg", "images/2354786.jpg", "images/2375429.jpg"]
    assert [s.answer for s in tally] == [3, 0, 2] and all(type(s.answer) is int for s in tally)
    assert {s.subset for s in gqa} == {"gqa"} and {s.subset for s in tally} == {"tallyqa"}
    assert tally[0].image.path.endswith("yfan1997/GRIT_data/tallyqa/VG_100K_2/2410281.jpg")
    assert gqa[0].image.path.endswith("yfan1997/GRIT_data/gqa/images/2354786.jpg")


def test_countbenchqa(loaded):
    samples = loaded["countbenchqa"]
    assert [(s.id, s.question, s.answer) for s in samples] == [
        ("0", "How many dogs are in the image?", 3),
        ("1", "How many sailors are in the image?", 2),
        ("2", "How many balloons are in the image?", 7),
    ]
    assert all(s.answer_type == "integer" and s.cluster is None for s in samples)


# --------------------------------------------------------------------------- images

def test_iterating_samples_reads_no_image(registry, data_dir, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("an image was read while iterating samples")

    monkeypatch.setattr(PIL.Image, "open", refuse)
    monkeypatch.setattr(datasets.Image, "decode_example", refuse)
    for cls in (FileImage, LazyImage, UrlImage, BytesImage):
        monkeypatch.setattr(cls, "read_bytes", refuse)
    for name in ALL_TASKS:
        samples = list(registry.task(name, data_dir).samples())
        assert samples and all(s.error is None and s.image is not None for s in samples), name


@pytest.mark.parametrize("name", ALL_TASKS)
def test_images_load_on_demand_as_rgb(name, loaded, written, monkeypatch, no_network):
    opened = []
    original_open = PIL.Image.open

    def counting_open(*args, **kwargs):
        opened.append(args)
        return original_open(*args, **kwargs)

    monkeypatch.setattr(PIL.Image, "open", counting_open)
    for sample, want in zip(loaded[name], fx.expected_samples(written, name)):
        before = len(opened)
        image = sample.image.load()
        assert len(opened) == before + 1
        assert image.mode == "RGB" and image.size == fx.IMAGE_SIZE
        assert_colour(image, want.colour)
    assert no_network == []


def test_grayscale_image_becomes_rgb(loaded):
    image = loaded["countbenchqa"][1].image.load()
    assert image.mode == "RGB"
    assert_colour(image, (90, 90, 90))


def test_train_rows_get_their_own_images(loaded):
    """Images follow the row range: sample 100 shows image_index 40, not row 0's image."""
    first = loaded["omni3d_bench_train"][0]
    assert first.id == "100" and first.cluster == str(fx.omni3d_image_index(100)) == "40"
    assert_colour(first.image.load(), fx.colour(40), tolerance=0)


def test_missing_image_file_names_the_file(registry, tmp_path):
    fx.build_grit(tmp_path)
    missing = tmp_path / fx.GRIT / "gqa" / "images" / "2375429.jpg"
    missing.unlink()
    samples = list(registry.task("gqa", tmp_path).samples())
    assert all(s.error is None for s in samples)  # reading rows does not need the image
    samples[0].image.load()
    with pytest.raises(ImageError, match="cannot read image file .*gqa/images/2375429.jpg"):
        samples[2].image.load()


def test_corrupt_image_file_names_the_file(registry, tmp_path):
    fx.build_grit(tmp_path)
    (tmp_path / fx.GRIT / "tallyqa" / "VG_100K_2" / "2410281.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    sample = next(registry.task("tallyqa", tmp_path).samples())
    with pytest.raises(ImageError, match="cannot decode image .*tallyqa/VG_100K_2/2410281.jpg"):
        sample.image.load()


def test_bad_arrow_images_name_the_row(registry, tmp_path):
    root = tmp_path / fx.COUNTBENCH
    fx.write_parquet(root, "data/test-00000-of-00001.parquet", {
        "image": [fx.arrow_image((1, 2, 3)), {"bytes": b"\x89PNG truncated", "path": None}, None],
        "text": ["Two cats", "Three cups", "Four boats"],
        "question": ["How many cats are in the image?", "How many cups are in the image?",
                     "How many boats are in the image?"],
        "number": [2, 3, 4],
    }, fx.COUNTBENCH_FEATURES)
    samples = list(registry.task("countbenchqa", tmp_path).samples())
    assert [s.error for s in samples] == [None, None, None]
    assert_colour(samples[0].image.load(), (1, 2, 3), tolerance=0)
    with pytest.raises(ImageError, match=r"cannot decode image vikhyatk/CountBenchQA\[test\] row 1"):
        samples[1].image.load()
    with pytest.raises(ImageError, match=r"vikhyatk/CountBenchQA\[test\] row 2: column 'image' is empty"):
        samples[2].image.load()


def test_vsr_image_without_local_copy_names_url_and_file(registry, tmp_path, no_network, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    fx.build_vsr(tmp_path, fx.VSR_ZEROSHOT, with_images=False)
    sample = next(registry.task("vsr", tmp_path).samples())
    with pytest.raises(ImageError) as info:
        sample.image.load()
    message = str(info.value)
    assert "http://images.cocodataset.org/train2017/000000085637.jpg" in message
    assert "vsr_zeroshot/images/000000085637.jpg" in message
    assert no_network == ["http://images.cocodataset.org/train2017/000000085637.jpg"]


def test_vsr_image_is_not_downloaded_when_offline(registry, tmp_path, no_network, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    fx.build_vsr(tmp_path, fx.VSR_ZEROSHOT, with_images=False)
    sample = next(registry.task("vsr", tmp_path).samples())
    with pytest.raises(ImageError, match="downloads are off"):
        sample.image.load()
    assert no_network == []


def test_vsr_image_from_the_download_cache(registry, tmp_path, no_network):
    fx.build_vsr(tmp_path, fx.VSR_RANDOM, with_images=False)
    sample = next(registry.task("vsr_random", tmp_path).samples())
    url = "http://images.cocodataset.org/train2017/000000397133.jpg"
    assert sample.image.url == url
    cached = Path(os.environ["HARNESS_CACHE_DIR"]) / "images" / (hashlib.sha256(url.encode()).hexdigest()[:24] + ".jpg")
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(fx.image_bytes((7, 8, 9)))
    assert_colour(sample.image.load(), (7, 8, 9), tolerance=0)
    assert no_network == []


# --------------------------------------------------------------------------- --limit

def test_resolve_limit():
    assert resolve_limit(None, 40) == 40
    assert resolve_limit(5, 40) == 5
    assert resolve_limit(5.9, 40) == 5
    assert resolve_limit(400, 40) == 40
    assert resolve_limit(0.25, 40) == 10
    assert resolve_limit(0.5, 3) == 2  # fractions round up, like lm-evaluation-harness
    assert resolve_limit(0.001, 40) == 1
    assert resolve_limit(0, 40) == 0
    with pytest.raises(ValueError, match="must not be negative"):
        resolve_limit(-1, 40)


def test_limit_counts_and_fractions(registry, data_dir):
    omni = registry.task("omni3d_bench", data_dir)
    assert omni.ids(7) == ["0", "1", "2", "3", "4", "5", "6"]
    assert omni.ids(0.25) == [str(i) for i in range(25)]
    assert len(omni.ids(10_000)) == 100
    assert omni.ids(0) == []
    train = registry.task("omni3d_bench_train", data_dir)
    assert train.ids(3) == ["100", "101", "102"]
    assert train.ids(0.5) == ["100", "101", "102", "103", "104"]
    blink = registry.task("blink", data_dir)
    assert blink.ids(4) == ["val_Counting_1", "val_Counting_2", "val_Counting_3", "val_Spatial_Relation_1"]
    assert registry.task("robospatial", data_dir).ids(0.5) == ["compatibility/0", "compatibility/1",
                                                               "compatibility/2"]
    with pytest.raises(ValueError):
        list(blink.samples(-2))


def test_rows_past_the_end_of_a_short_dataset(registry, tmp_path, caplog):
    fx.build_omni3d(tmp_path, n_rows=40)
    with caplog.at_level(logging.WARNING):
        assert registry.task("omni3d_bench", tmp_path).ids() == [str(i) for i in range(40)]
    assert "expected 100 samples but the dataset gives 40" in caplog.text
    with pytest.raises(ValueError, match=r"rows \[100, 501\] start past the end of the dataset \(40 rows\)"):
        len(registry.task("omni3d_bench_train", tmp_path))


# --------------------------------------------------------------------------- broken rows

def test_jsonl_row_missing_the_answer(registry, tmp_path):
    fx.build_grit(tmp_path)
    path = tmp_path / fx.GRIT / "gqa_val.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    del rows[1]["answer"]
    fx.write_jsonl(tmp_path / fx.GRIT, "gqa_val.jsonl", rows)
    samples = list(registry.task("gqa", tmp_path).samples())
    assert [s.error is None for s in samples] == [True, False, True]
    bad = samples[1]
    assert bad.error.startswith("sample 1: ") and "'answer'" in bad.error
    assert (bad.id, bad.answer, bad.question, bad.subset) == ("1", None, rows[1]["question"], "gqa")
    assert isinstance(bad.image, FileImage)


def test_vsr_row_missing_the_caption(registry, tmp_path):
    fx.build_vsr(tmp_path, fx.VSR_ZEROSHOT)
    root = tmp_path / fx.VSR_ZEROSHOT
    rows = [json.loads(line) for line in (root / "dev.jsonl").read_text().splitlines()]
    del rows[2]["caption"]
    fx.write_jsonl(root, "dev.jsonl", rows)
    samples = list(registry.task("vsr", tmp_path).samples())
    assert [s.error is None for s in samples] == [True, True, False, True]
    assert samples[2].error.startswith("sample 2: ") and "'caption'" in samples[2].error
    assert samples[2].question == ""  # never "Is None?"
    assert samples[3].question == "Is The truck is left of the motorcycle.?"


def test_omni3d_rows_with_bad_or_empty_fields(registry, tmp_path):
    columns = {
        "image": [fx.arrow_image(fx.colour(i)) for i in range(4)],
        "image_index": [0, 0, 1, 1],
        "q_index": [0, 1, 2, 3],
        "question": ["How many chairs are there?", "Is the cup left of the plate?", "How tall is the door?",
                     "How wide is the bed in meters?"],
        "answer": ["2", None, "tall", "1.6"],
        "answer_type": ["int", "str", "float", "bool"],
    }
    fx.write_parquet(tmp_path / fx.OMNI3D, "data/train-00000-of-00001.parquet", columns, fx.OMNI3D_FEATURES)
    samples = list(registry.task("omni3d_bench_full", tmp_path).samples())
    assert samples[0].error is None and samples[0].answer == 2
    assert samples[1].error == "sample 1: field 'answer' (answer) is empty"
    assert samples[2].error.startswith("sample 2: field 'answer' should be a number")
    assert samples[3].error.startswith("sample 3: field 'answer_type' should be int, float or str")
    assert [s.cluster for s in samples] == ["0", "0", "1", "1"]
    assert [s.question for s in samples] == columns["question"]  # kept on failed rows too
    assert [s.answer for s in samples[1:]] == [None, None, None]


def test_parquet_without_the_answer_column(registry, tmp_path):
    features = datasets.Features({k: v for k, v in fx.COUNTBENCH_FEATURES.items() if k != "number"})
    fx.write_parquet(tmp_path / fx.COUNTBENCH, "data/test-00000-of-00001.parquet", {
        "image": [fx.arrow_image((1, 1, 1)), fx.arrow_image((2, 2, 2))],
        "text": ["Two cats", "Three cups"],
        "question": ["How many cats are in the image?", "How many cups are in the image?"],
    }, features)
    samples = list(registry.task("countbenchqa", tmp_path).samples())
    assert [s.error for s in samples] == ["sample 0: missing field 'number' (answer)",
                                          "sample 1: missing field 'number' (answer)"]
    assert [s.question for s in samples] == ["How many cats are in the image?", "How many cups are in the image?"]


def test_blink_bad_answer_and_duplicate_id(registry, tmp_path):
    written = fx.build_blink(tmp_path)
    rows = written.rows["Counting"]
    table = {name: [row[name] for row in rows] for name in rows[0]}
    table["answer"][0] = "(E)"
    table["idx"][2] = table["idx"][1]
    table["image_1"] = [fx.arrow_image(fx.colour(i)) for i in range(len(rows))]
    for column in ("image_2", "image_3", "image_4"):
        table[column] = [None] * len(rows)
    fx.write_parquet(written.root, "Counting/val-00000-of-00001.parquet", table, fx.BLINK_FEATURES)
    samples = list(registry.task("blink_counting", tmp_path).samples())
    assert samples[0].error == "sample val_Counting_1: answer '(E)' names no option among 4 choices"
    assert samples[1].error is None
    assert samples[2].id == "val_Counting_2#row2"
    assert samples[2].error == "sample val_Counting_2: duplicate id in task blink_counting"


def test_realworldqa_answer_outside_the_options(registry, tmp_path):
    columns = {
        "image": [fx.arrow_image((5, 5, 5))],
        "question": ["Which lane is the bus in?\nA. Left\nB. Middle\nC. Right\nPlease answer directly with only the "
                     "letter of the correct option and nothing else."],
        "answer": ["E"],
    }
    fx.write_parquet(tmp_path / fx.REALWORLDQA, "data/test-00000-of-00001.parquet", columns,
                     fx.REALWORLDQA_FEATURES)
    (sample,) = registry.task("realworldqa", tmp_path).samples()
    assert sample.error == "sample 0: answer 'E' matches none of the options ['Left', 'Middle', 'Right']"


def test_changed_local_copy_is_read_again(registry, tmp_path):
    """A BLINK folder (configs declared in its README) rewritten in place, then a second copy elsewhere."""
    written = fx.build_blink(tmp_path / "one")
    assert registry.task("blink_counting", tmp_path / "one").ids() == ["val_Counting_1", "val_Counting_2",
                                                                       "val_Counting_3"]
    rows = written.rows["Counting"][:2]
    table = {name: [row[name] for row in rows] for name in rows[0]}
    table["idx"] = ["val_Counting_7", "val_Counting_8"]
    table["image_1"] = [fx.arrow_image((9, 9, 9))] * 2
    for column in ("image_2", "image_3", "image_4"):
        table[column] = [None, None]
    fx.write_parquet(written.root, "Counting/val-00000-of-00001.parquet", table, fx.BLINK_FEATURES)
    assert registry.task("blink_counting", tmp_path / "one").ids() == ["val_Counting_7", "val_Counting_8"]
    fx.build_blink(tmp_path / "two")
    assert registry.task("blink_counting", tmp_path / "two").ids() == ["val_Counting_1", "val_Counting_2",
                                                                       "val_Counting_3"]


# --------------------------------------------------------------------------- missing datasets

def test_missing_dataset_names_task_and_folder(registry, tmp_path):
    task = registry.task("vsr", tmp_path)
    with pytest.raises(DatasetUnavailableError) as info:
        len(task)
    message = str(info.value)
    assert message.startswith("task 'vsr': dataset 'cambridgeltl/vsr_zeroshot' is not available")
    assert f"{tmp_path / 'cambridgeltl' / 'vsr_zeroshot'} does not exist" in message
    assert "DATA_DIR/cambridgeltl/vsr_zeroshot" in message


def test_missing_dataset_without_data_dir(registry):
    with pytest.raises(DatasetUnavailableError, match="task 'countbenchqa'.*no --data-dir / HARNESS_DATA_DIR is set"):
        list(registry.task("countbenchqa").samples())


def test_data_dir_from_the_environment(registry, data_dir, monkeypatch):
    monkeypatch.setenv("HARNESS_DATA_DIR", str(data_dir))
    assert registry.task("countbenchqa").ids() == ["0", "1", "2"]


def test_missing_file_in_a_present_dataset_folder(registry, tmp_path):
    fx.build_vsr(tmp_path, fx.VSR_ZEROSHOT)
    (tmp_path / fx.VSR_ZEROSHOT / "dev.jsonl").unlink()
    with pytest.raises(DatasetUnavailableError, match="task 'vsr': cannot read part 'dev' of cambridgeltl/vsr_zeroshot: "
                                                      ".*vsr_zeroshot/dev.jsonl \\(the task's data_files\\) is "
                                                      "missing: the copy lacks it"):
        len(registry.task("vsr", tmp_path))


def test_size_mismatch_is_logged(registry, data_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="harness.tasks.task"):
        len(registry.task("blink", data_dir))
        len(registry.task("omni3d_bench", data_dir))
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("task blink: expected 263 samples but the dataset gives 6") for m in messages)
    assert not any("omni3d_bench" in m for m in messages)  # 100 rows, as the YAML expects


# --------------------------------------------------------------------------- malformed task files

VALID = {
    "task": "toy",
    "dataset": {"path": "someone/toy", "parts": [{"split": "test"}]},
    "fields": {"question": "question", "answer": "answer"},
    "answer_type": "integer",
}


def _variant(change) -> dict:
    data = yaml.safe_load(yaml.safe_dump(VALID))
    change(data)
    return data


BAD_CONFIGS = {
    "unknown top-level key": (lambda d: d.update(answer_tpye="integer"),
                              ["unknown key 'answer_tpye'", "did you mean 'answer_type'"]),
    "unknown dataset key": (lambda d: d["dataset"].update(revison="main"), ["unknown key 'revison'", "'revision'"]),
    "unknown fields key": (lambda d: d["fields"].update(questoin="q"), ["unknown key 'questoin'"]),
    "unknown part key": (lambda d: d["dataset"]["parts"][0].update(splt="x"), ["unknown key 'splt'"]),
    "missing task": (lambda d: d.pop("task"), ["missing required key 'task'"]),
    "missing dataset": (lambda d: d.pop("dataset"), ["missing required key 'dataset'"]),
    "missing dataset.path": (lambda d: d["dataset"].pop("path"), ["'dataset.path'"]),
    "part without split": (lambda d: d["dataset"]["parts"][0].pop("split"), ["'split'"]),
    "bad answer_type": (lambda d: d.update(answer_type="number"), ["'answer_type'", "'number'"]),
    "rows reversed": (lambda d: d.update(rows=[100, 0]), ["'rows'", "[100, 0]"]),
    "rows one number": (lambda d: d.update(rows=[5]), ["'rows'"]),
    "rows a string": (lambda d: d.update(rows="0-100"), ["'rows'"]),
    "rows not integers": (lambda d: d.update(rows=[0, 1.5]), ["'rows'"]),
    "size a string": (lambda d: d.update(size="100"), ["'size'"]),
    "fields a list": (lambda d: d.update(fields=["question"]), ["'fields'"]),
    "unknown formatter": (lambda d: d.update(formatter="blink"), ["'formatter'", "'blink_options'"]),
    "unknown compat": (lambda d: d.update(compat="nonsense_rule"), ["'compat'"]),
    "unknown source kind": (lambda d: d["dataset"].update(kind="ftp"), ["'dataset.kind'"]),
    "duplicate task": (lambda d: d.update(task="vsr"), ["'vsr' is already defined", "vsr.yaml"]),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_malformed_task_file_names_file_and_key(case, tmp_path):
    change, fragments = BAD_CONFIGS[case]
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(_variant(change)), encoding="utf-8")
    with pytest.raises(TaskConfigError) as info:
        TaskRegistry([tmp_path])
    message = str(info.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message


def test_invalid_yaml_names_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("task: toy\ndataset: {path: [unclosed\n", encoding="utf-8")
    with pytest.raises(TaskConfigError, match=f"{path}: not valid YAML"):
        TaskRegistry([tmp_path])


def test_valid_extra_task_file_is_registered(tmp_path):
    (tmp_path / "toy.yaml").write_text(yaml.safe_dump(VALID), encoding="utf-8")
    registry = TaskRegistry([tmp_path])
    assert "toy" in registry.names() and len(registry.names()) == len(ALL_TASKS + GENERATED_TASKS + PSEUDO_LABEL_TASKS) + 1
    config = registry.config("toy")
    assert (config.rows, config.answer_type, config.dataset.parts[0].split) == (None, "integer", "test")
    assert config.source_file == str(tmp_path / "toy.yaml")
    assert registry.expand("all") == PAPER_TASKS


def test_missing_include_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TaskRegistry([tmp_path / "nowhere"])
