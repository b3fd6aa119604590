"""Atomic file-system writes: the one way budgetlm puts a file or a folder on disk.

Readers must never see half a result. Every writer here writes under a temporary name in the same
folder, flushes it to the disk (fsync), then renames it into place, which POSIX makes atomic:

    atomic_write_text(path, text) / atomic_write_json(path, obj) / atomic_write_bytes(path, data)
    with atomic_file(path) as fh: ...             a file written piece by piece
    with atomic_dir(out, replace=...) as tmp: ... a folder built in `tmp`, then swapped in

Temporary names start with `.` and contain `.tmp-`, so folder listings and `remove_stale_temps`
recognise them; a crash leaves at most such a temporary behind, never a damaged result.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import IO, Any, Iterator

TMP_MARK = ".tmp-"


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 4 MiB blocks (checkpoint and dataset checksums)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def fsync_dir(path: str | Path) -> None:
    """Flush a folder's entries (a rename into it) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(root: str | Path) -> None:
    """fsync every file under `root`, then every folder (deepest first)."""
    root = Path(root)
    folders = [root]
    for p in root.rglob("*"):
        if p.is_file():
            with open(p, "rb+") as fh:
                os.fsync(fh.fileno())
        elif p.is_dir():
            folders.append(p)
    for d in sorted(folders, key=lambda d: len(d.parts), reverse=True):
        fsync_dir(d)


def temp_prefix(name: str) -> str:
    """How the temporaries of a file or folder called `name` begin, whichever process writes them."""
    return f".{name}{TMP_MARK}"


def temp_name(path: str | Path) -> Path:
    """The temporary sibling a write of `path` goes through (hidden, per process)."""
    path = Path(path)
    return path.with_name(f"{temp_prefix(path.name)}{os.getpid()}")


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Yield a handle on a temporary sibling of `path`; on success fsync and rename it to `path`.
    On an exception the temporary is removed and `path` is left as it was."""
    path = Path(path)
    tmp = temp_name(path)
    binary = "b" in mode
    try:
        with open(tmp, mode, encoding=None if binary else encoding) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_file(path, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_file(path, "w") as fh:
        fh.write(text)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """JSON (dataclasses, paths and tuples converted, see `config.to_dict`), indented, one final newline."""
    from budgetlm.config import to_dict

    atomic_write_text(path, json.dumps(to_dict(obj), indent=2) + "\n")


@contextlib.contextmanager
def atomic_dir(out: str | Path, replace: bool = False) -> Iterator[Path]:
    """Yield an empty temporary sibling of `out` to build a folder in; on success fsync it and rename
    it to `out`. With `replace`, an existing `out` is swapped out only now, after the new folder is
    complete, and then removed. On an exception the temporary is removed and `out` is untouched.
    Callers decide whether `out` may be replaced (see the write guard in `budgetlm.fsio` users)."""
    out = Path(out)
    if out.exists() and not replace:
        raise FileExistsError(f"{out} already exists")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(out)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        fsync_tree(tmp)
        if out.exists():
            old = out.with_name(f".{out.name}.old{TMP_MARK}{os.getpid()}")
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
        fsync_dir(out.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def is_temp(path: str | Path) -> bool:
    """A temporary left by one of the writers above (or by a checkpoint save)."""
    name = Path(path).name
    return name.startswith(".") and TMP_MARK in name


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Remove temporaries that crashed writers left in `folder` (not recursive); return them.
    Only call this on a folder the caller holds the write lock of."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        if is_temp(p):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    p.unlink()
            removed.append(p)
    return removed


# --------------------------------------------------------------------------------------------------
# the write guard: what a command may write, and who is writing


MARKER = ".budgetlm.json"  # in every folder a command made: {"kind": ..., "version": 1}
LOCK = ".budgetlm.lock"  # flock'ed while a process writes the folder


def _bookkeeping(name: str) -> bool:
    """Our own files in an output folder: the lock, and the marker, also while a process writes it
    (under torchrun rank 0 claims the folder while the other ranks check it)."""
    return name in (MARKER, LOCK) or name.startswith(temp_prefix(MARKER))


def _relation(out: Path, src: Path) -> str | None:
    if out == src:
        return "is"
    if out in src.parents:
        return "contains"
    if src in out.parents:
        return "lies inside"
    return None


def check_output(out: str | Path, inputs: list[str | Path] = (), kind: str = "", overwrite: bool = False,
                 continuing: bool = False, made_by: str | None = None) -> Path:
    """Refuse an output that would destroy something the command did not make. Returns `out` resolved.

    - `out` must not be, contain or lie inside any input (an output never overwrites an input);
    - a plain file at `out` is never replaced;
    - an existing non-empty folder is replaced only with `overwrite`, and only if the same kind of
      command made it (its MARKER says so), so a user's own files are never removed;
      `continuing` (resume) accepts a folder of the same kind without `overwrite`.
    `made_by` overrides the marker (for folders written before markers existed).
    Raises BudgetError (a one-line message) otherwise."""
    from budgetlm.config import BudgetError

    out_r = Path(out).expanduser().resolve()
    for src in inputs:
        if not src:
            continue
        rel = _relation(out_r, Path(src).expanduser().resolve())
        if rel:
            raise BudgetError(f"the output {out} {rel} the input {src}: choose an output outside the inputs")
    if not out_r.exists() and not out_r.is_symlink():
        return out_r
    if not out_r.is_dir():
        raise BudgetError(f"{out} is a file, not a folder: choose another output (it is never replaced)")
    if all(_bookkeeping(p.name) for p in out_r.iterdir()):
        return out_r  # empty (or only our bookkeeping)
    made_by = made_by or read_marker(out_r)
    if continuing and made_by == kind:
        return out_r
    if not overwrite:
        raise BudgetError(f"{out} already exists and is not empty: choose another output"
                          + (" or pass --overwrite" if made_by == kind else ""))
    if made_by != kind:
        what = f"a budgetlm {made_by} folder" if made_by else "not a folder budgetlm made"
        raise BudgetError(f"{out} is {what}: --overwrite replaces only a {kind} output of budgetlm; "
                          "choose another output")
    return out_r


def check_output_file(out: str | Path, inputs: list[str | Path | None] = (), overwrite: bool = False) -> None:
    """An --output file never replaces an input (or a file inside an input folder), never is a folder,
    and replaces an existing file only with `overwrite`."""
    from budgetlm.config import BudgetError

    out = Path(out)
    for src in [p for p in inputs if p]:
        s = Path(src).resolve()
        if out.resolve() == s or s in out.resolve().parents:
            raise BudgetError(f"--output {out} would write over the input {src}: choose another file")
    if out.is_dir():
        raise BudgetError(f"--output {out} is a folder: give a file name")
    if out.exists() and not overwrite:
        raise BudgetError(f"--output {out} already exists: choose another file or pass --overwrite")


def read_marker(folder: str | Path) -> str | None:
    """The kind of command that made `folder`, or None."""
    try:
        data = json.loads((Path(folder) / MARKER).read_text(encoding="utf-8"))
        return str(data["kind"]) if isinstance(data, dict) and "kind" in data else None
    except (OSError, ValueError, KeyError):
        return None


def write_marker(folder: str | Path, kind: str) -> None:
    atomic_write_json(Path(folder) / MARKER, {"kind": kind, "version": 1})


class FolderLock:
    """An exclusive, non-blocking lock on a folder being written (flock on FOLDER/.budgetlm.lock).
    The kernel drops it when the process dies, so a crash never leaves a stale lock."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self._fh = None

    def __enter__(self) -> "FolderLock":
        import fcntl

        from budgetlm.config import BudgetError

        self.folder.mkdir(parents=True, exist_ok=True)
        fh = open(self.folder / LOCK, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise BudgetError(f"{self.folder} is being written by {holder}: wait for it, or use another folder") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"process {os.getpid()}")
        fh.flush()
        self._fh = fh
        return self

    def __exit__(self, *exc) -> None:
        import fcntl

        if self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None


def space_error(e: OSError, where: str | Path, need_bytes: int | None = None):
    """A BudgetError for a full disk (ENOSPC/EDQUOT), else None: the caller re-raises `e`."""
    import errno

    from budgetlm.config import BudgetError

    if e.errno not in (errno.ENOSPC, errno.EDQUOT):
        return None
    need = f" (needs about {need_bytes / 1e6:,.0f} MB)" if need_bytes else ""
    try:
        free = f"; {shutil.disk_usage(Path(where).resolve().parent if not Path(where).exists() else where).free / 1e6:,.0f} MB free"
    except OSError:
        free = ""
    return BudgetError(f"no space left on the device holding {where}{need}{free}: free some space and retry")


def remove_dead_temps(out: str | Path) -> list[Path]:
    """Remove the temporaries of `out` (`.NAME.tmp-PID` next to it) whose writing process is gone;
    those of a live process are left alone."""
    out = Path(out)
    removed = []
    for tmp in out.parent.glob(f"{temp_prefix(out.name)}*"):
        try:
            os.kill(int(tmp.name.rsplit("-", 1)[1]), 0)
        except (ValueError, IndexError, PermissionError):
            continue
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed
