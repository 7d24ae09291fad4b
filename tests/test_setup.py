"""Getting a machine ready: requirements and the preflight, doctor, download, model copies
under the data dir, and system files checked in full against their kind's parameters.

Nothing here reaches the internet: the hub is a local folder behind a fake `Hub`, images
and the original's files come from a local HTTP server.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import dataset_fixtures as fx
import upstream_fixtures
from fake_openai import running_chat_server
from harness import requirements as req
from harness import upstream
from harness.backends import VLLMChat
from harness.cli import main
from harness.download import Hub, Outcome, RemoteFile, download, git_blob_sha1
from harness.preflight import PreflightError, run_preflight, task_requirements
from harness.requirements import (
    MISSING, OK, WARNING, CheckContext, Endpoint, EnvVar, Gpu, HubRepo, ImageFolder, Package, UpstreamFile,
    localized,
)
from harness.scoring import JudgeSpec
from harness.systems import SystemConfigError, SystemRegistry
from harness.tasks import TaskRegistry
from harness.tools.models import ModelBackend


# --------------------------------------------------------------------------- requirements, one by one


def test_a_missing_package_names_its_install_command():
    check = Package("no_such_module_here", 'pip install -e ".[vllm]"', "the backend").check(CheckContext())
    assert (check.status, check.fix) == (MISSING, 'pip install -e ".[vllm]"')
    assert Package("json", "-", "x").check(CheckContext()).status == OK


def test_key_variables_are_named(monkeypatch):
    monkeypatch.delenv("A_KEY", raising=False)
    monkeypatch.setenv("B_KEY", "x")
    assert EnvVar(("A_KEY",), "p").check(CheckContext()).status == MISSING
    check = EnvVar(("A_KEY", "B_KEY"), "p").check(CheckContext())
    assert check.status == OK and "$B_KEY" in check.detail and check.what == "$A_KEY or $B_KEY"


def test_a_gpu_is_required_only_where_a_backend_needs_one(monkeypatch):
    monkeypatch.setattr(req, "gpu_count", lambda: 0)
    needed = VLLMChat.requirements({"model": "org/llm"}, "the writer")
    assert Gpu("the writer") in needed and Package("vllm", 'pip install -e ".[vllm]"', "the writer") in needed
    assert Gpu("w").check(CheckContext()).status == MISSING
    assert Gpu("w", required=False).check(CheckContext()).status == WARNING  # the real tools run on a CPU


def test_endpoints_are_reached_or_named(monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dead = Endpoint(f"http://127.0.0.1:{port}/v1", "the judge").check(CheckContext(timeout_s=2))
    assert dead.status == MISSING and "cannot connect" in dead.detail
    with running_chat_server(monkeypatch) as server:
        assert Endpoint(server.url, "the judge").check(CheckContext()).status == OK


def test_api_backends_need_a_key_unless_the_server_is_local():
    from harness.backends import GeminiChat, OpenAIChat

    hosted = OpenAIChat.requirements({"model": "m", "api_key_env": "ANTHROPIC_API_KEY",
                                      "base_url": "https://api.anthropic.com/v1/"}, "p")
    assert EnvVar(("ANTHROPIC_API_KEY",), "p", "export ANTHROPIC_API_KEY=<your API key>") in hosted
    local = OpenAIChat.requirements({"model": "m", "base_url": "http://127.0.0.1:8000/v1"}, "p")
    assert not any(isinstance(r, EnvVar) for r in local)
    gemini = GeminiChat.requirements({"model": "gemini-2.5-flash"}, "p")
    assert any(isinstance(r, EnvVar) and r.names == ("GOOGLE_API_KEY", "GEMINI_API_KEY") for r in gemini)
    vertex = GeminiChat.requirements({"model": "g", "vertexai": True}, "p")
    assert {"GOOGLE_CLOUD_PROJECT", "GOOGLE_CLOUD_LOCATION"} <= {n for r in vertex if isinstance(r, EnvVar)
                                                                 for n in r.names}


def test_hub_repositories_are_found_in_the_data_dir_whole_partial_or_not_at_all(tmp_path):
    written = fx.build_blink(tmp_path / "hub")
    spec = TaskRegistry().config("blink").dataset
    repo = HubRepo(spec.path, "dataset", spec.revision, tuple(spec.hub_files) + ("README.md",), "task blink",
                   download_args=" --tasks blink")
    offline = CheckContext(data_dir=tmp_path / "data", offline=True)
    missing = repo.check(offline)
    assert missing.status == MISSING and "downloads are off" in missing.detail
    assert missing.fix.startswith("run `python -m harness download --tasks blink --data-dir DIR`")
    partial = [p for p in spec.hub_files if p != "README.md"][0]
    fx.copy_repository(written.root, tmp_path / "data" / spec.path, [partial, "README.md"])
    check = repo.check(offline)
    assert check.status == MISSING and "has no file matching" in check.detail
    fx.copy_repository(written.root, tmp_path / "data" / spec.path, list(spec.hub_files))
    assert repo.check(offline).status == OK
    # a model copy must hold what its loader needs
    model = tmp_path / "data" / "org" / "detector"
    model.mkdir(parents=True)
    (model / "weights.pth").write_bytes(b"x")
    needs = HubRepo("org/detector", needs="config.json", needs_fix="convert it").check(offline)
    assert (needs.status, needs.fix) == (MISSING, "convert it")


def test_upstream_files_offline(tmp_path, monkeypatch):
    monkeypatch.setattr(upstream, "VALOR", upstream_fixtures.fixture_pin())
    context = CheckContext(data_dir=tmp_path, offline=True)
    assert UpstreamFile(upstream.METRICS, "the judge").check(context).status == MISSING
    upstream_fixtures.write_offline_copy(tmp_path)
    assert UpstreamFile(upstream.METRICS, "the judge").check(context).status == OK


def test_images_from_elsewhere(tmp_path):
    required = ImageFolder(str(tmp_path / "gqa"), "task gqa", "put them there")
    assert required.check(CheckContext()).status == MISSING
    assert ImageFolder(str(tmp_path / "vsr"), "task vsr", optional=True).check(CheckContext(offline=False)).status \
        == WARNING
    (tmp_path / "gqa" / "images").mkdir(parents=True)
    (tmp_path / "gqa" / "images" / "1.jpg").write_bytes(b"x")
    assert required.check(CheckContext()).status == OK


# --------------------------------------------------------------------------- the preflight of a run


def test_the_preflight_lists_everything_missing_with_its_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(req, "gpu_count", lambda: 0)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setattr(upstream, "VALOR", upstream_fixtures.fixture_pin())
    registry = TaskRegistry()
    system = SystemRegistry().build("valor", seed=1)
    with pytest.raises(PreflightError) as caught:
        run_preflight(system, [registry.config("gqa"), registry.config("vsr")], JudgeSpec(), tmp_path)
    message = str(caught.value)
    for expected in ("package vllm", "a CUDA GPU", "$OPENAI_API_KEY", "model glab-caltech/VALOR-8B",
                     "model glab-caltech/VALOR-GroundingDINO", "dataset yfan1997/GRIT_data",
                     f"images in {tmp_path / 'yfan1997/GRIT_data/gqa'}", "dataset cambridgeltl/vsr_zeroshot",
                     "upstream file damianomarsili/VALOR/eval/metrics.py"):
        assert expected in message, expected
    assert "python -m harness download --system valor --protocol paper --tools real --tasks gqa,vsr --data-dir DIR" in message


def test_a_system_that_reads_no_images_needs_none():
    config = TaskRegistry().config("gqa")
    assert any(isinstance(r, ImageFolder) for r in task_requirements(config, None))
    assert not any(isinstance(r, ImageFolder) for r in task_requirements(config, None, images=False))


# --------------------------------------------------------------------------- model copies under the data dir


def test_models_named_by_hub_id_are_read_from_the_data_dir(tmp_path):
    for repo in ("org/llm", "org/tuned-detector", "IDEA-Research/grounding-dino-tiny", "org/depth"):
        (tmp_path / repo).mkdir(parents=True)
        (tmp_path / repo / "config.json").write_text("{}")
    options = {"model": "org/llm", "revision": "abc", "max_tokens": 5}
    local = localized(options, VLLMChat.requirements(options, "p"), tmp_path)
    assert local == {"model": str(tmp_path / "org/llm"), "revision": None, "max_tokens": 5}
    assert options["model"] == "org/llm"  # the system file's options are not touched
    tools = {"detector": {"checkpoint": "org/tuned-detector"}, "depth": {"checkpoint": "org/depth"},
             "vqa": {"backend": "openai", "model": "gpt-5-mini"}}
    local = localized(tools, ModelBackend.requirements(tools, "p"), tmp_path)
    assert local["detector"] == {"checkpoint": str(tmp_path / "org/tuned-detector"),
                                 "original_config": str(tmp_path / "IDEA-Research/grounding-dino-tiny")}
    assert local["depth"]["checkpoint"] == str(tmp_path / "org/depth") and local["vqa"] == tools["vqa"]
    assert localized(tools, ModelBackend.requirements(tools, "p"), None) == tools


# --------------------------------------------------------------------------- download


@pytest.fixture
def online(monkeypatch):
    """Downloads allowed (the session forbids them): the hub here is a folder, the servers local."""
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


class FolderHub(Hub):
    """The hub as a local folder of repositories: the listing carries each file's hash."""

    def __init__(self, root: Path, corrupt: set[str] = frozenset()) -> None:
        self.root = root
        self.fetched: list[str] = []
        self.corrupt = set(corrupt)  # files served with other bytes than the listing's hash

    def files(self, repo: HubRepo) -> list[RemoteFile]:
        from huggingface_hub.utils import filter_repo_objects

        folder = self.root / repo.repo_id
        paths = filter_repo_objects(fx.repository_files(folder), allow_patterns=list(repo.allow_patterns or ()) or None)
        files = []
        for path in paths:
            data = (folder / path).read_bytes()
            big = len(data) > 200  # as the hub does: sha256 for large (LFS) files, the git blob id for others
            files.append(RemoteFile(path, len(data), hashlib.sha256(data).hexdigest() if big else None,
                                    None if big else git_blob_sha1(folder / path)))
        return files

    def fetch(self, repo: HubRepo, target: Path, paths) -> None:
        for path in paths:
            self.fetched.append(path)
            (target / path).parent.mkdir(parents=True, exist_ok=True)
            data = (self.root / repo.repo_id / path).read_bytes()
            (target / path).write_bytes(data + b"!" if path in self.corrupt else data)


@contextlib.contextmanager
def file_server(files: dict[str, bytes]):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            data = files.get(self.path.lstrip("/"))
            self.send_response(200 if data is not None else 404)
            self.end_headers()
            self.wfile.write(data if data is not None else b"not found")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def vsr_hub(tmp_path, online):
    """A VSR repository on the fake hub whose image links point at a local server."""
    written = fx.build_vsr(tmp_path / "source")  # with its images, which the server serves
    images = {f"img/{p.name}": p.read_bytes() for p in (written.root / "images").iterdir()}
    hub_root = tmp_path / "hub"
    fx.copy_repository(written.root, hub_root / fx.VSR_ZEROSHOT, ["*.jsonl", "README.md", ".gitattributes"])
    with file_server(images) as url:
        for name in ("dev.jsonl", "train.jsonl", "test.jsonl"):
            path = hub_root / fx.VSR_ZEROSHOT / name
            rows = [json.loads(line) for line in path.read_text().splitlines()]
            for row in rows:
                row["image_link"] = f"{url}/img/{row['image']}"
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        yield hub_root, images


def _download(data_dir: Path, hub: Hub) -> Outcome:
    registry = TaskRegistry()
    needed = task_requirements(registry.config("vsr"), data_dir)
    return download(needed, data_dir, lambda task: (s.image for s in registry.task(task, data_dir).samples()),
                    hub=hub)


def test_download_fetches_verifies_and_resumes(vsr_hub, tmp_path, monkeypatch, capsys):
    hub_root, images = vsr_hub
    data_dir = tmp_path / "data"
    hub = FolderHub(hub_root)
    outcome = _download(data_dir, hub)
    assert outcome.ok and not outcome.present, outcome
    assert sorted(hub.fetched) == ["README.md", "dev.jsonl"]  # the task's patterns, not every file
    dev = {json.loads(line)["image"] for line in (hub_root / fx.VSR_ZEROSHOT / "dev.jsonl").read_text().splitlines()}
    assert sorted(p.name for p in (data_dir / fx.VSR_ZEROSHOT / "images").iterdir()) == sorted(dev)
    # a second download fetches nothing
    again = _download(data_dir, hub)
    assert again.ok and not again.fetched and len(hub.fetched) == 2
    # a damaged file is noticed and fetched again
    (data_dir / fx.VSR_ZEROSHOT / "dev.jsonl").write_text("damaged\n")
    repaired = _download(data_dir, hub)
    assert repaired.ok and hub.fetched[-1] == "dev.jsonl" and repaired.fetched
    assert (data_dir / fx.VSR_ZEROSHOT / "dev.jsonl").read_bytes() == (hub_root / fx.VSR_ZEROSHOT / "dev.jsonl").read_bytes()
    # doctor, offline, on this folder alone: everything is there
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    capsys.readouterr()
    assert main(["doctor", "--tasks", "vsr", "--data-dir", str(data_dir)]) == 0
    assert "everything needed is present" in capsys.readouterr().out


def test_files_that_never_match_and_images_that_fail_are_reported(vsr_hub, tmp_path):
    hub_root, images = vsr_hub
    data_dir = tmp_path / "data"
    outcome = _download(data_dir, FolderHub(hub_root, corrupt={"dev.jsonl"}))
    assert not outcome.ok
    assert any("do not match the hub's hashes after two downloads: dev.jsonl" in f for f in outcome.failed)
    # images: one fails, the rest arrive; the next download fetches only the failed one
    outcome = _download(data_dir, FolderHub(hub_root))
    assert outcome.ok
    image = next((data_dir / fx.VSR_ZEROSHOT / "images").iterdir())
    image.unlink()
    (data_dir / fx.VSR_ZEROSHOT / "images" / "extra").mkdir()  # unrelated content is left alone
    outcome = _download(data_dir, FolderHub(hub_root))
    assert any("1 downloaded" in item for item in outcome.fetched) and image.is_file()


def test_download_places_the_paper_protocol_s_files(tmp_path, monkeypatch, online):
    pin = upstream_fixtures.fixture_pin()
    monkeypatch.setattr(upstream, "VALOR", pin)
    with file_server(upstream_fixtures.files()) as url:
        monkeypatch.setenv("HARNESS_UPSTREAM_URL", url)
        outcome = download([], tmp_path, lambda task: [], upstream=True, hub=FolderHub(tmp_path))
    assert outcome.ok and len(outcome.fetched) == len(pin.assets)
    for asset in pin.assets:
        path = tmp_path / pin.repo / asset.path
        assert hashlib.sha256(path.read_bytes()).hexdigest() == asset.sha256
    again = download([], tmp_path, lambda task: [], upstream=True, hub=FolderHub(tmp_path))
    assert len(again.present) == len(pin.assets) and not again.fetched


def test_images_that_cannot_be_fetched_are_a_manual_step(tmp_path, online):
    config = TaskRegistry().config("gqa")
    needed = [r for r in task_requirements(config, tmp_path) if isinstance(r, ImageFolder)]
    outcome = download(needed, tmp_path, lambda task: [], hub=FolderHub(tmp_path))
    assert not outcome.ok and "images of task gqa: not fetchable here" in outcome.manual[0]


def test_the_download_command_names_what_is_still_missing(tmp_path, capsys, monkeypatch):
    assert main(["download", "--tasks", "countbenchqa", "--data-dir", str(tmp_path)]) == 2
    assert "downloads are off ($HF_HUB_OFFLINE and $HARNESS_OFFLINE)" in capsys.readouterr().err
    # No hub reachable: the dataset fails; the command says so and exits 1, offering the rerun.
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert main(["download", "--tasks", "countbenchqa", "--data-dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "FAILED: dataset vikhyatk/CountBenchQA" in out and "still missing" in out


# --------------------------------------------------------------------------- doctor


def test_doctor_reports_the_machine_and_a_run_s_needs(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(req, "gpu_count", lambda: 0)
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "sandbox isolation (auto)" in out and "layers:" in out
    assert main(["doctor", "--system", "valor-rl", "--tasks", "countbenchqa", "--data-dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "[MISSING] package vllm" in out and "[MISSING] a CUDA GPU" in out
    assert "fix: run `python -m harness download --system valor-rl --protocol paper --tools real --tasks countbenchqa" in out


# --------------------------------------------------------------------------- system files


def _system(include: Path, params: dict, kind: str = "llm_program", extends: str | None = None) -> SystemRegistry:
    data = {"system": "s", "params": params, **({"extends": extends} if extends else {"kind": kind})}
    (include / "s.yaml").write_text(json.dumps(data))
    return SystemRegistry([include])


def test_every_system_file_fits_its_kind():
    registry = SystemRegistry()
    for name in registry.names():
        registry.validate(name, registry.resolved_params(name))


@pytest.mark.parametrize("params, message", [
    ({"concurency": 2}, "params: unknown key 'concurency' (did you mean 'concurrency'?)"),
    ({"llm": {"model": "m", "backend": "openai", "temprature": 0}},
     "params.llm: unknown key 'temprature' (did you mean 'temperature'?)"),
    ({"tool_options": {"real": {"detector": {"box_treshold": 0.3}}}},
     "params.tool_options.real.detector: unknown key 'box_treshold' (did you mean 'box_threshold'?)"),
    ({"tool_options": {"real": {"vqa": {"modle": "x"}}}}, "params.tool_options.real.vqa: unknown key 'modle'"),
    ({"tool_options": {"reel": {}}}, "unknown tool backend 'reel' (did you mean 'real'?)"),
    ({"sampling": {"temprature": 0.5}}, "params.sampling: unknown key 'temprature' (did you mean 'temperature'?)"),
    ({"limits": {"wall_seconds": "fast"}}, "params.limits.wall_seconds must be a number, got str 'fast'"),
    ({"concurrency": "4"}, "params.concurrency must be a whole number, got str '4'"),
    ({"concurrency": True}, "params.concurrency must be a whole number, got bool True"),
    ({"llm": {"backend": "vlm", "model": "m"}}, "params.llm: unknown chat backend 'vlm' (did you mean 'vllm'?)"),
    ({"prompt_layout": "assistant"}, "params.prompt_layout must be one of user, system, got 'assistant'"),
    ({"isolation": "docker"}, "params.isolation must be one of auto, bwrap, unshare, process"),
])
def test_system_file_mistakes_name_the_file_and_the_key(tmp_path, params, message):
    base = {"llm": {"backend": "openai", "model": "m"}}
    registry = _system(tmp_path, {**base, **params})
    with pytest.raises(SystemConfigError) as caught:
        registry.build("s")
    assert str(caught.value).startswith(str(tmp_path / "s.yaml")) and message in str(caught.value)


def test_system_args_may_set_what_the_kind_reads_and_nothing_else():
    registry = SystemRegistry()
    system = registry.build("llm-tools-gpt-4o", {"llm.base_url": "http://127.0.0.1:9/v1", "llm.timeout_s": 5})
    assert system.params["llm"]["base_url"] == "http://127.0.0.1:9/v1"
    with pytest.raises(SystemConfigError, match=r"\(after --system-args\): params.llm: unknown key 'bse_url' "
                                                r"\(did you mean 'base_url'\?\)"):
        registry.build("llm-tools-gpt-4o", {"llm.bse_url": "x"})
    with pytest.raises(SystemConfigError, match="cannot set 'concurrency.x'"):
        registry.build("llm-tools-gpt-4o", {"concurrency.x": 1})


def test_a_kind_from_elsewhere_without_declared_parameters_is_not_checked(tmp_path):
    registry = _system(tmp_path, {"anything": 1}, kind="toy:SlowOracle")
    assert registry.build("s").params["anything"] == 1
