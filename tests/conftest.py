import os
import shutil
import tempfile

import pytest

_CACHE_ROOT = tempfile.mkdtemp(prefix="harness-test-caches-")


def pytest_configure(config):
    """Keep the whole session off the network and out of the user's caches.

    Set before any test module is imported: ``datasets`` and ``huggingface_hub``
    read these variables once, at import time.
    """
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_HOME"] = os.path.join(_CACHE_ROOT, "hf-home")
    os.environ["HF_DATASETS_CACHE"] = os.path.join(_CACHE_ROOT, "hf-datasets")
    os.environ["HARNESS_CACHE_DIR"] = os.path.join(_CACHE_ROOT, "harness")
    os.environ.pop("HARNESS_DATA_DIR", None)


def pytest_unconfigure(config):
    shutil.rmtree(_CACHE_ROOT, ignore_errors=True)


@pytest.fixture(autouse=True)
def isolated_harness_cache(tmp_path, monkeypatch):
    """Each test gets its own judge/response/image cache."""
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "harness-cache"))
