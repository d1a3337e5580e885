"""kiapi-ernie: ERNIE-Image generate, edit and LoRA training on mflux, as a kiapi plugin.

Importing this package imports nothing heavy (no mlx, mflux or Pillow); models load on the
model thread through ``kiapi_ernie.runtime:load``.
"""

from __future__ import annotations

from kiapi_core import hookimpl

__version__ = "0.1.0"


@hookimpl
def register_capabilities(register, host):
    """Register the ``ernie`` capability (``/v1/image/ernie/*``)."""
    from .capability import build_capability
    from .validation import plugin_settings

    try:
        settings = plugin_settings(host)
    except Exception:  # settings are not readable yet at registration: use the defaults
        settings = None
    register(build_capability(settings))
