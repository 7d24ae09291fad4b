"""Upstream files: found offline, in the cache or downloaded, always hash-checked; texts read with ast."""

from __future__ import annotations

import contextlib
import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from harness import upstream
from harness.upstream import AssetStore, PaperTexts, UpstreamAssetError, judge_prompt_from_source, vqa_prompts_from_source
import upstream_fixtures


@contextlib.contextmanager
def file_server(files: dict[str, bytes]):
    """Serves ``files`` by path on 127.0.0.1; counts the requests."""
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            hits.append(self.path)
            data = files.get(self.path.lstrip("/"))
            self.send_response(200 if data is not None else 404)
            self.end_headers()
            self.wfile.write(data or b"not found")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", hits
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def pin(monkeypatch):
    fixture = upstream_fixtures.fixture_pin()
    monkeypatch.setattr(upstream, "VALOR", fixture)
    return fixture


def test_the_real_pin_names_the_commit_and_nine_files():
    assert upstream.VALOR.commit == "cf2442b4485eada8fdade3ebc14040e300317486"
    assert len(upstream.VALOR.assets) == 9
    assert upstream.VALOR.asset(upstream.SYSTEM_PROMPT).size == 12282
    assert all(len(a.sha256) == 64 for a in upstream.VALOR.assets)


def test_an_offline_copy_under_the_data_dir_is_used_and_checked(tmp_path, pin):
    upstream_fixtures.write_offline_copy(tmp_path)
    store = AssetStore(data_dir=tmp_path, cache_dir=tmp_path / "cache")
    assert store.read_text(upstream.SYSTEM_PROMPT) == upstream_fixtures.SYSTEM_PROMPT
    assert store.status(upstream.METRICS)[0] == "offline"
    (tmp_path / pin.repo / upstream.METRICS).write_text("tampered")
    with pytest.raises(UpstreamAssetError) as error:
        AssetStore(data_dir=tmp_path, cache_dir=tmp_path / "cache").path(upstream.METRICS)
    message = str(error.value)
    assert upstream.METRICS in message and pin.asset(upstream.METRICS).sha256 in message and "--data-dir" in message


def test_offline_without_a_copy_names_the_file_the_hash_and_the_fix(tmp_path, pin, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UpstreamAssetError) as error:
        AssetStore(data_dir=tmp_path, cache_dir=tmp_path / "cache").path(upstream.SYSTEM_PROMPT)
    message = str(error.value)
    assert upstream.SYSTEM_PROMPT in message and pin.asset(upstream.SYSTEM_PROMPT).sha256 in message
    assert "download" in message and str(tmp_path / pin.repo / upstream.SYSTEM_PROMPT) in message


def test_a_download_is_checked_cached_and_not_repeated(tmp_path, pin, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with file_server(upstream_fixtures.files()) as (url, hits):
        monkeypatch.setenv("HARNESS_UPSTREAM_URL", url)
        store = AssetStore(cache_dir=tmp_path / "cache")
        path = store.path(upstream.SPECIALISTS_API)
        assert path == tmp_path / "cache" / pin.commit / upstream.SPECIALISTS_API
        assert AssetStore(cache_dir=tmp_path / "cache").read_text(upstream.SPECIALISTS_API) == upstream_fixtures.SPECIALISTS_API
        assert hits == [f"/{upstream.SPECIALISTS_API}"]


def test_a_download_with_the_wrong_hash_is_refused_and_not_cached(tmp_path, pin, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    served = dict(upstream_fixtures.files())
    served[upstream.METRICS] = b"other text"
    with file_server(served) as (url, _):
        monkeypatch.setenv("HARNESS_UPSTREAM_URL", url)
        with pytest.raises(UpstreamAssetError, match="expected " + pin.asset(upstream.METRICS).sha256):
            AssetStore(cache_dir=tmp_path / "cache").path(upstream.METRICS)
    assert not (tmp_path / "cache" / pin.commit / upstream.METRICS).exists()


def test_a_dead_server_is_one_clear_error(tmp_path, pin, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HARNESS_UPSTREAM_URL", "http://127.0.0.1:9")
    with pytest.raises(UpstreamAssetError, match="cannot download upstream file"):
        AssetStore(cache_dir=tmp_path / "cache", timeout_s=2).path(upstream.SYSTEM_PROMPT)


def test_texts_are_read_from_the_files_with_ast(tmp_path, pin):
    upstream_fixtures.write_offline_copy(tmp_path)
    texts = PaperTexts(AssetStore(data_dir=tmp_path, cache_dir=tmp_path / "cache"))
    assert texts.system_prompt() == upstream_fixtures.SYSTEM_PROMPT
    assert texts.judge_prompt().count("{}") == 3 and texts.judge_prompt().startswith("\nGrade the answer.")
    prompts = texts.vqa_prompts()
    assert prompts.whole_image == "Look at the whole picture. Reply with one word."
    assert prompts.crop == "Look at the object in the middle of this crop. Reply with one word."
    assert [row["problem"] for row in texts.training_queries()] == [r["problem"] for r in upstream_fixtures.TRAINING_ROWS]
    assert texts.verifier_prompt(upstream.LOGIC_REWARD) == upstream_fixtures.VERIFIER[upstream.LOGIC_REWARD]


@pytest.mark.parametrize("source, message", [
    ("def check_synonyms(q, p, g):\n    return q\n", "expected one string"),
    ("def check_synonyms(q, p, g):\n    prompt = 'only {} {}'\n", "three {} slots"),
    ("x = 1\n", "no function check_synonyms"),
])
def test_a_judge_file_of_another_shape_is_refused(source, message):
    with pytest.raises(UpstreamAssetError, match=message):
        judge_prompt_from_source(source)


def test_a_vqa_file_without_the_two_prompts_is_refused():
    with pytest.raises(UpstreamAssetError, match="base_prompt"):
        vqa_prompts_from_source("def vqa(img_pth, box=None):\n    base_prompt = 'x'\n")


def test_the_fixture_hashes_differ_from_the_real_ones():
    """The repository holds none of the original files: no fixture is byte-equal to one."""
    real = {a.sha256 for a in upstream.VALOR.assets}
    assert not real & {hashlib.sha256(d).hexdigest() for d in upstream_fixtures.files().values()}
