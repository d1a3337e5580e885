"""Fixtures shared by the core's tests."""

from pathlib import Path

import pytest


@pytest.fixture
def hf_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache (HF_HUB_CACHE) and a data dir of the test's own."""
    path = tmp_path / "hf"
    path.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(path))
    monkeypatch.setenv("KIAPI_DATA_DIR", str(tmp_path / "data"))
    return path
