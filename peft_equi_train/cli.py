"""The ``peft-equi`` command line: ``finetune``, ``evaluate``, ``merge``, ``md``, ``inspect``, ``adapters``.

``finetune`` takes every option of :class:`~peft_equi_train.config.FinetuneConfig` as a
flag (``--n-train 50``) and/or from ``--config run.yaml``; flags win.  Invalid values are
reported by validation, one line per problem, without a traceback.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
import sys
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
import yaml
from pydantic import ValidationError

from peft_equi.errors import PeftEquiError, first_line, one_line
from peft_equi_train.config import FinetuneConfig

app = typer.Typer(help="Parameter-efficient fine-tuning of equivariant interatomic potentials.", add_completion=False)

ModelOption = Annotated[str, typer.Option("--model", help="model name (7net-0) or path (MACE .model file)")]
TrustOption = Annotated[
    bool, typer.Option("--trust-pickle", help="allow loading whole pickled models (executes code from the file)")
]
MismatchOption = Annotated[
    bool,
    typer.Option(
        "--allow-base-mismatch",
        help="load the run's adapter even if the model's weights differ from those it was trained on (transfer)",
    ),
]


class _StderrHandler(logging.StreamHandler):
    """A log handler writing to ``sys.stderr`` as it is when a record comes (test runners swap it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # the base class sets it; sys.stderr is looked up on each record instead
        pass


def configure_logging(level: int = logging.INFO) -> None:
    """Show the messages of the library and the application (``peft_equi``, ``peft_equi_train`` loggers) on
    stderr, one line each, at ``level`` and above."""
    for name in ("peft_equi", "peft_equi_train"):
        logger = logging.getLogger(name)
        if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
            handler = _StderrHandler()
            handler.setFormatter(logging.Formatter("%(message)s"))
            logger.addHandler(handler)
        logger.setLevel(level)


@app.callback()
def _main(
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="show results and errors only, no progress")] = False,
) -> None:
    configure_logging(logging.WARNING if quiet else logging.INFO)


def _quiet() -> bool:
    """Whether ``--quiet`` was given: the application logs warnings only, and shows no progress bars either."""
    return not logging.getLogger("peft_equi_train").isEnabledFor(logging.INFO)


def _fail(message: str) -> typer.Exit:
    lines = "; ".join(line.strip() for line in str(message).splitlines() if line.strip())  # one line, "; " between
    typer.secho(f"error: {lines}", fg=typer.colors.RED, err=True)
    return typer.Exit(code=2)


def _yaml_option(text: str, flag: str) -> Any:
    """The value of a YAML-valued flag; invalid YAML is a one-line error naming the flag."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at column {mark.column + 1}" if mark is not None and "\n" not in text else ""
        problem = getattr(exc, "problem", None) or one_line(exc)
        raise _fail(f"{flag}: not valid YAML ({problem}{where}): {text!r}") from None


def _cli_type(annotation: Any) -> Any:
    """The flag type for a config field: plain scalars stay; optional ones (which take 'none'), mappings and
    literals become strings, validated by the config."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        return str
    if typing.get_origin(annotation) is typing.Literal or typing.get_origin(annotation) is dict:
        return str
    return annotation if annotation in (str, int, float, bool, Path) else str


def _finetune(config: Optional[Path] = None, **flags: Any) -> None:  # noqa: UP045 - typer reads the annotation
    given = {k: v for k, v in flags.items() if v is not None}
    if _quiet():
        given["progress"] = False
    if isinstance(given.get("adapter_options"), str):
        given["adapter_options"] = _yaml_option(given["adapter_options"], "--adapter-options") or {}
    try:
        run_config = FinetuneConfig.from_file(config, **given) if config else FinetuneConfig.checked(given)
    except (FileNotFoundError, ValueError) as exc:  # ConfigError is a ValueError
        raise _fail(str(exc)) from None
    from peft_equi_train.engine import Finetuner
    from peft_equi_train.outputs import format_results

    try:
        result = Finetuner(run_config).run()
    except (PeftEquiError, OSError, KeyError) as exc:  # OSError: a full disk, a folder removed meanwhile, ...
        raise _fail(exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)) from None
    except (MemoryError, RuntimeError) as exc:
        if not _out_of_memory(exc):
            raise
        raise _fail(f"out of memory ({first_line(exc)}): reduce the model, adapter rank or batch size") from None
    if int(os.environ.get("RANK", 0)) != 0:  # torchrun: the first process reports
        return
    typer.echo(f"\n{result['trainable_parameters']:,} trainable parameters ({run_config.adapter})\n")
    typer.echo(format_results(result))
    kept = result["kept"]
    typer.echo(f"\nkept: epoch {kept['epoch']} ({'lowest validation loss' if kept['keep'] == 'best' else 'last'})")
    typer.echo(f"outputs in {run_config.output}/")


def _out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation failure (host or device memory)."""
    text = str(exc).lower()
    return isinstance(exc, MemoryError) or "out of memory" in text or "can't allocate memory" in text


def _build_finetune_command() -> None:
    """Register ``finetune`` with one flag per config field (help texts from the pydantic model)."""
    parameters = [
        inspect.Parameter(
            "config",
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(None, "--config", help="YAML or JSON file with any of the options below"),
            annotation=Optional[Path],  # noqa: UP045
        )
    ]
    for name, field in FinetuneConfig.model_fields.items():
        flag = "--" + name.replace("_", "-")
        kind = _cli_type(field.annotation)
        decls = [f"{flag}/--no-{flag[2:]}"] if kind is bool else [flag]
        parameters.append(
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                default=typer.Option(None, *decls, help=f"{field.description} [default: {field.default}]"),
                annotation=Optional[kind],  # noqa: UP045
            )
        )

    def finetune(**kwargs: Any) -> None:
        _finetune(**kwargs)

    finetune.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    finetune.__doc__ = "Fine-tune a model with an adapter on energies and forces; prints a before/after table."
    app.command("finetune")(finetune)


_build_finetune_command()


@app.command("adapters")
def adapters() -> None:
    """List the registered adapters and presets."""
    import peft_equi
    from peft_equi.core.registry import ADAPTERS, PRESETS

    typer.echo("adapters:")
    for name in peft_equi.list_adapters():
        cls = ADAPTERS.get(name)
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        flag = "" if cls.equivariant else "  [NOT equivariant]"
        typer.echo(f"  {name:<14} {doc}{flag}")
    typer.echo("presets (every adapter name is also a preset):")
    for name in PRESETS.names():
        doc = (PRESETS.get(name).__doc__ or "").strip().splitlines()[0]
        typer.echo(f"  {name:<14} {doc}")


@app.command("inspect")
def inspect_command(
    model: ModelOption,
    adapter: Annotated[Optional[str], typer.Option(help="adapter or preset to plan (nothing is trained)")] = None,  # noqa: UP045
    options: Annotated[str, typer.Option("--options", help="adapter/preset options as YAML, e.g. '{rank: 16}'")] = "{}",
    trust_pickle: TrustOption = False,
) -> None:
    """Show the discoverable layers of a model and, for an adapter, what it would train."""
    import peft_equi
    from peft_equi.families.base import load_potential

    try:
        potential = load_potential(model, trust_pickle=trust_pickle)
        parsed = _yaml_option(options, "--options") or {}
        reports = peft_equi.inspect_model(potential.model, adapter, **parsed)
        typer.echo(peft_equi.format_inspection(reports))
        if adapter:
            planned = peft_equi.get_peft_model(potential.model, adapter, **parsed)
            typer.echo(f"\n{adapter}: {planned.num_trainable_parameters():,} trainable parameters")
    except (PeftEquiError, FileNotFoundError, ValidationError, TypeError) as exc:
        raise _fail(str(exc)) from None


def _adapted(model: str, run: Path, trust_pickle: bool, allow_base_mismatch: bool = False):
    """``(potential, PeftModel, EnergyCorrection)`` of a finished run on ``model`` (cut as the run cut it)."""
    import peft_equi
    from peft_equi.energy_correction import EnergyCorrection
    from peft_equi.families.base import load_potential
    from peft_equi.tuner.save_and_load import read_adapter
    from peft_equi_train.run_directory import finished_run

    record = finished_run(run)
    correction = EnergyCorrection(tuple(record["atomic_numbers"]), tuple(record["delta_eV"]))
    meta, _ = read_adapter(run / "adapter")
    potential = load_potential(model, trust_pickle=trust_pickle)
    _check_model_class(run, meta.get("base_model_class"), potential)
    elements = list(correction.atomic_numbers)
    if set(elements) < set(potential.atomic_numbers):  # the run cut the model (subset_elements): cut it again
        potential.subset_elements(elements)
    if elements != potential.atomic_numbers:
        raise PeftEquiError(
            f"{run}: the run's model knew elements {elements}, {potential.name} knows {potential.atomic_numbers}: "
            "the run belongs to another model"
        )
    peft_model = peft_equi.PeftModel.from_pretrained(
        potential.model, run / "adapter", allow_base_mismatch=allow_base_mismatch
    )
    return potential, peft_model, correction


def _check_model_class(run: Path, recorded: str | None, potential) -> None:
    """A run's adapter records the class of the model it was trained on: another class is another model."""
    current = type(potential.model)
    if recorded is not None and recorded.rpartition(".")[2] != current.__qualname__:
        raise PeftEquiError(
            f"{run} belongs to another model: its adapter was trained on a {recorded}, {potential.name} is a "
            f"{current.__module__}.{current.__qualname__} ({potential.family})"
        )


@app.command("evaluate")
def evaluate(
    model: ModelOption,
    data: Annotated[Path, typer.Option(help="extxyz or rMD17 .npz file to evaluate on")],
    run: Annotated[Optional[Path], typer.Option(help="finetune output directory (adapter + energy correction)")] = None,  # noqa: UP045
    energy_key: Annotated[str, typer.Option(help="extxyz info key of the reference energy")] = "energy",
    forces_key: Annotated[str, typer.Option(help="extxyz array key of the reference forces")] = "forces",
    batch_size: Annotated[int, typer.Option(help="structures per batch")] = 10,
    trust_pickle: TrustOption = False,
    allow_base_mismatch: MismatchOption = False,
) -> None:
    """Energy and force errors of a model (with a fine-tuned adapter from --run) on a data file."""
    from peft_equi.families.base import load_potential
    from peft_equi_train.data import read_dataset
    from peft_equi_train.evaluation import evaluate as errors_of

    try:
        if batch_size < 1:
            raise PeftEquiError(f"--batch-size must be at least 1, got {batch_size}")
        dataset = read_dataset(data, energy_key, forces_key)  # checked before any model is loaded
        if run is None:
            potential = load_potential(model, trust_pickle=trust_pickle)
            network, energy_shift = potential.model, None
        else:  # the potential is cut when the run cut the model
            potential, network, correction = _adapted(model, run, trust_pickle, allow_base_mismatch)
            energy_shift = correction.aligned(potential.atomic_numbers)
        potential.check_elements(dataset.atomic_numbers, str(data))
        errors = errors_of(potential, network, dataset, energy_shift=energy_shift, batch_size=batch_size)
    except (PeftEquiError, OSError, KeyError, ValidationError) as exc:
        raise _fail(str(exc)) from None
    typer.echo(json.dumps({"structures": len(dataset), **errors.summary()}, indent=2))


def _save_new(potential, model, output: Path, overwrite: bool) -> Path:
    """``potential.save`` to ``output`` with the family's suffix, written atomically; an existing file there is
    replaced only with ``overwrite``."""
    if not output.parent.is_dir():  # a bare name's parent is "."
        raise FileNotFoundError(f"folder of --output not found: {output.parent}")
    path = potential.saved_path(output)
    if path.exists() and not overwrite:
        raise PeftEquiError(f"{path} exists: give --overwrite to replace it, or another --output")
    return potential.save_atomically(model, output)


@app.command("merge")
def merge(
    model: ModelOption,
    run: Annotated[Path, typer.Option(help="finetune output directory (adapter + energy correction)")],
    output: Annotated[Path, typer.Option(help="where to write the merged model")],
    trust_pickle: TrustOption = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace an existing merged model file")] = False,
    allow_base_mismatch: MismatchOption = False,
) -> None:
    """Fold a mergeable adapter and the run's energy correction into the model; save it in the family's format."""
    try:
        potential, peft_model, correction = _adapted(model, run, trust_pickle, allow_base_mismatch)
        merged = potential.fold_energy_shift(peft_model.merge_and_unload(), correction)
        path = _save_new(potential, merged, output, overwrite)
    except (PeftEquiError, OSError) as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"merged model written to {path} (with the per-element energy correction of {run})")


@app.command("md")
def md(
    model: ModelOption,
    structure: Annotated[Path, typer.Option(help="starting structure (any file ASE reads; the first image)")],
    run: Annotated[Optional[Path], typer.Option(help="finetune output directory (fine-tuned model)")] = None,  # noqa: UP045
    temperature: Annotated[float, typer.Option(help="Langevin temperature (K)")] = 500.0,
    steps: Annotated[int, typer.Option(help="Langevin NVT steps")] = 1000,
    nve_steps: Annotated[Optional[int], typer.Option(help="NVE steps after NVT [default: --steps]")] = None,  # noqa: UP045
    timestep: Annotated[float, typer.Option(help="time step (fs)")] = 0.5,
    friction: Annotated[float, typer.Option(help="Langevin friction (1/fs)")] = 0.01,
    seed: Annotated[int, typer.Option(help="seed of the initial velocities and the Langevin noise")] = 0,
    output: Annotated[Path, typer.Option(help="folder for md_report.json and md_stability.png")] = Path("md-output"),
    device: Annotated[str, typer.Option(help="torch device")] = "cpu",
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="progress bar")] = True,
    trust_pickle: TrustOption = False,
    allow_base_mismatch: MismatchOption = False,
) -> None:
    """MD stability: Langevin NVT then NVE with the model (and, with --run, the fine-tuned model); before/after."""
    from peft_equi.families.base import load_potential
    from peft_equi_train.loop import usable_device
    from peft_equi_train.md import format_reports, write_reports

    nve = steps if nve_steps is None else nve_steps
    try:
        if steps < 0 or nve < 0 or steps + nve == 0:
            raise PeftEquiError("--steps and --nve-steps must be >= 0, and not both 0")
        finite = all(map(math.isfinite, (timestep, temperature, friction)))
        if not finite or timestep <= 0 or temperature < 0 or friction < 0:
            raise PeftEquiError("--timestep must be a finite number > 0; --temperature and --friction finite and >= 0")
        usable_device(device)
        atoms = _read_structure(structure)
        base = load_potential(model, trust_pickle=trust_pickle)
        base.check_elements(atoms.numbers, str(structure))
        models = {"foundation": (base, base.model, {})}
        if run is not None:
            potential, peft_model, correction = _adapted(model, run, trust_pickle, allow_base_mismatch)
            potential.check_elements(atoms.numbers, str(structure))
            shift = dict(zip(correction.atomic_numbers, correction.delta))
            # the same per-element correction for both: a constant shift, it changes neither dynamics nor drift
            models = {"foundation": (base, base.model, shift), "fine-tuned": (potential, peft_model, shift)}
        settings = dict(temperature=temperature, nvt_steps=steps, nve_steps=nve, timestep=timestep, seed=seed)
        settings |= dict(friction=friction, progress=progress and not _quiet())
        reports = _md_reports(models, atoms, device, settings)
        paths = write_reports(reports, output, structure=str(structure))
    except (PeftEquiError, FileNotFoundError, ValueError) as exc:
        raise _fail(str(exc)) from None
    typer.echo(format_reports(reports))
    for name, report in reports.items():
        if report.failure:
            typer.echo(f"{name}: {report.failure}")
    typer.echo(f"outputs: {', '.join(str(p) for p in paths)}")


def _md_reports(models: dict[str, tuple], atoms, device: str, settings: dict[str, Any]) -> dict[str, Any]:
    """:func:`~peft_equi_train.md.md_stability` of each ``name: (potential, module, shift)``."""
    from peft_equi_train.md import PotentialCalculator, md_stability

    reports = {}
    for name, (pot, module, shift) in models.items():
        module.to(device)
        reports[name] = md_stability(PotentialCalculator(pot, module, shift), atoms, **settings, description=name)
    return reports


def _read_structure(path: Path):
    """The first image of ``path``; a missing or unreadable file is a one-line error."""
    import numpy as np
    from ase.io import read

    if not path.is_file():
        raise FileNotFoundError(f"structure file not found: {path}")
    try:
        atoms = read(str(path), index=0)
    except Exception as exc:  # ASE raises many kinds for unparsable files
        raise PeftEquiError(f"{path}: cannot read a structure ({one_line(exc)})") from None
    if len(atoms) == 0 or not np.isfinite(atoms.positions).all():
        raise PeftEquiError(f"{path}: no atoms or non-finite positions")
    return atoms
