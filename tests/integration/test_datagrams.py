"""Datagram ports (issue 12, "Datagram protocols: udp and unixdgram"), over real sockets.

Each datagram runs the per-connection hooks in a greenlet of its own, in a stream's order;
``client.udp_data`` is the datagram and ``client.send`` answers its sender. ``max_servers``
bounds the datagrams in flight: the excess is dropped and counted, never queued. Covered: echo
over every port form (udp, unixdgram, unix with unix_type sock_dgram; IPv4 and IPv6), the
largest datagrams loopback carries, a cut datagram, a burst of 10,000 datagrams with the drops
accounted for, a denied peer, tcp and udp on one port number, an unbound unix sender.
"""

from __future__ import annotations

import os
import socket
import stat
import threading
from pathlib import Path
from typing import Any

import gevent
import pytest
from support.net import needs_ipv6, read_line, wait_until

from gnetserver import GServer
from gnetserver.client import Client
from gnetserver.testing import ServerThread

pytestmark = pytest.mark.timeout(60)

WAIT = 10.0
HOOKS = ["post_accept_hook", "allow_deny_hook", "process_request", "post_process_request_hook",
         "post_client_connection_hook"]


class Echo(GServer):
    """Answers each datagram with itself; records every hook it ran and the client's facts."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.seen: list[dict[str, Any]] = []
        self.lines: list[str] = []
        self._lock = threading.Lock()

    def _note(self, client: Client, hook: str) -> None:
        client.data.setdefault("hooks", []).append(hook)

    def post_accept_hook(self, client: Client) -> None:
        self._note(client, "post_accept_hook")

    def allow_deny_hook(self, client: Client) -> bool:
        self._note(client, "allow_deny_hook")
        return True

    def request_denied_hook(self, client: Client) -> None:
        self._note(client, "request_denied_hook")

    def process_request(self, client: Client) -> None:
        self._note(client, "process_request")
        data = client.recv(1 << 20)
        assert client.recv(10) == b""  # the datagram once, then end of stream
        client.sendall(data)

    def post_process_request_hook(self, client: Client) -> None:
        self._note(client, "post_process_request_hook")

    def post_client_connection_hook(self, client: Client) -> None:
        self._note(client, "post_client_connection_hook")
        with self._lock:
            self.seen.append({"hooks": client.data["hooks"], "proto": client.proto,
                              "peeraddr": client.peeraddr, "peerport": client.peerport,
                              "sockport": client.sockport, "udp_data": client.udp_data,
                              "allowed": client.allowed})

    def keep_line(self, level: int, message: str) -> None:
        self.lines.append(message)


def start(server: GServer) -> ServerThread:
    return ServerThread(server).start()


def udp_client(family: int = socket.AF_INET, host: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.settimeout(WAIT)
    sock.bind((host, 0))
    return sock


@pytest.mark.parametrize("port", [
    "127.0.0.1:0/udp", "127.0.0.1|0|udp",
    {"port": 0, "host": "127.0.0.1", "proto": "udp"},
    "{dir}/d.sock|unixdgram", "{dir}/d.sock|sock_dgram|unix",
    {"port": "{dir}/d.sock", "proto": "unix", "unix_type": "SOCK_DGRAM"},
], ids=["udp", "udp-pipes", "udp-dict", "unixdgram", "sock_dgram", "unix_type-dict"])
def test_echo_over_every_datagram_form(port: Any, short_tmp_path: str) -> None:
    if isinstance(port, dict):
        port = {**port, "port": str(port["port"]).format(dir=short_tmp_path)}
    else:
        port = port.format(dir=short_tmp_path)
    server = Echo(port=port, log_level=0)
    thread = start(server)
    try:
        [listener] = server.listeners
        assert listener.is_datagram and listener.sock.type == socket.SOCK_DGRAM
        if listener.spec.is_unix:
            path = os.path.join(short_tmp_path, "d.sock")
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
            client = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            client.settimeout(WAIT)
            client.bind(os.path.join(short_tmp_path, "c.sock"))
            target: Any = path
        else:
            client, target = udp_client(), listener.bound
        with client:
            for word in (b"one", b"two"):
                client.sendto(word, target)
                assert client.recvfrom(100) == (word, target)
            me = client.getsockname()
        wait_until(lambda: len(server.seen) == 2, WAIT, "two datagrams served")
        for facts, word in zip(sorted(server.seen, key=lambda f: f["udp_data"]),
                               (b"one", b"two"), strict=True):
            assert facts["hooks"] == HOOKS and facts["allowed"] is True
            assert facts["udp_data"] == word
            if listener.spec.is_unix:
                assert (facts["peeraddr"], facts["peerport"]) == (me, None)
                assert facts["sockport"] == path
            else:
                assert (facts["proto"], facts["peeraddr"], facts["peerport"]) == ("udp", *me)
                assert facts["sockport"] == listener.port
        assert server.requests == 2
    finally:
        thread.stop()
    if listener.spec.is_unix:
        assert not os.path.exists(path)  # removed with the port


@needs_ipv6
def test_echo_over_ipv6_udp() -> None:
    server = Echo(port="[::1]:0/udp", log_level=0)
    thread = start(server)
    try:
        with udp_client(socket.AF_INET6, "::1") as client:
            client.sendto(b"six", server.listeners[0].bound[:2])
            data, _ = client.recvfrom(100)
            assert data == b"six"
            wait_until(lambda: server.seen, WAIT, "the datagram served")
            assert server.seen[0]["peeraddr"] == "::1"
            assert server.seen[0]["peerport"] == client.getsockname()[1]
    finally:
        thread.stop()


def test_the_largest_datagrams(short_tmp_path: str) -> None:
    """udp: 65507 bytes, the most an IPv4 datagram carries (loopback's MTU is larger);
    unixdgram: 64 KiB. Both come back whole with the default udp_recv_len."""
    path = os.path.join(short_tmp_path, "d.sock")
    server = Echo(port=["127.0.0.1:0/udp", f"{path}|unixdgram"], log_level=0)
    thread = start(server)
    try:
        with udp_client() as client:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            payload = os.urandom(65507)
            client.sendto(payload, server.listeners[0].bound)
            assert client.recvfrom(1 << 17)[0] == payload
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as unix:
            unix.settimeout(WAIT)
            unix.bind(os.path.join(short_tmp_path, "c.sock"))
            payload = os.urandom(64 * 1024)
            unix.sendto(payload, path)
            assert unix.recvfrom(1 << 17)[0] == payload
    finally:
        thread.stop()


def test_a_datagram_longer_than_udp_recv_len_is_cut_and_logged() -> None:
    server = Echo(port="127.0.0.1:0/udp", udp_recv_len=8, log_level=3)
    server_log: list[str] = server.lines
    server.new_args["log_function"] = server.keep_line
    thread = start(server)
    try:
        with udp_client() as client:
            client.sendto(b"0123456789abcdef", server.listeners[0].bound)
            assert client.recvfrom(100)[0] == b"01234567"
        wait_until(lambda: [line for line in server_log if "cut to udp_recv_len" in line],
                   WAIT, "the level-3 line")
    finally:
        thread.stop()


class Slow(GServer):
    """Answers each datagram after a pause; counts what it served and how many ran at once."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.served = 0
        self.running = 0
        self.most = 0
        self.lines: list[str] = []

    def process_request(self, client: Client) -> None:
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            gevent.sleep(0.05)  # pacing only: the assertions count datagrams, not time
            client.send(client.udp_data or b"")
        finally:
            self.running -= 1
            self.served += 1

    def keep_line(self, level: int, message: str) -> None:
        self.lines.append(message)


def kernel_drops(sock: socket.socket) -> int:
    """The datagrams the kernel dropped on ``sock`` (its receive buffer was full): the
    ``drops`` column of /proc/net/udp for the socket's inode."""
    inode = str(os.fstat(sock.fileno()).st_ino)
    with open("/proc/net/udp", encoding="ascii") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if fields[9] == inode:
                return int(fields[-1])
    raise AssertionError("the socket is not in /proc/net/udp")


def test_a_burst_of_10000_datagrams_is_bounded_and_every_drop_counted() -> None:
    """max_servers=4 datagrams in flight at most; every one of the 10,000 is either served,
    dropped by the server (counted and logged) or dropped by the kernel (its socket buffer
    full): nothing is queued without bound, nothing is lost uncounted."""
    total = 10_000
    server = Slow(port="127.0.0.1:0/udp", max_servers=4, log_level=2)
    server.new_args["log_function"] = server.keep_line
    thread = start(server)
    try:
        sock = server.listeners[0].sock
        with udp_client() as client:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
            where = server.listeners[0].bound
            for index in range(total):
                client.sendto(b"%d" % index, where)
            personality: Any = server.personality

            def accounted() -> bool:
                dropped = personality.datagrams_dropped + kernel_drops(sock)
                return server.served + dropped == total and server.running == 0

            wait_until(accounted, 30, "every datagram served or counted as dropped")
            dropped = personality.datagrams_dropped
            print(f"\n10000 datagrams: {server.served} served, {dropped} dropped by the server "
                  f"(max_servers=4), {kernel_drops(sock)} by the kernel")
            assert dropped > 0 and server.most <= 4
            client.settimeout(WAIT)
            while True:  # the server still answers once the burst is over
                client.sendto(b"after", where)
                if b"after" in _answers(client):
                    break
    finally:
        thread.stop()
    reported = [int(line.split()[0]) for line in server.lines
                if "datagram(s) dropped: max_servers (4)" in line]
    assert reported and sum(reported) == dropped


def _answers(client: socket.socket) -> list[bytes]:
    """Every answer queued on ``client``, waiting for the first."""
    got = [client.recv(100)]
    client.setblocking(False)
    try:
        while True:
            got.append(client.recv(100))
    except BlockingIOError:
        return got
    finally:
        client.settimeout(WAIT)


def test_a_denied_peer_gets_nothing() -> None:
    """The address rules apply per datagram: a denied sender runs request_denied_hook (which
    sends nothing here) instead of process_request; an allowed one is answered."""
    server = Echo(port="127.0.0.1:0/udp", deny=[r"127\.0\.0\.1"], allow=[r"127\.0\.0\.2"],
                  log_level=0)
    thread = start(server)
    try:
        where = server.listeners[0].bound
        with udp_client(host="127.0.0.2") as allowed, udp_client() as denied:
            denied.sendto(b"let me in", where)
            wait_until(lambda: server.seen, WAIT, "the denied datagram's hooks")
            [facts] = server.seen
            assert facts["allowed"] is False and "request_denied_hook" in facts["hooks"]
            assert "process_request" not in facts["hooks"]
            denied.setblocking(False)
            with pytest.raises(BlockingIOError):  # the hooks are over: nothing was sent
                denied.recv(100)
            allowed.sendto(b"hello", where)
            assert allowed.recvfrom(100) == (b"hello", where)
    finally:
        thread.stop()


def free_port_for_both() -> int:
    """A port number free for tcp and udp on 127.0.0.1 right now."""
    for _ in range(50):
        with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            tcp.bind(("127.0.0.1", 0))
            number = tcp.getsockname()[1]
            try:
                udp.bind(("127.0.0.1", number))
            except OSError:
                continue
            return int(number)
    raise AssertionError("no port number free for both tcp and udp")


def test_tcp_and_udp_on_the_same_port_number() -> None:
    """Net::Server's default echo on both: a line over tcp, one answer per datagram."""
    number = free_port_for_both()
    server = GServer(port=[f"127.0.0.1:{number}/tcp", f"127.0.0.1:{number}/udp"], log_level=0)
    thread = start(server)
    try:
        assert [listener.port for listener in server.listeners] == [number, number]
        with socket.create_connection(("127.0.0.1", number), timeout=WAIT) as tcp:
            assert read_line(tcp).startswith(b"Welcome")
            tcp.sendall(b"over tcp\r\n")
            assert read_line(tcp).endswith(b'You said "over tcp"\r\n')
        with udp_client() as udp:
            udp.sendto(b"over udp", ("127.0.0.1", number))
            assert udp.recvfrom(100) == (b'You said "over udp"', ("127.0.0.1", number))
    finally:
        thread.stop()


def test_an_unbound_unix_sender_cannot_be_answered(short_tmp_path: str) -> None:
    """Its datagram is served (udp_data, hooks); the answer fails with a level-3 line."""
    path = os.path.join(short_tmp_path, "d.sock")
    server = Echo(port=f"{path}|unixdgram", log_level=3)
    server.new_args["log_function"] = server.keep_line
    thread = start(server)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
            client.sendto(b"anonymous", path)
        wait_until(lambda: [line for line in server.lines if "did not bind its socket" in line],
                   WAIT, "the level-3 line")
        assert server.requests == 1
    finally:
        thread.stop()


def test_udp_options_reach_the_port(tmp_path: Path) -> None:
    """Server-wide udp_* options, and a port dict's own keys, which win."""
    server = GServer(port=["127.0.0.1:0/udp",
                           {"port": 0, "host": "127.0.0.1", "proto": "udp",
                            "udp_recv_len": 512, "udp_broadcast": 0}],
                     udp_recv_len=4096, udp_recv_flags="0x40", udp_broadcast=1, log_level=0)
    thread = start(server)
    try:
        first, second = server.listeners
        assert (first.protocol.recv_len, second.protocol.recv_len) == (4096, 512)  # type: ignore[attr-defined]
        assert first.protocol.recv_flags == socket.MSG_DONTWAIT  # type: ignore[attr-defined]
        assert first.sock.getsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST) != 0
        assert second.sock.getsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST) == 0
        assert (server.conf.udp_recv_len, server.conf.udp_broadcast) == (4096, True)
    finally:
        thread.stop()
