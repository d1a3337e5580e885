"""The hooks a kiapi plugin may implement.

Plugins are modules (or objects) with functions marked ``@hookimpl`` and are found through the
``kiapi`` entry-point group. Every hook is called with keyword arguments; an implementation may
accept any subset of them. Built-in behaviour (health, files, jobs) is itself implemented by the
default plugins in :mod:`kiapi_core.default_plugins`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("kiapi")
hookimpl = pluggy.HookimplMarker("kiapi")


@hookspec
def register_capabilities(register: Callable[[Any], None], host: Any) -> None:
    """Declare capabilities.

    Called once per host, while it is built, before any route exists. Call
    ``register(Capability(...))`` for each capability the plugin serves; the core records which
    distribution registered it, so clashes name both sides. Must not import heavy libraries
    (mlx, mflux, torch): models load later through each :class:`~kiapi_core.Model`'s ``loader``.

    :param register: ``register(capability: Capability) -> None``.
    :param host: the :class:`~kiapi_core.host.Host` being built (``host.settings`` is ready;
        jobs and files are not started yet).
    :return: ignored.
    """


@hookspec
def register_routes(host: Any) -> list[Any] | None:
    """Add HTTP routes that are not capability operations.

    Called once per host after all capabilities are registered, while the host is built, for
    each plugin on its own. Return a list of ``starlette.routing.BaseRoute``. Every route must
    lie under the prefix of a capability the plugin registered (``/v1/{domain}/{name}/...``)
    and take no path already served (the core's, another plugin's); a plugin breaking this is
    reported and skipped. The routes appear in the capability's OpenAPI document. The core's
    own endpoints (``/health``, ``/v1/files``, ``/v1/jobs``) come from default plugins
    through this hook.

    :param host: the built :class:`~kiapi_core.host.Host`.
    :return: a list of routes, or ``None``.
    """


@hookspec
def register_commands(cli: Any) -> None:
    """Add subcommands to the ``kiapi`` command line.

    Called once per host while it is built, for each plugin on its own with a fresh group
    (never for ``kiapi --help``, which imports no plugin). A command named like a core command
    or an earlier plugin's is refused and the plugin reported and skipped.

    :param cli: the root ``click.Group``; call ``cli.add_command(...)`` or use ``@cli.command()``.
    :return: ignored.
    """
