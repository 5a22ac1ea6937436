"""From :class:`~gnetserver.ports.PortSpec` records to bound listening sockets.

Rules of this module (behaviour: spec/netserver.md, sections 3.5 and 3.6):

* :func:`resolve` turns one record into the addresses to bind:

  - UNIX protos: the path, no resolution;
  - a numeric IPv4 host (ipv ``4`` or ``*``): that one address;
  - ipv ``6`` (or a host with ``:``): the first IPv6 address, IPV6_V6ONLY on;
  - ipv ``4``: the first IPv4 address;
  - ipv ``*``: every address ``getaddrinfo(host, port, AF_UNSPEC, ..., AI_PASSIVE)`` returns,
    then dual-stack folding: when both ``::`` and ``0.0.0.0`` (or ``::ffff:a.b.c.d`` and
    ``a.b.c.d``) come back, the IPv4 one is dropped and the IPv6 one keeps IPV6_V6ONLY off, so
    host ``*`` gives **one** ``[::]`` socket that accepts both families.

  ``NO_IPV6`` in the environment (any value but ``""`` or ``"0"``), or a system where IPv6
  sockets cannot be created or IPV6_V6ONLY cannot be turned off, makes ipv ``*`` IPv4-only;
  ipv ``6`` then fails.
* :func:`bind_all` creates plain blocking stdlib sockets: stream sockets get SO_REUSEADDR
  on inet, IPV6_V6ONLY from the address, then ``listen``. Datagram records (udp, unixdgram,
  ``unix_type`` sock_dgram: :attr:`~gnetserver.ports.PortSpec.is_datagram`) get SOCK_DGRAM
  sockets, bound and never listened on, and no SO_REUSEADDR: on a UDP socket it would let a
  second server bind the same port and take its datagrams, where a stream port only skips
  TIME_WAIT. SO_BROADCAST is set on udp sockets when asked (``broadcast``). It is all or
  nothing: on any failure every socket it opened is closed before the error propagates.
* A UNIX socket path (stream or datagram) is only taken over when the socket file there is
  stale: nothing is bound to it (``connect`` is refused, ECONNREFUSED). A socket some
  process still listens on (or is bound to) is a ConfigError naming the path (two servers
  must not steal each other's socket), as is a socket whose state cannot be told (connect
  fails otherwise) and any other existing file, never deleted.
* A UNIX socket file gets its mode explicitly (``unix_mode``, 0660 by default; a per-port
  ``unix_mode`` key wins), whatever the umask: ``chmod`` right after ``bind`` and before
  ``listen``, through an ``O_PATH|O_NOFOLLOW`` descriptor of the socket file itself, so a
  symlink put in its place is refused, never followed.
* Every failure is a :class:`~gnetserver.errors.ConfigError` naming the spec and the reason.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import ipaddress
import os
import socket
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import cast

from gnetserver.errors import ConfigError
from gnetserver.options import DEFAULT_UNIX_MODE, as_bool, file_mode
from gnetserver.ports import UNIX_PROTOS, PortSpec

SockAddr = tuple[str, int] | tuple[str, int, int, int] | str


@dataclass(frozen=True)
class BindAddress:
    """One address to bind for a :class:`PortSpec`.

    Attributes:
        spec: The record this address comes from.
        family: ``AF_INET``, ``AF_INET6`` or ``AF_UNIX``.
        sockaddr: What ``bind()`` takes: ``(host, port)``, ``(host, port, flow, scope)`` or a path.
        v6only: IPV6_V6ONLY for ``AF_INET6`` (``False`` = dual-stack socket); ``None`` otherwise.
        fdname: for a socket systemd passed and a port claimed by its ``name`` key, that name
            (a HUP re-exec hands it on, so the port finds its socket again); else ``None``.
        passed: True for a socket systemd passed (socket activation): systemd owns its
            address, so a unix socket file is neither chowned nor removed by the server.
    """

    spec: PortSpec
    family: int
    sockaddr: SockAddr
    v6only: bool | None
    fdname: str | None = None
    passed: bool = False


def resolve(spec: PortSpec) -> list[BindAddress]:
    """The addresses to bind for one record (see the module rules).

    Raises:
        ConfigError: The host does not resolve in the family asked for, IPv6 is asked for
            but disabled, or an inet port is not a number.
    """
    if spec.proto in UNIX_PROTOS:
        return [BindAddress(spec, socket.AF_UNIX, str(spec.port), None)]
    if isinstance(spec.port, bool) or not isinstance(spec.port, int):
        raise ConfigError(f"cannot resolve {spec}: port {spec.port!r} is not a number")
    ipv6, dual_stack = _ipv6_support()
    if spec.ipv == "6" or ":" in spec.host:
        if not ipv6:
            raise ConfigError(f"cannot resolve {spec}: IPv6 is disabled or unavailable")
        return [_first(spec, socket.AF_INET6)]
    if _is_ipv4_literal(spec.host):
        return [BindAddress(spec, socket.AF_INET, (spec.host, spec.port), None)]
    if spec.ipv == "4" or not dual_stack:
        return [_first(spec, socket.AF_INET)]
    return _fold_dual_stack(spec, _lookup(spec, socket.AF_UNSPEC))


def bind_all(specs: Iterable[PortSpec], backlog: int, *, unix_mode: int = DEFAULT_UNIX_MODE,
             broadcast: bool = False) -> list[tuple[BindAddress, socket.socket]]:
    """Resolve every record and bind one socket per address.

    With port 0 and several addresses for one record, the first is bound to learn the port the
    kernel chose and the others reuse that number. The returned addresses carry the real port;
    the records keep port 0 (and ``orig_port``) for HUP matching.

    Args:
        specs: The records, usually from :func:`gnetserver.ports.parse_ports`.
        backlog: The listen backlog for records whose ``listen`` is ``None``.
        unix_mode: The mode of UNIX socket files for records without a ``unix_mode`` key.
        broadcast: SO_BROADCAST on udp sockets whose record has no ``udp_broadcast`` key
            (the ``udp_broadcast`` option).

    Returns:
        ``(address, socket)`` pairs in the order of ``specs``, every stream socket listening,
        every datagram socket bound.

    Resource handling:
        The caller owns the returned sockets. On failure nothing is left open.

    Error handling:
        Resolution and socket errors (EADDRINUSE, EACCES, EADDRNOTAVAIL, a missing directory,
        an existing non-socket file, a UNIX socket another process listens on...) raise
        ConfigError, such as
        ``cannot bind 127.0.0.1:8443/ssl: [Errno 98] Address already in use``.
    """
    bound: list[tuple[BindAddress, socket.socket]] = []
    try:
        for spec in specs:
            _bind_addresses(resolve(spec), spec.listen or backlog, bound,
                            unix_mode=socket_mode(spec, unix_mode),
                            broadcast=socket_broadcast(spec, broadcast))
    except BaseException:
        for _, sock in bound:
            sock.close()
        raise
    return bound


def describe(addr: BindAddress, sock: socket.socket) -> str:
    """The address a socket is bound to, for logs: ``127.0.0.1:41234``, ``[::]:8443``, a path."""
    if addr.family == socket.AF_UNIX:
        return str(addr.sockaddr)
    return _address_text(addr.family, sock.getsockname())


def socket_mode(spec: PortSpec, default: int = DEFAULT_UNIX_MODE) -> int:
    """The mode of a record's UNIX socket file: its per-port ``unix_mode``, else ``default``.
    ConfigError naming the record for a bad per-port value, or one on a port that is not UNIX."""
    value = spec.opts.get("unix_mode")
    if value is None:
        return default
    if not spec.is_unix:
        raise ConfigError(f"port {spec}: unix_mode {value!r} is only for unix ports")
    try:
        return file_mode(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"port {spec}: bad unix_mode {value!r}: {exc}") from None


def socket_broadcast(spec: PortSpec, default: bool = False) -> bool:
    """Whether a record's socket gets SO_BROADCAST: its per-port ``udp_broadcast``, else
    ``default`` (the option); always False but for udp. ConfigError naming the record for a
    bad per-port value, or one on a port that is not udp."""
    value = spec.opts.get("udp_broadcast")
    if value is None:
        return default and spec.proto == "udp"
    if spec.proto != "udp":
        raise ConfigError(f"port {spec}: udp_broadcast {value!r} is only for udp ports")
    try:
        return as_bool(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"port {spec}: bad udp_broadcast {value!r}: {exc}") from None


def socket_type(spec: PortSpec) -> int:
    """SOCK_DGRAM for a datagram record, else SOCK_STREAM."""
    return socket.SOCK_DGRAM if spec.is_datagram else socket.SOCK_STREAM


def _bind_addresses(
    addrs: list[BindAddress], backlog: int, bound: list[tuple[BindAddress, socket.socket]],
    *, unix_mode: int = DEFAULT_UNIX_MODE, broadcast: bool = False,
) -> None:
    """Bind the addresses of one record, appending to ``bound`` (which the caller cleans up)."""
    learned: int | None = None
    for addr in addrs:
        if learned is not None:
            addr = _with_port(addr, learned)
        sock = _open_socket(addr, backlog, unix_mode, broadcast)
        if learned is None and addr.spec.port == 0:
            learned = sock.getsockname()[1]
            addr = _with_port(addr, learned)
        bound.append((addr, sock))


def _open_socket(addr: BindAddress, backlog: int, unix_mode: int = DEFAULT_UNIX_MODE,
                 broadcast: bool = False) -> socket.socket:
    datagram = addr.spec.is_datagram
    try:
        sock = socket.socket(addr.family, socket_type(addr.spec))
    except OSError as exc:
        raise _bind_error(addr, exc) from exc
    try:
        if addr.family == socket.AF_UNIX:
            _remove_stale_socket(addr)
        elif not datagram:  # UDP: SO_REUSEADDR would let another server share the port
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if broadcast:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        if addr.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, addr.v6only is not False)
        sock.bind(addr.sockaddr)
        if addr.family == socket.AF_UNIX:
            _set_mode(addr, unix_mode)  # before listen: nobody connects under the umask's mode
        if not datagram:
            sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise _bind_error(addr, exc) from exc
    except BaseException:
        sock.close()
        raise
    return sock


def _remove_stale_socket(addr: BindAddress) -> None:
    """Unlink a socket file left at the path by a previous run (nothing listens on it);
    refuse a live socket and any other file. A process that starts listening on that path
    between the check and the unlink (it needs write access to the folder and a race of
    microseconds) loses its socket file: keep unix sockets in a folder only trusted users
    can write to."""
    path = str(addr.sockaddr)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ConfigError(f"cannot bind {addr.spec}: {path!r} exists and is not a socket")
    problem = _in_use(path, socket_type(addr.spec))
    if problem is not None:
        raise ConfigError(f"cannot bind {addr.spec}: {path!r} {problem}; not taken over")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _in_use(path: str, kind: int = socket.SOCK_STREAM) -> str | None:
    """Why the socket file at ``path`` must be left alone, or None when it is stale (a
    connect of a ``kind`` socket is refused: nothing is bound to it, whatever its type).
    Non-blocking: a listener whose backlog is full answers EAGAIN, which is "in use" too; a
    live socket of the other type answers EPROTOTYPE, "in use" as well."""
    with socket.socket(socket.AF_UNIX, kind) as probe:
        probe.setblocking(False)
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            return None
        except FileNotFoundError:
            return None  # gone meanwhile: bind creates it
        except (BlockingIOError, InterruptedError):
            return "is in use: another process listens on it (its backlog is full)"
        except OSError as exc:
            if exc.errno != errno.EPROTOTYPE:
                return f"may be in use: cannot tell ({exc.strerror or exc})"
            return "is in use: a socket of the other type (stream, datagram) is bound to it"
    return "is in use: another process listens on it"


def _set_mode(addr: BindAddress, mode: int) -> None:
    """chmod the socket file just bound, without following a symlink put in its place.

    The file is opened ``O_PATH|O_NOFOLLOW`` (a symlink is opened as itself, and refused), and
    the mode set through ``/proc/self/fd``, which names that very inode. Without ``O_PATH`` or
    ``/proc``: ``lstat`` then ``chmod`` (the symlink check is then not race-free).
    """
    path = str(addr.sockaddr)
    o_path = getattr(os, "O_PATH", 0)
    if not o_path:
        _check_socket_file(addr, os.lstat(path).st_mode)
        os.chmod(path, mode)
        return
    fd = os.open(path, o_path | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        _check_socket_file(addr, os.fstat(fd).st_mode)
        try:
            os.chmod(f"/proc/self/fd/{fd}", mode)
        except FileNotFoundError:  # no /proc
            _check_socket_file(addr, os.lstat(path).st_mode)
            os.chmod(path, mode)
    finally:
        os.close(fd)


def _check_socket_file(addr: BindAddress, mode: int) -> None:
    """ConfigError unless ``mode`` is a socket file's (a symlink swapped in after bind)."""
    if not stat.S_ISSOCK(mode):
        raise ConfigError(f"cannot bind {addr.spec}: {str(addr.sockaddr)!r} is no longer the "
                          "socket just bound (replaced, by a symlink?): its mode not set")


def _bind_error(addr: BindAddress, exc: OSError) -> ConfigError:
    spec = str(addr.spec)
    where = "" if addr.family == socket.AF_UNIX else _address_text(addr.family, addr.sockaddr)
    if not where or spec.startswith(where + "/"):
        return ConfigError(f"cannot bind {spec}: {exc}")
    return ConfigError(f"cannot bind {spec} on {where}: {exc}")


def _address_text(family: int, sockaddr: Sequence[object]) -> str:
    host, port = sockaddr[0], sockaddr[1]
    return f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"


def _with_port(addr: BindAddress, port: int) -> BindAddress:
    sockaddr = addr.sockaddr
    if isinstance(sockaddr, str):  # a UNIX path has no port
        return addr
    if len(sockaddr) == 4:
        return replace(addr, sockaddr=(sockaddr[0], port, sockaddr[2], sockaddr[3]))
    return replace(addr, sockaddr=(sockaddr[0], port))


def _lookup(spec: PortSpec, family: int) -> list[tuple[int, SockAddr]]:
    """``getaddrinfo`` for a record: unique ``(family, sockaddr)`` pairs, in its order."""
    host = None if spec.host == "*" else spec.host
    try:
        infos = socket.getaddrinfo(host, spec.port, family, socket_type(spec), 0,
                                   socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        raise ConfigError(f"cannot resolve {spec}: {exc}") from exc
    found: list[tuple[int, SockAddr]] = []
    for fam, _, _, _, sockaddr in infos:
        pair = (int(fam), cast(SockAddr, sockaddr))  # AF_INET/AF_INET6 addresses are tuples
        if fam in (socket.AF_INET, socket.AF_INET6) and pair not in found:
            found.append(pair)
    if not found:
        raise ConfigError(f"cannot resolve {spec}: no IPv4 or IPv6 address")
    return found


def _first(spec: PortSpec, family: int) -> BindAddress:
    fam, sockaddr = _lookup(spec, family)[0]
    return BindAddress(spec, fam, sockaddr, True if fam == socket.AF_INET6 else None)


def _fold_dual_stack(spec: PortSpec, found: list[tuple[int, SockAddr]]) -> list[BindAddress]:
    """One address per result; an IPv6 result with an IPv4 twin absorbs it (V6ONLY off)."""
    ipv4_hosts = {sockaddr[0] for fam, sockaddr in found if fam == socket.AF_INET}
    absorbed = {
        twin
        for fam, sockaddr in found
        if fam == socket.AF_INET6 and (twin := _ipv4_twin(str(sockaddr[0]))) in ipv4_hosts
    }
    addrs = []
    for fam, sockaddr in found:
        if fam == socket.AF_INET6:
            v6only = _ipv4_twin(str(sockaddr[0])) not in absorbed
            addrs.append(BindAddress(spec, fam, sockaddr, v6only))
        elif sockaddr[0] not in absorbed:
            addrs.append(BindAddress(spec, fam, sockaddr, None))
    return addrs


def _ipv4_twin(host: str) -> str | None:
    """The IPv4 address an IPv6 one also covers when V6ONLY is off: ``::`` -> ``0.0.0.0``."""
    if host == "::":
        return "0.0.0.0"
    try:
        mapped = ipaddress.IPv6Address(host).ipv4_mapped
    except ValueError:
        return None
    return str(mapped) if mapped else None


def _is_ipv4_literal(host: str) -> bool:
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return True


def _ipv6_support() -> tuple[bool, bool]:
    """(IPv6 sockets are usable, dual-stack sockets are usable), honouring ``NO_IPV6``."""
    if os.environ.get("NO_IPV6", "") not in ("", "0"):
        return False, False
    return _probe_ipv6()


@functools.cache
def _probe_ipv6() -> tuple[bool, bool]:
    """Ask the system once, as Net::Server's CAN_DISABLE_V6ONLY does."""
    if not socket.has_ipv6:
        return False, False
    try:
        probe = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    except OSError:
        return False, False
    with probe:
        try:
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        except OSError:
            return True, False
    return True, True
