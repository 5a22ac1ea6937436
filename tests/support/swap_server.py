"""A server class for the file-hardening tests (issue 16, point 1): in ``post_bind_hook`` (after
every file is created as root, before the files are handed over and the privileges dropped) a
child process running as the service user renames the paths named in ``GNS_SWAP`` (to
``path.orig``) and puts symbolic links in their place, exactly what a service user owning the
directory can do in that gap.

``GNS_SWAP`` holds ``path=>target`` pairs separated by ``;``; ``GNS_SWAP_UID`` and
``GNS_SWAP_GID`` the ids the child runs as. Run it with ``--server support.swap_server:SwapServer``.
"""

from __future__ import annotations

import os

from gnetserver import GServer


def swap(pairs: str, uid: int, gid: int) -> None:
    """In a child running as ``uid``/``gid``: rename each path to ``path.orig``, then plant
    a symbolic link to its target there; OSError when the child failed (its exit status)."""
    pid = os.fork()
    if pid == 0:  # the child: only system calls, then _exit (nothing of the server runs twice)
        code = 0
        try:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            for pair in filter(None, pairs.split(";")):
                path, target = pair.split("=>")
                os.rename(path, f"{path}.orig")  # kept: the test reads it
                os.symlink(target, path)
        except BaseException:  # noqa: BLE001 (the exit status says it)
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise OSError(f"the swapping child failed ({status})")


class SwapServer(GServer):
    """GServer whose post_bind_hook swaps files for symbolic links as the service user."""

    def post_bind_hook(self) -> None:
        """Plant the links named by ``GNS_SWAP`` (see the module), then say so in the log."""
        swap(os.environ["GNS_SWAP"], int(os.environ["GNS_SWAP_UID"]),
             int(os.environ["GNS_SWAP_GID"]))
        self.log(2, "Swapped the files for symbolic links")
