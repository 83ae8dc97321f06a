"""VGPO configuration: one dataclass, one set of defaults (the paper's 7B recipe), strict validation.

The block lives under verl's ``algorithm`` config as ``algorithm.vgpo``. verl never instantiates its
``AlgoConfig`` on the ``main_ppo`` path, so the block arrives as a DictConfig; tests pass dicts or None.
Every problem is reported at start-up with the key and the allowed values, never silently ignored.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping

COMPENSATION_SCHEDULES = ("none", "linear", "exponential", "step")
ACCUMULATIONS = ("sum", "mean")
VISUAL_TOKEN_KINDS = ("image", "video")

# Outcome estimators whose advantage is one scalar per trajectory broadcast over its tokens: scaling
# that broadcast by alpha * psi is what the paper defines. Token-level estimators (gae,
# reinforce_plus_plus) and estimators that need inputs the trainer does not pass (remax) are refused.
SUPPORTED_BASE_ESTIMATORS = (
    "grpo",
    "grpo_vectorized",
    "rloo",
    "rloo_vectorized",
    "grpo_passk",
    "reinforce_plus_plus_baseline",
    "opo",
    "gpg",
)

# Policy losses whose per-token terms are combined only through a sequence-level ratio; there a
# per-token advantage weight is not the paper's per-token loss weight, so VGPO refuses them.
SEQUENCE_RATIO_POLICY_LOSSES = ("gspo", "geo_mean", "gspo_token")


class VGPOConfigError(ValueError):
    """A key or value of ``algorithm.vgpo`` is invalid."""


@dataclass(frozen=True)
class VGPOConfig:
    """Hyper-parameters of VGPO (docs/design.md, configuration reference). Field names are the config keys."""

    base_estimator: str = "grpo"
    intra_trajectory: bool = True
    inter_trajectory: bool = True
    compensation: str = "linear"
    compensation_strength: float = 0.3
    compensation_start: float = 0.0
    compensation_exponent: float = 2.0
    compensation_step: float = 0.5
    gate: bool = True
    gate_start: float = 0.5
    gate_top_ratio: float = 0.2
    token_weight_clip: tuple[float, float] = (0.1, 2.0)
    trajectory_weight_clip: tuple[float, float] = (0.9, 2.0)
    accumulation: str = "sum"
    visual_tokens: tuple[str, ...] = field(default=("image", "video"))

    def __post_init__(self) -> None:
        _validate(self)

    @classmethod
    def from_algorithm_config(cls, algorithm_config: Any = None) -> "VGPOConfig":
        """Build from verl's whole ``algorithm`` config (DictConfig, dataclass, dict or None).

        Reads its ``vgpo`` block; a missing block means the defaults. For the block itself use
        :meth:`from_mapping`.
        """
        block = config_get(algorithm_config, "vgpo")
        return cls.from_mapping(block)

    @classmethod
    def from_mapping(cls, block: Any) -> "VGPOConfig":
        """Build from the ``vgpo`` block itself (DictConfig, dict or None)."""
        if block is None:
            return cls()
        block = _to_plain(block)
        if not isinstance(block, Mapping):
            raise VGPOConfigError(
                f"algorithm.vgpo must be a mapping of VGPO options, got {type(block).__name__}: {block!r}"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(block) - known)
        if unknown:
            raise VGPOConfigError(
                f"unknown key(s) algorithm.vgpo.{', algorithm.vgpo.'.join(unknown)}; "
                f"allowed keys: {', '.join(sorted(known))}"
            )
        values = {}
        for key, raw in block.items():
            values[key] = _coerce(key, raw)
        return cls(**values)


def config_get(node: Any, key: str, default: Any = None) -> Any:
    """The value at the dotted ``key`` below ``node``; ``default`` where a level is missing or None.

    Reads every form verl's config takes: DictConfig (also in struct mode), dict, verl's dataclass
    configs and other attribute objects.
    """
    for part in key.split("."):
        if node is None:
            return default
        node = node.get(part) if isinstance(node, Mapping) else getattr(node, part, None)
    return default if node is None else node


def _to_plain(value: Any) -> Any:
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(value, (DictConfig, ListConfig)):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:  # omegaconf is a dependency, but keep the pure core importable without it
        pass
    return value


# field name -> declared type (the annotations are strings under ``from __future__ import annotations``)
_FIELD_TYPES: dict[str, Any] = typing.get_type_hints(VGPOConfig)
_PAIR = tuple[float, float]
_NAMES = tuple[str, ...]


def _keys_of(kind: Any) -> tuple[str, ...]:
    return tuple(key for key, declared in _FIELD_TYPES.items() if declared == kind)


def _coerce(key: str, raw: Any) -> Any:
    """A raw config value as the type its field declares, or VGPOConfigError naming the key."""
    name = f"algorithm.vgpo.{key}"
    kind = _FIELD_TYPES[key]
    if kind is bool:
        if not isinstance(raw, bool):
            raise VGPOConfigError(f"{name} must be true or false, got {raw!r}")
        return raw
    if kind is float:
        if isinstance(raw, bool) or not isinstance(raw, (int, float)):
            raise VGPOConfigError(f"{name} must be a number, got {raw!r}")
        return float(raw)
    if kind == _PAIR:
        if isinstance(raw, (str, bytes)) or not hasattr(raw, "__len__") or len(raw) != 2:
            raise VGPOConfigError(f"{name} must be a pair [low, high], got {raw!r}")
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in raw):
            raise VGPOConfigError(f"{name} must hold two numbers [low, high], got {raw!r}")
        return (float(raw[0]), float(raw[1]))
    if kind is str:
        if not isinstance(raw, str):
            raise VGPOConfigError(f"{name} must be a string, got {raw!r}")
        return raw
    if kind == _NAMES:
        if isinstance(raw, str):
            raw = [raw]
        if not isinstance(raw, (list, tuple)) or not all(isinstance(v, str) for v in raw):
            raise VGPOConfigError(f"{name} must be a list of names, got {raw!r}")
        return tuple(raw)
    raise TypeError(f"VGPOConfig.{key}: no coercion for its declared type {kind!r}")


def _validate(cfg: VGPOConfig) -> None:
    def fail(key: str, message: str) -> None:
        raise VGPOConfigError(f"algorithm.vgpo.{key}={getattr(cfg, key)!r} is invalid: {message}")

    if cfg.base_estimator not in SUPPORTED_BASE_ESTIMATORS:
        fail("base_estimator", f"allowed values are {', '.join(SUPPORTED_BASE_ESTIMATORS)}")
    if cfg.compensation not in COMPENSATION_SCHEDULES:
        fail("compensation", f"allowed values are {', '.join(COMPENSATION_SCHEDULES)}")
    if cfg.accumulation not in ACCUMULATIONS:
        fail("accumulation", f"allowed values are {', '.join(ACCUMULATIONS)}")
    for key in _keys_of(bool):
        if not isinstance(getattr(cfg, key), bool):
            fail(key, "must be true or false")
    for key in _keys_of(float):
        value = getattr(cfg, key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            fail(key, "must be a finite number")
    if cfg.compensation_strength < 0:
        fail("compensation_strength", "must be >= 0")
    for key in ("compensation_start", "compensation_step", "gate_start", "gate_top_ratio"):
        if not 0.0 <= getattr(cfg, key) <= 1.0:
            fail(key, "must lie in [0, 1]")
    if cfg.compensation_start >= 1.0 and cfg.compensation in ("linear", "exponential"):
        fail("compensation_start", "must be < 1 for the linear and exponential schedules")
    if cfg.compensation_exponent <= 0:
        fail("compensation_exponent", "must be > 0")
    for key in _keys_of(_PAIR):
        low, high = getattr(cfg, key)
        if not (math.isfinite(low) and math.isfinite(high)):
            fail(key, "bounds must be finite numbers")
        if low > high:
            fail(key, "low bound must be <= high bound")
        if low <= 0:
            fail(key, "low bound must be > 0 (both factors must stay positive)")
    if not cfg.visual_tokens:
        fail("visual_tokens", f"must name at least one of {list(VISUAL_TOKEN_KINDS)}")
    bad = [v for v in cfg.visual_tokens if v not in VISUAL_TOKEN_KINDS]
    if bad:
        fail("visual_tokens", f"unknown kind(s) {bad}; allowed: {list(VISUAL_TOKEN_KINDS)}")
    if len(set(cfg.visual_tokens)) != len(cfg.visual_tokens):
        fail("visual_tokens", "lists a kind twice")
