"""Configuration: which layers get which adapter, and which tensors are trained fully.

A :class:`PeftConfig` is an ordered list of :class:`Rule` s; each discoverable layer gets
the adapter of the first rule that matches it.  Patterns are globs on module paths
(``interactions.*.linear``; ``*`` also crosses dots) or regular expressions prefixed with
``re:`` (``re:interactions\\.[01]\\.linear$``), matched in linear time
(:mod:`peft_equi.core.regex`: a pattern from an untrusted ``adapter_config.json`` cannot hang
loading; backreferences and lookarounds are refused).  Configs are pydantic models: invalid values
are reported by validation, and they round-trip through JSON and YAML.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from peft_equi.core.adapter import AdapterConfig, validated_config
from peft_equi.core.regex import compile_regex
from peft_equi.core.registry import ADAPTERS
from peft_equi.core.spec import LayerKind
from peft_equi.errors import ConfigError, one_line
from peft_equi.utils.optional import require


def _yaml() -> ModuleType:
    """PyYAML, for the YAML forms of a config (the library's own dependencies do not include it)."""
    return require("yaml", "YAML configs", "peft-equi[yaml]")


def pattern_matches(pattern: str, name: str) -> bool:
    """Glob match (``fnmatch``) of ``name``, or regex full match (linear time) when ``pattern`` starts with ``re:``."""
    if pattern.startswith("re:"):
        return compile_regex(pattern[3:]).fullmatch(name)
    return fnmatch.fnmatchcase(name, pattern)


def module_patterns(target_modules: list[str] | str) -> list[str]:
    """Patterns for peft's ``target_modules``: one regular expression matching whole paths (a string), or
    module names each matching a path or its last components (``linear`` matches ``block.0.linear``)."""
    if isinstance(target_modules, str):
        return [f"re:{target_modules}"]
    return [pattern for name in target_modules for pattern in (name, f"*.{name}")]


def _check_patterns(patterns: list[str]) -> list[str]:
    for pattern in patterns:
        if pattern.startswith("re:"):
            compile_regex(pattern[3:])  # ValueError naming the pattern and the problem
    return patterns


class Rule(BaseModel):
    """Attach ``adapter`` (with ``options``) to the layers matched by ``target`` and ``kinds``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    adapter: str = Field(description="registered adapter name (see peft_equi.list_adapters())")
    target: list[str] = Field(["*"], description="glob or 're:' regex patterns on module paths")
    kinds: list[LayerKind] | None = Field(None, description="layer kinds to match (default: all)")
    exclude: list[str] = Field([], description="patterns of module paths this rule skips")
    options: dict[str, Any] = Field({}, description="adapter options, validated by the adapter's config")
    on_unsupported: Literal["error", "skip"] = Field(
        "error", description="a matched layer the adapter cannot adapt: raise, or leave it to later rules"
    )
    required: bool = Field(True, description="raise when the rule adapts no layer")
    name: str | None = Field(None, description="label used in messages (default: adapter@targets)")
    _adapter_config: Any = PrivateAttr(None)

    @field_validator("options", mode="before")
    @classmethod
    def _typed_options(cls, value: Any) -> Any:
        """An adapter config instance (``MmeaConfig(rank=8)``) stands for the options set in it."""
        return value.model_dump(mode="json", exclude_unset=True) if isinstance(value, AdapterConfig) else value

    @field_validator("target", "exclude", mode="before")
    @classmethod
    def _listify(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("target", "exclude")
    @classmethod
    def _valid_patterns(cls, value: list[str]) -> list[str]:
        return _check_patterns(value)

    @model_validator(mode="after")
    def _known_adapter_and_options(self) -> Rule:
        if self.adapter not in ADAPTERS:
            raise ValueError(f"unknown adapter {self.adapter!r}; known adapters: {', '.join(ADAPTERS.names())}")
        self._adapter_config = validated_config(ADAPTERS.get(self.adapter), self.options)
        if getattr(self._adapter_config, "target_modules", None) is not None:
            raise ValueError("target_modules is an option of get_peft_model(model, config); a Rule takes target")
        return self

    @property
    def adapter_config(self) -> Any:
        """``options`` validated (once) into the adapter's config class, e.g. ``MmeaConfig``."""
        if self._adapter_config is None:  # built without validation (model_construct)
            self._adapter_config = validated_config(ADAPTERS.get(self.adapter), self.options)
        return self._adapter_config

    @property
    def label(self) -> str:
        """How messages name this rule."""
        return self.name or f"{self.adapter}@{','.join(self.target)}"

    def matches(self, path: str, kind: LayerKind) -> bool:
        """Whether the layer at ``path`` of ``kind`` is selected by this rule."""
        if self.kinds is not None and kind not in self.kinds:
            return False
        if any(pattern_matches(p, path) for p in self.exclude):
            return False
        return any(pattern_matches(p, path) for p in self.target)


class PeftConfig(BaseModel):
    """The whole adaptation of a model; serialise with :meth:`to_json` / :meth:`to_yaml`.

    Base tensors are either adapted (``rules``) or trained fully (``fully_trained``,
    ``fully_trained_buffers``: peft's ``modules_to_save``, but by tensor pattern, not by module).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    rules: list[Rule] = Field([], description="first matching rule wins")
    exclude: list[str] = Field([], description="module paths no rule may adapt")
    fully_trained: list[str] = Field([], description="patterns of parameters trained fully (not adapted)")
    fully_trained_buffers: list[str] = Field(
        [],
        description="patterns of floating-point buffers made trainable parameters (e.g. '*bessel_weights'); "
        "a matching parameter is simply trained",
    )
    invariant_inputs: list[str] = Field(
        [],
        description="patterns of module paths of dense layers (torch.nn.Linear, MLP layers) whose input is "
        "invariant (0e) features: adapters that read the input or add a constant (film, mmea, bitfit) may act "
        "on them; their modules do not say, and a layer no backend proves so refuses such adapters",
    )
    preset: str | None = Field(None, description="the preset this config came from, if any")

    @field_validator("exclude", "fully_trained", "fully_trained_buffers", "invariant_inputs")
    @classmethod
    def _valid_patterns(cls, value: list[str]) -> list[str]:
        return _check_patterns(value)

    def to_json(self) -> str:
        """JSON text of the config."""
        return self.model_dump_json(indent=2)

    def to_yaml(self) -> str:
        """YAML text of the config."""
        return _yaml().safe_dump(self.model_dump(mode="json"), sort_keys=False)

    @classmethod
    def from_json(cls, text: str) -> PeftConfig:
        """Parse and validate JSON text."""
        return cls.model_validate_json(text)

    @classmethod
    def from_yaml(cls, text: str) -> PeftConfig:
        """Parse and validate YAML text."""
        return cls.model_validate(_yaml().safe_load(text) or {})

    @classmethod
    def from_file(cls, path: str | Path) -> PeftConfig:
        """Read a ``.json``, ``.yaml`` or ``.yml`` file; a missing or unreadable file, invalid JSON or YAML and
        invalid options are a one-line :class:`~peft_equi.errors.ConfigError` naming the file."""
        path = Path(path)
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: {one_line(exc)}") from None
        try:
            if path.suffix == ".json":
                return cls.from_json(text)
            yaml = _yaml()
            try:
                return cls.from_yaml(text)
            except yaml.YAMLError as exc:
                raise ConfigError(f"{path}: {one_line(exc)}") from None
        except ValidationError as exc:
            raise ConfigError.from_validation(exc, str(path)) from None
