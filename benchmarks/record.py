"""The provenance record every benchmark writes next to its results: command, commit, versions, machine."""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

PACKAGES = ("peft-equi", "torch", "e3nn", "mace-torch", "sevenn", "nequip", "cuequivariance-torch", "numpy", "ase")
ROOT = Path(__file__).resolve().parents[1]


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def run_record() -> dict[str, Any]:
    """Command line, git commit (and whether the tree had changes), package versions and machine facts.

    Take it when the run starts (the code that runs is the code of that commit); add
    ``finished`` with :func:`finished` when writing results.
    """
    import torch

    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "started": _now(),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
        "python": platform.python_version(),
        "packages": {name: _version(name) for name in PACKAGES},
        "machine": {
            "platform": platform.platform(),
            "cpu": _cpu_model(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.is_available(),
        },
    }


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def finished(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with the current time as ``finished``."""
    return record | {"finished": _now()}


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON atomically (a killed run never leaves half a file)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)


def add_run_arguments(parser, dtype: str | None = "float32", dtype_help: str = "floating-point precision") -> None:
    """The flags every benchmark that runs a model shares: ``--dtype``, ``--threads``, ``--output``."""
    parser.add_argument("--dtype", choices=("float32", "float64"), default=dtype, help=dtype_help)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--output", type=Path, help="results folder (default: under benchmarks/results/)")


def start_run(args) -> dict[str, Any]:
    """The run record, taken now (before any result exists), and torch's threads set from ``--threads``."""
    record = run_record()
    if args.threads:
        import torch  # here, not at the top: data generators import this module before torch (tblite)

        torch.set_num_threads(args.threads)
    return record
