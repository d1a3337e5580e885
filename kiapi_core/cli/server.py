"""``kiapi serve``."""

from __future__ import annotations

import logging

import click

from . import make_host


@click.command()
@click.option("--host", default=None, help="Address to bind (default 127.0.0.1; KIAPI_HOST).")
@click.option("--port", type=int, default=None, help="Port (default 8000; KIAPI_PORT).")
@click.option("--demo", is_flag=True, default=None,
              help="Serve tiny random-weight models (no downloads; outputs are noise).")
@click.option("--data-dir", default=None, help="State directory (KIAPI_DATA_DIR).")
@click.option("--insecure-no-auth", is_flag=True, default=None,
              help="Allow binding beyond loopback without KIAPI_AUTH_TOKEN (KIAPI_INSECURE_NO_AUTH).")
@click.option("--log-level", default=None, type=click.Choice(["debug", "info", "warning", "error"]),
              help="Logging level (KIAPI_LOG_LEVEL).")
@click.pass_context
def serve(ctx: click.Context, host: str | None, port: int | None, demo: bool | None,
          data_dir: str | None, log_level: str | None, insecure_no_auth: bool | None) -> None:
    """Run the HTTP server until SIGINT/SIGTERM.

    Every installed capability plugin is served under /v1/{domain}/{family}/; the API is
    described at /openapi.json and browsable at /docs.
    """
    from ..logs import configure as configure_logging
    from ..serve import serve as run

    built = make_host(ctx, host=host, port=port, demo=demo, data_dir=data_dir, log_level=log_level,
                      insecure_no_auth=insecure_no_auth)
    configure_logging(built.settings.log_level, built.settings.log_format)
    for record in built.plugins:
        if record.error:
            logging.getLogger("kiapi.plugins").error("skipped %s (%s): %s", record.name,
                                                      record.distribution, record.error)
    run(built)
