"""The ``vgpo`` entry in verl's advantage-estimator registry and the focus hand-over to it.

verl's ``compute_advantage`` passes a custom estimator only rewards, mask, uid and config; the trainer
layer hands the focus scores over through a context variable around that call.
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

import torch

from verl_vgpo.advantage import compute_vgpo_advantage

ESTIMATOR_NAME = "vgpo"


# --------------------------------------------------------------------------------------------------
# step context: how the trainer layer hands focus scores to the estimator that verl calls
# --------------------------------------------------------------------------------------------------


@dataclass
class VGPOStep:
    """Inputs and outputs of one advantage computation that verl's call signature cannot carry."""

    focus_scores: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)


_CURRENT_STEP: contextvars.ContextVar[Optional[VGPOStep]] = contextvars.ContextVar("vgpo_step", default=None)


@contextlib.contextmanager
def focus_scores_for_advantage(focus_scores: torch.Tensor) -> Iterator[VGPOStep]:
    """Make ``focus_scores`` (bs, response_length) visible to the ``vgpo`` estimator verl calls inside.

    verl's ``compute_advantage`` passes a custom estimator only rewards, mask, uid and config; the
    trainer layer wraps that call in this context. After it, ``step.metrics`` holds the ``vgpo/*`` statistics.
    """
    step = VGPOStep(focus_scores=focus_scores)
    token = _CURRENT_STEP.set(step)
    try:
        yield step
    finally:
        _CURRENT_STEP.reset(token)


# --------------------------------------------------------------------------------------------------
# verl registration
# --------------------------------------------------------------------------------------------------


def vgpo_adv_estimator(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: Any = None,
    config: Any = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The function verl's ``compute_advantage`` calls for ``algorithm.adv_estimator=vgpo``.

    Focus scores come from :func:`focus_scores_for_advantage` (set by the trainer layer) or, for direct
    callers, a ``focus_scores`` keyword. Metrics land in the step context.
    """
    step = _CURRENT_STEP.get()
    focus_scores = kwargs.pop("focus_scores", None)
    if focus_scores is None and step is not None:
        focus_scores = step.focus_scores
    if index is None:
        raise ValueError("algorithm.adv_estimator=vgpo groups rollouts by prompt and needs the batch's 'uid' array")
    metrics = step.metrics if step is not None else None
    return compute_vgpo_advantage(
        token_level_rewards, response_mask, index, focus_scores, config=config, metrics=metrics, **kwargs
    )


def register_estimator() -> None:
    """Register ``vgpo`` in verl's advantage estimator registry (idempotent: verl accepts the same
    function twice and refuses a different one under the same name)."""
    from verl.trainer.ppo import core_algos

    core_algos.register_adv_est(ESTIMATOR_NAME)(vgpo_adv_estimator)
