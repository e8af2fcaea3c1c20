"""Power-SMC (arXiv 2602.10273), an inference-time baseline: sequential Monte Carlo toward
``π_α(y) ∝ p_base(y|x)^α`` over the responses ``y`` to a prompt ``x``, the target of power
sampling (Karan & Du 2025; here ``power_mh``), with ``N`` particles per response decoded together
as one batch on the KV cache.

**Targets and weights.** Write ``a_ℓ`` for the exponent of a prefix of ``ℓ`` tokens (``a_ℓ = α``
without bridging). The intermediate target over prefixes (or finished responses) after step ``t``
is ``γ_t(y_{≤t}) = p(y_{≤t})^{a_{t+1}}``. Each live particle draws its next token from the
locally optimal proposal, token sampling at temperature ``1/a_{t+1}``,

.. math::

    q_t(v \\mid y_{<t}) = p(v \\mid y_{<t})^{a_{t+1}} / Z_t(y_{<t}), \\qquad
    Z_t(y_{<t}) = \\sum_v p(v \\mid y_{<t})^{a_{t+1}},

so its incremental log-weight ``log γ_t − log γ_{t−1} − log q_t`` is

.. math::

    \\log w_t = \\log Z_t(y_{<t}) + (a_{t+1} - a_t)\\,\\log p(y_{<t}),

the local normaliser (plus the bridge's term). With this proposal the plain ratio
``a·log p(y_t|·) − log q(y_t|·)`` equals ``log Z_t`` whatever token was drawn, so the two forms
are the same number; computing it from the logits, before the draw, is what lets resampling come
before the draw (below), and it carries no noise from the drawn token. A finished particle
(EOS, or ``max_new_tokens`` reached: truncation counts as termination, as in ``power_mh``) keeps
its weight, and only the bridging term ``(a_{t+1} − a_t) log p(y)`` still applies to it. Without
bridging the product of the weights is ``p(y)^α / q(y)`` for every complete response: importance
sampling of ``p^α`` by ``T = 1/α`` token sampling, made sequential. Weights are kept in float64.

**Resampling.** Per particle set, with normalised weights ``W_i``, the effective sample size is
``ESS = (Σ_i w_i)² / Σ_i w_i² = 1 / Σ_i W_i²``. When ``ESS < ess_threshold · N`` the ``N``
particles are replaced by ``N`` draws from ``W`` (``systematic``: one uniform ``u``, the particles
whose cumulative weights hold ``(u + k)/N``, k = 0..N−1; ``multinomial``: ``N`` independent draws)
and the weights reset to uniform; the KV-cache rows are copied with the token histories
(``index_select`` along the batch). Because the weight is known before the token is drawn, the
particles are reweighted and resampled *before* each draw (the fully adapted auxiliary particle
filter), so the copies of one prefix draw their next tokens independently.

**Bridging** (``bridge_steps = K > 0``). The exponent moves linearly from 1 to α over the first
``K`` tokens, ``a_ℓ = 1 + (α − 1)·min(ℓ, K)/K``, as tempered SMC does: the proposal follows it
(temperature ``1/a_{t+1}``) and every particle, live or finished, takes the increment
``(a_{t+1} − a_t) log p(prefix)`` for raising its prefix's exponent. When decoding stops before
``K`` tokens, the remaining ``(α − a) log p(y)`` is applied before the final draw, so the final
target is ``p^α`` exactly in both cases.

**Output.** Each returned response is one particle drawn from its particle set's final weights.
As ``N → ∞`` its distribution tends to ``π_α ∝ p^α`` over all responses (the bias of the
self-normalised weights is ``O(1/N)``); with ``N = 1`` it is the proposal's, token sampling at
``T = 1/α`` (at ``1/a_ℓ`` with a bridge). The ``samples_per_prompt`` responses of a prompt come
from independent particle sets (independent samples), decoded in the same batch. Checked on
enumerable models in ``tests/test_power_smc.py``; measured against ``power_mh`` at equal decoded
tokens in ``benchmarks/power_smc_exact.py``.
"""

from typing import Any, Protocol

import attrs
import torch
from torch import Tensor
from transformers import DynamicCache

from gfnlm.contracts.errors import ConfigError
from gfnlm.contracts.registry import option, register
from gfnlm.contracts.types import PromptBatch, Rollouts
from gfnlm.models.chunked_logps import wide
from gfnlm.models.decoding import per_sample, rollouts_from_generated
from gfnlm.samplers.base import Sampler
from gfnlm.samplers.power_mh import DecodingCost

RESAMPLING_SCHEMES = ("systematic", "multinomial")


class ParticleDecoder(Protocol):
    """The base model's next-token log-probs for a batch of particles (one row each)."""

    def start(self) -> Tensor:
        """``[rows, V]`` log-probs of the first token of every row (all rows are live)."""

    def advance(self, parents: Tensor, tokens: Tensor) -> Tensor:
        """Replace the rows by ``parents`` (indices into the current rows, repeats allowed: copies)
        each extended by its token of ``tokens``; return the new rows' ``[len(parents), V]``
        next-token log-probs."""


@attrs.define
class SMCStats(DecodingCost):
    """What a Power-SMC call cost: tokens decoded (every particle's) and returned, ESS checks and
    resamplings."""

    ess_checks: int = 0  # one per particle set and decoding step
    resamplings: int = 0

    @property
    def resampling_rate(self) -> float:
        """Share of the ESS checks that resampled."""
        return self.resamplings / max(self.ess_checks, 1)


@attrs.frozen
class SMCResult:
    """One response per particle set: ``tokens`` ``[G, W]`` (anything after a response's end),
    the base log-prob of each token ``base_logp`` ``[G, W]`` (0 after the end) and ``lengths``."""

    tokens: Tensor
    base_logp: Tensor
    lengths: Tensor


def bridge_exponent(alpha: float, bridge_steps: int, length: int) -> float:
    """``a_ℓ``: the exponent of a prefix of ``length`` tokens, linear from 1 (empty prefix) to α at
    ``bridge_steps`` tokens; α throughout without bridging."""
    if bridge_steps <= 0:
        return alpha
    return 1.0 + (alpha - 1.0) * min(length, bridge_steps) / bridge_steps


def effective_sample_size(log_weights: Tensor) -> Tensor:
    """``1 / Σ W_i²`` of each row of ``[G, N]`` unnormalised log-weights."""
    return 1.0 / log_weights.softmax(-1).square().sum(-1)


def resample_indices(log_weights: Tensor, scheme: str, generator: torch.Generator | None) -> Tensor:
    """``[G, N]`` ancestors (indices within each row) drawn from the rows' normalised weights."""
    weights = log_weights.softmax(-1)
    groups, particles = weights.shape
    if scheme == "multinomial":
        return torch.multinomial(weights, particles, replacement=True, generator=generator)
    # Systematic: one uniform per row; the k-th ancestor holds (u + k)/N in its cumulative weight
    # (right=True skips zero-weight particles; the clamp absorbs a cumsum ending just below 1).
    u = torch.rand(groups, 1, generator=generator, device=weights.device, dtype=weights.dtype)
    points = (u + torch.arange(particles, device=weights.device, dtype=weights.dtype)) / particles
    ancestors = torch.searchsorted(weights.cumsum(-1), points, right=True)
    return ancestors.clamp_max(particles - 1)


@attrs.define
class _Particles:
    """Every particle's state, rows grouped by particle set; ``decoder_row`` is a live particle's
    row in the decoder's batch (-1 once it has finished)."""

    tokens: Tensor
    base_logp: Tensor
    total_logp: Tensor  # log p of the prefix so far (float64)
    lengths: Tensor
    finished: Tensor
    log_weight: Tensor  # float64
    decoder_row: Tensor

    @classmethod
    def empty(
        cls, rows: int, max_new_tokens: int, pad_id: int, device: torch.device
    ) -> "_Particles":
        return cls(
            tokens=torch.full((rows, max_new_tokens), pad_id, dtype=torch.long, device=device),
            base_logp=torch.zeros(rows, max_new_tokens, device=device),
            total_logp=torch.zeros(rows, dtype=torch.float64, device=device),
            lengths=torch.zeros(rows, dtype=torch.long, device=device),
            finished=torch.zeros(rows, dtype=torch.bool, device=device),
            log_weight=torch.zeros(rows, dtype=torch.float64, device=device),
            decoder_row=torch.arange(rows, device=device),
        )

    def take(self, index: Tensor) -> "_Particles":
        """The particles ``index`` (repeats: copies), weights included."""
        fields = attrs.asdict(self, recurse=False)
        return _Particles(**{name: value[index] for name, value in fields.items()})


def power_smc(
    decoder: ParticleDecoder,
    groups: int,
    particles: int,
    alpha: float,
    max_new_tokens: int,
    eos_id: int,
    *,
    ess_threshold: float = 0.5,
    resampling: str = "systematic",
    bridge_steps: int = 0,
    generator: torch.Generator | None = None,
    stats: SMCStats | None = None,
) -> SMCResult:
    """One response from each of ``groups`` independent particle sets of ``particles`` particles
    (decoder rows ``g*N .. g*N+N-1`` belong to set ``g``), targeting ``p^α``."""
    stats = stats if stats is not None else SMCStats()
    next_logp = decoder.start()
    state = _Particles.empty(groups * particles, max_new_tokens, eos_id, next_logp.device)
    state.base_logp = state.base_logp.to(next_logp.dtype)
    steps = 0
    for t in range(max_new_tokens):
        if state.finished.all():
            break
        exponent = bridge_exponent(alpha, bridge_steps, t + 1)
        _reweight(state, next_logp, exponent - bridge_exponent(alpha, bridge_steps, t), exponent)
        state = _resample_degenerate(state, particles, ess_threshold, resampling, generator, stats)
        next_logp = _draw_tokens(decoder, state, next_logp, exponent, t, eos_id, generator, stats)
        steps = t + 1
    # The bridge's remaining exponent when decoding stopped before it ended.
    state.log_weight += (alpha - bridge_exponent(alpha, bridge_steps, steps)) * state.total_logp
    return _pick_one_per_set(state, particles, steps, generator, stats)


def _reweight(state: _Particles, next_logp: Tensor, exponent_rise: float, exponent: float) -> None:
    """``log w += (a_{t+1} − a_t) log p(prefix)`` for all; ``+ log Z_t`` for the live ones."""
    if exponent_rise:
        state.log_weight += exponent_rise * state.total_logp
    live = ~state.finished
    log_normaliser = torch.logsumexp(exponent * next_logp, -1).double()
    state.log_weight[live] += log_normaliser[state.decoder_row[live]]


def _resample_degenerate(
    state: _Particles,
    particles: int,
    ess_threshold: float,
    scheme: str,
    generator: torch.Generator | None,
    stats: SMCStats,
) -> _Particles:
    """Resample the particle sets whose ESS fell below ``ess_threshold · N``; the rest stay."""
    log_weight = state.log_weight.view(-1, particles)
    degenerate = effective_sample_size(log_weight) < ess_threshold * particles
    stats.ess_checks += log_weight.shape[0]
    if not degenerate.any():
        return state
    stats.resamplings += int(degenerate.sum())
    within = torch.arange(particles, device=log_weight.device).expand_as(log_weight)
    drawn = resample_indices(log_weight, scheme, generator)
    within = torch.where(degenerate[:, None], drawn, within)
    first_row = torch.arange(0, log_weight.numel(), particles, device=log_weight.device)
    resampled = state.take((first_row[:, None] + within).view(-1))
    resampled.log_weight.view(-1, particles)[degenerate] = 0.0  # uniform again
    return resampled


def _draw_tokens(
    decoder: ParticleDecoder,
    state: _Particles,
    next_logp: Tensor,
    exponent: float,
    t: int,
    eos_id: int,
    generator: torch.Generator | None,
    stats: SMCStats,
) -> Tensor:
    """Step ``t``: every live particle draws a token at temperature ``1/exponent``; the decoder
    keeps (and copies, after resampling) the rows of the particles that are still live."""
    live = (~state.finished).nonzero().squeeze(1)
    parents = state.decoder_row[live]
    logp = next_logp[parents]
    proposal = (exponent * logp).softmax(-1)
    token = torch.multinomial(proposal, 1, generator=generator).squeeze(1)
    token_logp = logp.gather(-1, token[:, None]).squeeze(1)
    state.tokens[live, t] = token
    state.base_logp[live, t] = token_logp
    state.total_logp[live] += token_logp.double()
    state.lengths[live] += 1
    stats.tokens_generated += live.numel()
    ended = (token == eos_id) | (t == state.tokens.shape[1] - 1)  # the cap ends it too
    state.finished[live] = ended
    continuing = live[~ended]
    state.decoder_row.fill_(-1)
    state.decoder_row[continuing] = torch.arange(continuing.numel(), device=continuing.device)
    if continuing.numel() == 0:
        return next_logp[:0]
    return decoder.advance(parents[~ended], token[~ended])


def _pick_one_per_set(
    state: _Particles,
    particles: int,
    steps: int,
    generator: torch.Generator | None,
    stats: SMCStats,
) -> SMCResult:
    """One particle of each set, drawn from its final normalised weights."""
    log_weight = state.log_weight.view(-1, particles)
    chosen = torch.multinomial(log_weight.softmax(-1), 1, generator=generator).squeeze(1)
    rows = torch.arange(log_weight.shape[0], device=chosen.device) * particles + chosen
    lengths = state.lengths[rows]
    stats.tokens_returned += int(lengths.sum())
    return SMCResult(
        tokens=state.tokens[rows, :steps], base_logp=state.base_logp[rows, :steps], lengths=lengths
    )


class TabularDecoder:
    """The decoder of an enumerable tabular model (:class:`~gfnlm.evaluation.exact.ExactSetting`'s
    state numbering: prefixes of length ``k`` are ``offset_k +`` their base-V index), for exact
    checks: ``log_probs`` ``[num_states, V+1]`` are the next-token log-probs of each prefix."""

    def __init__(self, log_probs: Tensor, vocab_size: int, rows: int) -> None:
        self.log_probs, self.vocab_size, self.rows = log_probs, vocab_size, rows
        self.offset = 0  # the state id of the first prefix of the current length
        self.length = 0
        self.index = torch.zeros(rows, dtype=torch.long, device=log_probs.device)

    def start(self) -> Tensor:
        """Every row at the empty prefix."""
        return self.log_probs[0].expand(self.rows, -1)

    def advance(self, parents: Tensor, tokens: Tensor) -> Tensor:
        """The parents' prefixes extended by ``tokens`` (ordinary tokens: EOS ends a particle)."""
        self.offset += self.vocab_size**self.length
        self.length += 1
        self.index = self.index[parents] * self.vocab_size + tokens
        return self.log_probs[self.offset + self.index]


class CachedDecoder:
    """The base model on one KV cache: each prompt prefilled once, its cache rows repeated for its
    particles and copied by ``index_select`` along the batch when particles are resampled."""

    def __init__(
        self, model: torch.nn.Module, prompt_ids: Tensor, prompt_mask: Tensor, copies: int
    ) -> None:
        self.model, self.copies = model, copies
        self.prompt_ids, self.prompt_mask = prompt_ids, prompt_mask
        self.cache = DynamicCache(config=model.config)
        self.mask = self.next_position = torch.empty(0)

    def start(self) -> Tensor:
        """Prefill the prompts; ``copies`` rows per prompt, grouped by prompt."""
        mask = self.prompt_mask.long()
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        out = self.model(
            input_ids=self.prompt_ids,
            attention_mask=mask,
            position_ids=positions,
            cache=self.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        self.cache.batch_repeat_interleave(self.copies)
        self.mask = per_sample(mask, self.copies)
        self.next_position = per_sample(positions[:, -1], self.copies) + 1
        return wide(per_sample(out.logits[:, -1], self.copies)).log_softmax(-1)

    def advance(self, parents: Tensor, tokens: Tensor) -> Tensor:
        """Copy the parents' cache rows (skipped when every row stays in place), then one step."""
        in_place = torch.arange(self.mask.shape[0], device=parents.device)
        if parents.shape != in_place.shape or not torch.equal(parents, in_place):
            self.cache.batch_select_indices(parents)
            self.mask, self.next_position = self.mask[parents], self.next_position[parents]
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.mask.shape[0], 1)], 1)
        out = self.model(
            input_ids=tokens[:, None],
            attention_mask=self.mask,
            position_ids=self.next_position[:, None],
            cache=self.cache,
            use_cache=True,
        )
        self.next_position = self.next_position + 1
        return wide(out.logits[:, -1]).log_softmax(-1)


@register("sampler", "power_smc")
@attrs.define
class PowerSMCSampler(Sampler):
    """Power-SMC from the policy's base model toward ``p_base^α`` (an inference-time baseline).

    ``behaviour_logp`` of the returned rollouts holds ``log p_base`` per token (a resampled
    particle's response has no tractable sampling probability), so, like ``power_mh``, it never
    provides ``exact_behaviour_logp``: objectives that importance-weight by it (``la_tb``,
    ``grpo``) are rejected with it. ``last_stats`` holds the tokens decoded and the resamplings of
    the latest call.
    """

    alpha: float = option(4.0, "α of the power distribution p_base^α the particles target (> 0)")
    particles: int = option(16, "particles per returned response, decoded as one batch (>= 1)")
    ess_threshold: float = option(
        0.5, "resample when ESS < ess_threshold × particles (in [0, 1]; 0 = never)"
    )
    resampling: str = option("systematic", "'systematic' or 'multinomial' resampling")
    bridge_steps: int = option(
        0, "tokens over which the exponent moves linearly from 1 to alpha (0 = off)"
    )
    max_new_tokens: int = option(24, "longest response (set from sampling.max_new_tokens)")
    seed: int = option(0, "seed of the sampler's own random numbers")
    temperature: float = option(
        1.0, "unused: the proposal runs at 1/alpha (accepted like every sampler's)"
    )
    top_p: float = option(
        1.0, "unused: the proposal samples the whole vocabulary (accepted like every sampler's)"
    )
    _policy: Any = attrs.field(default=None, init=False, repr=False)
    _generator: Any = attrs.field(default=None, init=False, repr=False)
    last_stats: SMCStats = attrs.field(factory=SMCStats, init=False)

    def __attrs_post_init__(self) -> None:
        check_smc_options(
            self.alpha,
            self.particles,
            self.ess_threshold,
            self.resampling,
            self.bridge_steps,
            self.max_new_tokens,
        )

    def withheld(self) -> dict[str, str]:
        """Why this sampler offers neither exact behaviour log-probs nor an exploration hook."""
        fixed = "the particles' proposals are fixed at temperature 1/alpha"
        return {
            "exact_behaviour_logp": "its behaviour_logp holds log p_base, a resampled "
            "particle's response has no tractable sampling probability",
            "behaviour_transform": fixed,
            "tempered_sampling": fixed,
        }

    def setup(self, policy: Any) -> None:
        self._policy = policy
        # One generator for the sampler's life: successive calls draw different particles, and a
        # run is reproducible from ``seed``.
        self._generator = torch.Generator(device=policy.device).manual_seed(self.seed)

    @torch.no_grad()
    def sample(self, prompts: PromptBatch, n: int) -> Rollouts:
        policy = self._policy
        self.last_stats = SMCStats()
        device = policy.device
        prompt_ids, prompt_mask = prompts.prompt_ids.to(device), prompts.prompt_mask.to(device)
        with policy.base_model() as base, policy.decoding(base):
            # Rows: prompt, then its n independent particle sets, then the set's particles.
            decoder = CachedDecoder(base, prompt_ids, prompt_mask, n * self.particles)
            result = power_smc(
                decoder,
                len(prompts) * n,
                self.particles,
                self.alpha,
                self.max_new_tokens,
                policy.eos_token_id,
                ess_threshold=self.ess_threshold,
                resampling=self.resampling,
                bridge_steps=self.bridge_steps,
                generator=self._generator,
                stats=self.last_stats,
            )
        return rollouts_from_generated(policy, prompts, n, result.tokens, result.base_logp)


def check_smc_options(
    alpha: float,
    particles: int,
    ess_threshold: float,
    resampling: str,
    bridge_steps: int,
    max_new_tokens: int,
) -> None:
    """One-line errors naming the first bad Power-SMC option."""
    where = "sampling.sampler_options"
    if not alpha > 0:
        raise ConfigError(f"{where}.alpha={alpha!r}: must be > 0")
    if not _is_count(particles, 1):
        raise ConfigError(f"{where}.particles={particles!r}: must be an integer >= 1")
    if not 0 <= ess_threshold <= 1:
        raise ConfigError(f"{where}.ess_threshold={ess_threshold!r}: must be in [0, 1]")
    if resampling not in RESAMPLING_SCHEMES:
        raise ConfigError(
            f"{where}.resampling={resampling!r}: must be one of {', '.join(RESAMPLING_SCHEMES)}"
        )
    if not _is_count(bridge_steps, 0):
        raise ConfigError(f"{where}.bridge_steps={bridge_steps!r}: must be an integer >= 0")
    if not _is_count(max_new_tokens, 1):
        raise ConfigError(f"sampling.max_new_tokens={max_new_tokens!r}: must be an integer >= 1")


def _is_count(value: Any, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum
