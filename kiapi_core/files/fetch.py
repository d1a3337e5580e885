"""Downloading URL inputs without letting a request reach inside the network (SSRF).

Every hop of a fetch, the first request and each redirect (followed by hand, at most 5), is
checked the same way: the scheme must be http or https; the host is resolved once; if *any*
address it resolves to is loopback, private, link-local (cloud metadata lives there),
multicast, reserved, unspecified or otherwise not globally routable (IPv4-mapped and 6to4
IPv6 are unwrapped first) the URL is refused, unless ``KIAPI_ALLOW_PRIVATE_URLS=1``.

The connection is then **pinned** to the address that was checked: the request goes to
``http(s)://<ip>:<port>/...`` with the original ``Host`` header and, for https, the original
name as SNI and certificate hostname (httpcore's ``sni_hostname`` extension). A DNS server
that answers differently on the second lookup (DNS rebinding) therefore changes nothing:
there is no second lookup. Proxies from the environment are ignored (``trust_env=False``)
for the same reason.

Downloads are streamed to the file store with a size cap (``KIAPI_MAX_URL_MB``), a per-read
timeout and a total deadline (both ``KIAPI_URL_TIMEOUT_S``), and ``Accept-Encoding:
identity``: compressed responses are refused rather than inflated, so a small gzip bomb cannot
become gigabytes in memory.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import httpx

from ..errors import BadRequest
from ..validation import strip_url_secrets
from .blobstore import BlobStore
from .models import StoredFile
from .names import clean_content_type, suggest_extension

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]

MiB = 1024 * 1024
MAX_REDIRECTS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
#: Well-known instance-metadata endpoints, named explicitly in refusals.
METADATA_ADDRESSES = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254", "169.254.170.2", "100.100.100.200", "fd00:ec2::254"))
_HOW_TO_ALLOW = "set KIAPI_ALLOW_PRIVATE_URLS=1 to allow such URLs on a trusted network"


class AddressPolicy:
    """Which addresses URL inputs may connect to.

    ``exempt`` lists addresses allowed even though they are not public; tests use it to let
    a local server play "the internet" while every other hop is still checked.
    """

    def __init__(self, *, allow_private: bool = False, exempt: Iterable[str] = ()) -> None:
        self.allow_private = allow_private
        self.exempt = frozenset(ipaddress.ip_address(a) for a in exempt)

    def refusal(self, address: IPAddress) -> str | None:
        """Why ``address`` is refused (its class, e.g. ``"loopback"``), or ``None``."""
        if self.allow_private or address in self.exempt:
            return None
        return classify(address)


def classify(address: IPAddress) -> str | None:
    """The non-public class of ``address``, or ``None`` when it is globally routable."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            inner = classify(address.ipv4_mapped)
            return f"IPv4-mapped {inner}" if inner else None
        if address.sixtofour is not None:
            inner = classify(address.sixtofour)
            if inner:
                return f"6to4 {inner}"
    if address in METADATA_ADDRESSES:
        return "cloud metadata"
    for name in ("loopback", "link_local", "multicast", "unspecified", "private", "reserved"):
        if getattr(address, f"is_{name}"):
            return name.replace("_", "-")
    if not address.is_global:
        return "non-public"
    return None


async def checked_addresses(url: httpx.URL, resolver: Resolver,
                            policy: AddressPolicy) -> tuple[list[IPAddress], str | None, str]:
    """``url``'s addresses (resolved unless the host is a literal), the policy's reason for
    refusing the first refused one (``None`` if all pass), and the words to add to a refusal.

    The words name the class, never the address: naming what a host name resolves to would make
    this server a DNS oracle for the network it sits in (URL inputs and webhooks alike)."""
    host = url.raw_host.decode("ascii")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        addresses = [ipaddress.ip_address(host)]
        literal = True
    except ValueError:
        addresses = [ipaddress.ip_address(a) for a in await resolver(host, port)]
        literal = False
    reason = next((r for r in map(policy.refusal, addresses) if r), None)
    via = "" if literal or reason is None else f" (its host name resolves to a {reason} address)"
    return addresses, reason, via


async def system_resolver(host: str, port: int) -> list[str]:
    """All addresses ``host`` resolves to, via the event loop's threaded getaddrinfo."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise BadRequest(f"URL host {host!r} could not be resolved ({exc.strerror})",
                         code="url_unresolvable") from None
    seen: dict[str, None] = {}
    for info in infos:
        seen.setdefault(str(info[4][0]).split("%", 1)[0], None)
    return list(seen)


class URLFetcher:
    """Fetches URL inputs into a file store under an :class:`AddressPolicy`.

    ``resolver`` and ``transport`` (a factory: each fetch opens and closes its own client)
    exist for tests; production uses the system resolver and httpx's default transport.
    """

    def __init__(self, *, policy: AddressPolicy | None = None, resolver: Resolver = system_resolver,
                 timeout_s: float = 30.0, max_bytes: int = 256 * MiB,
                 max_redirects: int = MAX_REDIRECTS,
                 transport: Callable[[], httpx.AsyncBaseTransport] | None = None) -> None:
        self.policy = policy or AddressPolicy()
        self.resolver = resolver
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self.max_redirects = max_redirects
        self.transport = transport

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> URLFetcher:
        """A fetcher configured from the host's Settings."""
        kwargs: dict[str, Any] = dict(
            policy=AddressPolicy(allow_private=settings.allow_private_urls),
            timeout_s=settings.url_timeout_s, max_bytes=int(settings.max_url_mb * MiB))
        kwargs.update(overrides)
        return cls(**kwargs)

    async def fetch(self, url: str, *, store: BlobStore, stem: str = "input",
                    meta: Mapping[str, Any] | None = None, what: str = "URL input") -> StoredFile:
        """Download ``url`` into ``store`` as ``<stem>.<ext>``; BadRequest (400) on refusal,
        failure, timeout or a body over the cap. ``meta`` gains ``source`` and ``url``
        (without credentials or query string, which may carry signatures)."""
        try:
            async with asyncio.timeout(self.timeout_s):
                return await self._fetch(url, store=store, stem=stem, meta=meta, what=what)
        except TimeoutError:
            raise BadRequest(
                f"{what} {strip_url_secrets(url)} did not finish downloading within {self.timeout_s:g} s "
                "(KIAPI_URL_TIMEOUT_S)", code="url_timeout") from None

    async def _fetch(self, url: str, *, store: BlobStore, stem: str,
                     meta: Mapping[str, Any] | None, what: str) -> StoredFile:
        current = _parse(url, what)
        timeout = httpx.Timeout(self.timeout_s)
        # No keep-alive: pooled connections are keyed by the pinned IP, and a connection opened
        # with one name's SNI must never carry a request for another name on the same IP.
        limits = httpx.Limits(max_keepalive_connections=0)
        transport = self.transport() if self.transport else None
        async with httpx.AsyncClient(transport=transport, trust_env=False, timeout=timeout,
                                     limits=limits, follow_redirects=False) as client:
            for hop in range(self.max_redirects + 1):
                request = await self._pinned_request(client, current, what)
                try:
                    response = await client.send(request, stream=True)
                except httpx.TimeoutException:
                    raise TimeoutError from None
                except httpx.HTTPError as exc:
                    raise BadRequest(f"{what} {strip_url_secrets(str(current))} could not be fetched: "
                                     f"{exc or type(exc).__name__}", code="url_fetch_failed") from None
                try:
                    if response.status_code in _REDIRECTS and "location" in response.headers:
                        current = _parse(str(current.join(response.headers["location"])), what)
                        continue
                    if not 200 <= response.status_code < 300:
                        raise BadRequest(f"{what} {strip_url_secrets(str(current))} answered HTTP "
                                         f"{response.status_code}", code="url_fetch_failed")
                    return await self._save(response, current, url, hop, store=store, stem=stem,
                                            meta=meta, what=what)
                finally:
                    await response.aclose()
        raise BadRequest(f"{what} {strip_url_secrets(url)} redirected more than {self.max_redirects} "
                         "times", code="url_too_many_redirects")

    async def _pinned_request(self, client: httpx.AsyncClient, url: httpx.URL, what: str) -> httpx.Request:
        """Resolve and check ``url``'s host, then build a request aimed at the checked address."""
        host = url.raw_host.decode("ascii")
        addresses, reason, via = await checked_addresses(url, self.resolver, self.policy)
        if not addresses:
            raise BadRequest(f"URL host {host!r} resolved to no address", code="url_unresolvable")
        if reason:
            raise BadRequest(
                f"{what} {strip_url_secrets(str(url))} points at a {reason} address{via}; only public "
                f"internet addresses are allowed by default; {_HOW_TO_ALLOW}",
                code="url_forbidden_address", address_class=reason)
        pinned = url.copy_with(host=str(addresses[0]))
        extensions = {"sni_hostname": host} if url.scheme == "https" else {}
        headers = {"Host": url.netloc.decode("ascii"), "Accept-Encoding": "identity",
                   "User-Agent": "kiapi (url input)"}
        return client.build_request("GET", pinned, headers=headers, extensions=extensions)

    async def _save(self, response: httpx.Response, final: httpx.URL, original: str, hops: int, *,
                    store: BlobStore, stem: str, meta: Mapping[str, Any] | None,
                    what: str) -> StoredFile:
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise BadRequest(f"{what} {strip_url_secrets(original)} was sent with Content-Encoding "
                             f"{encoding!r} although kiapi asked for identity; serve it "
                             "uncompressed", code="url_fetch_failed")
        too_large = BadRequest(
            f"{what} {strip_url_secrets(original)} is larger than {self.max_bytes / MiB:g} MiB "
            "(KIAPI_MAX_URL_MB)", code="url_too_large", limit_bytes=self.max_bytes)
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise too_large
        path_name = final.path.rsplit("/", 1)[-1]
        content_type = clean_content_type(response.headers.get("content-type"), path_name)
        filename = stem + suggest_extension(content_type, path_name)
        record_meta = {**(meta or {}), "source": "url", "url": strip_url_secrets(original)}
        if hops:
            record_meta["redirects"] = hops
        async with store.writer() as writer:
            try:
                async for chunk in response.aiter_raw():
                    if writer.size + len(chunk) > self.max_bytes:
                        raise too_large
                    await writer.write(chunk)
            except httpx.TimeoutException:
                raise TimeoutError from None
            except httpx.HTTPError as exc:
                raise BadRequest(f"{what} {strip_url_secrets(original)} broke off while downloading: "
                                 f"{exc or type(exc).__name__}", code="url_fetch_failed") from None
            return await writer.commit(filename=filename, content_type=content_type, meta=record_meta)


def _parse(url: str, what: str) -> httpx.URL:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise BadRequest(f"{what} is not a valid URL: {exc}", code="url_invalid") from None
    if parsed.scheme not in ("http", "https"):
        raise BadRequest(f"{what} must be an http or https URL, not {parsed.scheme or 'scheme-less'}",
                         code="url_invalid")
    if not parsed.raw_host:
        raise BadRequest(f"{what} has no host", code="url_invalid")
    return parsed
