"""The client on STDIN/STDOUT: Net::Server's ``tie_client_stdout`` for greenlets.

Rules of this module:

* Net::Server ties the process's STDIN/STDOUT to the one client it serves. Here one process
  serves many clients at once, so the streams are replaced by proxies (:class:`_TiedStdout`,
  :class:`_TiedStdin`) that look at the *current greenlet*: a greenlet bound to a client
  (:func:`bound`, which the server enters around a connection's hooks) reads from and writes
  to that client; every other greenlet, every other thread, and the server's own log
  (:func:`unbound`) get the stream that was there before.
* :func:`install` and :func:`uninstall` are counted: several servers of one process may tie
  at once; the proxies go when the last one closes, and only if nobody replaced
  ``sys.stdout``/``sys.stdin`` meanwhile (then they stay, still passing everything through).
* Writes go to the client at once (Perl's tied handles, autoflushed): ``print()`` is one or
  two ``sendall`` calls. Text is UTF-8 both ways.
* ``tied_stdout_callback``/``tied_stdin_callback`` (Net::Server's names) replace the client's
  I/O: called as ``callback(client, method, *args)``, their value is the call's.
"""

from __future__ import annotations

import contextlib
import io
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, TextIO, cast

import gevent

__all__ = ["bound", "install", "installed", "unbound", "uninstall"]


class _Binding:
    """What one greenlet's standard streams are: a client, and the callbacks that replace
    its I/O (None: the client's own)."""

    __slots__ = ("client", "stdin_callback", "stdout_callback")

    def __init__(self, client: Any, stdout_callback: Callable[..., Any] | None,
                 stdin_callback: Callable[..., Any] | None) -> None:
        self.client = client
        self.stdout_callback = stdout_callback
        self.stdin_callback = stdin_callback


#: greenlet -> its binding. Greenlets of every thread share it: a greenlet is one thread's.
_BINDINGS: dict[Any, _Binding] = {}
_LOCK = threading.Lock()  # install/uninstall from servers in several threads
_INSTALLS = 0
_ORIGINAL: dict[str, TextIO] = {}


def _current() -> _Binding | None:
    """The binding of the running greenlet, None when it has none."""
    if not _BINDINGS:  # the common case: no connection bound anywhere
        return None
    return _BINDINGS.get(gevent.getcurrent())


class _Tied:
    """The common part of the two proxies: everything not bound goes to ``original``. Not an
    io class: every attribute it does not define is the original stream's."""

    def __init__(self, original: TextIO) -> None:
        self._original = original

    def __getattr__(self, name: str) -> Any:
        # Attributes the proxy does not define (buffer, encoding, errors, mode...) are the
        # original stream's: programs and libraries that look at them keep working.
        return getattr(self._original, name)

    def fileno(self) -> int:
        if _current() is not None:
            # input() asks: no file descriptor makes it use readline()/write() (ours).
            raise io.UnsupportedOperation("a tied client stream has no file descriptor")
        return self._original.fileno()

    def isatty(self) -> bool:
        return False if _current() is not None else self._original.isatty()

    def flush(self) -> None:
        binding = _current()
        if binding is None:
            self._original.flush()
        elif binding.stdout_callback is not None and isinstance(self, _TiedStdout):
            binding.stdout_callback(binding.client, "flush")

    def close(self) -> None:
        """Closing a tied stream does nothing: the client is the server's to close, and the
        real stream is the program's."""

    @property
    def closed(self) -> bool:
        return False


class _TiedStdout(_Tied):
    """``sys.stdout`` while tied."""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        binding = _current()
        if binding is None:
            return self._original.write(text)
        if binding.stdout_callback is not None:
            return binding.stdout_callback(binding.client, "write", text)  # type: ignore[no-any-return]
        binding.client.sendall(text.encode("utf-8"))
        return len(text)

    def writelines(self, lines: Any) -> None:
        binding = _current()
        if binding is None:
            self._original.writelines(lines)
        elif binding.stdout_callback is not None:
            binding.stdout_callback(binding.client, "writelines", list(lines))
        else:
            binding.client.sendall("".join(lines).encode("utf-8"))


class _TiedStdin(_Tied):
    """``sys.stdin`` while tied."""

    def readable(self) -> bool:
        return True

    def readline(self, size: int | None = -1, /) -> str:
        binding = _current()
        if binding is None:
            return self._original.readline(-1 if size is None else size)
        if binding.stdin_callback is not None:
            return binding.stdin_callback(binding.client, "readline", size)  # type: ignore[no-any-return]
        # Bounded as the client's lines are (max_line_length: LineTooLong past it).
        limit = -1 if size is None or size < 0 else size
        return binding.client.readline(limit).decode("utf-8", "replace")  # type: ignore[no-any-return]

    def read(self, size: int | None = -1, /) -> str:
        binding = _current()
        if binding is None:
            return self._original.read(-1 if size is None else size)
        if binding.stdin_callback is not None:
            return binding.stdin_callback(binding.client, "read", size)  # type: ignore[no-any-return]
        if size is not None and size >= 0:
            return binding.client.recv(size).decode("utf-8", "replace")  # type: ignore[no-any-return]
        chunks = []
        while chunk := binding.client.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks).decode("utf-8", "replace")

    def readlines(self, hint: int = -1, /) -> list[str]:
        binding = _current()
        if binding is None:
            return self._original.readlines(hint)
        if binding.stdin_callback is not None:
            return binding.stdin_callback(binding.client, "readlines", hint)  # type: ignore[no-any-return]
        return list(iter(self.readline, ""))

    def __iter__(self) -> Iterator[str]:
        return iter(self.readline, "")

    def __next__(self) -> str:
        line = self.readline()
        if not line:
            raise StopIteration
        return line


def install() -> None:
    """Put the proxies in ``sys.stdout``/``sys.stdin`` (counted: the first call installs).
    Called by a server with ``tie_client_stdout`` when it starts accepting."""
    global _INSTALLS
    with _LOCK:
        _INSTALLS += 1
        if _INSTALLS == 1:
            _ORIGINAL["stdout"], _ORIGINAL["stdin"] = sys.stdout, sys.stdin
            sys.stdout = cast(TextIO, _TiedStdout(sys.stdout))
            sys.stdin = cast(TextIO, _TiedStdin(sys.stdin))


def uninstall() -> None:
    """Undo one :func:`install`; the last one puts the original streams back (unless someone
    replaced the proxies meanwhile: their stream stays). Called by the server's close."""
    global _INSTALLS
    with _LOCK:
        if _INSTALLS == 0:
            return
        _INSTALLS -= 1
        if _INSTALLS == 0:
            if isinstance(sys.stdout, _TiedStdout):
                sys.stdout = _ORIGINAL["stdout"]
            if isinstance(sys.stdin, _TiedStdin):
                sys.stdin = _ORIGINAL["stdin"]
            _ORIGINAL.clear()


def installed() -> bool:
    """True while some server has the proxies installed."""
    return _INSTALLS > 0


@contextlib.contextmanager
def bound(client: Any, stdout_callback: Callable[..., Any] | None = None,
          stdin_callback: Callable[..., Any] | None = None) -> Iterator[None]:
    """Within the block, the current greenlet's stdin/stdout are ``client`` (through the
    callbacks when given)."""
    me = gevent.getcurrent()
    _BINDINGS[me] = _Binding(client, stdout_callback, stdin_callback)
    try:
        yield
    finally:
        _BINDINGS.pop(me, None)


@contextlib.contextmanager
def unbound() -> Iterator[None]:
    """Within the block, the current greenlet sees the real streams even when it is bound (the
    server's log: a handler on ``sys.stdout`` must not write to the client)."""
    if not _BINDINGS:
        yield
        return
    me = gevent.getcurrent()
    binding = _BINDINGS.pop(me, None)
    try:
        yield
    finally:
        if binding is not None:
            _BINDINGS[me] = binding
