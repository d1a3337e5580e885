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


@pytest.fixture(scope="session")
def pg_server():
    """A real PostgreSQL server for the session (skips without one; CI installs it and forbids skips)."""
    from pg_server import PostgresServer, find_bin_dir

    bin_dir = find_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries (initdb) not found; install the `postgresql` package")
    pytest.importorskip("psycopg")
    server = PostgresServer(bin_dir)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server) -> str:
    """The URL of a fresh, empty database on the session's PostgreSQL server."""
    return pg_server.new_database()
