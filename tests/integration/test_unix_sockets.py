"""Unix socket files of a server (issue 16, point 9): the mode is the ``unix_mode`` option's
(0660 by default) whatever the umask, and a path another process still listens on is never
taken over: the start stops with a ConfigError naming it."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

from gnetserver import ConfigError, GServer
from gnetserver.testing import ServerThread

pytestmark = pytest.mark.timeout(20)


@pytest.mark.parametrize(("options", "mode"), [({}, 0o660), ({"unix_mode": "0600"}, 0o600)])
def test_the_socket_file_gets_unix_mode(tmp_path: Path, options: dict[str, str],
                                        mode: int) -> None:
    path = tmp_path / "s.sock"
    old = os.umask(0o002)
    try:
        st = ServerThread(GServer(port=f"{path}|unix", **options)).start()
    finally:
        os.umask(old)
    try:
        assert stat.S_IMODE(path.stat().st_mode) == mode
    finally:
        st.stop()


def test_a_bad_unix_mode_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"option 'unix_mode'.*'0668'.*octal"):
        ServerThread(GServer(port="127.0.0.1:0/tcp", unix_mode="0668")).start()


def test_a_path_another_server_listens_on_is_not_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as other:
        other.bind(str(path))
        other.listen(1)
        with pytest.raises(ConfigError, match=rf"'{path}' is in use"):
            ServerThread(GServer(port=f"{path}|unix")).start()
        assert path.is_socket()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(5)
            client.connect(str(path))  # still the other process's socket
            other.settimeout(5)
            other.accept()[0].close()
