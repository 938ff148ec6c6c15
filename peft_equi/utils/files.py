"""Files: written atomically, identified by their SHA-256.

What runs and commands write for others to read (checkpoints, adapters, the engine's and
``peft-equi merge``'s merged models, run outputs, data shards) goes through :func:`atomic_write`
(``save_adapted_mace`` and ``export_lammps`` write to the path they are given directly); every
file digest (resume checks, data records) is :func:`sha256`.  Only the standard library: data
generators import it before numpy or torch.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path

_BLOCK = 1 << 20


def sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes (read in blocks: any size)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Write ``path`` at once: ``write(tmp)`` writes a temporary file in the same directory, then it replaces
    ``path`` (``os.replace``).  Readers never see a half-written file; a failed write leaves ``path`` as it was.

    The temporary file is ``.<name>.<random>.tmp``, created empty (permissions from the umask, as
    ``open`` gives).  A writer that picks its own suffix (a model family's ``save``) returns the
    path it wrote (in the same directory): that file is moved instead.  Returns ``path``.
    """
    path = Path(path)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    written = tmp
    try:
        result = write(tmp)
        if isinstance(result, Path) and result != tmp:
            if result.parent != tmp.parent or result.name == path.name:
                raise ValueError(f"atomic_write: the writer wrote {result}, not a temporary file beside {path}")
            written = result
        os.replace(written, path)
    finally:
        tmp.unlink(missing_ok=True)
        written.unlink(missing_ok=True)
    return path
