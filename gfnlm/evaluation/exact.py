"""Exact verification on an enumerable setting: a tabular autoregressive "language model".

The setting has ``V`` ordinary tokens (ids ``0..V-1``) plus EOS (id ``V``) and a maximum response
length ``L``. Like an LM sampler with ``max_new_tokens = L``, a response either ends with EOS after
``0..L-1`` ordinary tokens, or reaches ``L`` ordinary tokens and is truncated (termination forced,
no EOS factor). With ``V = 4, L = 5`` that is ``Σ_{k<5} 4^k + 4^5 = 341 + 1024 = 1365`` responses.

Everything follows the conventions of :mod:`gfnlm.contracts.types`: ``|y|`` counts EOS, prefix
states ``s_0..s_n`` are visited, tensors ``[B, T+1]`` are indexed by prefix. Here ``T = L`` always.

The model is a table of logits over the *non-terminal* prefix states (those with fewer than ``L``
ordinary tokens; at length ``L`` no action is taken). A prefix state ``(y_1..y_k)`` has the id
``offset_k + Σ_t y_t·V^{k-t}`` where ``offset_k = Σ_{j<k} V^j`` counts the shorter prefixes. Because
every response is enumerable, the policy's distribution, the target, and each objective's fixed
point are known exactly, so the real registered objectives can be trained and checked against them:

A setting can hold several prompts, each with its own base model (one table per prompt; the
prompt's index is its ``prompt_index``), so per-prompt log Z components are checked too.

* :class:`ExactSetting` — the vocabulary/length, prefix-state ids, enumeration of all responses.
* :class:`TabularPolicy` — exact log-probs (:class:`~gfnlm.contracts.types.PolicyEval`) and exact
  sampling, optionally through an exploration component.
* :func:`exact_distributions` — for one prompt: the target, the LA-TB tilt, the TB-token fixed point
  and any objective's own fixed point (:meth:`Objective.fixed_point
  <gfnlm.objectives.base.Objective.fixed_point>`).
* :func:`exact_report` / :class:`ExactReport` — TV and KL of a policy to them, over the prompts.
* :func:`train_exact` — train a tabular policy with built components (target, objective, log Z,
  exploration, replay: registered or your own) and report.
"""

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import torch
from jaxtyping import Float, Int
from scipy.optimize import brentq
from torch import Tensor, nn

from gfnlm.contracts import registry
from gfnlm.contracts.registry import component_name
from gfnlm.contracts.types import PolicyEval, Rollouts, SequenceLogProbs
from gfnlm.contracts.validators import at_least
from gfnlm.objectives.fixed_points import (
    FixedPoint,
    bracket_root,
    lambda_star,
    length_tilt,
    normalise_log,
    normalised_target,
    per_token_target,
    tilted_log_distribution,
)

DTYPE = torch.float64
# What the exact checker's own sampler offers the components: exact sampling log-probs (also under
# an exploration component, which it applies per state) and a prompt feature for the MLP log Z.
EXACT_RUN_PROVIDES = frozenset(
    {"exact_behaviour_logp", "behaviour_transform", "tempered_sampling", "prompt_hidden"}
)


# ---------------------------------------------------------------------------------------------
# The enumerable setting


@attrs.frozen
class ExactSetting:
    """``vocab_size`` ordinary tokens (ids ``0..V-1``), EOS (id ``V``), responses of at most
    ``max_len`` tokens (a response reaching ``max_len`` ordinary tokens is truncated)."""

    vocab_size: int = attrs.field(default=4, converter=int, validator=at_least(1))
    max_len: int = attrs.field(default=5, converter=int, validator=at_least(1))

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
        """``offset_k = Σ_{j<k} V^j`` for ``k = 0..max_len`` (the id of the first length-k
        prefix)."""
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
        prompt_index: Int[Tensor, " B"] | None = None,
    ) -> Rollouts:
        """A :class:`Rollouts` of 1-token prompts: the token, ``group`` and ``prompt_index`` are the
        prompt's index (0 when ``prompt_index`` is not given)."""
        batch = response_ids.shape[0]
        positions = torch.arange(response_ids.shape[1])
        mask = positions[None, :] < lengths[:, None]
        if behaviour_logp is None:
            behaviour_logp = torch.zeros(response_ids.shape, dtype=DTYPE)
        if prompt_index is None:
            prompt_index = torch.zeros(batch, dtype=torch.long)
        return Rollouts(
            prompt_ids=prompt_index[:, None].clone(),
            prompt_mask=torch.ones(batch, 1, dtype=torch.bool),
            response_ids=torch.where(mask, response_ids, 0),
            response_mask=mask,
            lengths=lengths,
            ended_with_eos=ended_with_eos,
            group=prompt_index.clone(),
            prompt_index=prompt_index.clone(),
            behaviour_logp=torch.where(mask, behaviour_logp, 0.0),
        )

    def enumerate_responses(self, prompt: int = 0) -> Rollouts:
        """Every response to prompt ``prompt`` once, as one batch: EOS-ended ones by length, then
        the truncated ones.

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
        responses = torch.cat(rows)
        prompt_index = torch.full((responses.shape[0],), prompt, dtype=torch.long)
        return self.make_rollouts(
            responses, torch.cat(lengths), torch.cat(ended), prompt_index=prompt_index
        )

    def _all_sequences(self, length: int) -> Int[Tensor, "N K"]:
        """All ``V^length`` sequences of ordinary tokens, in base-V order (matches the state
        ids)."""
        if length == 0:
            return torch.zeros(1, 0, dtype=torch.long)
        digits = torch.arange(self.vocab_size)
        grids = torch.meshgrid(*([digits] * length), indexing="ij")
        return torch.stack([g.reshape(-1) for g in grids], dim=-1)


# ---------------------------------------------------------------------------------------------
# The tabular autoregressive model


class TabularPolicy(nn.Module):
    """An autoregressive model given by a logits table over the *non-terminal* prefix states of an
    :class:`ExactSetting`: ``[num_states, V+1]`` for one prompt, or
    ``[num_prompts, num_states, V+1]`` with one table per prompt (float64, a learnable parameter).
    A response's prompt is its ``prompt_index``.

    Serves both as the frozen base (:meth:`sequence_log_probs`) and as the trained policy
    (:meth:`evaluate`, with gradient); :meth:`sample` draws responses exactly.
    """

    def __init__(self, setting: ExactSetting, logits: Float[Tensor, "..."]) -> None:
        super().__init__()
        expected = (setting.num_states, setting.num_actions)
        if logits.dim() not in (2, 3) or tuple(logits.shape[-2:]) != expected:
            raise ValueError(
                f"logits of shape {tuple(logits.shape)}: "
                f"expected {expected} or (prompts, *{expected})"
            )
        self.setting = setting
        self.logits = nn.Parameter(logits.detach().to(DTYPE).clone())

    @property
    def num_prompts(self) -> int:
        """How many prompts (tables) the model has."""
        return 1 if self.logits.dim() == 2 else int(self.logits.shape[0])

    def tables(self) -> Float[Tensor, "P S A"]:
        """The logits as ``[num_prompts, num_states, V+1]`` (a view; gradients flow)."""
        return self.logits if self.logits.dim() == 3 else self.logits[None]

    @classmethod
    def random(cls, setting: ExactSetting, scale: float = 1.5, seed: int = 0) -> "TabularPolicy":
        """A "random base": i.i.d. ``N(0, scale²)`` logits (seeded), one prompt.

        ``scale = 1.5`` makes the next-token distributions clearly non-uniform (a typical state
        puts roughly half its mass on its most likely action), so p^α differs visibly from the
        base for α ≠ 1 and the expected length is not trivially ``(V+1)``-geometric.
        """
        generator = torch.Generator().manual_seed(seed)
        logits = scale * torch.randn(
            setting.num_states, setting.num_actions, generator=generator, dtype=DTYPE
        )
        return cls(setting, logits)

    @classmethod
    def stack(cls, policies: Sequence["TabularPolicy"]) -> "TabularPolicy":
        """One model whose prompt ``p`` is ``policies[p]`` (all of one setting, one prompt each)."""
        setting = policies[0].setting
        if any(p.setting != setting or p.num_prompts != 1 for p in policies):
            raise ValueError("stack: every policy must have one prompt and the same setting")
        return cls(setting, torch.stack([p.logits.detach() for p in policies]))

    @classmethod
    def from_response_distribution(
        cls, setting: ExactSetting, log_probs: Float[Tensor, " N"]
    ) -> "TabularPolicy":
        """The one-prompt table whose response distribution is ``log_probs`` (over
        ``enumerate_responses()``).

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

    def prompt_features(self, prompt_index: Int[Tensor, " B"]) -> Float[Tensor, "B P"]:
        """The one-hot of each row's prompt: the "mean prompt hidden state" an MLP log Z reads
        (hidden size = number of prompts)."""
        return torch.nn.functional.one_hot(prompt_index, self.num_prompts).to(DTYPE)

    def _state_log_probs(self, rollouts: Rollouts) -> tuple[Tensor, Tensor]:
        """``log π(·|s_i)`` ``[B, T+1, V+1]`` at every prefix, and which prefixes act
        ``[B, T+1]``."""
        ids, acting = self.setting.prefix_state_ids(rollouts)
        prompts = rollouts.prompt_index
        if prompts.numel() and int(prompts.max()) >= self.num_prompts:
            raise ValueError(
                f"prompt_index={int(prompts.max())} out of range "
                f"for a model of {self.num_prompts} prompts"
            )
        return self.tables()[prompts[:, None], ids].log_softmax(-1), acting

    def evaluate(self, rollouts: Rollouts) -> PolicyEval:
        """Exact per-token log-probs, EOS log-probs at every prefix, and token entropies.

        ``token_logp[b, t] = log π(y_{t+1}|s_t)`` (the EOS token's entry is ``log π(⊤|s_n)``);
        ``eos_logp[b, i] = log π(⊤|s_i)`` for the acting prefixes, 0 past the visited states and at
        a truncated response's terminal ``s_L`` (no action is taken there); ``entropy[b, t]`` is the
        entropy of ``π(·|s_t)`` at real token positions; ``prompt_hidden`` is the prompt's one-hot
        (:meth:`prompt_features`). Gradients flow to the table.
        """
        log_probs, acting = self._state_log_probs(rollouts)
        mask = rollouts.response_mask
        eos_logp = torch.where(acting, log_probs[..., self.setting.eos_id], 0.0)
        at_token_states = log_probs[:, :-1]  # the action at position t is taken in state s_t
        chosen = at_token_states.gather(-1, rollouts.response_ids[..., None]).squeeze(-1)
        token_logp = torch.where(mask, chosen, 0.0)
        entropy = -(at_token_states.exp() * at_token_states).sum(-1)
        return PolicyEval(
            token_logp=token_logp,
            eos_logp=eos_logp,
            entropy=torch.where(mask, entropy, 0.0),
            prompt_hidden=self.prompt_features(rollouts.prompt_index),
        )

    @torch.no_grad()
    def sequence_log_probs(self, rollouts: Rollouts) -> SequenceLogProbs:
        """The model's log-probs as a (gradient-free) :class:`SequenceLogProbs`, e.g. for the
        base."""
        evaluated = self.evaluate(rollouts)
        return SequenceLogProbs(token_logp=evaluated.token_logp, eos_logp=evaluated.eos_logp)

    @torch.no_grad()
    def response_log_probs(self, rollouts: Rollouts) -> Float[Tensor, " B"]:
        """``log π(y)`` of each response (sum of token log-probs over the response mask)."""
        return self.evaluate(rollouts).sequence_logp(rollouts.response_mask)

    @torch.no_grad()
    def sample(
        self, batch_size: int, generator: torch.Generator | None = None, exploration: Any = None
    ) -> Rollouts:
        """Draw ``batch_size`` responses to each prompt exactly (rows grouped by prompt; vectorised
        over the batch, one step per position).

        Responses still running after ``max_len`` tokens are truncated. With an ``exploration``
        component each token is drawn from ``exploration.behaviour_log_probs`` of the state's
        distribution. ``behaviour_logp`` holds the log-probs actually sampled with, so it is exact
        (an importance ratio against this policy is exactly 1 without exploration).
        """
        setting = self.setting
        vocab, max_len = setting.vocab_size, setting.max_len
        offsets = setting.state_offsets()
        prompt_index = torch.arange(self.num_prompts).repeat_interleave(batch_size)
        rows = prompt_index.shape[0]
        tokens = torch.zeros(rows, max_len, dtype=torch.long)
        logp = torch.zeros(rows, max_len, dtype=DTYPE)
        state = torch.zeros(rows, dtype=torch.long)  # every response starts at s_0 (id 0)
        running = torch.ones(rows, dtype=torch.bool)
        lengths = torch.full((rows,), max_len, dtype=torch.long)
        table = self.tables().log_softmax(-1)  # once per call: every row is needed anyway
        for position in range(max_len):
            log_probs = table[prompt_index, state]
            if exploration is not None:
                log_probs = exploration.behaviour_log_probs(log_probs)
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
        return setting.make_rollouts(tokens, lengths, ended, logp, prompt_index)


def per_token_sharpened(base: TabularPolicy, alpha: float) -> TabularPolicy:
    """Token sampling from ``base`` at temperature ``1/α`` (every prompt's table): each state's
    next-token distribution raised to the power α and renormalised per state (not p^α over whole
    responses)."""
    return TabularPolicy(base.setting, alpha * base.logits.detach().log_softmax(-1))


# ---------------------------------------------------------------------------------------------
# Exact distributions over all responses


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


def length_matching_lambda(
    log_reward: Float[Tensor, " N"], lengths: Float[Tensor, " N"], target_length: float
) -> float:
    """The λ whose tilt ``R·exp(−λ|y|)`` has expected length ``target_length`` (a diagnostic).

    ``E_λ|y|`` decreases in λ (its derivative is ``−Var_λ|y|``); NaN when ``target_length`` is
    outside the open range of response lengths (no tilt reaches it).
    """
    if not float(lengths.min()) < target_length < float(lengths.max()):
        return math.nan

    def length_gap(lam: float) -> float:
        return (
            expected_length(tilted_log_distribution(log_reward, lengths, lam), lengths)
            - target_length
        )

    try:
        lo, hi = bracket_root(length_gap, decreasing=True)
    except ValueError:
        return math.nan
    return float(brentq(length_gap, lo, hi, xtol=1e-12, rtol=1e-12))


@attrs.frozen
class ExactDistributions:
    """Exact log-distributions over every response to one prompt, for its base and a target.

    ``log_reward`` is the target's unnormalised ``log R``; ``log_target`` is ``R`` normalised
    (p^α); ``log_tilted`` is the LA-TB optimum ``R·exp(−λ*|y|)``; ``log_token_fixed_point`` is the
    TB-token optimum ``∝ exp(log R/|y|)``. ``log_z_*`` are the values a learnable ``log Z``
    converges to under TB (``log Σ R``), TB-token (``log Σ exp(log R/|y|)``) and LA-TB (λ*).
    An objective's own fixed point comes from the objective: :meth:`fixed_point`.
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

    def fixed_point(self, objective: Any) -> FixedPoint | None:
        """The fixed point ``objective`` declares (:meth:`Objective.fixed_point
        <gfnlm.objectives.base.Objective.fixed_point>`) for this prompt; ``None`` when it declares
        none."""
        declare = getattr(objective, "fixed_point", None)
        return None if declare is None else declare(self.log_reward, self.lengths)


def exact_distributions(
    setting: ExactSetting, base: TabularPolicy, target: Any, prompt: int = 0
) -> ExactDistributions:
    """Enumerate every response to ``prompt`` and compute the target, the LA-TB tilt and the
    TB-token fixed point.

    ``target`` is a built target (registered or your own); it scores the responses with the base
    model's :class:`SequenceLogProbs`, exactly as in training.
    """
    responses = setting.enumerate_responses(prompt)
    base_logp = base.sequence_log_probs(responses)
    log_base = (base_logp.token_logp * responses.response_mask).sum(-1)
    log_reward = target.score(responses, base_logp).log_reward.to(DTYPE)
    lengths = responses.lengths.to(DTYPE)
    tilt, per_token = length_tilt(log_reward, lengths), per_token_target(log_reward, lengths)
    return ExactDistributions(
        responses=responses,
        lengths=lengths,
        log_base=log_base,
        log_reward=log_reward,
        log_target=normalise_log(log_reward),
        log_tilted=tilt.log_probs,
        log_token_fixed_point=per_token.log_probs,
        lambda_star=tilt.log_z,
        log_z_tb=normalised_target(log_reward).log_z,
        log_z_tb_token=per_token.log_z,
    )


def exact_distributions_per_prompt(
    setting: ExactSetting, base: TabularPolicy, target: Any
) -> list[ExactDistributions]:
    """:func:`exact_distributions` of every prompt of ``base``."""
    return [
        exact_distributions(setting, base, target, prompt) for prompt in range(base.num_prompts)
    ]


# ---------------------------------------------------------------------------------------------
# Reports


@attrs.frozen
class ExactReport:
    """How close a policy is to the exact distributions (and, after training, how it got there).

    With several prompts each distance is the mean over the prompts (the TV of the joint
    distribution under uniformly drawn prompts) and ``*_worst`` the largest. ``tv_target``,
    ``kl_policy_target``, ``kl_target_policy`` compare π with the normalised target (p^α);
    ``tv_tilted`` with the LA-TB optimum; ``tv_fixed_point`` with the objective's own fixed point
    (NaN without an objective, or for one that declares none). ``len_*`` are expected lengths
    ``E|y|`` (EOS counts). ``log_z`` is the final learned value (mean over prompts),
    ``log_z_expected`` where the objective says it converges (λ* for LA-TB) and ``log_z_error``
    the largest gap over the prompts. ``lambda_matched`` is the λ whose tilt has the policy's
    expected length (equals λ* when LA-TB has converged).
    """

    objective: str | None
    alpha: float
    vocab_size: int
    max_len: int
    num_responses: int
    num_prompts: int
    policy_mass: float
    tv_target: float
    tv_target_worst: float
    kl_policy_target: float
    kl_target_policy: float
    tv_tilted: float
    tv_fixed_point: float
    tv_fixed_point_worst: float
    len_base: float
    len_target: float
    len_policy: float
    len_tilted: float
    len_token_fixed_point: float
    lambda_star: float
    lambda_matched: float
    log_z: float = math.nan
    log_z_expected: float = math.nan
    log_z_error: float = math.nan
    steps: int = 0
    wall_time_s: float = 0.0
    cpu_time_s: float = 0.0
    seed: int | None = None
    exploration: str | None = None
    replay: str | None = None

    def as_row(self) -> dict[str, Any]:
        """The report as a flat dict (one CSV row)."""
        return attrs.asdict(self)


def _prompt_measures(
    log_policy: Tensor, dists: ExactDistributions, objective: Any
) -> dict[str, float]:
    """Every distance and length of one prompt's policy distribution (see :class:`ExactReport`)."""
    fixed_point = dists.fixed_point(objective) if objective is not None else None
    len_policy = expected_length(log_policy, dists.lengths)
    return {
        "policy_mass": float(log_policy.exp().sum()),
        "tv_target": total_variation(log_policy, dists.log_target),
        "kl_policy_target": kl_divergence(log_policy, dists.log_target),
        "kl_target_policy": kl_divergence(dists.log_target, log_policy),
        "tv_tilted": total_variation(log_policy, dists.log_tilted),
        "tv_fixed_point": math.nan
        if fixed_point is None
        else total_variation(log_policy, fixed_point.log_probs),
        "len_base": expected_length(dists.log_base, dists.lengths),
        "len_target": expected_length(dists.log_target, dists.lengths),
        "len_policy": len_policy,
        "len_tilted": expected_length(dists.log_tilted, dists.lengths),
        "len_token_fixed_point": expected_length(dists.log_token_fixed_point, dists.lengths),
        "lambda_star": dists.lambda_star,
        "lambda_matched": length_matching_lambda(dists.log_reward, dists.lengths, len_policy),
        "log_z_expected": math.nan if fixed_point is None else fixed_point.log_z,
    }


def exact_report(
    policy: TabularPolicy,
    dists: ExactDistributions | Sequence[ExactDistributions],
    objective: Any = None,
    log_z: Sequence[float] | None = None,
    **extra: Any,
) -> ExactReport:
    """Compare ``policy``'s exact distribution with ``dists`` (one per prompt) and with the built
    ``objective``'s own fixed point; ``log_z`` holds the learned log Z of each prompt; ``extra``
    fills the other fields of :class:`ExactReport` (``alpha``, ``steps``, ``seed``, ...)."""
    per_prompt = [dists] if isinstance(dists, ExactDistributions) else list(dists)
    measures = [
        _prompt_measures(policy.response_log_probs(d.responses), d, objective) for d in per_prompt
    ]

    def mean(key: str) -> float:
        return float(sum(m[key] for m in measures) / len(measures))

    fields = {key: mean(key) for key in measures[0]}
    fields["tv_target_worst"] = max(m["tv_target"] for m in measures)
    fields["tv_fixed_point_worst"] = max(m["tv_fixed_point"] for m in measures)
    if log_z is not None:
        expected = [m["log_z_expected"] for m in measures]
        fields["log_z"] = float(sum(log_z) / len(log_z))
        fields["log_z_error"] = max(abs(a - b) for a, b in zip(log_z, expected, strict=True))
    setting = policy.setting
    return ExactReport(
        objective=_name_of(objective),
        alpha=extra.pop("alpha", math.nan),
        vocab_size=setting.vocab_size,
        max_len=setting.max_len,
        num_responses=setting.num_responses,
        num_prompts=len(per_prompt),
        **fields,
        **extra,
    )


# ---------------------------------------------------------------------------------------------
# Training with built components


def _lr_factor(schedule: str, steps: int) -> Callable[[int], float]:
    """The learning-rate multiplier at each step: ``constant`` (1) or ``cosine`` (1 → 0)."""
    if schedule == "constant":
        return lambda step: 1.0
    if schedule == "cosine":
        return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, steps) / max(steps, 1)))
    raise ValueError(f"lr_schedule={schedule!r}: must be 'constant' or 'cosine'")


def random_bases(
    setting: ExactSetting, scales: float | Sequence[float], seeds: Sequence[int]
) -> TabularPolicy:
    """A frozen base with one random table per seed (:meth:`TabularPolicy.random`), i.e. one prompt
    per seed; ``scales`` is one logit scale for all, or one per seed."""
    scales = [scales] * len(seeds) if isinstance(scales, int | float) else list(scales)
    tables = [
        TabularPolicy.random(setting, scale, seed)
        for scale, seed in zip(scales, seeds, strict=True)
    ]
    base = tables[0] if len(tables) == 1 else TabularPolicy.stack(tables)
    return base.requires_grad_(False)


def _learned_log_z(logz: Any, base: TabularPolicy) -> list[float] | None:
    """The log Z component's value for each prompt (``None`` without one)."""
    if logz is None:
        return None
    prompts = torch.arange(base.num_prompts)
    with torch.no_grad():
        return [float(v) for v in logz(prompts, base.prompt_features(prompts))]


def _estimated_log_z(
    objective: Any,
    policy: TabularPolicy,
    base: TabularPolicy,
    target: Any,
    batch_size: int,
    generator: torch.Generator,
) -> list[float] | None:
    """Each prompt's log Z as an objective without a log Z component estimates it (LA-TB's
    ``group_mean`` reports it as the ``log_z`` metric), from one fresh batch of the trained policy;
    ``None`` when the objective reports none."""
    rollouts = policy.sample(batch_size, generator)
    estimates = []
    with torch.no_grad():
        for prompt in range(base.num_prompts):
            rows = rollouts.select((rollouts.prompt_index == prompt).nonzero().squeeze(1))
            scores = target.score(rows, base.sequence_log_probs(rows))
            metrics = objective.loss(rows, policy.evaluate(rows), scores, None).metrics
            if "log_z" not in metrics:
                return None
            estimates.append(float(metrics["log_z"]))
    return estimates


def train_exact(objective: Any, target: Any, base: TabularPolicy, **options: Any) -> ExactReport:
    """Train with :func:`train_exact_policy` (same arguments) and return only the report."""
    return train_exact_policy(objective, target, base, **options)[1]


def train_exact_policy(
    objective: Any,
    target: Any,
    base: TabularPolicy,
    *,
    logz: Any = None,
    exploration: Any = None,
    replay: Any = None,
    steps: int = 3000,
    batch_size: int = 64,
    lr: float = 0.05,
    logz_lr: float = 0.1,
    seed: int = 0,
    lr_schedule: str = "cosine",
    num_threads: int | None = 1,
) -> tuple[TabularPolicy, ExactReport]:
    """Train a tabular policy, initialised as ``base``, with built components; the trained policy
    and its report.

    ``objective``, ``target``, ``logz``, ``exploration`` and ``replay`` are built components
    (``registry.build(...)`` or your own classes); ``base`` is a frozen :class:`TabularPolicy` with
    one table per prompt (:func:`random_bases`). The components are composed as in a run
    (:func:`~gfnlm.contracts.registry.check_composition`, the off-policy check of
    :func:`~gfnlm.exploration.check_off_policy`), with the exact sampler providing
    :data:`EXACT_RUN_PROVIDES`.

    Each step samples ``batch_size`` responses per prompt from the policy (through ``exploration``
    when given), mixes in replayed ones (``replay``), scores them with the target on the base
    (prefix rewards included), computes ``objective.loss(rollouts, policy_eval, target_scores,
    log_z)`` and takes one Adam step on the policy table (``lr``) and log Z (``logz_lr``).
    ``lr_schedule`` is ``cosine`` (both lrs decay to 0 over ``steps``, which removes the
    gradient-noise floor) or ``constant``. ``seed`` seeds the sampling and the replay draws.
    ``num_threads`` sets torch's thread count for the loop (restored afterwards): the tensors are
    tiny, so one thread is fastest; ``None`` leaves it alone.

    The report compares the trained policy, prompt by prompt, with the target and with the fixed
    point the objective declares (an objective that estimates log Z itself, such as LA-TB with
    ``log_z_source='group_mean'``, has its estimate from a fresh batch compared too)
    (:meth:`Objective.fixed_point <gfnlm.objectives.base.Objective.fixed_point>`), and the learned
    log Z with where that fixed point says it converges.
    """
    from gfnlm.exploration import (
        check_off_policy,  # local: gfnlm.exploration imports this module's users
    )

    components = {
        "target": target,
        "objective": objective,
        "logz": logz,
        "exploration": exploration,
        "replay": replay,
    }
    registry.check_composition(components, provided_by_run=EXACT_RUN_PROVIDES)
    check_off_policy(objective, exploration, replay)
    if logz is not None:
        logz = logz.to(DTYPE)
    policy = base.copy()
    groups = [{"params": policy.parameters(), "lr": lr}]
    if logz is not None:
        groups.append({"params": logz.parameters(), "lr": logz_lr})
    optimizer = torch.optim.Adam(groups)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(lr_schedule, steps))
    generator = torch.Generator().manual_seed(seed)
    previous_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        wall_start, cpu_start = time.perf_counter(), time.process_time()
        for _ in range(steps):
            fresh = policy.sample(batch_size, generator, exploration)
            rollouts = fresh if replay is None else replay.mix(fresh, generator)
            scores = target.score(rollouts, base.sequence_log_probs(rollouts))
            if replay is not None:
                replay.add(fresh, scores.log_reward[: fresh.batch_size])
            policy_eval = policy.evaluate(rollouts)  # with gradient to the table
            log_z = None if logz is None else logz(rollouts.prompt_index, policy_eval.prompt_hidden)
            output = objective.loss(rollouts, policy_eval, scores, log_z)
            optimizer.zero_grad(set_to_none=True)
            output.loss.backward()
            optimizer.step()
            scheduler.step()
        wall_time, cpu_time = time.perf_counter() - wall_start, time.process_time() - cpu_start
    finally:
        torch.set_num_threads(previous_threads)
    dists = exact_distributions_per_prompt(base.setting, base, target)
    log_z = (
        _learned_log_z(logz, base)
        if logz is not None
        else _estimated_log_z(objective, policy, base, target, batch_size, generator)
    )
    report = exact_report(
        policy,
        dists,
        objective,
        log_z,
        alpha=getattr(target, "alpha", math.nan),
        steps=steps,
        wall_time_s=wall_time,
        cpu_time_s=cpu_time,
        seed=seed,
        exploration=_name_of(exploration),
        replay=_name_of(replay),
    )
    return policy, report


def _name_of(component: Any) -> str | None:
    return None if component is None else component_name(component)


__all__ = [
    "EXACT_RUN_PROVIDES",
    "ExactDistributions",
    "ExactReport",
    "ExactSetting",
    "TabularPolicy",
    "exact_distributions",
    "exact_distributions_per_prompt",
    "exact_fork_comparison",
    "exact_report",
    "expected_length",
    "kl_divergence",
    "lambda_star",
    "length_matching_lambda",
    "normalise_log",
    "per_token_sharpened",
    "random_bases",
    "tilted_log_distribution",
    "total_variation",
    "train_exact",
    "train_exact_policy",
]


def exact_fork_comparison(
    alpha: float, work_rate: float | None = None, vocab_size: int = 4, steps: int = 3
) -> dict:
    """Exactly, on the enumerable model of the fork structure: the base, per-token sharpening
    (T = 1/α: the base's logits times α at every state) and sequence-level sharpening (p^α, the
    registered ``alpha_power`` target normalised over every response, and the LA-TB optimum).

    Returns the TV distances between them, the probability each puts on the right answer (token 0)
    and on the work route, and the answer each ranks first (0 = right)."""
    from gfnlm.contracts.registry import build
    from gfnlm.tasks.synthetic_forks import WORK_RATE, answer_marginal, fork_response_log_probs

    work_rate = WORK_RATE if work_rate is None else work_rate
    setting = ExactSetting(vocab_size=vocab_size, max_len=steps + 2)
    base = TabularPolicy.from_response_distribution(
        setting, fork_response_log_probs(setting, work_rate)
    )
    exact = exact_distributions(setting, base, build("target", "alpha_power", {"alpha": alpha}))
    low_temp = TabularPolicy(setting, base.logits.detach() * alpha)
    log_low_temp = normalise_log(low_temp.response_log_probs(exact.responses))
    work_route = exact.responses.response_ids[:, 0] == 0
    distributions = {
        "base": exact.log_base,
        "low_temp": log_low_temp,
        "power": exact.log_target,
        "la_tb": exact.log_tilted,
    }
    result: dict = {
        "alpha": alpha,
        "work_rate": work_rate,
        "vocab_size": vocab_size,
        "steps": steps,
        "num_responses": setting.num_responses,
        "tv_low_temp_power": total_variation(log_low_temp, exact.log_target),
        "tv_base_power": total_variation(exact.log_base, exact.log_target),
        "tv_la_tb_power": total_variation(exact.log_tilted, exact.log_target),
    }
    for name, log_p in distributions.items():
        answers = answer_marginal(setting, log_p)
        ranked = sorted((a for a in answers if a >= 0), key=lambda a: -answers[a])
        result[f"{name}_right"] = answers.get(0, 0.0)
        result[f"{name}_top_answer"] = ranked[0]
        result[f"{name}_top_answer_p"] = answers[ranked[0]]
        result[f"{name}_work_route"] = float(log_p.exp()[work_route].sum())
    return result
