"""The errors the host turns into HTTP answers.

Every error a client can see is a :class:`KiapiError`: it carries its HTTP status, a stable
machine-readable ``code`` and a ``detail`` sentence that says what is wrong and how to fix it.
Plugins raise these (usually :class:`InvalidRequest`) from validation and handlers; the core
renders them as ``{"detail": ..., "code": ..., **extra}`` everywhere, adding the job id when a
job exists.
"""

from __future__ import annotations

from typing import Any


class KiapiError(Exception):
    """Base class: an error with an HTTP status, a code and a client-facing detail."""

    status: int = 500
    code: str = "internal_error"

    def __init__(self, detail: str, *, code: str | None = None, headers: dict[str, str] | None = None,
                 **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code
        self.headers = headers or {}
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"detail": self.detail, "code": self.code, **self.extra}


class BadRequest(KiapiError):
    """400: the request is well-formed but names something that does not work (model, file)."""

    status = 400
    code = "bad_request"


class MalformedJSON(BadRequest):
    code = "malformed_json"


class UnknownModel(BadRequest):
    code = "unknown_model"


class InvalidInput(BadRequest):
    """400: an input file (image, archive, adapter) is unusable."""

    code = "invalid_input"


class Unauthorized(KiapiError):
    status = 401
    code = "unauthorized"


class NotFound(KiapiError):
    status = 404
    code = "not_found"


class NotAcceptable(KiapiError):
    status = 406
    code = "not_acceptable"


class Conflict(KiapiError):
    status = 409
    code = "conflict"


class PayloadTooLarge(KiapiError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(KiapiError):
    status = 415
    code = "unsupported_media_type"


class InvalidRequest(KiapiError):
    """422: a field has a value the operation cannot accept. Name the field and the fix."""

    status = 422
    code = "invalid_request"


class Unavailable(KiapiError):
    """503: the host cannot take this work now (queue full, weights missing, memory budget)."""

    status = 503
    code = "unavailable"


class QueueFull(Unavailable):
    code = "queue_full"


class WeightsMissing(Unavailable):
    code = "weights_missing"


class MemoryBudgetExceeded(Unavailable):
    code = "memory_budget"


class InsufficientStorage(KiapiError):
    """507: storing this would pass the storage quota (KIAPI_MAX_STORAGE_GB) or the disk is full."""

    status = 507
    code = "insufficient_storage"


class SyncTimeout(KiapiError):
    status = 504
    code = "sync_timeout"


class InvalidResult(KiapiError):
    """500: a handler returned a result its operation does not declare (a bug in the plugin)."""

    code = "invalid_result"


class JobCanceled(Exception):
    """Raised inside a handler (by ``JobContext.check_canceled``) to stop a canceled job.

    Not a KiapiError: it never reaches a client as an error; the job simply ends ``canceled``.
    """


def _subclasses(base: type[KiapiError]) -> list[type[KiapiError]]:
    found = [base]
    for sub in base.__subclasses__():
        found += _subclasses(sub)
    return found


def error_classes() -> dict[str, type[KiapiError]]:
    """Every error code and its class (the most specific one defined for it): the table a
    stored ``error_code`` is turned back into an error with its HTTP status. Computed on each
    call, so classes plugins define (subclasses with their own ``code``) are included."""
    table: dict[str, type[KiapiError]] = {}
    for cls in _subclasses(KiapiError):
        table.setdefault(cls.code, cls)
    return table


def error_from_code(code: str | None, detail: str, **extra: Any) -> KiapiError:
    """The error ``code`` names, with ``detail``: the right class (so the right HTTP status)
    for a known code, a 500 :class:`KiapiError` carrying the code otherwise."""
    cls = error_classes().get(code or "", KiapiError)
    return cls(detail, code=code, **extra)


class PluginError(Exception):
    """A plugin could not be loaded or registered (import error, clash, bad declaration)."""


class StartupError(Exception):
    """The host cannot start: conflicting registrations, invalid settings."""


class SettingsError(StartupError):
    """A setting has a value the host or a plugin cannot use. Always fatal: an operator's
    mistake must not quietly disable a capability."""
