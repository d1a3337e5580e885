"""kiapi-ernie: ERNIE-Image generate, edit and LoRA training on mflux, as a kiapi plugin.

Importing this package imports nothing heavy (no mlx, mflux or Pillow); models load on the
model thread through ``kiapi_ernie.runtime:load``.
"""

from __future__ import annotations

from kiapi_core.sdk import hookimpl

__version__ = "0.1.0"


@hookimpl
def register_capabilities(register, host):
    """Register the ``ernie`` capability (``/v1/image/ernie/*``)."""
    from .capability import build_capability
    from .settings import ErnieSettings

    register(build_capability(host.plugin_settings("ernie", ErnieSettings), demo=host.settings.demo,
                              budget_gb=host.memory_budget_gb))
