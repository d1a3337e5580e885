"""Jobs: the record (:mod:`.models`), the handler's context (:mod:`.context`), the store, the
manager with its single model worker thread, and the ``/v1/jobs`` routes.

Only the light modules are imported here: ``import kiapi_core`` must stay cheap for plugins.
"""

from .context import JobContext
from .models import AsyncJobResponse, Job, JobStatus

__all__ = ["AsyncJobResponse", "Job", "JobContext", "JobStatus"]
