"""``family`` / ``family:model`` selectors, as ``kiapi activate``, ``deactivate``, ``status``
and ``check`` take them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ..registry import Capability, Model


class SelectionError(ValueError):
    """A selector names no installed capability or model; the message lists the valid ones."""


def valid_selectors(capabilities: Iterable[Capability]) -> list[str]:
    """Every accepted ``family`` and ``family:model`` selector, for error and usage messages."""
    out: list[str] = []
    for capability in capabilities:
        out.append(capability.name)
        out.extend(f"{capability.name}:{m.name}" for m in capability.models)
    return out


def select(capabilities: Iterable[Capability], selectors: Sequence[str], *,
           with_weights: bool = False) -> list[tuple[Capability, Model]]:
    """Resolve ``family`` / ``family:model`` selectors (aliases, any case) in declaration order.

    ``with_weights`` leaves out models that declare no weight files (nothing to fetch).
    """
    caps = list(capabilities)
    by_name = {c.name: c for c in caps}
    chosen: list[tuple[Capability, Model]] = []
    for selector in selectors:
        family, _, name = selector.partition(":")
        capability = by_name.get(family.strip().lower())
        if capability is None:
            raise SelectionError(f"no capability {family!r}; valid selectors: "
                                 f"{', '.join(valid_selectors(caps)) or '(no plugins installed)'}")
        if not name:
            models = list(capability.models)
        else:
            wanted = name.strip().lower()
            models = [m for m in capability.models if wanted in (m.name.lower(), *(a.lower() for a in m.aliases))]
            if not models:
                raise SelectionError(f"no {family} model {name!r}; valid selectors: "
                                     f"{', '.join(valid_selectors([capability]))}")
        for model in models:
            if (with_weights and not model.weights) or any(m is model for _, m in chosen):
                continue
            chosen.append((capability, model))
    return chosen
