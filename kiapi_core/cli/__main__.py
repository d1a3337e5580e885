"""``python -m kiapi_core.cli`` runs the ``kiapi`` command."""

from . import main

main()
