"""Declared sizes have one unit, GiB, and say so: ``Model.weights_gib`` and
``WeightFiles.size_gib``. The SDK 1 names (``weights_gb``, already GiB; ``size_gb``, decimal GB)
are accepted for one more release with a :class:`KiapiDeprecationWarning`, which ``kiapi
plugins`` names with its place."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import msgspec
import pytest

from kiapi_core import Capability, Model, Operation, hookimpl
from kiapi_core.sdk import KiapiDeprecationWarning, WeightFiles
from kiapi_core.testing import build_test_host
from kiapi_core.units import BYTES_PER_GB, BYTES_PER_GIB, gib_from_gb, human_bytes
from kiapi_core.weights import status


def test_units_are_named_for_what_they_count():
    assert (BYTES_PER_GIB, BYTES_PER_GB) == (2**30, 10**9)
    assert gib_from_gb(23.2) == pytest.approx(21.607, abs=1e-3)
    assert human_bytes(23.2e9) == "23.2 GB" and human_bytes(999) == "999 B"


def test_new_names_raise_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        files = WeightFiles(repo="org/m", size_gib=21.6)
        model = Model(name="m", weights_gib={8: 4.0}, weights=(files,))
    assert model.weights_gib == {8: 4.0} and model.weights_gb is None and files.size_gb is None


def test_size_gb_is_decimal_and_becomes_size_gib_with_a_warning():
    with pytest.warns(KiapiDeprecationWarning, match=r"WeightFiles\.size_gb is deprecated.*size_gib") as caught:
        files = WeightFiles(repo="org/m", size_gb=23.2)
    assert caught[0].filename == __file__  # the warning points at the declaration, not at kiapi
    assert files.size_gib == pytest.approx(23.2e9 / 2**30) and files.size_gb is None
    # Still frozen, hashable and copyable as a declaration must be.
    assert hash(files) == hash(msgspec.structs.replace(files))


def test_weights_gb_was_already_gib_and_moves_unchanged():
    with pytest.warns(KiapiDeprecationWarning, match=r"Model\.weights_gb is deprecated.*weights_gib"):
        model = Model(name="m", weights_gb={None: 8.0, 4: 2.5})
    assert model.weights_gib == {None: 8.0, 4: 2.5} and model.weights_gb is None


def test_the_new_name_wins_when_both_are_given():
    with pytest.warns(KiapiDeprecationWarning):
        model = Model(name="m", weights_gib={8: 4.0}, weights_gb={8: 9.0})
    assert model.weights_gib == {8: 4.0}


class _Body(msgspec.Struct):
    text: str = ""


class _OldSizes:
    """A plugin API 1 plugin (``from kiapi_core import ...``) still on the SDK 1 size names."""

    @hookimpl
    def register_capabilities(self, register):
        register(Capability(
            name="oldsizes", domain="test", title="Old sizes",
            models=(Model(name="m", default=True, loader="nowhere:load", weights_gb={None: 3.0},
                          weights=(WeightFiles(repo="org/old", size_gb=2.5),)),),
            operations=(Operation(name="run", request=_Body, result=None, handler="nowhere:run", job_type="old",
                                  estimate=lambda params, model: 0.5),),
        ))


def test_a_version_1_plugin_with_the_old_names_is_served_and_its_deprecations_recorded(tmp_path):
    host = build_test_host(tmp_path, plugins=[_OldSizes()], demo=False)
    record = next(r for r in host.plugins if r.capabilities == ["oldsizes"])
    assert record.error is None
    assert len(record.deprecations) == 2 and __file__ in record.deprecations[0]
    assert any("Model.weights_gb" in d for d in record.deprecations)
    assert any("WeightFiles.size_gb" in d for d in record.deprecations)
    capability = host.registry.get("oldsizes")
    model = capability.models[0]
    # Memory admission counts the declared GiB; the disk plan the Hub's 2.5 GB.
    assert host.models.stats()["models"][0]["weights_gb"] == 3.0
    assert status(capability, model, None).expected_bytes == 2_500_000_000


_OLD_PLUGIN = '''
import msgspec
from kiapi_core import Capability, Model, Operation, hookimpl
from kiapi_core.sdk import WeightFiles

class Body(msgspec.Struct):
    text: str = ""

# Declared at import time: the deprecation is caught while the entry point loads.
MODEL = Model(name="m", default=True, loader="nowhere:load", weights_gb={None: 1.0},
              weights=(WeightFiles(repo="org/old", size_gb=1.0),))

@hookimpl
def register_capabilities(register):
    register(Capability(name="oldsizes", domain="test", title="Old sizes", models=(MODEL,),
                        operations=(Operation(name="run", request=Body, result=None, handler="nowhere:run",
                                              job_type="old", estimate=lambda params, model: 0.1),)))
'''


def test_kiapi_plugins_names_each_deprecated_name_with_its_place(tmp_path):
    site = tmp_path / "site"
    info = site / "kiapi_oldsizes-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: kiapi-oldsizes\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[kiapi]\noldsizes = kiapi_oldsizes_mod\n")
    (site / "kiapi_oldsizes_mod.py").write_text(textwrap.dedent(_OLD_PLUGIN))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), *sys.path]), "KIAPI_DATA_DIR": str(tmp_path / "d"),
           "KIAPI_CONFIG": "", "XDG_CONFIG_HOME": str(tmp_path / "cfg"), "KIAPI_LOAD_PLUGINS": "kiapi-oldsizes"}

    def cli(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "kiapi_core.cli", "plugins", *args], capture_output=True,
                              text=True, env=env, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout

    text = cli()
    assert "kiapi-oldsizes 1.0" in text and "oldsizes: models m" in text
    where = str(site / "kiapi_oldsizes_mod.py")
    lines = [line for line in text.splitlines() if line.startswith("  deprecated: ")]
    assert len(lines) == 2 and all(where in line for line in lines), text
    assert "declare weights_gib instead" in lines[0] + lines[1] and "declare size_gib instead" in lines[0] + lines[1]
    [record] = [r for r in json.loads(cli("--json")) if r["distribution"] == "kiapi-oldsizes"]
    assert record["error"] is None and len(record["deprecations"]) == 2


def test_other_warnings_of_a_plugin_are_not_swallowed(tmp_path):
    class Noisy:
        @hookimpl
        def register_capabilities(self, register):
            warnings.warn("a plugin's own warning", UserWarning, stacklevel=1)
            register(Capability(name="noisy", domain="test", title="Noisy", models=(Model(name="m"),)))

    with pytest.warns(UserWarning, match="a plugin's own warning"):
        host = build_test_host(tmp_path, plugins=[Noisy()])
    assert next(r for r in host.plugins if r.capabilities == ["noisy"]).deprecations == []



def test_size_settings_mean_the_unit_docs_settings_md_names(tmp_path):
    """``KIAPI_MEMORY_LIMIT_GB`` is GiB, ``KIAPI_MAX_STORAGE_GB`` decimal GB: the code and
    docs/settings.md agree."""
    host = build_test_host(tmp_path, memory_limit_gb=2.0, max_storage_gb=1.5)
    assert host.models.budget.gb * BYTES_PER_GIB == 2 * 2**30
    assert host.files.quota.limit_bytes == 1_500_000_000
    docs = (Path(__file__).resolve().parents[1] / "docs" / "settings.md").read_text()
    row = {line.split("|")[1].strip(" `"): line for line in docs.splitlines() if line.startswith("| `KIAPI_")}
    assert "in GiB (2³⁰ bytes" in row["KIAPI_MEMORY_LIMIT_GB"]
    assert "in GiB (2³⁰ bytes)" in row["KIAPI_CLUSTER_CACHE_GB"]  # cluster/pg/files.py: cache_gb * 2**30
    assert "in GB (10⁹ bytes)" in row["KIAPI_MAX_STORAGE_GB"]
    units = docs[docs.index("**Size units.**"):].split("\n\n")[0]
    assert "`KIAPI_MEMORY_LIMIT_GB` and the local cache `KIAPI_CLUSTER_CACHE_GB` are GiB" in units
    assert "`KIAPI_MAX_STORAGE_GB` is GB (10⁹ bytes)" in units and "`_MB` settings are MiB" in units
