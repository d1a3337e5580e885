"""Run a host's app on Hypercorn with graceful shutdown.

SIGINT/SIGTERM first stop the job manager (no new work; the running job may finish within
``KIAPI_SHUTDOWN_GRACE_S``, then it is canceled; waiting sync clients get their answer), and
only then tell Hypercorn to close connections, so nobody waiting on a job sees a dropped
connection.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from .host import Host

log = logging.getLogger("kiapi")


def bind_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


#: Bytes Hypercorn asks the socket reader for at a time (its default is 64 KiB).
READ_SIZE = 1024 * 1024
#: Pending connections the kernel queues (bursts of hundreds of clients must not see
#: ECONNRESET). Hypercorn calls listen() again with its own ``backlog`` (default 100) on the
#: socket we pass it, so both must say the same. The kernel caps it (net.core.somaxconn).
BACKLOG = 1024


def check_exposure(host: str, port: int, *, token: str | None, insecure_no_auth: bool) -> None:
    """SystemExit when ``host`` reaches beyond this machine and no token protects the server:
    anyone who can reach the port could then run jobs and read or delete every file."""
    if token or insecure_no_auth:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return  # _listen reports an unusable address
    addresses = {str(info[4][0]) for info in infos}
    if all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses):
        return
    raise SystemExit(
        f"Error: refusing to listen on {host} without KIAPI_AUTH_TOKEN: every machine that can reach "
        "this port could run jobs and read or delete your files. Set a token (e.g. "
        "KIAPI_AUTH_TOKEN=$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')), bind to "
        "127.0.0.1, or pass --insecure-no-auth (KIAPI_INSECURE_NO_AUTH=1) on a network you trust.")


def _raise_read_size() -> None:
    """Let Hypercorn hand the app up to READ_SIZE bytes per read instead of 64 KiB.

    Every read costs a trip through h11, Hypercorn's app queue, Starlette and the multipart
    parser; with 64 KiB reads that per-chunk cost, not the disk, bounded a 1 GiB upload
    (bench/run.py, docs/performance.md). asyncio still caps what one read returns at what the
    transport has buffered, so memory per connection stays small. ``MAX_RECV`` is a module
    constant read at each call; if a Hypercorn release drops it, this does nothing.
    """
    from hypercorn.asyncio import tcp_server

    if isinstance(getattr(tcp_server, "MAX_RECV", None), int):
        tcp_server.MAX_RECV = max(tcp_server.MAX_RECV, READ_SIZE)


class _StreamLimit:
    """The ``asyncio`` module as Hypercorn's runner sees it, but ``start_server`` gets
    ``limit=READ_SIZE`` and each connection's transport reads READ_SIZE bytes per ``recv``
    once a body streams (see :func:`_raise_stream_limit`, :func:`read_more_when_streaming`)."""

    def __init__(self, module: object) -> None:
        self._module = module

    def __getattr__(self, name: str) -> object:
        return getattr(self._module, name)

    async def start_server(self, client_connected_cb: Callable[..., Awaitable[None]], host: Any = None,
                           port: Any = None, *, limit: int = READ_SIZE, **kwargs: Any) -> asyncio.Server:
        """``asyncio.start_server`` (the same three lines), with a :class:`_BodyReader` per
        connection when asyncio's StreamReader is as expected."""

        async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            read_more_when_streaming(writer.transport)
            await client_connected_cb(reader, writer)

        loop = asyncio.get_running_loop()
        reader_class = _BodyReader if _BodyReader.usable() else asyncio.StreamReader

        def factory() -> asyncio.StreamReaderProtocol:
            return asyncio.StreamReaderProtocol(reader_class(limit=limit, loop=loop), connected, loop=loop)

        return await loop.create_server(factory, host, port, **kwargs)


class HandedOver(bytearray):
    """A read buffer :class:`_BodyReader` has given away: nothing else holds or changes it, so
    h11 may keep it as its own buffer instead of copying it (:func:`_extract_body_without_copies`)."""


class _BodyReader(asyncio.StreamReader):
    """A StreamReader whose ``read(n)`` hands over its whole buffer when ``n`` covers it.

    asyncio copies what ``read`` returns out of its buffer (``bytes(...)``) and h11 copies it
    into its own: two copies of every body byte, about 0.2 CPU seconds per GiB uploaded. Here
    the buffer itself is returned (a :class:`HandedOver` bytearray; Hypercorn only feeds it to
    its protocol parser) and a fresh one started. Anything else is asyncio's own ``read``.
    Uses StreamReader's private ``_buffer``, ``_wait_for_data`` and
    ``_maybe_resume_transport`` (CPython 3.8 to 3.13); :meth:`usable` checks them first.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._buffer = HandedOver()

    @staticmethod
    def usable() -> bool:
        """Whether asyncio's StreamReader has the private parts used here (call in a loop)."""
        probe = asyncio.StreamReader()
        return isinstance(getattr(probe, "_buffer", None), bytearray) \
            and all(hasattr(probe, name) for name in ("_wait_for_data", "_maybe_resume_transport"))

    async def read(self, n: int = -1) -> bytes:
        if n > 0 and not self._buffer and not self.at_eof() and self.exception() is None:
            await self._wait_for_data("read")  # type: ignore[attr-defined]
        buffer = self._buffer
        if 0 < len(buffer) <= n and self.exception() is None:
            self._buffer = HandedOver()
            self._maybe_resume_transport()  # type: ignore[attr-defined]
            return buffer  # type: ignore[return-value]  # a bytes-like bytearray
        return await super().read(n)


def read_more_when_streaming(transport: asyncio.BaseTransport) -> None:
    """Make ``transport`` ask the socket for READ_SIZE bytes per ``recv`` (asyncio's selector
    transports read 256 KiB) once a read comes back full, i.e. once a large body is streaming.

    Every chunk read costs a trip through h11, Hypercorn, Starlette and the upload's own code,
    about 0.15 ms of Python; at 256 KiB that was half a second of the event loop's time per
    GiB uploaded. Small requests keep the default: a 1 MiB ``recv`` buffer for each of them
    made ``GET /health`` ~5 % slower. Per connection (an attribute of the protocol instance,
    removed after the first full read, so later reads pay nothing); never asyncio's classes.
    Does nothing to a transport without ``max_size`` (another event loop)."""
    start = getattr(transport, "max_size", None)
    protocol = transport.get_protocol()
    if not isinstance(start, int) or start >= READ_SIZE or protocol is None:
        return
    received = protocol.data_received  # type: ignore[attr-defined]

    def data_received(data: bytes) -> None:
        if len(data) >= start:
            transport.max_size = READ_SIZE  # type: ignore[attr-defined]
            del protocol.data_received  # type: ignore[attr-defined]  # the class's method again
        received(data)

    protocol.data_received = data_received  # type: ignore[attr-defined]


def _raise_stream_limit() -> None:
    """Give each connection's asyncio StreamReader a READ_SIZE buffer limit instead of 64 KiB.

    A StreamReader pauses its socket once twice its limit is buffered and resumes it on the
    next read: during an upload that was two ``epoll_ctl`` calls per read, a quarter of the
    event loop's time (the loop was 92 % busy). Hypercorn calls ``asyncio.start_server``
    without a limit, so its runner module gets an ``asyncio`` whose ``start_server`` adds one.
    Memory per connection stays bounded (2 × READ_SIZE). Does nothing if Hypercorn changes.
    """
    from hypercorn.asyncio import run as hypercorn_run

    current = getattr(hypercorn_run, "asyncio", None)
    if current is asyncio:
        hypercorn_run.asyncio = _StreamLimit(asyncio)  # type: ignore[assignment]


def _extract_body_without_copies() -> None:
    """Let h11 hand over its whole receive buffer when a body read takes all of it, and adopt
    a :class:`HandedOver` read buffer as its own when it has nothing buffered.

    h11's ``ReceiveBuffer.maybe_extract_at_most`` slices the buffer twice (one copy to test
    for emptiness, one to return) and then deletes what it returned: two copies of every body
    byte, a tenth of an upload's CPU time. When the read takes everything buffered (the usual
    case for a body), the buffer object itself is returned and a fresh one started, which is
    what the slices produced, without the copies. Anything else goes to h11's own code.
    Does nothing if h11 changes the class.
    """
    from h11 import _receivebuffer

    cls = _receivebuffer.ReceiveBuffer
    original = cls.maybe_extract_at_most
    probe = cls()
    if getattr(original, "kiapi_fast", False) or not isinstance(getattr(probe, "_data", None), bytearray) \
            or not {"_next_line_search", "_multiple_lines_search"} <= vars(probe).keys():
        return

    def maybe_extract_at_most(self: Any, count: int) -> bytearray | None:
        data = self._data
        if data and count >= len(data):
            self._data = bytearray()
            self._next_line_search = self._multiple_lines_search = 0
            return data
        return original(self, count)

    add = cls.__iadd__

    def adopt_or_add(self: Any, byteslike: Any) -> Any:
        if not self._data and type(byteslike) is HandedOver:
            self._data = byteslike  # given away by _BodyReader: no copy
            return self
        return add(self, byteslike)

    maybe_extract_at_most.kiapi_fast = True  # type: ignore[attr-defined]
    cls.maybe_extract_at_most = maybe_extract_at_most  # type: ignore[method-assign]
    cls.__iadd__ = adopt_or_add  # type: ignore[method-assign]


def tune_hypercorn() -> None:
    """Hypercorn's read path as ``kiapi serve`` runs it (also used by bench/bare_app.py, so the
    upload floor it measures is the one kiapi stands on)."""
    _raise_read_size()
    _raise_stream_limit()
    _extract_body_without_copies()


def quiet_model_libraries() -> None:
    """Keep model libraries' console noise out of a server's log (its stderr): tqdm progress
    bars and transformers' advice to install torch. Job progress is on the API. Call before a
    plugin loader imports them; an operator's own values win."""
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def serve(host: Host) -> None:
    """Serve ``host`` until a shutdown signal; blocks.

    Holds ``<data_dir>/server.lock`` while serving, so a second server or a ``kiapi check`` on
    the same data directory refuses instead of sharing jobs, files and the memory budget. A
    held lock exits with a message (SystemExit), as this is the CLI's blocking entry point.
    """
    from hypercorn.asyncio import serve as hypercorn_serve
    from hypercorn.config import Config

    from .app import build_app
    from .lockfile import DataDirLock, LockHeld
    from .logs import capture_model_output

    check_exposure(host.settings.host, host.settings.port, token=host.settings.auth_token,
                   insecure_no_auth=host.settings.insecure_no_auth)
    lock = DataDirLock(host.settings.data_path)
    try:
        lock.acquire(owner=f"kiapi serve on {bind_address(host.settings.host, host.settings.port)}")
    except LockHeld as exc:
        raise SystemExit(f"Error: cannot start: {exc}. Stop that server first, or give this one "
                         "its own data directory (--data-dir or KIAPI_DATA_DIR).") from None
    tune_hypercorn()
    quiet_model_libraries()
    capture_model_output()
    try:
        listener = _listen(host.settings.host, host.settings.port)
    except SystemExit:
        lock.release()
        raise
    address = bind_address(*listener.getsockname()[:2])
    app = build_app(host)
    config = Config()
    # We bind the socket ourselves, before the lifespan starts anything: a port in use is a
    # one-line error, and the log names the real port (also when asked for port 0).
    config.bind = [f"fd://{listener.fileno()}"]
    config.backlog = BACKLOG
    # Hypercorn's default of 3 s would cut off SSE streams and sync waits during shutdown.
    config.graceful_timeout = host.settings.shutdown_grace_s + 10
    config.accesslog = None  # kiapi.http.observe logs each request, with its job id and route
    config.errorlog = logging.getLogger("kiapi.server")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_signal(signum: int) -> None:
            if stop.is_set() or getattr(on_signal, "draining", False):
                log.warning("second signal: stopping now")
                stop.set()
                return
            on_signal.draining = True  # type: ignore[attr-defined]
            log.info("%s received: draining jobs (up to %gs), then stopping",
                     signal.Signals(signum).name, host.settings.shutdown_grace_s)

            async def drain() -> None:
                try:
                    await host.jobs.stop(host.settings.shutdown_grace_s)
                finally:
                    stop.set()

            loop.create_task(drain())

        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, on_signal, signum)
        log.info("serving on http://%s (API docs at /docs)", address)
        await hypercorn_serve(app, config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]

    try:
        asyncio.run(main())
    finally:
        listener.detach()  # Hypercorn owns the descriptor and has closed it: never close it twice
        lock.release()


def _listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port``, or SystemExit with a sentence saying why not."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except (OSError, UnicodeError) as exc:
        raise SystemExit(f"Error: cannot listen on {host}: {exc}. Check --host / KIAPI_HOST.") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(address)
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise SystemExit(f"Error: {bind_address(host, port)} is already in use; stop what listens there "
                             "or choose another port (--port or KIAPI_PORT).") from None
        raise SystemExit(f"Error: cannot listen on {bind_address(host, port)}: {exc.strerror or exc}.") from None
    sock.set_inheritable(True)
    return sock
