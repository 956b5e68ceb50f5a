"""Every file kvprobe reads or writes passes here first: inputs must be regular files of a
bounded size (a FIFO or /dev/zero would hang a reader), outputs are checked before any work
starts (never onto an input, compared by inode, a folder's files too; never over an existing
file without --force, into a folder that can take them), and a run's result is locked
against a second run writing it too. No output is written through a link: files are made new
(mkstemp, O_EXCL) and renamed into place, and the lock is opened with O_NOFOLLOW.

Checks change nothing on disk: a folder that does not exist yet is created only when the
first file is written into it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hashlib
import io
import json
import os
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kvprobe.infra.display import visible
from kvprobe.infra.errors import UserError

MiB = 1 << 20


def _kind(mode: int) -> str:
    """What a non-regular file is, in words."""
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


# File systems whose files the kernel makes as they are read: a /proc file is "regular" with
# st_size 0, and some block (/proc/kmsg) or never end. No input of kvprobe's lives there.
PSEUDO_FS = frozenset({
    "proc", "sysfs", "debugfs", "tracefs", "securityfs", "cgroup", "cgroup2", "configfs", "pstore", "bpf",
    "fusectl", "efivarfs", "binfmt_misc", "devpts", "mqueue", "rpc_pipefs", "nsfs", "selinuxfs",
})  # fmt: skip
PSEUDO_ROOTS = ("/proc", "/sys")
# O_NONBLOCK: opening a FIFO never waits for a writer; O_NOCTTY: a terminal never becomes ours.
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_BLOCK = 1 << 22  # bytes per read while hashing or reading a large input


@functools.lru_cache(maxsize=1)
def _pseudo_devices() -> frozenset[int]:
    """The st_dev of /proc, /sys and every mounted pseudo file system (from mountinfo)."""
    devices: set[int] = set()
    for root in PSEUDO_ROOTS:
        with contextlib.suppress(OSError):
            devices.add(os.stat(root).st_dev)
    try:
        with open("/proc/self/mountinfo", "rb") as fh:
            text = fh.read(8 << 20).decode("utf-8", "replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        fields, sep, rest = line.partition(" - ")
        numbers, fstype = fields.split(), rest.split()[:1]
        if sep and len(numbers) > 2 and fstype and fstype[0] in PSEUDO_FS:
            major, _, minor = numbers[2].partition(":")
            with contextlib.suppress(ValueError):
                devices.add(os.makedev(int(major), int(minor)))
    return frozenset(devices)


def _on_pseudo_fs(path: Path, st: os.stat_result) -> bool:
    if st.st_dev in _pseudo_devices():
        return True
    real = os.path.realpath(path)
    return any(real == root or real.startswith(root + "/") for root in PSEUDO_ROOTS)


def _check_input(path: Path, st: os.stat_result, what: str, fix: str, max_bytes: int | None) -> None:
    """A regular file, not on a pseudo file system, of at most `max_bytes`."""
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"{what} {shown_path(path)} is {_kind(st.st_mode)}, not a regular file: {fix}")
    if _on_pseudo_fs(path, st):
        raise UserError(
            f"{what} {shown_path(path)} is on a pseudo file system (/proc, /sys and the like: the kernel "
            f"makes its files as they are read), not a file kvprobe reads: {fix}"
        )
    if max_bytes is not None and st.st_size > max_bytes:
        raise UserError(
            f"{what} {shown_path(path)} is {st.st_size / MiB:,.1f} MiB, more than the "
            f"{max_bytes / MiB:,.0f} MiB kvprobe reads: {fix}"
        )


def _unreadable(path: Path, what: str, fix: str, exc: OSError | ValueError) -> UserError:
    if isinstance(exc, FileNotFoundError):
        return UserError(f"{what} {shown_path(path)} not found: {fix}")
    reason = getattr(exc, "strerror", None) or exc  # ValueError: a NUL byte in the path
    return UserError(f"{what} {shown_path(path)} cannot be read ({reason}): {fix}")


def _open_checked(path: Path, what: str, fix: str, max_bytes: int | None) -> tuple[int, os.stat_result]:
    """A descriptor of the input and its fstat. The path's stat is checked first (a device is
    never opened), then what was opened (the path may have been swapped in between)."""
    try:
        _check_input(path, os.stat(path), what, fix, max_bytes)  # follows links: one to /dev/zero is it
        fd = os.open(path, _OPEN_FLAGS)
    except (OSError, ValueError) as exc:
        raise _unreadable(path, what, fix, exc) from None
    try:
        st = os.fstat(fd)
        _check_input(path, st, what, fix, max_bytes)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd, st


@contextlib.contextmanager
def open_input(
    path: Path, what: str, fix: str, *, max_bytes: int | None = None
) -> Iterator[tuple[io.BufferedReader, os.stat_result]]:
    """The one way kvprobe opens a file it reads: a regular file (never a FIFO, a device, a
    folder or a file of /proc or /sys) of at most `max_bytes`, opened without blocking and
    checked by its open descriptor; with that descriptor's stat. Anything else is a one-line
    UserError naming `what`, the problem and `fix`."""
    fd, st = _open_checked(Path(path), what, fix, max_bytes)
    with os.fdopen(fd, "rb") as fh:
        yield fh, st


def input_file(path: Path, what: str, fix: str, *, max_bytes: int | None = None) -> os.stat_result:
    """The stat of an input that must be a regular file (of at most `max_bytes`, see
    open_input); else a one-line UserError naming `what`, the real problem and `fix`."""
    fd, st = _open_checked(Path(path), what, fix, max_bytes)
    os.close(fd)
    return st


def read_input_bytes(path: Path, what: str, fix: str, *, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most `max_bytes`, read with that bound (a file that
    grows while it is read cannot make the read unbounded)."""
    try:
        with open_input(path, what, fix, max_bytes=max_bytes) as (fh, st):
            chunks = [fh.read(st.st_size + 1)]  # one allocation of the file's size, one byte more
            size = len(chunks[0])
            while size > st.st_size and size <= max_bytes:  # it grew since: on, in bounded steps
                chunk = fh.read(min(_BLOCK, max_bytes + 1 - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
    except OSError as exc:
        raise _unreadable(path, what, fix, exc) from None
    if size > max_bytes:
        raise UserError(
            f"{what} {shown_path(path)} grew past {max_bytes / MiB:,.0f} MiB while it was read: {fix}"
        )
    return b"".join(chunks)


def read_input_text(path: Path, what: str, fix: str, *, max_bytes: int) -> str:
    """A bounded regular file as UTF-8 text."""
    data = read_input_bytes(path, what, fix, max_bytes=max_bytes)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{what} {shown_path(path)} is not UTF-8 text ({exc.reason} at byte {exc.start}): {fix}"
        ) from None


Stamp = tuple[int, int, int, int, int]  # st_size, st_mtime_ns, st_ctime_ns, st_ino, st_dev


def stamp(st: os.stat_result) -> Stamp:
    """What changes whenever a file's bytes do: a rewrite in place moves the times (the
    status change time cannot be set back), a replacement changes the inode."""
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


@dataclass(frozen=True)
class Fingerprint:
    """An input a run relies on not changing, by content (sha256) and by stat (stamp): `changed`
    compares the stat (cheap: at every unit), `verify` also the content (at the end)."""

    path: Path
    what: str  # "model file", "haystack file"
    sha256: str
    stamp: Stamp

    def changed(self) -> str | None:
        """How the file at `path` is no longer the one hashed, in words; None if it still is."""
        try:
            now = stamp(os.stat(self.path))
        except (OSError, ValueError) as exc:
            return f"{self.what} {self.path} is gone ({getattr(exc, 'strerror', None) or exc})"
        if now[3:] != self.stamp[3:]:
            return f"{self.what} {self.path} was replaced by another file"
        if now[0] != self.stamp[0]:
            return f"{self.what} {self.path} changed size ({self.stamp[0]:,} bytes, now {now[0]:,})"
        if now != self.stamp:
            return f"{self.what} {self.path} was written to (its modification or status time moved)"
        return None

    def verify(self, fix: str) -> tuple[str | None, Fingerprint]:
        """The content hashed again: how the file is no longer what was hashed (None if its bytes
        are the same), and its fingerprint now (the same bytes written again are the same input)."""
        try:
            now = fingerprint_input(self.path, self.what, fix)
        except UserError:
            return self.changed() or f"{self.what} {self.path} cannot be read as it was", self
        if now.sha256 != self.sha256:
            return self.changed() or f"{self.what} {self.path} has other contents than it had", now
        return None, now


def fingerprint_input(path: Path, what: str, fix: str, *, max_bytes: int | None = None) -> Fingerprint:
    """The sha256 of an input read through open_input, with the stamp it had while it was read
    (a file written to during the hashing is refused: its hash would describe no file)."""
    digest = hashlib.sha256()
    buffer = bytearray(_BLOCK)
    view = memoryview(buffer)
    try:
        with open_input(path, what, fix, max_bytes=max_bytes) as (fh, st):
            while n := fh.readinto(view):
                digest.update(view[:n])
            after = os.fstat(fh.fileno())
    except OSError as exc:
        raise _unreadable(path, what, fix, exc) from None
    fingerprint = Fingerprint(Path(path), what, digest.hexdigest(), stamp(st))
    if stamp(after) != fingerprint.stamp or fingerprint.changed() is not None:
        raise UserError(
            f"{what} {shown_path(path)} changed while it was read: wait until it is whole, then {fix}"
        )
    return fingerprint


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file (links and hard links included)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


@dataclass(frozen=True)
class Output:
    """A path a command will write: `option` names it in messages (`--out`, `--html`)."""

    path: Path
    option: str
    folder: bool = False  # a folder of files (--png DIR), not one file
    may_exist: bool = False  # replaced as part of the command's own state (a journal)
    files: tuple[str, ...] = ()  # of a folder: the names the command writes in it (--png's figures)


# What to do about an error of the system, by errno: the second half of its one line.
_SYSTEM_FIXES = {
    errno.ENAMETOOLONG: "give a shorter path",
    errno.ENOSPC: "free space on that disk (or choose a folder on another one) and run it again",
    errno.EDQUOT: "free space within your disk quota (or choose another folder) and run it again",
    errno.EFBIG: "a file would pass the size limit (ulimit -f): raise it or choose another folder",
    errno.EROFS: "the file system is read-only: choose a folder on a writable one",
    errno.EIO: "the device reported an input/output error: check it (dmesg) and run it again",
    errno.EACCES: "choose a path you may write, or change its permissions",
    errno.EPERM: "the file is protected (immutable or append-only): choose another path",
    errno.ELOOP: "a path runs into a loop of symbolic links: fix the links or give another path",
    errno.EMFILE: "too many open files: raise the limit (ulimit -n) and run it again",
    errno.ENFILE: "the system has too many open files: close some programs and run it again",
    errno.ENOMEM: "the system is out of memory: close other programs and run it again",
    errno.EPIPE: "the program reading kvprobe's output stopped before the end: let it read everything",
}


def system_fix(exc: OSError) -> str:
    """What the user can do about an error of the system (a full disk, a path too long)."""
    return _SYSTEM_FIXES.get(exc.errno or 0, "fix the cause and run it again")


def shown_path(path: object, limit: int = 200) -> str:
    """A path for a one-line message: one of thousands of characters is cut in the middle."""
    text = os.fsdecode(path) if isinstance(path, (str, bytes, os.PathLike)) else str(path)
    return text if len(text) <= limit else f"{text[: limit // 2]}...{text[-limit // 3 :]}"


def _stat(path: Path, option: str, *, follow: bool) -> os.stat_result | None:
    """The stat of a path an output will use, None where nothing is; a path the system cannot
    look at (too long, a loop of links) is a one-line UserError naming the option."""
    try:
        return os.stat(path, follow_symlinks=follow)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise UserError(
            f"{option} {shown_path(path)} cannot be used ({exc.strerror or exc}): {system_fix(exc)}"
        ) from None
    except ValueError:  # a NUL byte
        raise UserError(f"{option} {shown_path(path)} is not a path (it holds a NUL byte)") from None


def nearest_existing(path: Path, option: str = "--out") -> Path:
    """`path`'s nearest ancestor (or itself) that exists."""
    current = path.absolute()
    while _stat(current, option, follow=True) is None and current != current.parent:
        current = current.parent
    return current


def check_folder_writable(folder: Path, option: str, shown: Path) -> None:
    """The folder that will hold `shown` can be created and written: the nearest existing
    ancestor is a folder, and a real write there succeeds (root passes os.access on a
    read-only file system)."""
    existing = nearest_existing(folder, option)
    if not existing.is_dir():
        raise UserError(
            f"cannot create the folder for {option} {shown_path(shown)}: {shown_path(existing)} is a file, "
            "not a folder; choose another path"
        )
    try:
        fd, probe = tempfile.mkstemp(prefix=".kvprobe-write-check-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UserError(
            f"folder {shown_path(existing)} is not writable ({exc.strerror or exc}): choose another {option}"
        ) from None


FileId = tuple[int, int]  # st_dev, st_ino: one file, whatever names (links, hard links) it has


def _input_ids(inputs: list[Path]) -> dict[FileId, Path]:
    """Each input that exists, by the file it is (a link is its target)."""
    found: dict[FileId, Path] = {}
    for source in inputs:
        with contextlib.suppress(OSError, ValueError):  # not there, or unreadable: its reader says
            st = os.stat(source)
            found.setdefault((st.st_dev, st.st_ino), source)
    return found


def _check_file(path: Path, option: str, inputs: dict[FileId, Path], *, replace: bool) -> None:
    """One file an output writes: not an input (by inode: a link or a hard link to one is it),
    not a folder, FIFO or device, not a broken link, and not there unless `replace`."""
    st = _stat(path, option, follow=False)
    if st is not None and stat.S_ISLNK(st.st_mode):
        st = _stat(path, option, follow=True)
        if st is None:
            raise UserError(f"{option} {shown_path(path)} is a broken link: remove it or choose another path")
    if st is None:
        return
    source = inputs.get((st.st_dev, st.st_ino))
    if source is not None:
        raise UserError(
            f"{option} {shown_path(path)} is also an input of this command ({shown_path(source)}): writing "
            "it would destroy it; choose another path"
        )
    if stat.S_ISDIR(st.st_mode):
        raise UserError(f"{option} {shown_path(path)} is a folder, not a file: choose another path")
    if not stat.S_ISREG(st.st_mode):
        raise UserError(
            f"{option} {shown_path(path)} is {_kind(st.st_mode)}, not a regular file: choose another path"
        )
    if not replace:
        raise UserError(f"{option} {shown_path(path)} already exists: choose another name or pass --force")


def _targets(out: Output) -> list[Path]:
    """The files an output writes: itself, or the named files in its folder (never outside it)."""
    if not out.folder:
        return [out.path]
    for name in out.files:
        if name in ("", ".", "..") or os.sep in name or "\x00" in name:
            raise UserError(f"{out.option} {shown_path(out.path)}: {name[:80]!r} is not a file name in it")
    return [out.path / name for name in out.files]


def _check_folder(out: Output) -> None:
    """A folder output is a folder, or nothing yet."""
    st = _stat(out.path, out.option, follow=True)
    if st is None and _stat(out.path, out.option, follow=False) is not None:
        raise UserError(
            f"{out.option} {shown_path(out.path)} is a broken link: remove it or choose another path"
        )
    if st is not None and not stat.S_ISDIR(st.st_mode):
        raise UserError(
            f"{out.option} {shown_path(out.path)} is a file, not a folder: give a folder for the files"
        )


def check_outputs(outputs: list[Output], inputs: list[Path], *, force: bool) -> None:
    """Before any work starts: each file an output writes (a folder's too) is not an input of
    the command, not written by another output, not over an existing file unless `force` (or
    the output's own state), and its folder can take it. Nothing is created. Inputs are
    compared by inode, so `--force` replaces an earlier output, never an input."""
    sources = _input_ids(inputs)
    claimed: dict[str, str] = {}
    for out in outputs:
        if out.folder:
            _check_folder(out)
        targets = _targets(out)
        for target in {out.path, *targets}:
            key = os.path.abspath(target)
            if key in claimed:
                raise UserError(
                    f"{out.option} {shown_path(target)} is also the {claimed[key]} path: give each output "
                    "its own path"
                )
            claimed[key] = out.option
        for target in targets:
            _check_file(target, out.option, sources, replace=force or out.may_exist)
        check_folder_writable(out.path if out.folder else out.path.parent, out.option, out.path)


def lock_path(out: Path) -> Path:
    return out.with_name(out.name + ".lock")


def _odd_lock(st: os.stat_result) -> str | None:
    """Why a lock path may not be written, or None: kvprobe writes its owner into a regular
    file of one name only (through a link, or into a hard link, it would overwrite another file)."""
    if stat.S_ISLNK(st.st_mode):
        return "is a symbolic link"
    if not stat.S_ISREG(st.st_mode):
        return f"is {_kind(st.st_mode)}"
    if st.st_nlink > 1:
        return "has other names (hard links)"
    return None


def _open_lock(out: Path, *, create: bool) -> int | None:
    """The descriptor of `out`'s lock file, opened for writing without following a link
    (O_NOFOLLOW) or waiting (a FIFO), and checked before and after the open; None where there
    is none and `create` is off. Anything that is not a plain file of kvprobe's is one line."""
    path = lock_path(out)
    fix = f"remove it, or choose another --out than {shown_path(out)}"
    st = _stat(path, "the lock file", follow=False)
    if st is None and not create:
        return None
    if st is not None and (odd := _odd_lock(st)) is not None:  # a device is never opened
        raise UserError(f"the lock file {shown_path(path)} {odd}, so kvprobe will not write it: {fix}")
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(path, flags | (os.O_CREAT if create else 0), 0o644)
    except FileNotFoundError:
        return None  # removed by the run that held it, just now
    except OSError as exc:
        what = "is a symbolic link" if exc.errno == errno.ELOOP else f"cannot be written ({exc.strerror})"
        raise UserError(f"the lock file {shown_path(path)} {what}: {fix}") from None
    odd = _odd_lock(os.fstat(fd))  # what was opened: the name may have been swapped meanwhile
    if odd is not None:
        os.close(fd)
        raise UserError(f"the lock file {shown_path(path)} {odd}, so kvprobe will not write it: {fix}")
    return fd


def _held(out: Path) -> UserError:
    return UserError(
        f"another kvprobe run is writing {shown_path(out)} ({_holder(lock_path(out))}): wait for it to "
        "finish, or choose another --out"
    )


def refuse_if_locked(out: Path) -> None:
    """Before any other check of a run onto `out`: a run already writing it is the real
    problem, whatever else its files look like now; a lock path kvprobe could not write
    (a link, a folder, a FIFO, an immutable file) is refused now too."""
    fd = _open_lock(out, create=False)
    if fd is None:
        return  # no lock file: nobody holds it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        raise _held(out) from None
    finally:
        os.close(fd)  # closing drops a lock taken here


def _holder(path: Path) -> str:
    """Who holds a lock, from its file: text another process wrote, so made safe to show
    (display.visible) wherever the message goes (a terminal, a sweep's log and manifest)."""
    try:  # the bounded reader: a lock file that is a FIFO or a link to /dev/zero must not hang this
        owner = json.loads(read_input_bytes(path, "lock file", "", max_bytes=4096))
        said = f"pid {int(owner['pid'])}, started {str(owner['started'])[:40]}: {str(owner['command'])[:200]}"
        return visible(said)
    except (UserError, ValueError, KeyError, TypeError, RecursionError):
        return "its lock file names no owner yet"


class OutputLock:
    """An exclusive lock on a result path (flock on `<out>.lock`), held from validation until
    the run ends: a second run onto the same --out (or the same journal) refuses at once,
    naming the first. The kernel drops the lock with the process, so a killed run leaves
    nothing stale behind; the file itself is removed when the lock is released."""

    def __init__(self, out: Path, owner: dict[str, Any]):
        self.path = lock_path(out)
        self._fd: int | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(
                f"cannot create the folder of {shown_path(out)} ({exc.strerror or exc}): {system_fix(exc)}"
            ) from None
        while self._fd is None:
            fd = _open_lock(out, create=True)
            if fd is None:
                continue  # removed between our look and our open: look again
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise UserError(
                        f"cannot lock {shown_path(self.path)} ({exc.strerror}): choose another --out"
                    ) from None
                raise _held(out) from None
            # The file may have been removed by its last holder between our open and our lock:
            # then the lock is on a name nobody else sees, and we try again.
            if self._same_inode(fd):
                self._fd = fd
            else:
                os.close(fd)
        self._write_owner(owner)

    def _write_owner(self, owner: dict[str, Any]) -> None:
        """Who holds the lock, for the message of a second run. A write that fails (a full disk)
        releases the lock: no empty lock file is left behind."""
        assert self._fd is not None
        data = (json.dumps(owner) + "\n").encode()
        try:
            os.ftruncate(self._fd, 0)  # a lock file left by a killed run
            done = 0
            while done < len(data):
                done += os.pwrite(self._fd, data[done:], done)
        except OSError as exc:
            self.release()
            raise UserError(
                f"cannot write the lock file {shown_path(self.path)} ({exc.strerror or exc}): "
                f"{system_fix(exc)}"
            ) from None

    def _same_inode(self, fd: int) -> bool:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return False
        mine = os.fstat(fd)
        return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()  # while still held: a run waiting on the old inode retries
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> OutputLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def write_atomically(path: Path, data: bytes, option: str) -> None:
    """Write a page or a figure whole or not at all: a temporary file in the same folder
    (created anew, so no link is written through), fsync'd, then renamed over the target. The
    folder is created if it is missing."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise UserError(
            f"cannot write {option} {shown_path(path)} ({exc.strerror or exc}): {system_fix(exc)}"
        ) from None
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; a page is an ordinary file
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise UserError(
            f"cannot write {option} {shown_path(path)} ({exc.strerror or exc}): {system_fix(exc)}"
        ) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    note_written(path)


# Every file this process has written, with what to do with it next (a journal: resume it):
# what an interrupt or a failure of the system says it leaves behind.
_WRITTEN: dict[Path, str] = {}


def note_written(path: Path, then: str = "") -> None:
    _WRITTEN.setdefault(Path(path).absolute(), then)


def forget_written() -> None:
    """A new command starts (main is called more than once in one process by tests)."""
    _WRITTEN.clear()


def written_files() -> str:
    """The files written so far that are still there, for a one-line message: 'r.json, r.html'
    (with what to do next where there is something), or '' when there are none."""
    found = []
    for path, then in _WRITTEN.items():
        with contextlib.suppress(OSError, ValueError):
            if path.is_file():
                found.append(f"{shown_path(path, 120)}{f' ({then})' if then else ''}")
    return ", ".join(found)
