"""The ``kiapi`` command line.

Subcommands live in small modules that are imported only when their command runs, so that
``kiapi --help`` answers at once and imports no plugin. Plugins add commands through the
``register_commands`` hook, consulted only for names the core does not know.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

from .. import __version__

#: name -> (module, attribute, one-line help shown by ``kiapi --help``)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "serve": ("kiapi_core.cli.server", "serve", "Run the HTTP server."),
    "plugins": ("kiapi_core.cli.info", "plugins", "List installed plugins, their capabilities and load errors."),
    "models": ("kiapi_core.cli.info", "models", "List every model of every capability."),
    "openapi": ("kiapi_core.cli.info", "openapi", "Print the root or a capability's OpenAPI document."),
    "config": ("kiapi_core.cli.info", "config", "Show the effective settings and where each came from."),
    "status": ("kiapi_core.cli.weights", "status_command", "Show which models have their weights on disk (offline)."),
    "activate": ("kiapi_core.cli.weights", "activate", "Download models' weights from the Hugging Face Hub."),
    "deactivate": ("kiapi_core.cli.weights", "deactivate", "Delete models' weights to free disk space."),
    "check": ("kiapi_core.cli.check", "check", "Load each present model and run its smallest real request."),
    "cluster": ("kiapi_core.cli.cluster", "cluster", "List the hosts of the cluster (KIAPI_CLUSTER_URL)."),
    "ps": ("kiapi_core.cli.ps", "ps", "Show a running server's loaded models, memory and active jobs."),
    "run": ("kiapi_core.cli.run", "run", "Run one operation on a running server and save its output."),
    "jobs": ("kiapi_core.cli.jobs", "jobs", "List, watch and cancel a running server's jobs."),
    "files": ("kiapi_core.cli.files", "files", "Show a running server's storage by kind; list and delete files."),
    "prune": ("kiapi_core.cli.files", "prune", "Delete files and jobs by age, status or total size."),
}


def _config_path() -> str:
    """This machine's default config file, as `--help` shows it (macOS differs from Linux)."""
    import sys
    from pathlib import Path

    home = str(Path.home())
    if sys.platform == "darwin":
        return "~/Library/Application Support/kiapi/config.toml"
    import os

    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(home, ".config")
    return os.path.join(base, "kiapi", "config.toml").replace(home, "~", 1)


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in COMMANDS:
            module, attribute, _ = COMMANDS[name]
            return getattr(importlib.import_module(module), attribute)
        return self._plugin_command(name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, COMMANDS[name][2]) for name in sorted(COMMANDS)])

    def _plugin_command(self, name: str) -> click.Command | None:
        ctx = click.get_current_context(silent=True)
        if ctx is None:
            return None
        host = make_host(ctx)  # with the same --config as any command; errors are ClickExceptions
        return host.plugin_commands.get(name)  # collected and checked per plugin by build_host


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kiapi")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help=f"Config file (TOML). Default: $KIAPI_CONFIG, else {_config_path()} if present.")
@click.pass_context
def cli(ctx: click.Context, config_file: str | None) -> None:
    """kiapi: a local HTTP server for generative-image models, extended by plugins.

    Start with `kiapi serve --demo` and open http://127.0.0.1:8000/docs.
    """
    ctx.obj = {"config_file": config_file}


def load(ctx: click.Context, **flags: Any):
    """Settings for a command: config file < environment < these flags."""
    from ..errors import StartupError
    from ..settings import load_settings

    try:
        return load_settings(flags, config_file=(ctx.find_root().obj or {}).get("config_file"))
    except StartupError as exc:
        raise click.ClickException(str(exc)) from None


def make_host(ctx: click.Context, *, diagnose: bool = False, **flags: Any):
    from ..errors import PluginError, StartupError
    from ..host import build_host

    try:
        return build_host(load(ctx, **flags), diagnose=diagnose)
    except (PluginError, StartupError) as exc:
        raise click.ClickException(str(exc)) from None


def main() -> None:
    cli(prog_name="kiapi")
