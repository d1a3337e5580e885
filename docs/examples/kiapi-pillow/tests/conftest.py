"""Make ``kiapi_pillow`` importable when the tests run from a checkout without installing it.

When the package is installed (``pip install -e .[test]``) the installed copy is used; the
kiapi fixtures (``kiapi_client_factory`` ...) come from kiapi-core's pytest plugin either way.
"""

import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("kiapi_pillow") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
