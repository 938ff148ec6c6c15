"""A run's output directory: one run at a time, checked before anything is trained, replaced whole on overwrite.

:class:`RunDirectory` claims ``output`` for a run (the first process does it; the others only
write nothing):

* **Lock.** ``fcntl.flock`` on the directory itself, held until the run ends: a second run
  into the same directory (any mode) is refused with one line.  The kernel drops the lock
  when the process ends, however it ends (``SIGKILL`` included), so no stale lock remains;
  nothing is written for it.  (Locks are advisory and local: a directory shared over NFS
  between machines is not protected.)
* **Checks before training.** ``output`` must be a directory (created if missing) holding no
  symbolic link anywhere (a run replaces its files: it never writes through a link into
  another place); a non-empty one needs ``resume`` or ``overwrite``, and ``overwrite`` refuses
  files a run does not write; a probe file is created and removed, so that a read-only
  directory fails now, not after training.
* **Overwrite.** The new run is written into a sibling ``.<name>.overwrite`` and swapped in
  by :meth:`RunDirectory.commit` once all its outputs are written: the previous run stays
  complete in ``output`` whatever happens before (bad data found late, out of memory, a full
  disk, ``SIGKILL``).  The swap is two renames; a crash between them leaves the previous run
  in ``.<name>.previous``.  A failed run's sibling is removed (:meth:`RunDirectory.close`);
  one left by a killed process is removed by the next ``overwrite``.
* **A failed run leaves no trace.** Folders the run created and left empty (it failed before
  writing anything) are removed when it ends without :meth:`RunDirectory.commit`.

A run writes ``results.json`` last (:func:`~peft_equi_train.outputs.write_outputs`):
:func:`finished_run` refuses a directory without it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from peft_equi.errors import PeftEquiError, one_line
from peft_equi_train.outputs import RUN_FILES

log = logging.getLogger(__name__)

#: A file left by an interrupted atomic write of a run file (``.results.json.<16 hex>.tmp``, ``...model``).
_PARTIAL = re.compile(r"\.(?P<name>[^/]+?)\.[0-9a-f]{16}\.[A-Za-z0-9.-]+")


class RunDirectory:
    """The output directory of one run (see the module's doc); ``work`` is where the run writes."""

    def __init__(self, output: Path, resume: bool, overwrite: bool, first_process: bool = True) -> None:
        self.output = Path(output)
        self.resume, self.overwrite, self.first_process = resume, overwrite, first_process
        self.work = self.output
        self.staged = False
        self.committed = False
        self._lock: int | None = None
        self._created: Path | None = None  # the outermost folder open() created, removed again if left empty

    def open(self) -> RunDirectory:
        """Claim and check ``output`` (first process only); raise :class:`PeftEquiError` on one line if it cannot be."""
        if not self.first_process:
            return self
        output = self.output
        if output.exists() and not output.is_dir():
            raise PeftEquiError(f"output {output} exists and is not a directory")
        self._created = next((p for p in reversed((output, *output.parents)) if not p.exists()), None)
        try:
            output.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PeftEquiError(f"cannot create the output directory {output}: {one_line(exc)}") from None
        self._lock = _lock(output)
        try:
            self._check(output)
        except BaseException:
            self.close()
            raise
        return self

    def _check(self, output: Path) -> None:
        links = _symlinks(output)
        if links:
            raise PeftEquiError(
                f"output {output} holds symbolic links ({', '.join(links[:5])}): a run writes only its own files, "
                "never through a link; replace them by the files or choose another --output"
            )
        entries = sorted(p.name for p in output.iterdir())
        if entries and not self.resume:
            if not self.overwrite:
                raise PeftEquiError(
                    f"output {output} is not empty (a previous run?): give --resume to continue it, "
                    f"--overwrite to replace it, or another --output"
                )
            foreign = [name for name in entries if not _run_output(output / name)]
            if foreign:
                raise PeftEquiError(
                    f"not overwriting {output}: it holds files a run does not write ({', '.join(foreign[:5])}"
                    f"{', ...' if len(foreign) > 5 else ''}); remove them or choose another --output"
                )
            self.work = _sibling(output, "overwrite")
            _remove(self.work)  # left by a killed run
            try:
                self.work.mkdir()
            except OSError as exc:
                raise PeftEquiError(f"cannot create {self.work} for the new run: {one_line(exc)}") from None
            self.staged = True
        _check_writable(self.work)

    def commit(self) -> None:
        """The run is complete: with ``overwrite``, swap the new run in place of the previous one."""
        self.committed = True
        if not self.staged:
            return
        previous = _sibling(self.output, "previous")
        _remove(previous)
        os.rename(self.output, previous)
        try:
            os.rename(self.work, self.output)
        except OSError:
            os.rename(previous, self.output)
            raise
        self.staged, self.work = False, self.output
        _remove(previous)
        log.info("overwrite: the previous run in %s was replaced", self.output)

    def close(self) -> None:
        """Release the lock; an uncommitted ``overwrite`` run's files are removed (the previous run stays), and so
        are the folders an uncommitted run created and left empty."""
        if self.staged:
            _remove(self.work)
            self.staged, self.work = False, self.output
        if not self.committed and self._created is not None:  # before the lock goes: no other run is in there
            _remove_empty(self.output, self._created)
            self._created = None
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None


def _remove_empty(directory: Path, outermost: Path) -> None:
    """Remove ``directory`` and its parents up to ``outermost`` while they are empty."""
    while True:
        try:
            directory.rmdir()
        except OSError:  # not empty (the run wrote something to keep), or already gone
            return
        if directory == outermost:
            return
        directory = directory.parent


def _lock(directory: Path) -> int:
    """An exclusive ``flock`` on ``directory`` (a file descriptor to close to release it); refused if held."""
    import fcntl

    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.fstat(descriptor).st_ino != os.stat(directory).st_ino:  # replaced meanwhile (an overwrite's swap)
            raise BlockingIOError
    except BlockingIOError:
        os.close(descriptor)
        raise PeftEquiError(
            f"output {directory} is in use by another run (it holds the directory's lock): wait for it to end, "
            "or choose another --output"
        ) from None
    return descriptor


def _symlinks(directory: Path) -> list[str]:
    """Symbolic links under ``directory`` (relative paths), not followed."""
    found = []
    for root, dirs, files in os.walk(directory, followlinks=False):
        for name in dirs + files:
            path = Path(root, name)
            if path.is_symlink():
                found.append(str(path.relative_to(directory)))
    return sorted(found)


def _check_writable(directory: Path) -> None:
    try:
        descriptor, probe = tempfile.mkstemp(dir=directory, prefix=".write-probe-")
        os.close(descriptor)
        os.unlink(probe)
    except OSError as exc:
        raise PeftEquiError(f"output {directory} is not writable: {one_line(exc)}") from None


def _sibling(output: Path, role: str) -> Path:
    return output.parent / f".{output.name}.{role}"


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def _run_output(path: Path) -> bool:
    """Whether ``path`` (an entry of an output directory) is something a run writes."""
    partial = _PARTIAL.fullmatch(path.name)
    if path.name in RUN_FILES or (partial is not None and partial["name"] in RUN_FILES):
        return path.is_file()
    if path.name == "tensorboard":
        return path.is_dir()
    if path.name == "adapter":  # only a saved adapter (or an empty folder): files, with its config among them
        if not path.is_dir() or not all(p.is_file() for p in path.iterdir()):
            return False
        return (path / "adapter_config.json").is_file() or not any(path.iterdir())
    return False


def finished_run(run: Path) -> dict[str, Any]:
    """The energy correction of a finished run directory (``{"atomic_numbers", "delta_eV"}``).

    A run writes ``results.json`` last: without it (or with unreadable records) the run did
    not finish, and :class:`PeftEquiError` says so on one line.
    """
    run = Path(run)
    if not run.is_dir():
        raise FileNotFoundError(f"run directory not found: {run}")
    if not (run / "results.json").is_file():
        raise PeftEquiError(
            f"{run} is not a finished run (no results.json, which a run writes last): it stopped before "
            "writing its outputs; --resume it, or give another --run"
        )
    try:
        json.loads((run / "results.json").read_text(encoding="utf-8"))
        correction = json.loads((run / "energy_correction.json").read_text(encoding="utf-8"))
        elements, delta = correction["atomic_numbers"], correction["delta_eV"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PeftEquiError(f"{run}: unreadable run records ({type(exc).__name__}: {one_line(exc)})") from None
    if not (
        isinstance(elements, list)
        and isinstance(delta, list)
        and len(elements) == len(delta)
        and all(type(z) is int for z in elements)
        and all(type(d) in (int, float) and math.isfinite(d) for d in delta)
    ):
        raise PeftEquiError(
            f"{run}/energy_correction.json: expected atomic_numbers (integers) and as many finite delta_eV"
        )
    return {"atomic_numbers": elements, "delta_eV": delta}
