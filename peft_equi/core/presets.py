"""Named configurations ("presets") and how a name plus options becomes a :class:`PeftConfig`.

Every adapter name is also a preset: ``get_peft_model(model, "elora", rank=8)`` puts ELoRA
on every layer it can adapt, as does the adapter's typed config, ``get_peft_model(model,
EloraConfig(rank=8))`` (Hugging Face peft's ``get_peft_model(model, LoraConfig(...))``).
Besides the adapter options, such presets accept ``target``, ``exclude``, ``kinds``,
``fully_trained``, ``fully_trained_buffers`` and ``invariant_inputs``.  ``full`` trains every
parameter; ``readout-only`` trains the parameters matching ``patterns`` (default: the readouts
of MACE, NequIP and SevenNet, :data:`READOUT_PATTERN`).
Register more with :func:`peft_equi.core.registry.register_preset`.
"""

from __future__ import annotations

import inspect
from typing import Any

from pydantic import ValidationError

from peft_equi.core.adapter import AdapterConfig
from peft_equi.core.config import PeftConfig, Rule, module_patterns
from peft_equi.core.registry import ADAPTERS, PRESETS, register_preset
from peft_equi.errors import ConfigError, PeftEquiError, UnknownNameError, one_line

_RULE_KEYS = ("target", "exclude", "kinds")
_CONFIG_KEYS = ("fully_trained", "fully_trained_buffers", "invariant_inputs")


def adapter_everywhere(adapter: str, **options: Any) -> PeftConfig:
    """``adapter`` on every layer it supports (layers it cannot adapt are left alone); peft's
    ``target_modules`` (:func:`~peft_equi.core.config.module_patterns`) limits it as ``target`` does."""
    target_modules = options.pop("target_modules", None)
    if target_modules is not None:
        if "target" in options:
            raise TypeError("give target_modules (peft's option) or target, not both")
        options["target"] = module_patterns(target_modules)
    rule_fields = {k: options.pop(k) for k in _RULE_KEYS if k in options}
    config_fields = {k: options.pop(k) for k in _CONFIG_KEYS if k in options}
    rule = Rule(adapter=adapter, options=options, on_unsupported="skip", **rule_fields)
    return PeftConfig(rules=[rule], preset=adapter, **config_fields)


@register_preset("full")
def full(fully_trained_buffers: list[str] | None = None) -> PeftConfig:
    """Full fine-tuning: every parameter trainable, no adapter."""
    return PeftConfig(fully_trained=["*"], fully_trained_buffers=fully_trained_buffers or [], preset="full")


#: Readout parameters: MACE ``readouts.*``, NequIP ``*readout*``, SevenNet ``reduce_input_to_hidden`` and
#: ``reduce_hidden_to_energy``.
READOUT_PATTERN = r"re:(.*readout.*|(.*\.)?reduce_(input_to_hidden|hidden_to_energy)\..*)"


@register_preset("readout-only")
def readout_only(patterns: list[str] | None = None) -> PeftConfig:
    """Train only the parameters whose names match ``patterns`` (default :data:`READOUT_PATTERN`)."""
    return PeftConfig(fully_trained=patterns or [READOUT_PATTERN], preset="readout-only")


def preset_names() -> list[str]:
    """Registered presets plus every adapter name."""
    return sorted(set(PRESETS.names()) | set(ADAPTERS.names()))


def adapter_name_of(config: AdapterConfig) -> str:
    """The registered adapter whose config class ``config`` is an instance of (exactly)."""
    names = [n for n in ADAPTERS.names() if ADAPTERS.get(n).config_class is type(config)]
    if len(names) != 1:
        found = f"adapters {', '.join(names)} share it" if names else "no registered adapter uses it"
        raise ConfigError(f"{type(config).__name__} does not name one adapter: {found}")
    return names[0]


def resolve_config(config: PeftConfig | AdapterConfig | str, **options: Any) -> PeftConfig:
    """The one way a config is made: from a :class:`PeftConfig` (no options allowed), an adapter's config
    (``MmeaConfig(rank=16)``: that adapter on every layer it supports; options: ``target``, ``exclude``,
    ``kinds``, ``fully_trained``, ``fully_trained_buffers``, ``invariant_inputs``, peft's
    ``target_modules``) or a preset or adapter name with its options.

    Needs no model (runs check their options before loading one).  Every problem with the options
    is a one-line :class:`ConfigError` naming the option (an unknown name: :class:`UnknownNameError`);
    options given where none are accepted are a ``TypeError``.
    """
    if isinstance(config, PeftConfig):
        if options:
            raise TypeError(f"options {sorted(options)} are only accepted with a preset or adapter name")
        return config
    if isinstance(config, AdapterConfig):
        other = sorted(set(options) - set(_RULE_KEYS + _CONFIG_KEYS))
        if other:
            raise TypeError(
                f"options {other} belong in {type(config).__name__}(...); with an adapter config only "
                f"{', '.join(_RULE_KEYS + _CONFIG_KEYS)} are accepted"
            )
        name = adapter_name_of(config)
        options = {**config.model_dump(mode="json", exclude_unset=True), **options}
    elif isinstance(config, str):
        name = config
    else:
        raise TypeError(
            f"the config must be a PeftConfig, an adapter's config or a preset or adapter name, "
            f"not {type(config).__name__}"
        )
    if name not in PRESETS and name not in ADAPTERS:
        raise UnknownNameError("preset or adapter", name, preset_names())
    what = f"{'preset' if name in PRESETS else 'adapter'} {name!r}"
    known = _known_options(name)
    unknown = sorted(set(options) - set(known)) if known is not None else []
    if unknown:
        raise ConfigError(
            f"{what}: unknown option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
            f"(its options: {', '.join(known) or 'none'})"
        )
    try:
        return PRESETS.get(name)(**options) if name in PRESETS else adapter_everywhere(name, **options)
    except ValidationError as exc:
        raise ConfigError.from_validation(exc, what) from None
    except PeftEquiError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{what}: {one_line(exc)}") from None


def _known_options(name: str) -> list[str] | None:
    """The options preset or adapter ``name`` accepts; None when it takes any keyword."""
    if name in PRESETS:
        parameters = inspect.signature(PRESETS.get(name)).parameters.values()
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
            return None
        return [p.name for p in parameters]
    names = []
    for field_name, field in ADAPTERS.get(name).config_class.model_fields.items():
        alias = field.validation_alias  # peft's names: r, lora_alpha
        names += [field_name, *(a for a in getattr(alias, "choices", ()) if isinstance(a, str) and a != field_name)]
    return sorted(names) + list(_RULE_KEYS + _CONFIG_KEYS)
