"""Exceptions raised for bad user input; each message names the problem, on one line."""

from __future__ import annotations

from collections.abc import Iterable

from peft_equi.elements import SYMBOLS


def one_line(error: BaseException | str) -> str:
    """The text of ``error`` on one line (every run of whitespace, newlines included, becomes one space)."""
    return " ".join(str(error).split())


def first_line(exc: BaseException) -> str:
    """``Type: first line of the message`` of an exception."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


class PeftEquiError(ValueError):
    """Base class of peft-equi's user-facing errors."""


class UnknownNameError(PeftEquiError, KeyError):
    """An adapter, backend or preset name that is not registered."""

    def __init__(self, what: str, name: str, known: list[str]) -> None:
        self.name = name
        self.known = known
        super().__init__(f"unknown {what} {name!r}; known: {', '.join(known) or '(none)'}")

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


class RuleMatchError(PeftEquiError):
    """A rule of a PeftConfig that matched no layer (or no tensor)."""


class UnsupportedLayerError(PeftEquiError):
    """An adapter asked to act on a layer it cannot adapt."""


class NotMergeableError(PeftEquiError):
    """Merging was asked for an adapter whose update depends on the input."""


class EnergyShiftError(PeftEquiError):
    """A per-element energy correction that a model has no place for (``Potential.fold_energy_shift``)."""


class AdapterLoadError(PeftEquiError):
    """A saved adapter that does not fit the model it is loaded into."""


class UnknownElementError(PeftEquiError):
    """Elements (atomic numbers) that a model does not know."""


class ConfigError(PeftEquiError, ValueError):
    """Invalid options (of a run, an adapter or a preset); the message names each bad option."""

    @classmethod
    def from_validation(cls, exc: Exception, where: str = "") -> ConfigError:
        """One line from a ``pydantic.ValidationError``: ``where: option: problem; ...``."""
        errors = exc.errors() if hasattr(exc, "errors") else []
        parts = []
        for error in errors:
            option = ".".join(str(p) for p in error["loc"]) or "config"
            problem = "unknown option" if error["type"] == "extra_forbidden" else error["msg"]
            parts.append(f"{option}: {problem}")
        message = "; ".join(parts) or one_line(exc)
        return cls(f"{where}: {message}" if where else message)


class DataError(PeftEquiError):
    """A data file that cannot be used: unreadable, empty, non-finite values, mismatched shapes."""


class MissingDependencyError(PeftEquiError, ImportError):
    """An optional package that a feature needs is not installed; the message names what to install."""


class UntrustedPickleError(PeftEquiError):
    """A file that would execute code when loaded, read without ``trust_pickle`` (``--trust-pickle``)."""


class BaseMismatchError(AdapterLoadError):
    """An adapter loaded into base weights other than those it was trained on."""


def element_names(atomic_numbers: Iterable[int], with_numbers: bool = True) -> str:
    """``"H (Z=1), C (Z=6)"`` (or ``"H, C"`` without ``with_numbers``): elements as messages name them."""
    return ", ".join(f"{SYMBOLS[z]} (Z={z})" if with_numbers else SYMBOLS[z] for z in atomic_numbers)
