"""Runs spread over a Ray cluster: the same records as a local run, through replica deaths,
driver deaths and resumes; samples that travel; the caches and API limits the replicas share.

One cluster serves the whole module (starting one costs seconds): two nodes of one CPU each
on this machine, so that one replica runs on the driver's node and one on another, and the
cross-node path of the caches is the one used.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray

from harness.cli import main
from harness.distributed.settings import (
    DistributedError, RaySettings, SystemRecipe, replica_resources, replicas_that_fit,
)
from harness.distributed.shipping import ShippedImage, TaskView, UnreadableImage, ship_sample
from harness.records import read_records
from harness.types import FileImage, ImageError, LazyImage, Sample

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
sys.path.insert(0, str(TESTS))
from toy import SMALL_SYNTHETIC_TASK, write_toy_task  # noqa: E402
from toy import write_system as write_toy_system  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    """Two one-CPU nodes; workers import the tests' toy systems (``toy:...`` kinds)."""
    from ray.cluster_utils import Cluster

    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), str(REPO), saved]))
    store = 80 * 1024 * 1024
    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": store,
                                                          "include_dashboard": False})
    nodes.add_node(num_cpus=1, object_store_memory=store)
    ray.init(address=nodes.address, logging_level="WARNING")
    nodes.wait_for_nodes()
    try:
        yield nodes
    finally:
        ray.shutdown()
        nodes.shutdown()
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


def comparable(run_dir: Path, task: str) -> dict[str, dict]:
    """A run's records by id, without timings (the run's own and each tool call's)."""
    records = {}
    for record in read_records(run_dir / f"samples_{task}.jsonl"):
        record.pop("timings")
        for call in record.get("tool_calls") or ():
            call.pop("seconds", None)
        records[record["id"]] = record
    return records


def run(*args: object) -> int:
    return main([str(a) for a in args])


@pytest.fixture
def synthetic(tmp_path):
    include = tmp_path / "include"
    include.mkdir()
    (include / "synthetic_small.yaml").write_text(SMALL_SYNTHETIC_TASK)
    return include


def write_system(include: Path, name: str, body: dict) -> None:
    (include / f"{name}.yaml").write_text(json.dumps({"system": name, **body}))


# --------------------------------------------------------------------------- whole runs on the cluster


def test_reference_system_on_two_replicas_gives_the_local_records(cluster, synthetic, tmp_path):
    base = ["run", "--system", "reference", "--tasks", "synthetic_small", "--include-path", synthetic]
    assert run(*base, "--output-path", tmp_path / "local") == 0
    assert run(*base, "--output-path", tmp_path / "ray", "--ray", "--ray-replicas", 2) == 0
    local, spread = comparable(tmp_path / "local", "synthetic_small"), comparable(tmp_path / "ray", "synthetic_small")
    assert len(local) > 12 and spread == local
    assert all(r["status"] == "ok" for r in spread.values())
    # The same identity: either run could resume the other.
    configs = [json.loads((tmp_path / d / "run.json").read_text())["system_config"] for d in ("local", "ray")]
    assert configs[0] == configs[1]
    results = [json.loads((tmp_path / d / "results.json").read_text())["results"] for d in ("local", "ray")]
    assert results[0]["synthetic_small"]["accuracy,strict"] == results[1]["synthetic_small"]["accuracy,strict"]


def test_scripted_writer_survives_a_replica_killed_mid_run_and_shares_its_cache(cluster, synthetic, tmp_path):
    """A replica dies (SIGKILL) while answering a sample: the sample goes to another replica,
    the run completes, and the records equal a local run's. The model's replies, paid for by
    replicas on both nodes, all land in the driver's one cache file."""
    from harness.cache import ResponseCache, default_cache_dir
    from harness.backends.scripted import script_entry
    from harness.systems import SystemRegistry
    from harness.tasks import TaskRegistry

    samples = list(TaskRegistry([synthetic]).task("synthetic_small").samples(limit=12))
    writer = SystemRegistry().build("llm-tools-qwen3-8b", seed=1234, protocol="harness")
    replies = tmp_path / "replies.jsonl"
    with replies.open("w") as f:
        for index, sample in enumerate(samples):
            reply = f"<plan>Use the tools.</plan>\n<answer>\n{sample.meta['reference_program']}\n</answer>"
            if index == 3:
                reply = "<plan>p</plan><answer>final_answer = 1 / 0</answer>"  # a crash is a record like any
            f.write(json.dumps(script_entry(writer.messages_for(sample), reply)) + "\n")
    params = {"llm": {"backend": "scripted", "path": str(replies)}, "tools": "oracle", "concurrency": 2,
              "sampling": writer.params["sampling"]}
    victim, marker = samples[7].id, tmp_path / "died"
    write_system(synthetic, "scripted-writer", {"kind": "llm_program", "params": params})
    write_system(synthetic, "dying-writer", {"kind": "toy:DyingWriter",
                                             "params": {**params, "die_on": victim, "marker": str(marker)}})
    base = ["--tasks", "synthetic_small", "--limit", 12, "--include-path", synthetic]

    assert run("run", "--system", "dying-writer", *base, "--output-path", tmp_path / "ray",
               "--ray", "--ray-replicas", 2, "--ray-batch", 2) == 0
    assert len(marker.read_text().split()) == 1, "one replica died, once"
    cache = ResponseCache(default_cache_dir() / "chat.sqlite")
    assert len(cache) == 12  # every reply, from both nodes, in the one file
    cache.close()

    assert run("run", "--system", "scripted-writer", *base, "--output-path", tmp_path / "local") == 0
    local, spread = comparable(tmp_path / "local", "synthetic_small"), comparable(tmp_path / "ray", "synthetic_small")
    assert spread == local and len(spread) == 12
    assert spread[victim]["status"] == "ok"
    assert spread[samples[3].id]["status"] == "exception"


def test_resume_after_the_driver_is_killed(cluster, tmp_path):
    include, data = write_toy_task(tmp_path, n=40)
    write_toy_system(include, "slow", "toy:SlowOracle", delay=0.05, fail_on="7")
    base = ["--system", "slow", "--tasks", "toy_counting", "--data-dir", data, "--include-path", include]
    # sample 7 fails inside the system (an infrastructure failure): the run is incomplete, exit 3
    assert run("run", *base, "--output-path", tmp_path / "local") == 3

    interrupted = tmp_path / "interrupted"
    samples = interrupted / "samples_toy_counting.jsonl"
    driver = subprocess.Popen(
        [sys.executable, "-m", "harness", "run", *map(str, base), "--output-path", str(interrupted),
         "--ray", cluster.address, "--ray-replicas", "2", "--ray-batch", "2"],
        env={**os.environ}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (samples.is_file() and samples.read_bytes().count(b"\n") >= 6):
        assert driver.poll() is None, driver.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "the distributed run wrote no records"
        time.sleep(0.02)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait(timeout=30)
    driver.stderr.close()
    kept = samples.read_bytes().count(b"\n")
    assert 6 <= kept < 40, "the kill should land part-way through"
    assert not (interrupted / "results.json").exists()

    assert run("run", *base, "--output-path", interrupted, "--resume", "--ray", "--ray-replicas", 2) == 3
    assert comparable(interrupted, "toy_counting") == comparable(tmp_path / "local", "toy_counting")
    assert len({json.loads(line)["id"] for line in samples.read_text().splitlines()}) == 40


def test_a_sample_that_kills_every_replica_is_given_up_alone(cluster, synthetic, tmp_path):
    """The replica dies on one sample every time: that sample becomes a system_error record
    naming what happened, and its batch-mates, retried one by one, are answered."""
    from harness.runner import RunOptions, evaluate
    from harness.tasks import TaskRegistry

    victim = list(TaskRegistry([synthetic]).task("synthetic_small").samples(limit=12))[5].id
    write_system(synthetic, "poisoned", {"kind": "toy:DyingReference",
                                         "params": {"die_on": victim, "marker": str(tmp_path / "died"),
                                                    "always": True}})
    options = RunOptions(system="poisoned", tasks=["synthetic_small"], output_path=tmp_path / "run", limit=12,
                         include_paths=[str(synthetic)],
                         ray=RaySettings(replicas=2, batch=4, max_restarts=2))
    results = evaluate(options)
    records = comparable(tmp_path / "run", "synthetic_small")
    assert victim in records and len(records) == 12
    assert records[victim]["status"] == "system_error"
    assert "2 replicas of poisoned died answering it alone" in records[victim]["detail"]
    assert all(r["status"] == "ok" for i, r in records.items() if i != victim)
    assert len((tmp_path / "died").read_text().split()) == 3  # in its batch, then alone twice
    assert results["results"]["synthetic_small"]["status_counts"] == {"ok": 11, "system_error": 1}


def test_an_error_a_replica_meets_starting_reads_as_one_line(cluster, tmp_path, capsys):
    """A predictions file naming unknown samples fails the replica's prepare, as it fails a
    local run's: the same one line, exit 2, nothing run."""
    include, data = write_toy_task(tmp_path, n=6)
    predictions = tmp_path / "predictions.jsonl"
    predictions.write_text(json.dumps({"id": "99", "prediction": 1}) + "\n")
    code = run("run", "--system", "predictions", "--predictions", predictions, "--tasks", "toy_counting",
               "--data-dir", data, "--include-path", include, "--output-path", tmp_path / "run",
               "--ray", "--ray-replicas", 1)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "predictions match no sample" in err.strip().splitlines()[-1] and "id '99'" in err
    assert not (tmp_path / "run" / "samples_toy_counting.jsonl").exists()


# --------------------------------------------------------------------------- what the replicas share


def test_caches_and_rate_limits_are_shared_through_the_driver_node(cluster, tmp_path):
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from harness.backends.retry import RateLimiter, rate_limiter, share_rate_limits
    from harness.cache import ResponseCache, open_caches_with
    from harness.distributed.shared import RemoteCacheStore, RunServices, SharedPacer, use_services

    here = ray.get_runtime_context().get_node_id()
    services = ray.remote(RunServices).options(
        num_cpus=0, max_concurrency=4, scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False)).remote()
    path = tmp_path / "shared.sqlite"
    try:
        use_services(services, on_driver_node=False, driver_cwd=str(tmp_path))
        remote = ResponseCache("shared.sqlite")  # relative: in the driver's working folder
        remote.put("k", {"response": "from another node"})
        assert remote.get("k") == {"response": "from another node"} and len(remote) == 1
        assert isinstance(rate_limiter(60, "model at endpoint"), SharedPacer)
        # Two replicas' backends calling one endpoint book one bucket: a second apart at 60 a minute.
        first, second = (SharedPacer(services, 60, "model at endpoint") for _ in range(2))
        waits = [first.reserve(), second.reserve(), first.reserve()]
        assert waits[0] < 0.5 and waits[1] > waits[0] + 0.5 and waits[2] > waits[1] + 0.5
        assert SharedPacer(services, 60, "another endpoint").reserve() < 0.5
    finally:
        open_caches_with(None)
        share_rate_limits(None)
        ray.get(services.close.remote())
        ray.kill(services)
    assert isinstance(rate_limiter(60, "x"), RateLimiter)
    local = ResponseCache(path)  # the entry is in the file itself
    assert local.get("k") == {"response": "from another node"} and not isinstance(local._store, RemoteCacheStore)
    local.close()


# --------------------------------------------------------------------------- no cluster needed


def test_shipped_samples_pickle_and_read_as_the_original(tmp_path):
    image = tmp_path / "a.png"
    from PIL import Image

    Image.new("RGB", (7, 5), "red").save(image)
    data = image.read_bytes()
    lazy = LazyImage(lambda: data, origin="hub/dataset:test[3]", name="dir/a.png")
    sample = Sample("3", "t", "q?", 1, "integer", image=lazy, meta={"k": [1]})
    with pytest.raises(Exception):
        pickle.dumps(sample)  # the closure over the dataset does not travel
    shipped = pickle.loads(pickle.dumps(ship_sample(sample)))
    assert isinstance(shipped.image, ShippedImage) and sample.image is lazy
    assert (shipped.image.read_bytes(), shipped.image.describe(), shipped.image.file_name(), shipped.image.size()) \
        == (data, "hub/dataset:test[3]", "a.png", (7, 5))
    assert shipped.image.content_hash() == lazy.content_hash()
    assert (shipped.id, shipped.question, shipped.meta) == ("3", "q?", {"k": [1]})

    missing = FileImage(str(tmp_path / "gone.png"))
    with pytest.raises(ImageError) as local_error:
        missing.read_bytes()
    broken = pickle.loads(pickle.dumps(ship_sample(Sample("4", "t", "q", 1, "integer", image=missing))))
    assert isinstance(broken.image, UnreadableImage) and broken.image.describe() == str(tmp_path / "gone.png")
    with pytest.raises(ImageError) as shipped_error:
        broken.image.size()
    assert str(shipped_error.value) == str(local_error.value)  # the same record as a local run's


def test_task_views_answer_what_prepare_asks():
    view = TaskView("t", None, ("a", "b", "c"))
    assert (view.name, len(view), view.ids(), view.ids(2), view.ids(0.5)) == ("t", 3, ["a", "b", "c"], ["a", "b"],
                                                                             ["a", "b"])


def test_replica_resources_and_fit():
    assert replica_resources("s", {}, {}) == {"num_cpus": 1.0}
    assert replica_resources("s", {"resources": {"num_gpus": 0.5, "num_cpus": 4}}, {"num_cpus": 2}) == \
        {"num_cpus": 2.0, "num_gpus": 0.5}
    for params, override, named in [({"resources": {"num_gpus": "one"}}, {}, "params.resources.num_gpus"),
                                    ({"resources": [1]}, {}, "params.resources must be a mapping"),
                                    ({}, {"num_cpus": -1}, "--ray-resources.num_cpus"),
                                    ({}, {"num_gpus": float("nan")}, "--ray-resources.num_gpus")]:
        with pytest.raises(DistributedError, match=named.replace(".", r"\.")):
            replica_resources("s", params, override)
    assert replicas_that_fit({"CPU": 1, "GPU": 0.5}, {"CPU": 16, "GPU": 8}) == 16
    assert replicas_that_fit({"CPU": 4, "GPU": 1}, {"CPU": 16, "GPU": 8}) == 4
    assert replicas_that_fit({"CPU": 1, "GPU": 1}, {"CPU": 16}) == 0
    assert replicas_that_fit({"CPU": 0.1}, {"CPU": 0.3}) == 3  # no rounding loss


def test_recipe_names_absolute_paths_and_the_cache_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HARNESS_CACHE_DIR", "cache")
    monkeypatch.setenv("OPENAI_API_KEY", "secret")
    recipe = SystemRecipe.of("s", {"a": 1}, 7, None, ["include"], Path("data"))
    assert recipe.include_paths == (str(tmp_path / "include"),) and recipe.data_dir == str(tmp_path / "data")
    assert recipe.env["HARNESS_CACHE_DIR"] == str(tmp_path / "cache")
    assert "OPENAI_API_KEY" not in recipe.env  # secrets stay in each node's own environment


@pytest.mark.parametrize("argv, message", [
    (["--ray-replicas", "2"], "--ray-replicas needs --ray"),
    (["--ray", "ray://head:10001"], "Ray Client connections are not supported"),
    (["--ray", "--ray-batch", "0"], "--ray-batch must be a positive whole number"),
])
def test_ray_flags_are_checked_in_one_line(argv, message, synthetic, tmp_path, capsys):
    code = run("run", "--system", "reference", "--tasks", "synthetic_small", "--include-path", synthetic,
               "--output-path", tmp_path / "run", *argv)
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_without_ray_the_flag_says_how_to_install_it(synthetic, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    code = run("run", "--system", "reference", "--tasks", "synthetic_small", "--include-path", synthetic,
               "--output-path", tmp_path / "run", "--ray")
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert 'pip install -e ".[ray]"' in err
