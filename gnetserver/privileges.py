"""Privileges after binding, as Net::Server's ``post_bind``: chown, chroot, setgid, setuid.

Rules of this module:

* Names are resolved (and a chroot directory checked) before anything changes, so a typo stops
  the start with a ConfigError naming the option and the value, and leaves the process as it was.
* Order: hand the files the server keeps writing (log file, unix socket files) to the new
  user, then chroot, then the groups, the gid and last the uid (after setuid, nothing else
  could change).
* Handing over never follows a name the service user may have changed since root created the
  file: the log file is changed through the descriptor root opened (``fchown``; a device or
  FIFO is left as it is), a unix socket path with
  ``lchown`` after checking it is still a socket. The pid file is not handed over at all: it
  stays owned by root, so the service user cannot point root's ``kill $(cat pidfile)`` at
  another process (the server removes it at exit when the user may write in its directory).
* ``group`` may list several groups (spaces or commas); the first is the primary gid, all of
  them become the supplementary groups. When ``user`` is given without ``group`` the user's
  primary group is used: keeping root's gid (Net::Server's default) would leave a root-group
  process behind the unprivileged uid. A bare uid without a passwd entry has no primary
  group: ``group`` is then required (a ConfigError names both options).
* Refused before anything changes (:func:`check`): ``user``/``group`` naming other ids when the
  server does not start as root (it cannot switch; Net::Server logs and goes on as the
  starting user), and ``chroot`` when the server would still run as uid 0 inside the jail
  (root can leave a chroot) unless ``chroot_as_root`` accepts it.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .errors import ConfigError


@dataclass(frozen=True)
class Identity:
    """Who the server becomes: ``uid``, the primary ``gid`` and the supplementary ``groups``."""

    uid: int
    gid: int
    groups: tuple[int, ...]

    def differs(self) -> bool:
        """True when switching would change the process's effective ids."""
        return self.uid != os.geteuid() or self.gid != os.getegid()


def resolve_user(value: str) -> pwd.struct_passwd | int:
    """A user name or uid -> its passwd entry (a bare uid unknown to passwd stays an int)."""
    text = str(value).strip()
    try:
        return pwd.getpwuid(int(text)) if text.isdigit() else pwd.getpwnam(text)
    except KeyError:
        if text.isdigit():
            return int(text)
        raise ConfigError(f"option 'user': no such user {text!r}") from None


def resolve_groups(value: str) -> tuple[int, ...]:
    """``"www, 1001 adm"`` -> gids, first one primary; an unknown name is a ConfigError."""
    gids = []
    for word in (w for w in re.split(r"[\s,]+", str(value).strip()) if w):
        if word.isdigit():
            gids.append(int(word))
            continue
        try:
            gids.append(grp.getgrnam(word).gr_gid)
        except KeyError:
            raise ConfigError(f"option 'group': no such group {word!r} (in {value!r})") from None
    if not gids:
        raise ConfigError(f"option 'group': no group in {value!r}")
    return tuple(dict.fromkeys(gids))  # keep order, drop repeats


def resolve(user: str | None, group: str | None) -> Identity | None:
    """The identity asked for by ``user``/``group``, or None when neither is set."""
    if user is None and group is None:
        return None
    entry = resolve_user(user) if user is not None else os.geteuid()
    uid = entry.pw_uid if isinstance(entry, pwd.struct_passwd) else entry
    if group is not None:
        groups = resolve_groups(group)
    elif isinstance(entry, pwd.struct_passwd):
        groups = (entry.pw_gid,)
    elif uid == os.geteuid():
        groups = (os.getegid(),)  # no switch at all: the current ids stay
    else:  # the starting gid (root's 0) must not stay behind an unprivileged uid
        raise ConfigError(f"option 'user': uid {uid} has no passwd entry, so no primary "
                          "group: set option 'group' too (a group name or gid)")
    return Identity(uid, groups[0], groups)


def check(identity: Identity | None, chroot: str | None, chroot_as_root: bool) -> None:
    """What the switch must refuse before acting (see the module rules): ConfigError for
    ``user``/``group`` naming other ids on a start that is not root's, and for ``chroot``
    leaving the server uid 0 inside the jail without ``chroot_as_root``."""
    euid, egid = os.geteuid(), os.getegid()
    if identity is not None and identity.differs() and euid != 0:
        raise ConfigError(f"options 'user'/'group': the server started as uid {euid} gid "
                          f"{egid}, not as root, so it cannot switch to uid {identity.uid} "
                          f"gid {identity.gid}: start it as root, or leave 'user' and "
                          "'group' out")
    final_uid = euid if identity is None else identity.uid
    if chroot and final_uid == 0 and not chroot_as_root:
        raise ConfigError(f"option 'chroot': {chroot!r} without 'user' leaves the server "
                          "running as root (uid 0) inside the chroot, and root can leave a "
                          "chroot: set 'user' (and 'group'), or set 'chroot_as_root' to "
                          "accept it")


def check_chroot(path: str) -> str:
    """The absolute chroot directory; a missing one is a ConfigError."""
    if not os.path.isdir(path):
        raise ConfigError(f"option 'chroot': {path!r} is not a directory")
    return os.path.abspath(path)


def hand_over(descriptors: Iterable[tuple[str, int]], sockets: Iterable[str],
              identity: Identity) -> None:
    """Give the files the server keeps writing to the new uid and primary gid, never by a
    name that could have been changed into a symbolic link since they were made.

    Args:
        descriptors: ``(path, fd)`` of open files (the log file): ``fchown(fd)``, the file
            root opened whatever its name has become since. A device or FIFO
            (``/dev/null``) is not the server's to give and is left as it is.
        sockets: unix socket paths: ``lchown`` after checking the path is still a socket.

    Raises:
        ConfigError: a refused file or a failed chown, naming the file.
    """
    def refuse(path: str, why: str) -> ConfigError:
        return ConfigError(f"cannot chown {path!r} to {identity.uid}:{identity.gid} for "
                           f"option 'user'/'group': {why}")

    for path, fd in descriptors:
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                continue
            os.fchown(fd, identity.uid, identity.gid)
        except OSError as exc:
            raise refuse(path, str(exc.strerror)) from None
    for path in sockets:
        try:
            if not stat.S_ISSOCK(os.lstat(path).st_mode):
                raise refuse(path, "the path is no longer the unix socket the server bound "
                                   "(replaced after binding: refused)")
            os.chown(path, identity.uid, identity.gid, follow_symlinks=False)
        except OSError as exc:
            raise refuse(path, str(exc.strerror)) from None


def enter_chroot(path: str) -> None:
    """chroot, then chdir to the new root (a cwd outside it would be an escape hatch)."""
    try:
        os.chroot(path)
        os.chdir("/")
    except OSError as exc:
        raise ConfigError(f"option 'chroot': cannot chroot to {path!r}: {exc.strerror}") \
            from None


def prepare() -> None:
    """Load what the server would otherwise load lazily once it serves: the gevent hub and
    its loop, the resolver and the thread pool. After the switch the new user may be unable
    to read the Python installation (an interpreter under /root), and the chroot hides it."""
    import gevent

    hub = gevent.get_hub()
    hub.resolver  # noqa: B018 (the property imports and builds the resolver)
    hub.threadpool  # noqa: B018


def become(identity: Identity) -> None:
    """Set groups, gid, then uid (real, effective and saved when root); verify the result.

    Raises:
        OSError: the kernel refused, or the ids are not what was asked afterwards.
    """
    if os.geteuid() == 0:
        os.setgroups(list(identity.groups))
    if identity.gid != os.getegid() or identity.gid != os.getgid():
        os.setgid(identity.gid)
    if identity.uid != os.geteuid() or identity.uid != os.getuid():
        os.setuid(identity.uid)
    now = (os.getuid(), os.geteuid(), os.getgid(), os.getegid())
    wanted = (identity.uid, identity.uid, identity.gid, identity.gid)
    if now != wanted:
        raise OSError(f"ids are uid {now[0]}/{now[1]} gid {now[2]}/{now[3]}, wanted "
                      f"uid {identity.uid} gid {identity.gid}")


def drop(identity: Identity | None, chroot: str | None, descriptors: Iterable[tuple[str, int]],
         sockets: Iterable[str], log: Callable[[int, str], None],
         chroot_as_root: bool = False) -> None:
    """The whole switch, in order: check, hand the files over (see :func:`hand_over`),
    chroot, setgid/setuid.

    Raises:
        ConfigError: a missing chroot, what :func:`check` refuses, a failed chown or chroot,
            or a failed switch.
    """
    new_root = check_chroot(chroot) if chroot else None
    check(identity, new_root, chroot_as_root)
    changing = identity is not None and identity.differs()
    if changing or new_root is not None:
        prepare()  # load lazily-imported modules while they are reachable
    if changing:
        assert identity is not None
        hand_over(descriptors, sockets, identity)
    if new_root is not None:
        log(2, f"Chrooting to {new_root}")
        if (identity.uid if identity is not None else os.geteuid()) == 0:
            log(1, f"Running as root inside the chroot {new_root} (chroot_as_root)")
        enter_chroot(new_root)
    if not changing:
        return
    assert identity is not None
    log(2, f'Setting gid to "{" ".join(map(str, identity.groups))}", uid to "{identity.uid}"')
    try:
        become(identity)
    except OSError as exc:
        raise ConfigError(f"options 'user'/'group': cannot become uid {identity.uid} gid "
                          f"{identity.gid}: {exc}") from None


def rebase(path: str, root: str) -> str:
    """A path as seen after ``chroot(root)``: ``/srv/jail/run/x.pid`` -> ``/run/x.pid``; a
    path outside the new root is returned unchanged (it can no longer be reached)."""
    root = os.path.abspath(root)
    if os.path.commonpath([root, path]) != root:
        return path
    relative = os.path.relpath(path, root)
    return "/" if relative == "." else "/" + relative
