"""Every task loads from the three places users have its data, in each dataset's real layout.

1. a full local copy of the dataset repository (``--data-dir``);
2. a partial copy, holding only what ``snapshot_download`` fetches with the
   task's ``hub_files`` allow-patterns (plus the README);
3. the hub: ``huggingface_hub.snapshot_download`` is replaced by a fake that
   copies from a local repository with the allow-patterns applied, into a
   snapshot folder named by the commit, as the real one does.

The repositories come from ``tests/dataset_fixtures.py`` (README ``configs:``
in the real order, real file names, column types). Then the class of bugs
behind them: a README whose first config is missing, several file formats,
default configs, missing READMEs and splits, and the revision a copy records.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import datasets
import datasets.config
import huggingface_hub
import huggingface_hub.constants
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dataset_fixtures as fx  # noqa: E402

from harness.tasks import TaskRegistry  # noqa: E402
from harness.tasks.config import parse_task_config  # noqa: E402
from harness.tasks.layout import REVISION_FILE, part_files  # noqa: E402
from harness.tasks.sources import DatasetUnavailableError, allow_patterns  # noqa: E402
from harness.tasks.task import Task  # noqa: E402
from harness.types import ImageError, LazyImage  # noqa: E402

REGISTRY = TaskRegistry()
HUB_TASKS = [n for n in REGISTRY.names() if REGISTRY.config(n).dataset.kind == "hub"]
FAKE_HEAD = "0123456789abcdef0123456789abcdef01234567"  # the commit the fake hub's main branch points at


@pytest.fixture(scope="module", autouse=True)
def offline_hub(tmp_path_factory):
    """Hugging Face caches in a temporary folder, the hub switched off (see tests/test_tasks.py)."""
    root = tmp_path_factory.mktemp("caches")
    hf_datasets = root / "hf-datasets"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_DATASETS_CACHE", str(hf_datasets))
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.delenv("HARNESS_DATA_DIR", raising=False)
        mp.setattr(datasets.config, "HF_DATASETS_CACHE", hf_datasets)
        mp.setattr(datasets.config, "HF_MODULES_CACHE", root / "hf-modules")
        mp.setattr(datasets.config, "HF_HUB_OFFLINE", True)
        mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        yield root


@pytest.fixture(scope="module")
def hub_root(tmp_path_factory):
    """The repositories as the hub holds them: no COCO or Visual Genome images (users place those)."""
    root = tmp_path_factory.mktemp("hub")
    builders = dict(fx.BUILDERS, **{
        fx.GRIT: lambda d: fx.build_grit(d, with_images=False),
        fx.VSR_ZEROSHOT: lambda d: fx.build_vsr(d, fx.VSR_ZEROSHOT, with_images=False),
        fx.VSR_RANDOM: lambda d: fx.build_vsr(d, fx.VSR_RANDOM, with_images=False),
    })
    for build in builders.values():
        build(root)
    return root


@pytest.fixture(scope="module")
def full_dir(tmp_path_factory):
    """A full copy of every repository, with the images users place beside them."""
    root = tmp_path_factory.mktemp("full")
    fx.build_all(root)
    return root


@pytest.fixture(scope="module")
def full_samples(full_dir):
    return {name: list(REGISTRY.task(name, full_dir).samples()) for name in HUB_TASKS}


def fake_snapshot_download(hub: Path, cache: Path, calls: list):
    """``snapshot_download`` over local repositories: allow-patterns applied, one snapshot folder per commit."""
    def download(repo_id, *, repo_type=None, revision=None, allow_patterns=None, local_dir=None, **kwargs):
        from huggingface_hub._local_folder import write_download_metadata

        calls.append({"repo_id": repo_id, "repo_type": repo_type, "revision": revision,
                      "allow_patterns": allow_patterns, "local_dir": local_dir})
        commit = revision or FAKE_HEAD
        if local_dir is not None:  # files land in local_dir, each with its commit recorded beside it
            for relative in fx.copy_repository(hub / repo_id, Path(local_dir), allow_patterns):
                write_download_metadata(Path(local_dir), relative, commit, etag="etag")
            return str(local_dir)
        folder = cache / f"datasets--{repo_id.replace('/', '--')}" / "snapshots" / commit
        fx.copy_repository(hub / repo_id, folder, allow_patterns)
        return str(folder)
    return download


def fake_listing(hub: Path):
    """``harness.download.hub_files`` over local repositories: each file with its git blob hash."""
    from huggingface_hub.utils import filter_repo_objects

    from harness.download import RemoteFile, git_blob_sha1

    def listing(repo):
        folder = hub / repo.repo_id
        paths = filter_repo_objects(fx.repository_files(folder), allow_patterns=list(repo.allow_patterns or ()) or None)
        return [RemoteFile(p, (folder / p).stat().st_size, blob_id=git_blob_sha1(folder / p)) for p in paths]
    return listing


@pytest.fixture()
def fake_hub(hub_root, tmp_path, monkeypatch):
    import harness.download

    calls: list[dict] = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download(hub_root, tmp_path, calls))
    monkeypatch.setattr(harness.download, "hub_files", fake_listing(hub_root))
    monkeypatch.delenv("HF_HUB_OFFLINE")  # `download` refuses to start offline; this hub is a folder
    return calls


def summary(samples) -> list[tuple]:
    return [(s.id, s.question, s.answer, s.choices, s.subset, s.cluster, s.compat_gold, s.error) for s in samples]


def centre_pixel(sample):
    image = sample.image.load()
    return image.getpixel((image.width // 2, image.height // 2))


def pixel_or_error(sample):
    try:
        return centre_pixel(sample)
    except ImageError as exc:
        return str(exc)


def assert_same_samples(samples, reference) -> None:
    assert summary(samples) == summary(reference)
    if reference and isinstance(reference[0].image, LazyImage):  # images held by the repository itself
        assert [pixel_or_error(s) for s in samples] == [pixel_or_error(s) for s in reference]


# --------------------------------------------------------------------------- every task, three ways

@pytest.mark.parametrize("name", HUB_TASKS)
def test_task_loads_from_a_full_copy(name, full_dir, full_samples):
    samples = full_samples[name]
    assert samples and all(s.error is None for s in samples), [s.error for s in samples if s.error]
    task = REGISTRY.task(name, full_dir)
    assert task.revision == "local"  # a copy that names no commit
    if name in ("gqa_train", "tallyqa_train"):
        assert all(isinstance(s.image, LazyImage) for s in samples)
        assert all(s.answer is None for s in samples)


@pytest.mark.parametrize("name", HUB_TASKS)
def test_task_loads_from_a_partial_copy(name, hub_root, tmp_path, full_samples):
    spec = REGISTRY.config(name).dataset
    copied = fx.copy_repository(hub_root / spec.path, tmp_path / spec.path, allow_patterns(spec))
    if spec.hub_files:  # the copy really lacks files of the repository
        assert set(copied) < set(fx.repository_files(hub_root / spec.path))
    assert_same_samples(list(REGISTRY.task(name, tmp_path).samples()), full_samples[name])


@pytest.mark.parametrize("name", HUB_TASKS)
def test_task_loads_from_the_hub(name, fake_hub, full_samples):
    spec = REGISTRY.config(name).dataset
    task = REGISTRY.task(name)
    samples = list(task.samples())
    assert_same_samples(samples, full_samples[name])
    (call,) = fake_hub
    assert (call["repo_id"], call["repo_type"], call["revision"]) == (spec.path, "dataset", spec.revision)
    if spec.hub_files:
        assert set(call["allow_patterns"]) == {*spec.hub_files, "README.md"}
    assert task.revision == (spec.revision or FAKE_HEAD)  # recorded in run.json and results.json


def test_partial_blink_lacks_the_first_config_of_its_readme(hub_root, tmp_path):
    """The case that broke: the README declares Art_Style first and its files are not fetched."""
    spec = REGISTRY.config("blink_counting").dataset
    copied = fx.copy_repository(hub_root / fx.BLINK, tmp_path / fx.BLINK, allow_patterns(spec))
    readme = (tmp_path / fx.BLINK / "README.md").read_text()
    assert readme.index("config_name: Art_Style") < readme.index("config_name: Counting")
    assert not any(f.startswith("Art_Style/") for f in copied)
    assert [s.id for s in REGISTRY.task("blink_counting", tmp_path).samples()] == [
        "val_Counting_1", "val_Counting_2", "val_Counting_3"]


def test_patterns_without_the_readme_still_fetch_it(hub_root, tmp_path, monkeypatch):
    """The README says which files make each config, so it is fetched even when a task forgets it."""
    calls: list[dict] = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download(hub_root, tmp_path, calls))
    config = parse_task_config({"task": "counting", "dataset": {
        "path": fx.BLINK, "parts": [{"config": "Counting", "split": "val"}], "hub_files": ["Counting/*"]},
        "fields": {"id": "idx", "image": "image_1"}}, "counting.yaml")
    assert Task(config).ids() == ["val_Counting_1", "val_Counting_2", "val_Counting_3"]
    assert calls[0]["allow_patterns"] == ["Counting/*", "README.md"]


def test_fixture_cards_declare_the_types_their_files_hold(hub_root):
    """Each fixture README's features equal the Arrow schema of the files it names, as on the hub."""
    import pyarrow.parquet as pq

    from harness.tasks.layout import read_card

    checked = 0
    for path in fx.BUILDERS:
        card = read_card(hub_root / path)
        for config, params in card.configs.items():
            for split in {entry["split"] for entry in params["data_files"]}:
                found = part_files(hub_root / path, split, config)
                for file in found.files:
                    stored = datasets.Features.from_arrow_schema(pq.read_schema(file))
                    assert stored == card.features[config], (path, config, file)
                    checked += 1
    assert checked >= 40


def test_every_pinned_revision_is_a_full_commit_id():
    for name in HUB_TASKS:
        revision = REGISTRY.config(name).dataset.revision
        assert revision is None or (len(revision) == 40 and int(revision, 16) >= 0), name


# --------------------------------------------------------------------------- the class: layouts

def write_repository(root: Path, configs: list[dict], infos: list[dict] | None = None) -> None:
    header = {"configs": configs}
    if infos is not None:
        header["dataset_info"] = infos
    fx.write_text(root, "README.md", fx.card(header, "A dataset"))


QA = datasets.Features({"id": datasets.Value("string"), "question": datasets.Value("string"),
                        "answer": datasets.Value("int64")})


def qa_columns(prefix: str, n: int = 2) -> dict[str, list]:
    return {"id": [f"{prefix}{i}" for i in range(n)], "question": [f"How many {prefix} {i}?" for i in range(n)],
            "answer": list(range(n))}


def mixed_format_repository(root: Path) -> None:
    """Four configs, one format each; the first (parquet images) is missing from the copy."""
    write_repository(root, [
        {"config_name": "images", "data_files": [{"split": "train", "path": "images/train-*"}]},
        {"config_name": "qa_jsonl", "data_files": [{"split": "test", "path": "qa_jsonl/*.jsonl"}]},
        {"config_name": "qa_arrow", "data_files": [{"split": "test", "path": "qa_arrow/*.arrow"}]},
        {"config_name": "qa_tsv", "data_files": [{"split": "test", "path": "qa_tsv/test.tsv"}], "sep": "\t"},
        {"config_name": "qa_parquet", "data_files": [{"split": "test", "path": ["qa_parquet/a-*", "qa_parquet/b-*"]}]},
    ], infos=[{"config_name": "qa_parquet", "features": fx.features_yaml(QA)}])
    columns = qa_columns("jsonl")
    fx.write_jsonl(root, "qa_jsonl/test.jsonl", [dict(zip(columns, v)) for v in zip(*columns.values())])
    datasets.Dataset.from_dict(qa_columns("arrow"), features=QA).save_to_disk(str(root / "qa_arrow"))
    columns = qa_columns("tsv")
    fx.write_text(root, "qa_tsv/test.tsv", "id\tquestion\tanswer\n" + "".join(
        f"{i}\t{q}\t{a}\n" for i, q, a in zip(*columns.values())))
    columns = qa_columns("parquet", 4)
    fx.write_parquet(root, "qa_parquet/a-00000.parquet", {k: v[:2] for k, v in columns.items()}, QA)
    fx.write_parquet(root, "qa_parquet/b-00000.parquet", {k: v[2:] for k, v in columns.items()}, QA)


def task_on(path: str, parts: list[dict], data_dir: Path, **dataset) -> Task:
    config = parse_task_config({"task": "toy", "dataset": {"path": path, "parts": parts, **dataset},
                                "fields": {"id": "id", "image": None}, "answer_type": "integer"}, "toy.yaml")
    return Task(config, data_dir)


@pytest.mark.parametrize("config, ids", [
    ("qa_jsonl", ["jsonl0", "jsonl1"]),
    ("qa_arrow", ["arrow0", "arrow1"]),
    ("qa_tsv", ["tsv0", "tsv1"]),
    ("qa_parquet", ["parquet0", "parquet1", "parquet2", "parquet3"]),
])
def test_each_format_loads_when_the_first_config_is_missing(config, ids, tmp_path):
    mixed_format_repository(tmp_path / "someone/mixed")
    samples = list(task_on("someone/mixed", [{"config": config, "split": "test"}], tmp_path).samples())
    assert [s.id for s in samples] == ids
    assert [s.answer for s in samples] == list(range(len(ids)))
    assert all(s.error is None for s in samples)


def test_a_configs_readme_features_are_applied(tmp_path):
    """As ``datasets`` does: the README's declared types win over what the files hold."""
    root = tmp_path / "someone/typed"
    write_repository(root, [{"config_name": "default", "data_files": "data/*.jsonl"}],
                     infos=[{"config_name": "default", "features": fx.features_yaml(datasets.Features(
                         {"id": datasets.Value("string"), "question": datasets.Value("string"),
                          "answer": datasets.Value("int32")}))}])
    fx.write_jsonl(root, "data/train.jsonl", [{"id": 7, "question": "How many?", "answer": 2}])
    found = part_files(root, "train")
    assert found.module == "json" and found.features["answer"] == datasets.Value("int32")
    (sample,) = task_on("someone/typed", [{"split": "train"}], tmp_path).samples()
    assert (sample.id, sample.answer) == ("7", 2)


def test_the_default_config_and_a_data_dir_config(tmp_path):
    root = tmp_path / "someone/defaults"
    write_repository(root, [
        {"config_name": "first", "data_dir": "first"},
        {"config_name": "main", "default": True, "data_files": [{"split": "test", "path": "main/*.parquet"}]},
    ])
    fx.write_parquet(root, "first/test-00000-of-00001.parquet", qa_columns("first"), QA)
    fx.write_parquet(root, "main/x.parquet", qa_columns("main"), QA)
    assert task_on("someone/defaults", [{"split": "test"}], tmp_path).ids() == ["main0", "main1"]
    assert task_on("someone/defaults", [{"split": "test", "config": "first"}], tmp_path).ids() == ["first0", "first1"]


@pytest.mark.parametrize("setup, parts, message", [
    ("several", [{"split": "test"}], "declares several configs (a, b) and none is the default"),
    ("several", [{"split": "test", "config": "c"}], "declares no config 'c'; it declares: a, b"),
    ("no_readme", [{"split": "test", "config": "a"}], "README.md is missing, so config 'a' cannot be found"),
    ("several", [{"split": "validation", "config": "a"}],
     "config 'a' declares no split 'validation'; it declares: test"),
    ("several", [{"split": "test", "config": "b"}], "no data file matches 'b/*' (config 'b' split 'test')"),
    ("not_data", [{"split": "test", "config": "a"}], "notes.xyz (config 'a' split 'test') is not a data file"),
])
def test_layout_errors_name_what_is_missing(setup, parts, message, tmp_path):
    root = tmp_path / "someone/broken"
    if setup != "no_readme":
        a_files = ["a/*", "a/notes.xyz"] if setup == "not_data" else "a/*"
        write_repository(root, [{"config_name": "a", "data_files": [{"split": "test", "path": a_files}]},
                                {"config_name": "b", "data_files": [{"split": "test", "path": "b/*"}]}])
    if setup == "not_data":
        fx.write_text(root, "a/notes.xyz", "notes\n")
    fx.write_parquet(root, "a/test-00000.parquet", qa_columns("a"), QA)
    with pytest.raises(DatasetUnavailableError) as info:
        len(task_on("someone/broken", parts, tmp_path))
    assert info.value.args[0].startswith("task 'toy': cannot read part")
    assert message in str(info.value)


def test_files_of_another_format_are_left_out_as_datasets_does(tmp_path, caplog):
    root = tmp_path / "someone/mixed"
    write_repository(root, [{"config_name": "a", "data_files": [{"split": "test", "path": "a/*"}]}])
    fx.write_parquet(root, "a/test-00000.parquet", qa_columns("a"), QA)
    fx.write_parquet(root, "a/test-00001.parquet", qa_columns("b"), QA)
    fx.write_jsonl(root, "a/more.jsonl", [{"id": "x", "question": "q", "answer": 1}])
    with caplog.at_level(logging.WARNING, logger="harness.tasks.layout"):
        assert task_on("someone/mixed", [{"split": "test"}], tmp_path).ids() == ["a0", "a1", "b0", "b1"]
    assert "config 'a' split 'test': reading the parquet files; left out, as datasets does: more.jsonl" in caplog.text


def test_a_card_that_names_the_split_test_0412(tmp_path):
    """An earlier revision of RealWorldQA named its split test_0412: the error says so."""
    fx.build_realworldqa(tmp_path, fx.REALWORLDQA, split="test_0412")
    with pytest.raises(DatasetUnavailableError, match="declares no split 'test'; it declares: test_0412"):
        len(REGISTRY.task("realworldqa", tmp_path))


def test_a_readme_without_configs_reads_splits_from_file_names(tmp_path):
    root = tmp_path / "someone/plain"
    fx.write_text(root, "README.md", "# plain\n")
    fx.write_text(root, ".gitattributes", fx.GITATTRIBUTES)
    fx.write_parquet(root, "data/train-00000-of-00001.parquet", qa_columns("train"), QA)
    fx.write_parquet(root, "data/test-00000-of-00001.parquet", qa_columns("test", 3), QA)
    assert task_on("someone/plain", [{"split": "test"}], tmp_path).ids() == ["test0", "test1", "test2"]
    with pytest.raises(DatasetUnavailableError, match="no split 'validation' among the files"):
        len(task_on("someone/plain", [{"split": "validation"}], tmp_path))


# --------------------------------------------------------------------------- images

@pytest.mark.parametrize("base64_images", [True, False])
def test_tallyqa_train_images_as_base64_text_or_image_feature(base64_images, tmp_path):
    fx.build_tallyqa_train(tmp_path, base64_images=base64_images)
    samples = list(REGISTRY.task("tallyqa_train", tmp_path).samples())
    assert [s.question for s in samples] == ["How many zebras are there?", "How many people are wearing hats?"]
    for sample, index in zip(samples, (11, 12)):
        assert isinstance(sample.image, LazyImage)
        assert all(abs(a - b) <= 4 for a, b in zip(centre_pixel(sample), fx.colour(index)))


def test_base64_column_that_is_not_base64_names_the_row(tmp_path):
    root = tmp_path / fx.TALLYQA
    features = datasets.Features({"index": datasets.Value("int64"), "image": datasets.Value("string"),
                                  "question": datasets.Value("string"), "answer": datasets.Value("int64")})
    fx.write_parquet(root, "data/train-00000-of-00001.parquet",
                     {"index": [1], "image": ["images/1.jpg"], "question": ["How many?"], "answer": [1]}, features)
    (sample,) = REGISTRY.task("tallyqa_train", tmp_path).samples()
    with pytest.raises(ImageError, match=r"snowclipsed/TallyQA\[train\] row 0.*not hold base64"):
        sample.image.load()


def test_gqa_image_field_is_relative_to_the_gqa_folder(full_samples, full_dir):
    gqa = full_samples["gqa"]
    assert gqa[0].image.path == str(full_dir / fx.GRIT / "gqa" / "images" / "2354786.jpg")
    assert centre_pixel(gqa[0]) == centre_pixel(gqa[1])


# --------------------------------------------------------------------------- revisions of local copies

def test_a_copy_made_with_hub_local_dir_records_its_commit(hub_root, tmp_path, caplog):
    """``snapshot_download(local_dir=...)`` keeps each file's commit in .cache/huggingface/download."""
    from huggingface_hub._local_folder import write_download_metadata

    spec = REGISTRY.config("countbenchqa").dataset
    root = tmp_path / spec.path
    for relative in fx.copy_repository(hub_root / spec.path, root, allow_patterns(spec)):
        write_download_metadata(root, relative, spec.revision, etag="e")
    task = REGISTRY.task("countbenchqa", tmp_path)
    assert task.revision == spec.revision
    assert part_files(root, "test").files[0].endswith("data/test-00000-of-00001.parquet")  # .cache is ignored

    for relative in fx.copy_repository(hub_root / spec.path, root, allow_patterns(spec)):
        write_download_metadata(root, relative, "f" * 40, etag="e")
    with caplog.at_level(logging.WARNING, logger="harness.tasks.sources"):
        assert REGISTRY.task("countbenchqa", tmp_path).revision == "f" * 40
    assert f"holds revision {'f' * 40}, not the pinned {spec.revision}" in caplog.text


def test_a_changed_file_loses_its_recorded_commit(hub_root, tmp_path):
    from huggingface_hub._local_folder import write_download_metadata

    spec = REGISTRY.config("countbenchqa").dataset
    root = tmp_path / spec.path
    for relative in fx.copy_repository(hub_root / spec.path, root, None):
        write_download_metadata(root, relative, spec.revision, etag="e")
    data = root / "data" / "test-00000-of-00001.parquet"
    os.utime(data, (data.stat().st_atime, data.stat().st_mtime + 100))
    assert REGISTRY.task("countbenchqa", tmp_path).revision == "local"


def test_a_revision_file_names_a_hand_made_copy(hub_root, tmp_path):
    spec = REGISTRY.config("vsr").dataset
    fx.copy_repository(hub_root / spec.path, tmp_path / spec.path, None)
    (tmp_path / spec.path / REVISION_FILE).write_text(spec.revision + "\n")
    assert REGISTRY.task("vsr", tmp_path).revision == spec.revision


def test_task_yaml_revisions_say_where_they_come_from():
    """A pinned revision carries a comment naming its public source; an unpinned one says why."""
    for name in HUB_TASKS:
        text = Path(REGISTRY.config(name).source_file).read_text()
        block = text[text.index("dataset:"):]
        line = next(i for i, l in enumerate(block.splitlines()) if l.strip().startswith("revision:"))
        assert block.splitlines()[line - 1].strip().startswith("#"), name
        assert yaml.safe_load(text)["dataset"]["revision"] == REGISTRY.config(name).dataset.revision


# --------------------------------------------------------------------------- offline copies

def test_download_data_makes_partial_copies_that_record_their_commit(fake_hub, hub_root, tmp_path, capsys):
    from harness.cli import main

    data_dir = tmp_path / "data"
    # `download-data` is the old name of `download`; the GQA images are a manual step, hence exit 1.
    assert main(["download-data", "--tasks", "blink_counting,blink,gqa,countbenchqa", "--data-dir", str(data_dir),
                 "--check"]) == 1
    out = capsys.readouterr().out
    blink = REGISTRY.config("blink").dataset
    assert [c["repo_id"] for c in fake_hub] == [fx.BLINK, fx.GRIT, fx.COUNTBENCH]  # BLINK once, for both tasks
    wanted = ["Counting/*", "README.md", "Spatial_Relation/*"]
    from huggingface_hub.utils import filter_repo_objects

    assert sorted(fake_hub[0]["allow_patterns"]) == sorted(
        filter_repo_objects(fx.repository_files(hub_root / fx.BLINK), allow_patterns=wanted))
    assert fake_hub[0]["revision"] == blink.revision and fake_hub[0]["local_dir"] == str(data_dir / fx.BLINK)
    files = fx.repository_files(data_dir / fx.BLINK)
    assert "Counting/val-00000-of-00001.parquet" in files and not any(f.startswith("Art_Style/") for f in files)
    assert f"blink: 6 samples, revision {blink.revision}" in out
    assert f"countbenchqa: 3 samples, revision {REGISTRY.config('countbenchqa').dataset.revision}" in out
    assert f"gqa: 3 samples, revision {FAKE_HEAD}" in out  # unpinned: the commit the hub served
    assert f"needs a manual step: images of task gqa: not fetchable here; put them in {data_dir / fx.GRIT / 'gqa'}" in out
    # Again: everything is there and checked, nothing is fetched a second time.
    assert main(["download", "--tasks", "blink_counting,blink,countbenchqa", "--data-dir", str(data_dir)]) == 0
    assert len(fake_hub) == 3


def test_tasks_pinning_different_revisions_of_one_repository_are_refused():
    from harness.tasks.sources import offline_copies

    one = REGISTRY.config("blink").dataset
    other = parse_task_config({"task": "x", "dataset": {"path": fx.BLINK, "revision": "a" * 40}}, "x.yaml").dataset
    with pytest.raises(DatasetUnavailableError, match="pin different revisions of BLINK-Benchmark/BLINK"):
        offline_copies({"blink": one, "x": other})
    whole = parse_task_config({"task": "y", "dataset": {"path": fx.BLINK, "revision": one.revision}}, "y.yaml").dataset
    (copy,) = offline_copies({"blink": one, "y": whole})
    assert copy.allow_patterns is None and copy.tasks == ["blink", "y"]  # one task reads it whole


def test_runs_record_the_revision_they_read(fake_hub, hub_root, tmp_path):
    """The commit read from the hub, and the one a local copy records, reach run.json and results.json."""
    from harness.cli import main

    preds = tmp_path / "preds.jsonl"
    preds.write_text(json.dumps({"id": "0", "prediction": "3"}) + "\n")
    data_dir = tmp_path / "data"
    images = data_dir / REGISTRY.config("vsr").dataset.path / "images"  # placed by hand: nothing to fetch
    images.mkdir(parents=True)
    for line in (hub_root / REGISTRY.config("vsr").dataset.path / "dev.jsonl").read_text().splitlines():
        (images / json.loads(line)["image"]).write_bytes(b"")
    assert main(["download", "--tasks", "vsr", "--data-dir", str(data_dir)]) == 0
    for task, args in (("countbenchqa", []), ("vsr", ["--data-dir", str(data_dir)])):
        out = tmp_path / f"run-{task}"
        assert main(["run", "--system", "predictions", "--predictions", str(preds), "--tasks", task,
                     "--output-path", str(out), *args]) == 0
        expected = REGISTRY.config(task).dataset.revision
        assert json.loads((out / "results.json").read_text())["task_revisions"][task] == expected
        assert json.loads((out / "run.json").read_text())["task_meta"][task]["revision"] == expected
