"""Model weights on disk: where they are, whether they are all there, fetching and removing them.

One module per concern:

* :mod:`.layout`: where weight files are looked for (a plugin's local directory setting, else
  the Hugging Face cache at the pinned revision) and which files a declaration selects;
* :mod:`.presence`: present, partial or missing (:func:`status`), the one weights-present check
  (:func:`require_present`, :func:`is_ready`) and telling a loader's "files missing" failure
  from a bug (:func:`is_missing_weights_error`);
* :mod:`.selection`: ``family`` / ``family:model`` selectors of the weights commands;
* :mod:`.download`: ``kiapi activate``'s plan, disk check and downloads (huggingface_hub is
  imported only there, inside the functions that talk to the Hub);
* :mod:`.remove`: ``kiapi deactivate``, file by file, keeping what another variant needs;
* :mod:`.runtime`: whether MLX can run models here, told without importing it.

Sizes: declarations are in GiB (``WeightFiles.size_gib``); figures shown to people are decimal
GB, as the Hub shows them (see :mod:`kiapi_core.units`). Nothing imported here touches the
network or imports huggingface_hub or mlx.
"""

from __future__ import annotations

from .layout import hf_cache_dir, local_dir, matches, repo_cache_dir, selected_files, snapshot_dir
from .presence import (
    PartStatus,
    WeightStatus,
    is_missing_weights_error,
    is_ready,
    missing_message,
    model_readiness,
    readiness_of_all,
    require_present,
    status,
)
from .runtime import mlx_note
from .selection import SelectionError, select, valid_selectors

__all__ = [
    "PartStatus",
    "SelectionError",
    "WeightStatus",
    "hf_cache_dir",
    "is_missing_weights_error",
    "is_ready",
    "local_dir",
    "matches",
    "missing_message",
    "mlx_note",
    "model_readiness",
    "readiness_of_all",
    "repo_cache_dir",
    "require_present",
    "select",
    "selected_files",
    "snapshot_dir",
    "status",
    "valid_selectors",
]
