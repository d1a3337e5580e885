"""Calling the job manager from the event loop.

The embedded :class:`~kiapi_core.jobs.manager.JobManager` answers from memory under a lock, so
routes call it directly. A manager whose calls reach a database (the cluster's
:class:`~kiapi_core.cluster.manager.ClusterJobManager`) also offers ``a<method>`` coroutines
that run them off the loop; :func:`call` picks those when they exist, so the routes need not
know which manager they have.
"""

from __future__ import annotations

from typing import Any


async def call(jobs: Any, method: str, *args: Any, **kwargs: Any) -> Any:
    """``jobs.<method>(...)``, awaited through ``jobs.a<method>`` when the manager has it."""
    off_loop = getattr(jobs, "a" + method, None)
    if off_loop is not None:
        return await off_loop(*args, **kwargs)
    return getattr(jobs, method)(*args, **kwargs)


__all__ = ["call"]
