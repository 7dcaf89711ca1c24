"""The destination's private folder, ``.immsync``, checked before every use.

On shared storage other users may be able to write inside the destination. A symbolic
link planted at ``.immsync/lock``, ``.immsync/staging`` or anywhere below would make a
run (perhaps by root or a lab admin) truncate, create, fill or delete files elsewhere.
So nothing under ``.immsync`` is ever followed:

- every folder is ``lstat``-ed: it must be a real folder, owned by the running user,
  and not writable by group or others unless the destination itself is;
- what is missing is created with mode 0700;
- files are opened with ``O_NOFOLLOW`` and must turn out to be regular files;
- clean-ups walk file descriptors (``os.fwalk``) without following links, and remove
  only regular files and the links themselves.

Anything else ends the run with a ``StateError`` (exit 7) naming the path and what is
wrong with it.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable, Iterable
from pathlib import Path

from .errors import StateError

STATE_DIRNAME = ".immsync"

_SHARED_WRITE = stat.S_IWGRP | stat.S_IWOTH
_FIX_HINT = (
    "immsync never follows links or uses folders others can change inside {top}; "
    "remove or fix that path (if another user planted it, tell your administrator), "
    "then run again"
)


def private_folder(folder: Path, *, create: bool = True) -> bool:
    """Check (and with *create*, make) *folder* and every level from ``.immsync`` down.

    The folder holding the innermost ``.immsync`` is the destination, whose own
    permissions decide whether group-writable levels are acceptable (on shared lab
    storage they are). A *folder* outside any ``.immsync`` is checked alone, as if its
    parent were the destination.

    Returns:
        Whether *folder* exists now (always True with *create*).

    Raises:
        StateError: a level is a link or not a folder, belongs to someone else, or
            is writable by others while the destination is not; or it cannot be made.
    """
    parts = folder.parts
    if STATE_DIRNAME in parts:
        top_index = len(parts) - 1 - parts[::-1].index(STATE_DIRNAME)
    else:
        top_index = len(parts) - 1
    destination = Path(*parts[:top_index]) if top_index else Path(".")
    shared_ok = _destination_is_shared(destination, create=create)
    level = destination
    for name in parts[top_index:]:
        level = level / name
        if not _check_level(level, destination, shared_ok=shared_ok, create=create):
            return False
    return True


def open_private_file(path: Path, flags: int, mode: int = 0o600) -> int:
    """``os.open`` of a file in a checked private folder, never through a link.

    Raises:
        StateError: *path* is a link, or turns out not to be a regular file.
        OSError: any other failure to open it (the caller words it).
    """
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, mode)
    except OSError as exc:
        if os.path.islink(path):
            raise _refuse(path, "is a symbolic link") from None
        raise exc
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise _refuse(path, "is not a regular file")
    # O_NONBLOCK only kept a planted FIFO from hanging the open; files ignore it,
    # but clear it so later reads and writes behave normally everywhere.
    os.set_blocking(fd, True)
    return fd


def check_file_or_absent(path: Path) -> None:
    """*path* is a regular file or nothing at all (not a link, folder, FIFO...).

    For files another library opens by name, such as SQLite's database and journals.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise _refuse(path, "is a symbolic link")
    if not stat.S_ISREG(st.st_mode):
        raise _refuse(path, "is not a regular file")


def remove_files_below(
    folder: Path, keep: Callable[[str], bool], *, remove_empty_folders: bool = True
) -> None:
    """Remove every file below *folder* whose relative POSIX path *keep* rejects.

    Walks by file descriptor and never follows a link: a link is removed as a name
    (its target untouched), and nothing outside *folder* is reached even if a folder
    is replaced by a link while the walk runs. Folders left empty are removed.
    """
    if not private_folder(folder, create=False):
        return
    # Bottom-up, so a folder's contents are handled before the folder itself. fwalk
    # lists a link to a folder among the folders but never descends into it.
    for dirpath, dirnames, filenames, dir_fd in os.fwalk(folder, topdown=False):
        relative_dir = Path(dirpath).relative_to(folder).as_posix()
        prefix = "" if relative_dir == "." else relative_dir + "/"
        for name in (*filenames, *dirnames):
            if keep(prefix + name):
                continue
            with contextlib.suppress(OSError):
                mode = os.lstat(name, dir_fd=dir_fd).st_mode
                if stat.S_ISREG(mode) or stat.S_ISLNK(mode):
                    os.unlink(name, dir_fd=dir_fd)
                elif stat.S_ISDIR(mode) and remove_empty_folders:
                    os.rmdir(name, dir_fd=dir_fd)  # fails while it holds a kept file


def prepare_parents(root: Path, relatives: Iterable[str]) -> None:
    """Make (and check) the parent folder of each ``root/<relative>`` below *root*.

    A transfer then writes only into real folders of ours, whoever planted what before.
    """
    private_folder(root)
    for parent in sorted({rel.rpartition("/")[0] for rel in relatives} - {""}):
        private_folder(root.joinpath(*parent.split("/")))


def _destination_is_shared(destination: Path, *, create: bool) -> bool:
    try:
        st = os.stat(destination)
    except FileNotFoundError:
        if not create:
            return False
        try:
            destination.mkdir(parents=True, exist_ok=True)
            st = os.stat(destination)
        except OSError as exc:
            raise StateError(
                f"cannot create the destination {destination}: {exc.strerror or exc}",
                hint="check the manifest's destination and that you may write there",
            ) from None
    except OSError as exc:
        raise StateError(
            f"cannot read the destination {destination}: {exc.strerror or exc}",
            hint="check the manifest's destination and its permissions",
        ) from None
    if not stat.S_ISDIR(st.st_mode):
        raise StateError(
            f"the destination {destination} is not a folder",
            hint="check `destination:` in the manifest",
        )
    return bool(st.st_mode & _SHARED_WRITE)


def _check_level(level: Path, destination: Path, *, shared_ok: bool, create: bool) -> bool:
    try:
        st = os.lstat(level)
    except FileNotFoundError:
        if not create:
            return False
        try:
            os.mkdir(level, 0o700)
        except FileExistsError:
            pass  # a concurrent run made it: check what is there now
        except OSError as exc:
            raise StateError(
                f"cannot create {level}: {exc.strerror or exc}",
                hint="check free space and that you may write in the destination",
            ) from None
        st = os.lstat(level)
    if stat.S_ISLNK(st.st_mode):
        raise _refuse(level, "is a symbolic link", destination)
    if not stat.S_ISDIR(st.st_mode):
        raise _refuse(level, "is not a folder", destination)
    if st.st_uid != os.geteuid():
        raise _refuse(
            level,
            f"belongs to user id {st.st_uid}, not to you (user id {os.geteuid()})",
            destination,
            hint=f"run immsync as the user who owns {level}, or have it removed; "
            "another user's folder could hold links that redirect what immsync writes",
        )
    if st.st_mode & _SHARED_WRITE and not shared_ok:
        raise _refuse(
            level,
            "is writable by group or others while the destination is not",
            destination,
            hint=f"run `chmod go-w {level}` if you made it so, then run again",
        )
    return True


def _refuse(
    path: Path, what: str, destination: Path | None = None, *, hint: str | None = None
) -> StateError:
    top = destination if destination is not None else path.parent
    return StateError(
        f"refusing to use {path}: it {what}",
        hint=hint or _FIX_HINT.format(top=top),
    )
