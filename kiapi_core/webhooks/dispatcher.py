"""Webhook deliveries: from job events to signed POSTs, retried with backoff, surviving restarts.

The model thread only calls :meth:`WebhookDispatcher.on_job`, which hands the event to the
event loop (``call_soon_threadsafe``) and returns: nothing about a webhook ever runs on the
model thread. On the loop, the event is matched with the job's subscription and filter,
progress is throttled (one delivery per job per :data:`PROGRESS_INTERVAL_S`, the latest state
held back and sent when the interval is over), and the delivery is written to SQLite by one writer
task (so a job's events keep their order) before the sender picks it up. The sender posts each
job's oldest pending delivery; a failure (no answer, non-2xx) is retried after the next delay of
``KIAPI_WEBHOOK_RETRY_S`` and dropped after the last.

In a cluster the store is shared (:class:`kiapi_core.cluster.pg.PgWebhookStore`): subscriptions
are not kept in memory; each event is handed to the store, which records a delivery when the
job's subscription (written by whichever host took the job) asks for it, and any live host's
sender sends what is due, so a delivery survives the death of the host that submitted the job
and of the one that ran it.

Every attempt resolves the receiver's host again and checks its addresses with the URL-input
rules (:mod:`kiapi_core.files.fetch`), then connects to the checked address, so DNS rebinding
cannot turn a webhook into a request inside the network.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import msgspec

from ..errors import BadRequest, KiapiError
from ..files.fetch import AddressPolicy, Resolver, checked_addresses, system_resolver
from ..jobs.models import Job
from ..validation import strip_url_secrets
from .signing import secret_bytes, sign
from .store import Delivery, Subscription, WebhookStore

log = logging.getLogger("kiapi.webhooks")

EVENTS = ("start", "progress", "completed")
#: Job events (``JobManager.listeners``) and the webhook event each one is.
_EVENT_OF = {"started": "start", "progress": "progress", "finished": "completed"}
PROGRESS_INTERVAL_S = 1.0
#: A shared store's sender looks for deliveries other hosts recorded at least this often, and
#: completes orphaned subscriptions every ORPHANS_S.
SHARED_POLL_S = 1.0
ORPHANS_S = 5.0
#: Deliveries sent at once (to different jobs; one job's are sent in order).
CONCURRENCY = 8
_encoder = msgspec.json.Encoder()


class WebhookDispatcher:
    def __init__(self, settings: Any, path: Path, *, resolver: Resolver = system_resolver,
                 on_attempt: Callable[[str, str], None] | None = None, store: Any = None) -> None:
        self.key = secret_bytes(settings.webhook_secret) if settings.webhook_secret else None
        self.policy = AddressPolicy(allow_private=settings.webhook_allow_private)
        self.timeout_s = settings.webhook_timeout_s
        self.retry_s = list(settings.webhook_retry_s)
        self.resolver = resolver
        self.on_attempt = on_attempt
        #: SQLite on one host; a cluster passes its shared store (``shared = True``).
        self.store: Any = store if store is not None else WebhookStore(path)
        self.shared = bool(getattr(self.store, "shared", False))
        if store is not None and self.shared:
            store.body_of = event_body
        self.subs: dict[str, Subscription] = {}
        self._last_progress: dict[str, float] = {}
        self._held_progress: dict[str, tuple[Job, asyncio.TimerHandle]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writes: asyncio.Queue[tuple[Callable[..., None], tuple[Any, ...]]] | None = None
        self._wake: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def enabled(self) -> bool:
        return self.key is not None

    # -- lifecycle (event loop) -----------------------------------------------------------------
    async def start(self) -> None:
        """Open the store (its subscriptions come back) and start writer and sender; before
        the job manager starts, so jobs a crash cut off can still report their end."""
        self._loop = asyncio.get_running_loop()
        self._writes = asyncio.Queue()
        self._wake = asyncio.Event()
        if self.key is None and not self.shared:
            return  # disabled: deliveries a signed-up past left stay stored until a secret is set
        self.subs.update(await asyncio.to_thread(self.store.open))
        self._tasks = [asyncio.create_task(self._writer())]
        # A cluster host without the secret still records the events of the jobs it runs; the
        # hosts that have it sign and send them.
        if self.key is not None:
            self._tasks.append(asyncio.create_task(self._sender()))

    async def stop(self) -> None:
        """Finish queued writes (pending deliveries stay in the store for the next start)."""
        await asyncio.sleep(0)  # let events handed over by other threads reach the queue first
        for _, timer in self._held_progress.values():
            timer.cancel()
        self._held_progress.clear()
        if self._writes is not None:
            try:
                await asyncio.wait_for(self._writes.join(), 5.0)
            except TimeoutError:
                log.warning("webhooks: some deliveries could not be recorded before shutdown")
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await asyncio.to_thread(self.store.close)

    # -- subscribing (event loop, at submission) ----------------------------------------------
    async def check_target(self, url: str) -> None:
        """Refuse (400) a webhook URL that is not http(s) or points inside the network."""
        await self._pinned(_parse(url))

    def subscribe(self, job_id: str, subscription: Subscription) -> None:
        """Call on the loop right after the job was queued, before the loop runs anything
        else, so no event of the job can be handled before its subscription exists (a shared
        store records itself what another host did first)."""
        if not self.shared:
            self.subs[job_id] = subscription
        self._write(self.store.subscribe, job_id, subscription)

    # -- events ---------------------------------------------------------------------------------
    def on_job(self, event: str, job: Job) -> None:
        """A job listener; any thread. Hands the event to the loop and returns."""
        if (self.key is None and not self.shared) or event not in _EVENT_OF or self._loop is None:
            return
        try:
            self._loop.call_soon_threadsafe(self._handle, _EVENT_OF[event], job)
        except RuntimeError:
            pass  # the loop is closed: the server is gone

    def _handle(self, event: str, job: Job) -> None:
        if self.shared:
            self._handle_shared(event, job)
            return
        subscription = self.subs.get(job.id)
        if subscription is None:
            return
        if event == "completed":
            del self.subs[job.id]
            self._last_progress.pop(job.id, None)
            held = self._held_progress.pop(job.id, None)
            if held is not None:
                held[1].cancel()
            self._write(self.store.unsubscribe, job.id)
        elif event == "progress" and not self._progress_due(job):
            return
        if event not in subscription.events:
            return
        self._write(self.store.add, "msg_" + uuid.uuid4().hex, job.id, subscription.url, event,
                    event_body(event, job), time.time())

    def _handle_shared(self, event: str, job: Job) -> None:
        """The store knows the subscriptions: throttle progress here, record there (in order)."""
        if event == "completed":
            self._last_progress.pop(job.id, None)
            held = self._held_progress.pop(job.id, None)
            if held is not None:
                held[1].cancel()
        elif event == "progress" and not self._progress_due(job):
            return
        self._write(self.store.add_event, job.id, event, event_body(event, job), time.time())

    def _progress_due(self, job: Job) -> bool:
        """Throttle: at most one progress delivery per job per PROGRESS_INTERVAL_S. A change
        that comes too soon is held, and the latest held state is sent when the interval is
        over (unless the job completed meanwhile), so a receiver never stays on a stale one."""
        assert self._loop is not None
        now = time.monotonic()
        wait_s = self._last_progress.get(job.id, -PROGRESS_INTERVAL_S) + PROGRESS_INTERVAL_S - now
        if wait_s <= 0:
            self._last_progress[job.id] = now
            return True
        held = self._held_progress.get(job.id)
        if held is not None:
            self._held_progress[job.id] = (job, held[1])
        else:
            timer = self._loop.call_later(wait_s, self._release_progress, job.id)
            self._held_progress[job.id] = (job, timer)
        return False

    def _release_progress(self, job_id: str) -> None:
        held = self._held_progress.pop(job_id, None)
        if held is not None:
            self._handle("progress", held[0])

    def _write(self, fn: Callable[..., None], *args: Any) -> None:
        assert self._writes is not None
        self._writes.put_nowait((fn, args))

    async def _writer(self) -> None:
        assert self._writes is not None and self._wake is not None
        while True:
            fn, args = await self._writes.get()
            try:
                await asyncio.to_thread(fn, *args)
            except KiapiError as exc:  # a cluster's database away: its cause is logged by the cluster
                log.warning("webhooks: could not record %s: %s", fn.__name__, exc.detail)
            except Exception:  # a full disk must not stop later writes
                log.exception("webhooks: could not record %s", fn.__name__)
            finally:
                self._writes.task_done()
            self._wake.set()

    # -- sending --------------------------------------------------------------------------------
    async def _sender(self) -> None:
        assert self._wake is not None
        limit = asyncio.Semaphore(CONCURRENCY)

        async def attempt(delivery: Delivery) -> None:
            async with limit:
                await self._attempt(delivery)

        orphans_at = 0.0
        while True:
            self._wake.clear()
            try:
                if self.shared and time.monotonic() >= orphans_at:
                    orphans_at = time.monotonic() + ORPHANS_S
                    await asyncio.to_thread(self.store.complete_orphans, time.time())
                due, next_at = await asyncio.to_thread(self.store.due, time.time(), CONCURRENCY)
            except Exception as exc:  # a shared store's database may be away: try again later
                log.warning("webhooks: reading pending deliveries failed: %s", exc)
                due, next_at = [], time.time() + SHARED_POLL_S
            if due:
                await asyncio.gather(*(attempt(d) for d in due))
                continue
            timeout = 60.0 if next_at is None else max(0.05, next_at - time.time())
            if self.shared:
                timeout = min(timeout, SHARED_POLL_S)
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass

    async def _attempt(self, delivery: Delivery) -> None:
        assert self.key is not None
        timestamp = int(time.time())
        headers = {"content-type": "application/json", "user-agent": "kiapi-webhooks",
                   "webhook-id": delivery.msg_id, "webhook-timestamp": str(timestamp),
                   "webhook-signature": sign(self.key, delivery.msg_id, timestamp, delivery.body)}
        error: str | None = None
        try:
            url, extra, extensions = await self._pinned(_parse(delivery.url))
            async with httpx.AsyncClient(trust_env=False, timeout=self.timeout_s, follow_redirects=False) as client:
                response = await client.post(url, content=delivery.body, headers={**headers, **extra},
                                             extensions=extensions)
            if not 200 <= response.status_code < 300:
                error = f"HTTP {response.status_code}"
        except BadRequest as exc:
            if exc.code != "url_unresolvable":  # forbidden now (DNS changed) or malformed: final
                await self._finish(delivery, "refused", exc.detail)
                return
            error = exc.detail  # a DNS failure may pass: retry
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        if error is None:
            await self._finish(delivery, "delivered", None)
            return
        attempts = delivery.attempts + 1
        if attempts > len(self.retry_s):
            await self._finish(delivery, "dropped", error)
            return
        delay = self.retry_s[attempts - 1]
        log.info("webhook %s (%s of job %s) to %s failed (%s); retry %d in %gs", delivery.msg_id, delivery.event,
                 delivery.job_id, strip_url_secrets(delivery.url), error, attempts, delay,
                 extra={"event": "webhook_retry", "job_id": delivery.job_id, "attempt": attempts})
        self._count(delivery.event, "failed")
        await asyncio.to_thread(self.store.retry, delivery.seq, attempts, time.time() + delay, error)

    async def _finish(self, delivery: Delivery, outcome: str, error: str | None) -> None:
        self._count(delivery.event, outcome)
        if outcome != "delivered":
            log.warning("webhook %s (%s of job %s) to %s %s after %d attempt(s): %s", delivery.msg_id,
                        delivery.event, delivery.job_id, strip_url_secrets(delivery.url), outcome,
                        delivery.attempts + 1, error, extra={"event": f"webhook_{outcome}", "job_id": delivery.job_id})
        await asyncio.to_thread(self.store.done, delivery.seq)

    def _count(self, event: str, outcome: str) -> None:
        if self.on_attempt is not None:
            self.on_attempt(event, outcome)

    async def _pinned(self, url: httpx.URL) -> tuple[httpx.URL, dict[str, str], dict[str, Any]]:
        """Resolve and check ``url``'s host; the URL aimed at the checked address, the Host
        header and (https) the SNI name to use."""
        host = url.raw_host.decode("ascii")
        addresses, reason, via = await checked_addresses(url, self.resolver, self.policy)
        if not addresses:
            raise BadRequest(f"webhook host {host!r} resolved to no address", code="url_unresolvable")
        if reason:
            raise BadRequest(f"webhook {strip_url_secrets(str(url))} points at a {reason} address{via}; "
                             "set KIAPI_WEBHOOK_ALLOW_PRIVATE=1 to deliver to this machine or the LAN",
                             code="webhook_forbidden_address", address_class=reason)
        extensions = {"sni_hostname": host} if url.scheme == "https" else {}
        return url.copy_with(host=str(addresses[0])), {"host": url.netloc.decode("ascii")}, extensions


def event_body(event: str, job: Job) -> bytes:
    """A delivery's JSON: ``{"type": "job.<event>", "timestamp", "data": <the job>}``."""
    return _encoder.encode({"type": f"job.{event}", "timestamp": datetime.now(UTC).isoformat(), "data": job})


def _parse(url: str) -> httpx.URL:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise BadRequest(f"webhook is not a valid URL: {exc}", code="url_invalid") from None
    if parsed.scheme not in ("http", "https") or not parsed.raw_host:
        raise BadRequest("webhook must be an http or https URL with a host", code="url_invalid")
    return parsed


__all__ = ["EVENTS", "PROGRESS_INTERVAL_S", "WebhookDispatcher", "event_body"]
