"""kiapi-pillow: resize and convert images with Pillow, as a kiapi capability.

Importing this package imports neither Pillow nor anything heavy: the handlers and the model
loader are named by "module:function" strings and imported on the model thread when needed.
"""

from kiapi_core.sdk import hookimpl

__version__ = "0.1.0"


@hookimpl
def register_capabilities(register):
    """Serve ``/v1/image/pillow/resize`` and ``/v1/image/pillow/convert``."""
    from .capability import CAPABILITY

    register(CAPABILITY)
