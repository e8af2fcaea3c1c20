"""Exact verification on an enumerable setting: a tabular autoregressive "language model".

The setting has ``V`` ordinary tokens (ids ``0..V-1``) plus EOS (id ``V``) and a maximum response
length ``L``. Like an LM sampler with ``max_new_tokens = L``, a response either ends with EOS after
``0..L-1`` ordinary tokens, or reaches ``L`` ordinary tokens and is truncated (termination forced, no
EOS factor). With ``V = 4, L = 5`` that is ``Σ_{k<5} 4^k + 4^5 = 341 + 1024 = 1365`` responses.

Everything follows the conventions of :mod:`gfnlm.contracts.types`: ``|y|`` counts EOS, prefix states
``s_0..s_n`` are visited, tensors ``[B, T+1]`` are indexed by prefix. Here ``T = L`` always.

The model is a table of logits over the *non-terminal* prefix states (those with fewer than ``L``
ordinary tokens; at length ``L`` no action is taken). A prefix state ``(y_1..y_k)`` has the id
``offset_k + Σ_t y_t·V^{k-t}`` where ``offset_k = Σ_{j<k} V^j`` counts the shorter prefixes. Because
every response is enumerable, the policy's distribution, the target, and each objective's fixed
point are known exactly, so the real registered objectives can be trained and checked against them:

* :class:`ExactSetting` — the vocabulary/length, prefix-state ids, enumeration of all responses.
* :class:`TabularPolicy` — exact log-probs (:class:`~gfnlm.contracts.types.PolicyEval`) and exact sampling.
* :func:`exact_distributions` — p^α, the LA-TB length-tilted optimum (λ*), the TB-token fixed point.
* :func:`exact_report` / :class:`ExactReport` — TV and KL of a policy to each of them.
* :func:`train_exact` — train a tabular policy with a registered objective, on-policy, and report.
"""

import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import torch
from jaxtyping import Float, Int
from scipy.optimize import brentq
from torch import Tensor, nn

from gfnlm.contracts import registry
from gfnlm.contracts.types import PolicyEval, Rollouts, SequenceLogProbs

DTYPE = torch.float64

# Objectives whose fixed point is the normalised target itself (π ∝ R over whole responses).
_TARGET_FIXED_POINT = ("tb", "subtb", "db")


def _positive_int(instance: object, attribute: attrs.Attribute, value: int) -> None:
    if value < 1:
        raise ValueError(f"{attribute.name}={value}: must be >= 1")


# ---------------------------------------------------------------------------------------------
# The enumerable setting


@attrs.frozen
class ExactSetting:
    """``vocab_size`` ordinary tokens (ids ``0..V-1``), EOS (id ``V``), responses of at most
    ``max_len`` tokens (a response reaching ``max_len`` ordinary tokens is truncated)."""

    vocab_size: int = attrs.field(default=4, converter=int, validator=_positive_int)
    max_len: int = attrs.field(default=5, converter=int, validator=_positive_int)

    @property
    def eos_id(self) -> int:
        """The EOS token id (right after the ordinary tokens)."""
        return self.vocab_size

    @property
    def num_actions(self) -> int:
        """Ordinary tokens plus EOS."""
        return self.vocab_size + 1

    @property
    def num_states(self) -> int:
        """Number of non-terminal prefix states: all prefixes with fewer than ``max_len`` tokens."""
        return int(sum(self.vocab_size**k for k in range(self.max_len)))

    @property
    def num_responses(self) -> int:
        """EOS-ended responses (one per non-terminal state) plus truncated ones (``V^L``)."""
        return self.num_states + self.vocab_size**self.max_len

    def state_offsets(self) -> Int[Tensor, " L1"]:
        """``offset_k = Σ_{j<k} V^j`` for ``k = 0..max_len`` (the id of the first length-k prefix)."""
        sizes = torch.tensor([self.vocab_size**k for k in range(self.max_len)], dtype=torch.long)
        return torch.nn.functional.pad(sizes.cumsum(0), (1, 0))

    def prefix_state_ids(self, rollouts: Rollouts) -> tuple[Int[Tensor, "B T1"], Tensor]:
        """The state id of every prefix ``s_0..s_T`` and which of them take an action.

        A prefix takes an action when it is visited (``i <= n``) and non-terminal (``i < max_len``);
        the other entries hold id 0 (a placeholder whose values the caller masks out). The ids are
        a base-V number read off the tokens by one integer matmul (no loop over positions).
        """
        tokens, steps = rollouts.response_ids, rollouts.num_steps
        num_positions = tokens.shape[1]
        positions = torch.arange(num_positions + 1)
        # Only the n ordinary tokens define the state; EOS and padding must not enter the number.
        ordinary = torch.where(positions[None, :-1] < steps[:, None], tokens, 0)
        # weight[i, t] = V^(i-1-t) for t < i: digit t of the base-V index of prefix s_i.
        exponent = positions[:, None] - 1 - positions[None, :-1]
        weight = torch.where(exponent >= 0, self.vocab_size ** exponent.clamp_min(0), 0)
        index_within_length = ordinary @ weight.T  # [B, T+1]
        offsets = self.state_offsets()
        offset = offsets[positions.clamp_max(self.max_len)]
        acting = (positions[None, :] <= steps[:, None]) & (positions[None, :] < self.max_len)
        ids = torch.where(acting, offset[None, :] + index_within_length, 0)
        return ids, acting

    def make_rollouts(
        self,
        response_ids: Int[Tensor, "B T"],
        lengths: Int[Tensor, " B"],
        ended_with_eos: Tensor,
        behaviour_logp: Float[Tensor, "B T"] | None = None,
    ) -> Rollouts:
        """A :class:`Rollouts` of one dummy 1-token prompt (group 0, prompt_index 0)."""
        batch = response_ids.shape[0]
        positions = torch.arange(response_ids.shape[1])
        mask = positions[None, :] < lengths[:, None]
        if behaviour_logp is None:
            behaviour_logp = torch.zeros(response_ids.shape, dtype=DTYPE)
        zeros = torch.zeros(batch, dtype=torch.long)
        return Rollouts(
            prompt_ids=zeros[:, None].clone(),
            prompt_mask=torch.ones(batch, 1, dtype=torch.bool),
            response_ids=torch.where(mask, response_ids, 0),
            response_mask=mask,
            lengths=lengths,
            ended_with_eos=ended_with_eos,
            group=zeros,
            prompt_index=zeros.clone(),
            behaviour_logp=torch.where(mask, behaviour_logp, 0.0),
        )

    def enumerate_responses(self) -> Rollouts:
        """Every response once, as one batch: EOS-ended ones by length, then the truncated ones.

        ``response_ids`` hold the tokens including EOS when the response ended with it; padding
        is 0 (masked). ``lengths`` is the mask sum (EOS counts as one token).
        """
        rows: list[Tensor] = []
        lengths: list[Tensor] = []
        ended: list[Tensor] = []
        for num_ordinary in range(self.max_len + 1):
            prefixes = self._all_sequences(num_ordinary)  # [V^k, k]
            count = prefixes.shape[0]
            is_eos_ended = num_ordinary < self.max_len
            ids = torch.zeros(count, self.max_len, dtype=torch.long)
            ids[:, :num_ordinary] = prefixes
            if is_eos_ended:
                ids[:, num_ordinary] = self.eos_id
            rows.append(ids)
            lengths.append(torch.full((count,), num_ordinary + int(is_eos_ended), dtype=torch.long))
            ended.append(torch.full((count,), is_eos_ended, dtype=torch.bool))
        return self.make_rollouts(torch.cat(rows), torch.cat(lengths), torch.cat(ended))

    def _all_sequences(self, length: int) -> Int[Tensor, "N K"]:
        """All ``V^length`` sequences of ordinary tokens, in base-V order (matches the state ids)."""
        if length == 0:
            return torch.zeros(1, 0, dtype=torch.long)
        digits = torch.arange(self.vocab_size)
        grids = torch.meshgrid(*([digits] * length), indexing="ij")
        return torch.stack([g.reshape(-1) for g in grids], dim=-1)


# ---------------------------------------------------------------------------------------------
# The tabular autoregressive model


class TabularPolicy(nn.Module):
    """An autoregressive model given by a logits table ``[num_states, V+1]`` over the non-terminal
    prefix states of an :class:`ExactSetting` (float64, a learnable parameter).

    Serves both as the frozen base (:meth:`sequence_log_probs`) and as the trained policy
    (:meth:`evaluate`, with gradient); :meth:`sample` draws responses exactly.
    """

    def __init__(self, setting: ExactSetting, logits: Float[Tensor, "S A"]) -> None:
        super().__init__()
        expected = (setting.num_states, setting.num_actions)
        if tuple(logits.shape) != expected:
            raise ValueError(f"logits of shape {tuple(logits.shape)}: expected {expected}")
        self.setting = setting
        self.logits = nn.Parameter(logits.detach().to(DTYPE).clone())

    @classmethod
    def random(cls, setting: ExactSetting, scale: float = 1.5, seed: int = 0) -> "TabularPolicy":
        """A "random base": i.i.d. ``N(0, scale²)`` logits (seeded).

        ``scale = 1.5`` makes the next-token distributions clearly non-uniform (a typical state
        puts roughly half its mass on its most likely action), so p^α differs visibly from the
        base for α ≠ 1 and the expected length is not trivially ``(V+1)``-geometric.
        """
        generator = torch.Generator().manual_seed(seed)
        logits = scale * torch.randn(setting.num_states, setting.num_actions, generator=generator,
                                     dtype=DTYPE)
        return cls(setting, logits)

    @classmethod
    def from_response_distribution(
        cls, setting: ExactSetting, log_probs: Float[Tensor, " N"]
    ) -> "TabularPolicy":
        """The table whose response distribution is ``log_probs`` (over ``enumerate_responses()``).

        ``π(a|s) = F(s, a) / F(s)`` where the edge flow ``F(s, a)`` is the total probability of
        the responses that take action ``a`` in state ``s``; the logits are ``log F(s, a)`` (the
        softmax divides by ``F(s)``). Used to put a policy exactly at an objective's fixed point.
        The distribution must give every response positive probability.
        """
        responses = setting.enumerate_responses()
        ids, _ = setting.prefix_state_ids(responses)
        mask = responses.response_mask
        edge = ids[:, :-1] * setting.num_actions + responses.response_ids  # flat (state, action)
        weight = log_probs.exp().to(DTYPE)[:, None].expand_as(edge)
        flow = torch.zeros(setting.num_states * setting.num_actions, dtype=DTYPE)
        flow.index_add_(0, edge[mask], weight[mask])
        return cls(setting, flow.log().view(setting.num_states, setting.num_actions))

    def copy(self) -> "TabularPolicy":
        """An independent copy (the policy starts as a copy of the base)."""
        return TabularPolicy(self.setting, self.logits)

    def _state_log_probs(self, rollouts: Rollouts) -> tuple[Tensor, Tensor]:
        """``log π(·|s_i)`` ``[B, T+1, V+1]`` at every prefix, and which prefixes act ``[B, T+1]``."""
        ids, acting = self.setting.prefix_state_ids(rollouts)
        return self.logits[ids].log_softmax(-1), acting

    def evaluate(self, rollouts: Rollouts) -> PolicyEval:
        """Exact per-token log-probs, EOS log-probs at every prefix, and token entropies.

        ``token_logp[b, t] = log π(y_{t+1}|s_t)`` (the EOS token's entry is ``log π(⊤|s_n)``);
        ``eos_logp[b, i] = log π(⊤|s_i)`` for the acting prefixes, 0 past the visited states and at
        a truncated response's terminal ``s_L`` (no action is taken there); ``entropy[b, t]`` is the
        entropy of ``π(·|s_t)`` at real token positions. Gradients flow to the table.
        """
        log_probs, acting = self._state_log_probs(rollouts)
        mask = rollouts.response_mask
        eos_logp = torch.where(acting, log_probs[..., self.setting.eos_id], 0.0)
        at_token_states = log_probs[:, :-1]  # the action at position t is taken in state s_t
        chosen = at_token_states.gather(-1, rollouts.response_ids[..., None]).squeeze(-1)
        token_logp = torch.where(mask, chosen, 0.0)
        entropy = -(at_token_states.exp() * at_token_states).sum(-1)
        return PolicyEval(token_logp=token_logp, eos_logp=eos_logp,
                          entropy=torch.where(mask, entropy, 0.0), prompt_hidden=None)

    @torch.no_grad()
    def sequence_log_probs(self, rollouts: Rollouts) -> SequenceLogProbs:
        """The model's log-probs as a (gradient-free) :class:`SequenceLogProbs`, e.g. for the base."""
        evaluated = self.evaluate(rollouts)
        return SequenceLogProbs(token_logp=evaluated.token_logp, eos_logp=evaluated.eos_logp)

    @torch.no_grad()
    def response_log_probs(self, rollouts: Rollouts) -> Float[Tensor, " B"]:
        """``log π(y)`` of each response (sum of token log-probs over the response mask)."""
        return self.evaluate(rollouts).sequence_logp(rollouts.response_mask)

    @torch.no_grad()
    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> Rollouts:
        """Draw ``batch_size`` responses exactly (vectorised over the batch, one step per position).

        Responses still running after ``max_len`` tokens are truncated. ``behaviour_logp`` holds
        the sampling log-probs, so a later importance ratio against this policy is exactly 1.
        """
        setting = self.setting
        vocab, max_len = setting.vocab_size, setting.max_len
        offsets = setting.state_offsets()
        tokens = torch.zeros(batch_size, max_len, dtype=torch.long)
        logp = torch.zeros(batch_size, max_len, dtype=DTYPE)
        state = torch.zeros(batch_size, dtype=torch.long)  # every response starts at s_0 (id 0)
        running = torch.ones(batch_size, dtype=torch.bool)
        lengths = torch.full((batch_size,), max_len, dtype=torch.long)
        table = self.logits.log_softmax(-1)  # once per call: every row is needed anyway
        for position in range(max_len):
            log_probs = table[state]
            action = torch.multinomial(log_probs.exp(), 1, generator=generator).squeeze(-1)
            tokens[:, position] = torch.where(running, action, 0)
            chosen = log_probs.gather(-1, action[:, None]).squeeze(-1)
            logp[:, position] = torch.where(running, chosen, 0.0)
            stops = running & (action == setting.eos_id)
            lengths = torch.where(stops, position + 1, lengths)
            running = running & ~stops
            if position + 1 < max_len:
                # id of the child prefix: offset_{k+1} + V·(index within length k) + token
                within = state - offsets[position]
                child = offsets[position + 1] + vocab * within + action.clamp_max(vocab - 1)
                state = torch.where(running, child, 0)
        ended = ~running
        return setting.make_rollouts(tokens, lengths, ended, logp)


# ---------------------------------------------------------------------------------------------
# Exact distributions over all responses


def normalise_log(log_weights: Float[Tensor, " N"]) -> Float[Tensor, " N"]:
    """``log(w / Σ w)`` computed in log space."""
    return log_weights - torch.logsumexp(log_weights, 0)


def expected_length(log_probs: Float[Tensor, " N"], lengths: Float[Tensor, " N"]) -> float:
    """``E|y|`` under a normalised log-distribution."""
    return float((log_probs.exp() * lengths).sum())


def total_variation(log_p: Float[Tensor, " N"], log_q: Float[Tensor, " N"]) -> float:
    """``½ Σ |p − q|``."""
    return float(0.5 * (log_p.exp() - log_q.exp()).abs().sum())


def kl_divergence(log_p: Float[Tensor, " N"], log_q: Float[Tensor, " N"]) -> float:
    """``KL(p ‖ q) = Σ p (log p − log q)`` (terms with p = 0 contribute 0)."""
    p = log_p.exp()
    return float(torch.where(p > 0, p * (log_p - log_q), 0.0).sum())


def _bracket_root(func: Callable[[float], float], decreasing: bool = True,
                  start: float = 1.0, limit: float = 1e4) -> tuple[float, float]:
    """An interval ``[lo, hi]`` around 0 on which a monotone ``func`` changes sign.

    Starts at ``[-start, start]`` and doubles each side until the sign changes (the root of the
    λ equations below can be anywhere; doubling finds it in a few steps). Raises if ``limit`` is
    passed, which means the function has no root (e.g. an unreachable expected length).
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


def tilted_log_distribution(log_reward: Float[Tensor, " N"], lengths: Float[Tensor, " N"],
                            lam: float) -> Float[Tensor, " N"]:
    """The normalised length tilt ``∝ R(y)·exp(−λ|y|)``."""
    return normalise_log(log_reward - lam * lengths)


def lambda_star(log_reward: Float[Tensor, " N"], lengths: Float[Tensor, " N"]) -> float:
    """λ* of LA-TB: the root of ``Σ_y R(y)·exp(−λ|y|) = 1`` (solved as ``logsumexp = 0``).

    The left side is strictly decreasing in λ (every ``|y| >= 1``), from +∞ to 0, so the root is
    unique; it is bracketed by doubling an interval around 0 and refined by Brent's method.
    Setting every LA-TB residual to zero gives ``log π = log R − |y|·log Z'``, so this is where
    ``log Z'`` converges, and ``R·exp(−λ*|y|)`` is already normalised.
    """
    def log_mass(lam: float) -> float:
        return float(torch.logsumexp(log_reward - lam * lengths, 0))

    lo, hi = _bracket_root(log_mass, decreasing=True)
    return float(brentq(log_mass, lo, hi, xtol=1e-13, rtol=1e-13))


def length_matching_lambda(log_reward: Float[Tensor, " N"], lengths: Float[Tensor, " N"],
                           target_length: float) -> float:
    """The λ whose tilt ``R·exp(−λ|y|)`` has expected length ``target_length`` (a diagnostic).

    ``E_λ|y|`` decreases in λ (its derivative is ``−Var_λ|y|``); NaN when ``target_length`` is
    outside the open range of response lengths (no tilt reaches it).
    """
    if not float(lengths.min()) < target_length < float(lengths.max()):
        return math.nan

    def length_gap(lam: float) -> float:
        return expected_length(tilted_log_distribution(log_reward, lengths, lam), lengths) - target_length

    try:
        lo, hi = _bracket_root(length_gap, decreasing=True)
    except ValueError:
        return math.nan
    return float(brentq(length_gap, lo, hi, xtol=1e-12, rtol=1e-12))


@attrs.frozen
class ExactDistributions:
    """Exact log-distributions over every response of a setting, for one base and target.

    ``log_reward`` is the target's unnormalised ``log R``; ``log_target`` is ``R`` normalised
    (p^α); ``log_tilted`` is the LA-TB optimum ``R·exp(−λ*|y|)``; ``log_token_fixed_point`` is the
    TB-token optimum ``∝ exp(log R/|y|)``. ``log_z_*`` are the values a learnable ``log Z``
    converges to under TB (``log Σ R``), TB-token (``log Σ exp(log R/|y|)``) and LA-TB (λ*).
    """

    responses: Rollouts
    lengths: Float[Tensor, " N"]
    log_base: Float[Tensor, " N"]
    log_reward: Float[Tensor, " N"]
    log_target: Float[Tensor, " N"]
    log_tilted: Float[Tensor, " N"]
    log_token_fixed_point: Float[Tensor, " N"]
    lambda_star: float
    log_z_tb: float
    log_z_tb_token: float

    def fixed_point(self, objective_name: str) -> Float[Tensor, " N"] | None:
        """The log-distribution the named objective converges to (``None`` if not known here)."""
        if objective_name in _TARGET_FIXED_POINT:
            return self.log_target
        if objective_name == "la_tb":
            return self.log_tilted
        if objective_name == "tb_token":
            return self.log_token_fixed_point
        return None

    def expected_log_z(self, objective_name: str) -> float:
        """What the objective's learnable ``log Z`` converges to (NaN when it has none)."""
        return {"tb": self.log_z_tb, "tb_token": self.log_z_tb_token,
                "la_tb": self.lambda_star}.get(objective_name, math.nan)


def exact_distributions(setting: ExactSetting, base: TabularPolicy, target: Any) -> ExactDistributions:
    """Enumerate all responses and compute p^α, the LA-TB tilt and the TB-token fixed point.

    ``target`` is a registered target (e.g. ``alpha_power``); it scores the responses with the
    base model's :class:`SequenceLogProbs`, exactly as in training.
    """
    responses = setting.enumerate_responses()
    base_logp = base.sequence_log_probs(responses)
    log_base = (base_logp.token_logp * responses.response_mask).sum(-1)
    log_reward = target.score(responses, base_logp).log_reward.to(DTYPE)
    lengths = responses.lengths.to(DTYPE)
    star = lambda_star(log_reward, lengths)
    per_token_reward = log_reward / lengths.clamp_min(1.0)
    return ExactDistributions(
        responses=responses,
        lengths=lengths,
        log_base=log_base,
        log_reward=log_reward,
        log_target=normalise_log(log_reward),
        log_tilted=tilted_log_distribution(log_reward, lengths, star),
        log_token_fixed_point=normalise_log(per_token_reward),
        lambda_star=star,
        log_z_tb=float(torch.logsumexp(log_reward, 0)),
        log_z_tb_token=float(torch.logsumexp(per_token_reward, 0)),
    )


# ---------------------------------------------------------------------------------------------
# Reports


@attrs.frozen
class ExactReport:
    """How close a policy is to the exact distributions (and, after training, how it got there).

    ``tv_target``/``kl_policy_target``/``kl_target_policy`` compare π with p^α; ``tv_tilted`` with the
    LA-TB optimum; ``tv_fixed_point`` with the objective's own fixed point (NaN without an
    objective). ``len_*`` are expected lengths ``E|y|`` (EOS counts). ``log_z`` is the final learned
    value and ``log_z_expected`` where it should converge (λ* for LA-TB). ``lambda_matched`` is the
    λ whose tilt has the policy's expected length (equals λ* when LA-TB has converged).
    """

    objective: str | None
    alpha: float
    vocab_size: int
    max_len: int
    num_responses: int
    policy_mass: float
    tv_target: float
    kl_policy_target: float
    kl_target_policy: float
    tv_tilted: float
    tv_fixed_point: float
    len_base: float
    len_target: float
    len_policy: float
    len_tilted: float
    len_token_fixed_point: float
    lambda_star: float
    lambda_matched: float
    log_z: float = math.nan
    log_z_expected: float = math.nan
    steps: int = 0
    wall_time_s: float = 0.0
    cpu_time_s: float = 0.0
    seed: int | None = None

    def as_row(self) -> dict[str, Any]:
        """The report as a flat dict (one CSV row)."""
        return attrs.asdict(self)


def exact_report(
    policy: TabularPolicy,
    dists: ExactDistributions,
    alpha: float,
    objective: str | None = None,
    **extra: Any,
) -> ExactReport:
    """Compare ``policy``'s exact distribution with ``dists``; ``extra`` fills the training fields
    of :class:`ExactReport` (``log_z``, ``steps``, ``wall_time_s``, ``cpu_time_s``, ``seed``)."""
    log_policy = policy.response_log_probs(dists.responses)
    fixed_point = dists.fixed_point(objective) if objective is not None else None
    len_policy = expected_length(log_policy, dists.lengths)
    setting = policy.setting
    return ExactReport(
        objective=objective,
        alpha=float(alpha),
        vocab_size=setting.vocab_size,
        max_len=setting.max_len,
        num_responses=setting.num_responses,
        policy_mass=float(log_policy.exp().sum()),
        tv_target=total_variation(log_policy, dists.log_target),
        kl_policy_target=kl_divergence(log_policy, dists.log_target),
        kl_target_policy=kl_divergence(dists.log_target, log_policy),
        tv_tilted=total_variation(log_policy, dists.log_tilted),
        tv_fixed_point=math.nan if fixed_point is None else total_variation(log_policy, fixed_point),
        len_base=expected_length(dists.log_base, dists.lengths),
        len_target=expected_length(dists.log_target, dists.lengths),
        len_policy=len_policy,
        len_tilted=expected_length(dists.log_tilted, dists.lengths),
        len_token_fixed_point=expected_length(dists.log_token_fixed_point, dists.lengths),
        lambda_star=dists.lambda_star,
        lambda_matched=length_matching_lambda(dists.log_reward, dists.lengths, len_policy),
        log_z_expected=dists.expected_log_z(objective) if objective is not None else math.nan,
        **extra,
    )


# ---------------------------------------------------------------------------------------------
# Training with the registered objectives


@attrs.frozen
class ExactTrainConfig:
    """Default optimiser settings per objective: ``lr`` is the policy table's Adam lr, ``logz_lr``
    log Z's (unused by SubTB/DB).

    Tuned on V=4, L=5..6 random bases, batch 64, 3000 steps (``benchmarks/exact_matching.py``).
    The limit at α<1 is gradient noise, not speed: with a constant lr the policy hovers at TV≈0.1
    from p^0.5 (L=6; lr 0.1 gives ≈0.2), so :func:`train_exact` decays the lr (cosine) by default.
    """

    lr: float
    logz_lr: float


DEFAULT_LRS: Mapping[str, ExactTrainConfig] = {
    "tb": ExactTrainConfig(lr=0.05, logz_lr=0.1),
    "tb_token": ExactTrainConfig(lr=0.05, logz_lr=0.1),
    "la_tb": ExactTrainConfig(lr=0.05, logz_lr=0.1),
    "subtb": ExactTrainConfig(lr=0.05, logz_lr=0.0),
    "db": ExactTrainConfig(lr=0.05, logz_lr=0.0),
}


def default_lrs(objective_name: str) -> ExactTrainConfig:
    """The tuned lrs of ``objective_name`` (lr 0.05, log Z lr 0.1 for an objective not listed)."""
    return DEFAULT_LRS.get(objective_name, ExactTrainConfig(lr=0.05, logz_lr=0.1))


def _lr_factor(schedule: str, steps: int) -> Callable[[int], float]:
    """The learning-rate multiplier at each step: ``constant`` (1) or ``cosine`` (1 → 0)."""
    if schedule == "constant":
        return lambda step: 1.0
    if schedule == "cosine":
        return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, steps) / max(steps, 1)))
    raise ValueError(f"lr_schedule={schedule!r}: must be 'constant' or 'cosine'")


def train_exact(
    objective_name: str,
    alpha: float,
    steps: int = 3000,
    batch_size: int = 64,
    lr: float | None = None,
    logz_lr: float | None = None,
    seed: int = 0,
    *,
    vocab_size: int = 4,
    max_len: int = 5,
    base_scale: float = 1.5,
    base_seed: int | None = None,
    objective_config: Mapping[str, Any] | None = None,
    logz_name: str = "scalar",
    lr_schedule: str = "cosine",
    num_threads: int | None = 1,
) -> ExactReport:
    """Train a tabular policy (initialised as the base) with a registered objective and report.

    Each step samples ``batch_size`` responses on-policy, evaluates them under the policy (with
    gradient) and the base (for the ``alpha_power`` target, prefix rewards included), computes
    ``objective.loss(rollouts, policy_eval, target_scores, log_z)`` and takes one Adam step on the
    policy table (``lr``) and log Z (``logz_lr``). ``lr``/``logz_lr`` default to
    :func:`default_lrs`. The base is ``TabularPolicy.random(scale=base_scale, seed=base_seed)``
    (``base_seed`` defaults to ``seed``); ``seed`` also seeds the sampler. ``lr_schedule`` is
    ``cosine`` (both lrs decay to 0 over ``steps``, which removes the gradient-noise floor) or
    ``constant``. ``num_threads`` sets torch's thread count for the loop (restored afterwards):
    the tensors are tiny, so one thread is fastest; ``None`` leaves it alone.
    """
    defaults = default_lrs(objective_name)
    lr = defaults.lr if lr is None else lr
    logz_lr = defaults.logz_lr if logz_lr is None else logz_lr
    setting = ExactSetting(vocab_size, max_len)
    base = TabularPolicy.random(setting, base_scale, seed if base_seed is None else base_seed)
    base.requires_grad_(False)
    policy = base.copy()
    target = registry.build("target", "alpha_power", alpha=alpha)
    objective = registry.build("objective", objective_name, **dict(objective_config or {}))
    log_z_module = None
    if "log_z" in registry.capabilities(objective, "requires"):
        log_z_module = registry.build("logz", logz_name).to(DTYPE)
    registry.check_composition({"target": target, "objective": objective, "logz": log_z_module})

    groups = [{"params": policy.parameters(), "lr": lr}]
    if log_z_module is not None:
        groups.append({"params": log_z_module.parameters(), "lr": logz_lr})
    optimizer = torch.optim.Adam(groups)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(lr_schedule, steps))
    generator = torch.Generator().manual_seed(seed)

    previous_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        wall_start, cpu_start = time.perf_counter(), time.process_time()
        for _ in range(steps):
            rollouts = policy.sample(batch_size, generator)
            policy_eval = policy.evaluate(rollouts)  # with gradient to the table
            scores = target.score(rollouts, base.sequence_log_probs(rollouts))
            log_z = None if log_z_module is None else log_z_module(rollouts.prompt_index)
            output = objective.loss(rollouts, policy_eval, scores, log_z)
            optimizer.zero_grad(set_to_none=True)
            output.loss.backward()
            optimizer.step()
            scheduler.step()
        wall_time, cpu_time = time.perf_counter() - wall_start, time.process_time() - cpu_start
    finally:
        torch.set_num_threads(previous_threads)

    final_log_z = math.nan
    if log_z_module is not None:
        with torch.no_grad():
            final_log_z = float(log_z_module(torch.zeros(1, dtype=torch.long))[0])
    dists = exact_distributions(setting, base, target)
    return exact_report(policy, dists, alpha, objective_name, log_z=final_log_z, steps=steps,
                        wall_time_s=wall_time, cpu_time_s=cpu_time, seed=seed)


__all__ = [
    "DEFAULT_LRS",
    "ExactDistributions",
    "ExactReport",
    "ExactSetting",
    "ExactTrainConfig",
    "TabularPolicy",
    "default_lrs",
    "exact_distributions",
    "exact_report",
    "expected_length",
    "kl_divergence",
    "lambda_star",
    "length_matching_lambda",
    "normalise_log",
    "tilted_log_distribution",
    "total_variation",
    "train_exact",
]
