"""α-power ("escort") target: ``log R(q, y) = α · [log p_base(y|q) + |y|·ψ(y)]``.

α > 1 sharpens the base model (majority voting is the α→∞ limit), α < 1 flattens it, α = 1 is
the base model itself. ψ is an optional format penalty: ``format_penalty`` (PowerFlow uses −0.5)
when the response is not in the run's task's answer format
(:meth:`~gfnlm.tasks.base.Task.format_ok`; the ``math`` task: a closed ``\\boxed{...}``), or does
not match ``format_regex`` when one is given, else 0. Written with ``|y|·ψ`` so that after LA-TB's
division by ``|y|`` the bracket reads ``α·[(1/|y|)·log p_base + ψ]`` as in the PowerFlow paper.

Prefix rewards (for SubTB/DB): ``log R(s_i ⊤) = α·(Σ_{t≤i} log p_base(y_t|…) + log p_base(⊤|s_i))``,
all from one base forward pass. They are provided only without a format penalty (ψ is defined on
finished responses only).
"""

import re
from typing import Any

import attrs
import torch
import torch.nn.functional as F

from gfnlm.contracts.registry import option, register
from gfnlm.contracts.types import Rollouts, SequenceLogProbs, TargetScores
from gfnlm.contracts.validators import greater_than
from gfnlm.targets.base import Regime, Target, task_field


def prefix_terminal_log_rewards(
    rollouts: Rollouts, token_logp: torch.Tensor, eos_logp: torch.Tensor, scale: float
) -> torch.Tensor:
    """``scale·(Σ_{t≤i} log p(y_t) + log p(⊤|s_i))`` for i = 0..T, zero past the last visited state.

    For a truncated response the state ``s_n`` terminates by force, so its entry is
    ``scale·Σ_{t≤n} log p(y_t)`` (no EOS factor) and equals the sequence log-reward.
    """
    masked = token_logp * rollouts.response_mask
    cumulative = F.pad(masked.cumsum(-1), (1, 0))  # [B, T+1], cumulative[:, i] = Σ_{t<i}
    steps = rollouts.num_steps
    positions = torch.arange(cumulative.shape[1], device=cumulative.device)
    forced = (~rollouts.ended_with_eos)[:, None] & (positions[None, :] == steps[:, None])
    terminal = cumulative + torch.where(forced, torch.zeros_like(eos_logp), eos_logp)
    visited = positions[None, :] <= steps[:, None]
    return torch.where(visited, scale * terminal, torch.zeros_like(terminal))


@register("target", "alpha_power")
@attrs.frozen
class AlphaPowerTarget(Target):
    """``p_base(y|q)^α`` (times ``exp(α·|y|·ψ(y))`` with a format penalty)."""

    alpha: float = option(
        4.0,
        "α: > 1 sharpens the base model, < 1 flattens it, 1 is the base model",
        converter=float,
        validator=greater_than(0),
    )
    format_penalty: float = option(
        0.0,
        "ψ added per token to a response not in the task's answer format (PowerFlow: −0.5); "
        "0 = off",
        converter=float,
    )
    # "" = the run's task decides what a well-formatted response is (math: a closed \boxed{}; a
    # target built outside a run checks that too); a regular expression here overrides it
    format_regex: str = option(
        "", "a regular expression a well-formatted response matches; '' = the run's task decides"
    )
    task: Any = task_field()

    @property
    def regime(self) -> Regime | None:
        """Sharpening for α > 1, flattening for α < 1 (the base model itself at α = 1: neither)."""
        if self.alpha == 1:
            return None
        return "sharpening" if self.alpha > 1 else "flattening"

    @property
    def provides(self) -> frozenset[str]:  # type: ignore[override]
        return frozenset({"ref_logp"}) | (
            frozenset() if self.format_penalty else frozenset({"prefix_rewards"})
        )

    @property
    def requires(self) -> frozenset[str]:  # type: ignore[override]
        return frozenset({"response_text"}) if self.format_penalty else frozenset()

    def score(self, rollouts: Rollouts, base: SequenceLogProbs) -> TargetScores:
        base_logp = (base.token_logp * rollouts.response_mask).sum(-1)
        psi = self._format_penalty(rollouts, base_logp)
        log_reward = self.alpha * (base_logp + rollouts.lengths.to(base_logp.dtype) * psi)
        prefix = None
        if not self.format_penalty and base.eos_logp is not None:
            prefix = prefix_terminal_log_rewards(
                rollouts, base.token_logp, base.eos_logp, self.alpha
            )
        metrics = {"target/base_logp_mean": float(base_logp.mean())}
        if self.format_penalty:
            metrics["target/format_ok_frac"] = float((psi == 0).float().mean())
        return TargetScores(
            log_reward=log_reward,
            prefix_log_reward=prefix,
            ref_token_logp=base.token_logp * rollouts.response_mask,
            metrics=metrics,
        )

    def _format_penalty(self, rollouts: Rollouts, like: torch.Tensor) -> torch.Tensor:
        if not self.format_penalty:
            return torch.zeros_like(like)
        assert rollouts.response_text is not None  # guaranteed by the composition check
        if self.format_regex:
            pattern = re.compile(self.format_regex)
            ok = [pattern.search(text) is not None for text in rollouts.response_text]
        elif self.task is not None:
            ok = [self.task.format_ok(text) for text in rollouts.response_text]
        else:  # built outside a run: PowerFlow's own ψ, a closed \boxed{} answer
            from gfnlm.tasks.math_answers import format_ok

            ok = [format_ok(text) for text in rollouts.response_text]
        return torch.tensor(
            [0.0 if good else self.format_penalty for good in ok],
            dtype=like.dtype,
            device=like.device,
        )
