"""``KIAPI_WARMUP``: the models to load at start-up, always written ``family:model``.

The earlier kiapi accepted bare names and resolved them against every family in registration
order, so ``turbo`` warmed another family's ``turbo``. Here a bare name is an error that says
which families have a model by that name.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..errors import StartupError, UnknownModel


def parse_warmup(entries: Iterable[str], registry: Any) -> list[tuple[str, str]]:
    """``["ernie:turbo", "seedvr2:3B"]`` → ``[("ernie", "turbo"), ("seedvr2", "3b")]``.

    Model names are resolved like a request's (name or alias, any case) to the canonical name;
    duplicates are dropped, order is kept. Every bad entry is reported in one
    :class:`~kiapi_core.errors.StartupError`.
    """
    result: list[tuple[str, str]] = []
    problems: list[str] = []
    for raw in entries:
        entry = raw.strip()
        if not entry:
            continue
        family, sep, name = entry.partition(":")
        family, name = family.strip(), name.strip()
        if not sep or not family or not name:
            owners = _families_with(registry, entry)
            suggestion = (f"; did you mean {' or '.join(f'{f}:{entry}' for f in owners)}?" if owners
                          else "; e.g. ernie:turbo")
            problems.append(f"{entry!r} is not family:model{suggestion}")
            continue
        if family not in registry:
            known = ", ".join(c.name for c in registry) or "none installed"
            problems.append(f"{entry!r}: no capability {family!r} (capabilities: {known})")
            continue
        try:
            model = registry.resolve_model(family, name)
        except UnknownModel as exc:
            problems.append(f"{entry!r}: {exc.detail}")
            continue
        pair = (family, model.name)
        if pair not in result:
            result.append(pair)
    if problems:
        raise StartupError("invalid KIAPI_WARMUP: " + "; ".join(problems))
    return result


def _families_with(registry: Any, name: str) -> list[str]:
    lowered = name.lower()
    return [c.name for c in registry
            if any(lowered in (m.name.lower(), *(a.lower() for a in m.aliases)) for m in c.models)]
