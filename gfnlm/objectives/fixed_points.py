"""The distributions objectives converge to, over an enumerated set of responses to one prompt.

Each objective declares its fixed point on its class (:meth:`Objective.fixed_point
<gfnlm.objectives.base.Objective.fixed_point>`) by returning one of these, computed from the
target's ``log R`` and the lengths ``|y|`` (EOS counts) of every response; the exact checker
(:mod:`gfnlm.evaluation.exact`) compares trained policies with it, for built-in and user objectives
alike.

* :func:`normalised_target` — ``π ∝ R`` (TB, SubTB, DB); log Z → ``log Σ R``.
* :func:`length_tilt` — ``π ∝ R·exp(−λ*|y|)`` with ``Σ R·exp(−λ*|y|) = 1`` (LA-TB); log Z' → λ*.
* :func:`per_token_target` — ``π ∝ exp(log R/|y|)`` (TB-token); log Z → ``log Σ exp(log R/|y|)``.
"""

import math
from collections.abc import Callable

import attrs
import torch
from jaxtyping import Float
from scipy.optimize import brentq
from torch import Tensor


@attrs.frozen
class FixedPoint:
    """A normalised log-distribution over the enumerated responses, and where a learned log Z
    converges (NaN when the objective learns none)."""

    log_probs: Float[Tensor, " N"]
    log_z: float = math.nan


def normalise_log(log_weights: Float[Tensor, " N"]) -> Float[Tensor, " N"]:
    """``log(w / Σ w)`` computed in log space."""
    return log_weights - torch.logsumexp(log_weights, 0)


def normalised_target(log_reward: Float[Tensor, " N"], with_log_z: bool = True) -> FixedPoint:
    """``π ∝ R``; log Z converges to ``log Σ R`` (``with_log_z=False``: the objective has none)."""
    log_z = float(torch.logsumexp(log_reward, 0)) if with_log_z else math.nan
    return FixedPoint(normalise_log(log_reward), log_z)


def per_token_target(log_reward: Float[Tensor, " N"], lengths: Float[Tensor, " N"]) -> FixedPoint:
    """``π ∝ exp(log R/|y|)`` (``|y|`` clamped at 1); log Z converges to its log-normaliser."""
    per_token = log_reward / lengths.clamp_min(1.0)
    return FixedPoint(normalise_log(per_token), float(torch.logsumexp(per_token, 0)))


def length_tilt(
    log_reward: Float[Tensor, " N"], lengths: Float[Tensor, " N"], with_log_z: bool = True
) -> FixedPoint:
    """``π ∝ R·exp(−λ*|y|)``, already normalised at λ* (:func:`lambda_star`); log Z' converges to
    λ*."""
    star = lambda_star(log_reward, lengths)
    return FixedPoint(
        tilted_log_distribution(log_reward, lengths, star), star if with_log_z else math.nan
    )


def tilted_log_distribution(
    log_reward: Float[Tensor, " N"], lengths: Float[Tensor, " N"], lam: float
) -> Float[Tensor, " N"]:
    """The normalised length tilt ``∝ R(y)·exp(−λ|y|)``."""
    return normalise_log(log_reward - lam * lengths)


def bracket_root(
    func: Callable[[float], float], decreasing: bool = True, start: float = 1.0, limit: float = 1e4
) -> tuple[float, float]:
    """An interval ``[lo, hi]`` around 0 on which a monotone ``func`` changes sign.

    Starts at ``[-start, start]`` and doubles each side until the sign changes (the root of the
    λ equations can be anywhere; doubling finds it in a few steps). Raises if ``limit`` is passed,
    which means the function has no root (e.g. an unreachable expected length).
    """
    lo, hi = -start, start
    while True:
        f_lo, f_hi = func(lo), func(hi)
        if (f_lo >= 0 >= f_hi) if decreasing else (f_lo <= 0 <= f_hi):
            return lo, hi
        if max(abs(lo), abs(hi)) > limit:
            raise ValueError(f"no sign change of the function on [{lo}, {hi}]")
        if (f_hi > 0) if decreasing else (f_hi < 0):
            hi *= 2.0
        else:
            lo *= 2.0


def lambda_star(log_reward: Float[Tensor, " N"], lengths: Float[Tensor, " N"]) -> float:
    """λ* of LA-TB: the root of ``Σ_y R(y)·exp(−λ|y|) = 1`` (solved as ``logsumexp = 0``).

    The left side is strictly decreasing in λ (every ``|y| >= 1``), from +∞ to 0, so the root is
    unique; it is bracketed by doubling an interval around 0 and refined by Brent's method.
    Setting every LA-TB residual to zero gives ``log π = log R − |y|·log Z'``, so this is where
    ``log Z'`` converges, and ``R·exp(−λ*|y|)`` is already normalised.
    """

    def log_mass(lam: float) -> float:
        return float(torch.logsumexp(log_reward - lam * lengths, 0))

    lo, hi = bracket_root(log_mass, decreasing=True)
    return float(brentq(log_mass, lo, hi, xtol=1e-13, rtol=1e-13))


__all__ = [
    "FixedPoint",
    "bracket_root",
    "lambda_star",
    "length_tilt",
    "normalise_log",
    "normalised_target",
    "per_token_target",
    "tilted_log_distribution",
]
