"""systemd: socket activation (``LISTEN_FDS``) and readiness notification (``sd_notify``).

Rules of this module (behaviour: spec/fleet.md, sections 4 to 6):

* :func:`listen_fds` is ``sd_listen_fds(unset_environment=1)``: when ``LISTEN_PID`` is this
  process's pid, the ``LISTEN_FDS`` sockets from fd 3 on are ours, named by ``LISTEN_FDNAMES``
  (colon-separated; absent: no names). The three variables are removed from the environment
  whether or not they were for us (children, CGI, a HUP re-exec must not adopt them), and the
  fds get FD_CLOEXEC. A malformed value meant for this pid is a ConfigError.
* :func:`adopt_passed` matches the passed sockets to the configured port specs, first **by
  name** (a port's per-port ``name`` key equal to the socket's LISTEN_FDNAMES entry: every
  socket of that name serves that port, wherever the unit file bound it), then **by address**
  (the socket's family and bound address equal one resolved bind address of the port; an
  IPv6 host compares by value, a port 0 never matches). Activation is all or nothing: a
  passed socket no port claims, a port (or one address of it) no passed socket serves, and a
  passed fd that is not a listening stream socket are ConfigErrors naming both sides; on any
  error every passed socket is closed. gnetserver binds nothing itself while activated (the
  unit file owns the addresses: a port missing from it is a mistake to show, not to paper
  over). After a HUP re-exec (:mod:`gnetserver.restart`) the adopted sockets come back as
  ``BOUND_SOCKETS``; their names ride along (:data:`FDNAMES_ENV`) so that named ports find
  them again (:func:`by_name`); a port new in the conf file is bound then, as on any HUP.
  Adopted sockets are marked (``BindAddress.passed``): their address is systemd's, so the
  server never chowns nor removes their unix socket files.
* :class:`Notifier` is ``sd_notify``: one datagram per message to ``NOTIFY_SOCKET`` (a path,
  or ``@name`` for the abstract namespace), sent from a fresh non-blocking socket. It never
  blocks and never raises: when the variable is unset it does nothing; a failed send is
  logged once at level 4. ``NOTIFY_SOCKET`` stays in the environment: the image a HUP
  re-executes (same pid) sends READY=1 again through it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import time
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass

from .errors import ConfigError
from .ports import PortSpec
from .resolve import BindAddress, resolve

#: The first passed fd (``SD_LISTEN_FDS_START``).
LISTEN_FDS_START = 3
#: The activation variables, all removed after reading.
ACTIVATION_ENV = ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")
#: Set by a HUP re-exec beside ``BOUND_SOCKETS``: ``fd=name`` pairs joined by ``:`` for the
#: handed sockets systemd had passed (a name never holds ``:``, as in LISTEN_FDNAMES), with
#: the name of the port that claimed it by name, or an empty name (matched by address).
FDNAMES_ENV = "GNETSERVER_FDNAMES"
#: The per-port key by which a port claims the passed sockets of that name.
NAME_KEY = "name"

Log = Callable[[int, str], None]
Pair = tuple[BindAddress, socket.socket]


@dataclass(frozen=True)
class PassedSocket:
    """One socket the service manager passed: its fd and LISTEN_FDNAMES entry (None: none)."""

    fd: int
    name: str | None = None


# -- socket activation ---------------------------------------------------------------------------


def listen_fds(environ: MutableMapping[str, str] | None = None,
               pid: int | None = None) -> list[PassedSocket]:
    """The sockets passed to this process (``sd_listen_fds`` with ``unset_environment``).

    Returns an empty list when ``LISTEN_PID`` is unset or another pid (inherited variables).
    The activation variables are removed from ``environ`` (default ``os.environ``) in every
    case, and the passed fds get FD_CLOEXEC.

    Raises:
        ConfigError: the variables are for this pid but malformed (``LISTEN_FDS`` not a
            number, a ``LISTEN_FDNAMES`` count that differs, a name with a bad character), or
            a passed fd is not open.
    """
    env = os.environ if environ is None else environ
    values = {name: env.pop(name, None) for name in ACTIVATION_ENV}
    listen_pid, count_text = values["LISTEN_PID"], values["LISTEN_FDS"]
    names_text = values["LISTEN_FDNAMES"]
    if listen_pid is None or count_text is None:
        return []
    if listen_pid.strip() != str(os.getpid() if pid is None else pid):
        return []  # set for another process (we inherited them): not ours
    if not count_text.isdigit():
        raise ConfigError(f"socket activation: LISTEN_FDS={count_text!r} is not a number")
    count = int(count_text)
    names: list[str | None] = [None] * count
    if names_text is not None:
        given = names_text.split(":")
        if len(given) != count:
            raise ConfigError(f"socket activation: LISTEN_FDNAMES={names_text!r} names "
                              f"{len(given)} socket(s), LISTEN_FDS={count}")
        names = list(given)
    passed = [PassedSocket(LISTEN_FDS_START + index, name) for index, name in enumerate(names)]
    for entry in passed:
        try:
            os.set_inheritable(entry.fd, False)
        except OSError as exc:
            raise ConfigError(f"socket activation: LISTEN_FDS={count}, but fd {entry.fd} "
                              f"cannot be used: {exc.strerror}") from None
    return passed


def check_port_name(spec: PortSpec) -> None:
    """ConfigError for a per-port ``name`` that LISTEN_FDNAMES could never carry (not a
    non-empty string of at most 255 printable ASCII characters without ``:``)."""
    name = spec.opts.get(NAME_KEY)
    if name is None:
        return
    if (not isinstance(name, str) or not name or len(name) > 255 or ":" in name
            or not all(33 <= ord(char) < 127 for char in name)):
        raise ConfigError(f"port {spec}: bad name {name!r}: a systemd socket name is 1 to 255 "
                          "printable ASCII characters without ':' or spaces "
                          "(FileDescriptorName=)")


@dataclass
class _Open:
    """A passed socket, wrapped and checked."""

    passed: PassedSocket
    sock: socket.socket

    def text(self) -> str:
        try:
            where = self.sock.getsockname()
        except OSError:
            where = "?"
        if isinstance(where, tuple):
            host, port = where[0], where[1]
            where = f"[{host}]:{port}" if self.sock.family == socket.AF_INET6 else f"{host}:{port}"
        name = f" named {self.passed.name!r}" if self.passed.name else ""
        return f"fd {self.passed.fd}{name} ({where or 'unnamed unix socket'})"


def adopt_passed(specs: Sequence[PortSpec], passed: Sequence[PassedSocket],
                 log: Log) -> list[Pair]:
    """Serve every port spec on the sockets systemd passed (see the module rules).

    Returns:
        ``(address, socket)`` pairs in the order of ``specs`` (the address carries the
        socket's real address), every socket checked: a listening stream socket.

    Raises:
        ConfigError: a passed fd that is not a listening stream socket, a passed socket no
            port claims, a port address no passed socket serves. Every passed socket is
            closed then.

    Resource handling:
        The caller owns the returned sockets.
    """
    opened: list[_Open] = []
    try:
        for entry in passed:
            opened.append(_open_passed(entry))
        pairs, specs_left, left = by_name(specs, opened)
        more, missing, left = _by_address(specs_left, left)
        pairs += more
        problems = [f"port {spec} ({where}) is served by none of them"
                    for spec, where in missing]
        problems += [f"{item.text()} serves no configured port" for item in left]
        if problems:
            raise ConfigError(
                f"socket activation: systemd passed {_listing(opened)}, but "
                + "; ".join(problems)
                + ". Each passed socket must match a port by its address, or by a port's "
                  "'name' key equal to its FileDescriptorName=; each port needs a socket")
    except BaseException:
        for item in opened:
            item.sock.close()
        for entry in passed[len(opened) + 1:]:  # not wrapped yet (the one that failed is)
            _close_fd(entry.fd)
        raise
    for address, sock in pairs:
        log(3, f"Adopted socket {sock.fileno()} from systemd for {address.spec}")
    order = {id(spec): index for index, spec in enumerate(specs)}
    return sorted(pairs, key=lambda pair: order[id(pair[0].spec)])


def _listing(opened: Sequence[_Open]) -> str:
    return ", ".join(item.text() for item in opened) or "no socket"


def _open_passed(entry: PassedSocket) -> _Open:
    """Wrap a passed fd; ConfigError (the fd closed) unless it is a listening stream socket
    of an inet or unix family."""
    try:
        sock = socket.socket(fileno=entry.fd)
    except OSError as exc:
        _close_fd(entry.fd)
        raise ConfigError(f"socket activation: fd {entry.fd} is not a socket: "
                          f"{exc.strerror or exc}") from None
    try:
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    except OSError:
        listening = 0
    families = (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX)
    if sock.type != socket.SOCK_STREAM or sock.family not in families or not listening:
        what = _Open(entry, sock).text()
        sock.close()
        raise ConfigError(f"socket activation: {what} is not a listening stream socket "
                          "(a datagram socket, or Accept=yes passing a connection?): "
                          "gnetserver serves ListenStream= sockets with Accept=no")
    os.set_inheritable(entry.fd, False)  # ours now: no child (CGI, a re-exec) inherits it
    return _Open(entry, sock)


def by_name(specs: Sequence[PortSpec], opened: Sequence[_Open]
            ) -> tuple[list[Pair], list[PortSpec], list[_Open]]:
    """Give each port with a ``name`` key every socket of that name.

    Returns:
        The pairs, the ports left (no ``name``, or no socket of theirs), the sockets left.
    """
    pairs: list[Pair] = []
    specs_left: list[PortSpec] = []
    left = list(opened)
    for spec in specs:
        name = spec.opts.get(NAME_KEY)
        mine = [item for item in left if name is not None and item.passed.name == name]
        if not mine:
            specs_left.append(spec)
            continue
        for item in mine:
            left.remove(item)
            pairs.append((_address_of(spec, item.sock, name), item.sock))
    return pairs, specs_left, left


def _by_address(specs: Sequence[PortSpec], opened: Sequence[_Open]
                ) -> tuple[list[Pair], list[tuple[PortSpec, str]], list[_Open]]:
    """Match each resolved address of each port to a socket bound there.

    Returns:
        The pairs, the ``(port, address text)`` no socket serves, the sockets left.
    """
    pairs: list[Pair] = []
    missing: list[tuple[PortSpec, str]] = []
    left = list(opened)
    for spec in specs:
        try:
            addresses = resolve(spec)
        except ConfigError as exc:
            missing.append((spec, f"not resolved: {exc}"))
            continue
        for address in addresses:
            found = next((item for item in left if _same_address(address, item.sock)), None)
            if found is None:
                missing.append((spec, _bind_text(address)))
                continue
            left.remove(found)
            pairs.append((_address_of(spec, found.sock), found.sock))
    return pairs, missing, left


def _same_address(address: BindAddress, sock: socket.socket) -> bool:
    """True when ``sock`` is bound where ``address`` would bind (port 0 never matches)."""
    if sock.family != address.family:
        return False
    bound = sock.getsockname()
    if address.family == socket.AF_UNIX:
        return isinstance(bound, str) and bound == address.sockaddr
    wanted = address.sockaddr
    assert isinstance(wanted, tuple)
    if wanted[1] == 0 or bound[1] != wanted[1]:
        return False
    try:
        return ipaddress.ip_address(bound[0]) == ipaddress.ip_address(wanted[0])
    except ValueError:
        return bool(bound[0] == wanted[0])


def _address_of(spec: PortSpec, sock: socket.socket, fdname: object = None) -> BindAddress:
    """The bind address of a passed socket as the listener reports it (its real address)."""
    bound = sock.getsockname()
    v6only: bool | None = None
    if sock.family == socket.AF_INET6:
        v6only = bool(sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY))
    return BindAddress(spec, sock.family, bound, v6only,
                       fdname if isinstance(fdname, str) else None, passed=True)


def _bind_text(address: BindAddress) -> str:
    if address.family == socket.AF_UNIX:
        return str(address.sockaddr)
    host, port = address.sockaddr[0], address.sockaddr[1]
    return f"[{host}]:{port}" if address.family == socket.AF_INET6 else f"{host}:{port}"


def _close_fd(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


def encode_names(pairs: Iterable[tuple[int, str]]) -> str:
    """The :data:`FDNAMES_ENV` value for ``(fd, name)`` pairs."""
    return ":".join(f"{fd}={name}" for fd, name in pairs)


def decode_names(text: str) -> dict[int, str]:
    """Read an :data:`FDNAMES_ENV` value back (malformed pieces are skipped; ``""``: passed
    by systemd, matched by address)."""
    names = {}
    for piece in text.split(":"):
        fd, sep, name = piece.partition("=")
        if sep and fd.isdigit():
            names[int(fd)] = name
    return names


def adopt_named(specs: Sequence[PortSpec], passed: Sequence[PassedSocket],
                log: Log) -> tuple[list[Pair], list[PortSpec], list[PassedSocket]]:
    """After a HUP re-exec: give named ports their named inherited sockets (:func:`by_name`),
    leniently. A passed fd that cannot be wrapped as a listening stream socket is logged
    (level 1) and dropped.

    Returns:
        The pairs, the ports left, the passed sockets left (their fds untouched: the caller
        matches them by ``BOUND_SOCKETS`` key).
    """
    opened = []
    for entry in passed:
        try:
            opened.append(_open_passed(entry))
        except ConfigError as exc:
            log(1, f"HUP: {exc}")
    pairs, specs_left, left = by_name(specs, opened)
    for item in left:
        item.sock.detach()  # the fd goes back to the caller, still open
    for address, sock in pairs:
        log(3, f"Adopted inherited socket {sock.fileno()} named {address.spec.opts[NAME_KEY]!r}"
               f" for {address.spec}")
    return pairs, specs_left, [item.passed for item in left]


# -- sd_notify -----------------------------------------------------------------------------------


class Notifier:
    """Tells systemd where the server is: ``sd_notify`` over ``NOTIFY_SOCKET``.

    GServer owns one (``server.notifier``) and calls it at these points: :meth:`ready` when
    accepting starts (also in the image a HUP re-executes: MAINPID stays this pid),
    :meth:`reloading` when a HUP is taken (:meth:`ready` again if it is refused),
    :meth:`stopping` when server_close begins a real close (not a HUP's hand-over). Each
    call sends one datagram and returns at once; nothing is sent when ``NOTIFY_SOCKET`` is
    unset. Never raises: the first failed send is logged at level 4 (then silence until a
    send works again). Any greenlet may call it.

    Args:
        address: the socket address (bytes: a path, or a leading NUL for the abstract
            namespace); None disables every call.
        log: ``log(level, message)``, for the failed sends.
    """

    def __init__(self, address: bytes | None, log: Log | None = None) -> None:
        self.address = address
        self._log = log
        self._failing = False
        self._stopping_sent = False

    @classmethod
    def from_environment(cls, log: Log | None = None,
                         environ: Mapping[str, str] | None = None) -> Notifier:
        """A notifier for ``$NOTIFY_SOCKET`` (``@name``: abstract namespace); disabled when it
        is unset, empty or not a path or ``@`` name (``vsock:`` is not supported)."""
        text = (os.environ if environ is None else environ).get("NOTIFY_SOCKET", "")
        address: bytes | None = None
        if text.startswith("@") and len(text) > 1:
            address = b"\0" + os.fsencode(text[1:])
        elif text.startswith("/"):
            address = os.fsencode(text)
        return cls(address, log)

    @property
    def enabled(self) -> bool:
        """True when there is a socket to notify."""
        return self.address is not None

    def send(self, *fields: str | None) -> bool:
        """Send ``KEY=VALUE`` fields (None entries skipped) as one datagram; True if sent."""
        if self.address is None:
            return False
        payload = "\n".join(field for field in fields if field).encode("utf-8", "replace")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.setblocking(False)  # a full receive queue: EAGAIN, never a wait
                sock.sendto(payload, self.address)
        except OSError as exc:
            if not self._failing and self._log is not None:
                where = self.address.replace(b"\0", b"@", 1).decode("utf-8", "replace")
                with contextlib.suppress(Exception):
                    self._log(4, f"sd_notify to {where} failed: {exc}")
            self._failing = True
            return False
        self._failing = False
        return True

    def ready(self, status: str | None = None) -> bool:
        """READY=1 with MAINPID (this pid: the same after a HUP re-exec) and a STATUS line."""
        return self.send("READY=1", f"MAINPID={os.getpid()}", _status(status))

    def reloading(self, status: str | None = None) -> bool:
        """RELOADING=1 with MONOTONIC_USEC (systemd 253+'s Type=notify-reload wants it)."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", _status(status))

    def stopping(self, status: str | None = None) -> bool:
        """STOPPING=1, once per notifier (a second call is a no-op)."""
        if self._stopping_sent:
            return False
        self._stopping_sent = True
        return self.send("STOPPING=1", _status(status))

    def status(self, text: str) -> bool:
        """A STATUS= line (``systemctl status`` shows it)."""
        return self.send(_status(text))


def _status(text: str | None) -> str | None:
    """``STATUS=<one line>`` (newlines would start new fields), or None."""
    if not text:
        return None
    return "STATUS=" + " ".join(text.splitlines())
