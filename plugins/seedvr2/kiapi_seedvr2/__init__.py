"""kiapi-seedvr2: SeedVR2 diffusion super-resolution (3b, 7b) on mflux, as a kiapi plugin.

Importing this package is cheap: the hook only builds declarations; mlx and mflux are imported
by the model loader (:mod:`kiapi_seedvr2.runtime`) on the model thread.
"""

from __future__ import annotations

from kiapi_core.sdk import hookimpl

__version__ = "0.1.0"


@hookimpl
def register_capabilities(register, host):
    """Register the ``seedvr2`` capability (tiny random-weight models in demo mode)."""
    from .capability import build_capability

    settings = getattr(host, "settings", None)
    register(build_capability(demo=bool(getattr(settings, "demo", False))))
