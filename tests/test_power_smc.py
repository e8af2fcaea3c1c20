"""Power-SMC on enumerable tabular models, where p^α and the distribution of what the sampler
returns can be compared over every response, and on a tiny random Llama, where resampling copies
KV-cache rows."""

import functools
import itertools
import json
import math
import random
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import torch
from scipy import integrate
from transformers import AutoModelForCausalLM

from gfnlm.contracts import registry
from gfnlm.evaluation.exact import ExactSetting, TabularPolicy
from gfnlm.models.loading import load_tokenizer
from gfnlm.samplers.power_mh import MHStats, power_sample, tabular_proposal
from gfnlm.samplers.power_smc import (
    PowerSMCSampler,
    SMCStats,
    TabularDecoder,
    bridge_exponent,
    effective_sample_size,
    power_smc,
    resample_indices,
)
from gfnlm.tasks.prompts import PromptSet
from gfnlm.training.config import ModelConfig
from gfnlm.training.policy import CausalLMPolicy

DRAWS = 20_000
PARTICLES = (1, 4, 16, 64)
FLOOR_SEEDS = 5


class Setting(NamedTuple):
    vocab: int
    max_len: int
    alpha: float
    base_seed: int


# Random bases (logit scale 1.5, as tests/test_power_mh.py) whose T = 1/α token sampling is far
# from p^α (TV 0.27, 0.31, 0.21) while χ²(p^α ‖ q) < 1 (0.65, 0.51, 0.22): the first-order bias
# of N weighted particles is E_π|π/q − 1| / 2N, so 64 particles reach the noise of 20,000 draws.
# Base seed 0 of (V=2, L=5, α=4) has χ² = 37.5 and needs ~1000 particles (see the benchmark).
SETTINGS = [Setting(3, 3, 2.0, 3), Setting(2, 5, 4.0, 5), Setting(4, 3, 0.5, 1)]


def setting_id(setting: Setting) -> str:
    return f"V{setting.vocab}-L{setting.max_len}-a{setting.alpha:g}"


class Enumerable:
    """A random tabular LM (``V`` tokens + EOS, at most ``L`` tokens) and its every response."""

    def __init__(self, setting: Setting) -> None:
        self.setting = setting
        self.exact = ExactSetting(setting.vocab, setting.max_len)
        self.eos = self.exact.eos_id
        base = TabularPolicy.random(self.exact, 1.5, setting.base_seed)
        self.log_p = base.logits.detach().log_softmax(-1)
        vocab, max_len = setting.vocab, setting.max_len
        self.responses = [
            (*body, self.eos)
            for k in range(max_len)
            for body in itertools.product(range(vocab), repeat=k)
        ]
        self.responses += list(itertools.product(range(vocab), repeat=max_len))  # truncated
        self.index = {y: i for i, y in enumerate(self.responses)}

    def sequence_logp(self, response: tuple[int, ...], exponent_at=None) -> float:
        """log p(y), or with ``exponent_at(ℓ)`` the log-prob of token sampling whose token ℓ is
        drawn at temperature ``1/exponent_at(ℓ)``."""
        vocab, offset, index, total = self.exact.vocab_size, 0, 0, 0.0
        for position, token in enumerate(response):
            row = self.log_p[offset + index]
            if exponent_at is not None:
                row = (exponent_at(position + 1) * row).log_softmax(-1)
            total += float(row[token])
            offset, index = offset + vocab**position, index * vocab + token
        return total

    def target(self) -> torch.Tensor:
        """p^α over the responses, normalised."""
        alpha = self.setting.alpha
        log_power = [alpha * self.sequence_logp(y) for y in self.responses]
        return torch.tensor(log_power, dtype=torch.float64).softmax(0)

    def proposal(self, bridge_steps: int = 0) -> torch.Tensor:
        """What one particle returns: token sampling at temperature 1/a_ℓ (1/α without a
        bridge)."""

        def exponent(length: int) -> float:
            return bridge_exponent(self.setting.alpha, bridge_steps, length)

        log_q = [self.sequence_logp(y, exponent) for y in self.responses]
        return torch.tensor(log_q, dtype=torch.float64).exp()

    def histogram(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        counts = torch.zeros(len(self.responses), dtype=torch.float64)
        for row, length in zip(tokens.tolist(), lengths.tolist(), strict=True):
            counts[self.index[tuple(row[:length])]] += 1
        return counts / counts.sum()

    def smc(
        self, particles: int, seed: int = 0, draws: int = DRAWS, **options
    ) -> tuple[torch.Tensor, float, SMCStats]:
        """The distribution of ``draws`` returned responses (independent particle sets, one
        batch) and the tokens decoded per returned response."""
        stats = SMCStats()
        decoder = TabularDecoder(self.log_p, self.exact.vocab_size, draws * particles)
        result = power_smc(
            decoder,
            draws,
            particles,
            self.setting.alpha,
            self.setting.max_len,
            self.eos,
            generator=torch.Generator().manual_seed(seed),
            stats=stats,
            **options,
        )
        return self.histogram(result.tokens, result.lengths), stats.tokens_generated / draws, stats


def tv(p: torch.Tensor, q: torch.Tensor) -> float:
    return 0.5 * float((p - q).abs().sum())


def noise_floor(distribution: torch.Tensor, draws: int = DRAWS) -> float:
    """Mean TV between ``distribution`` and ``draws`` exact draws from it (FLOOR_SEEDS seeds)."""
    values = []
    for seed in range(FLOOR_SEEDS):
        generator = torch.Generator().manual_seed(seed)
        drawn = torch.multinomial(distribution, draws, replacement=True, generator=generator)
        values.append(
            tv(torch.bincount(drawn, minlength=len(distribution)).double() / draws, distribution)
        )
    return sum(values) / len(values)


def first_order_bias(target: torch.Tensor, proposal: torch.Tensor, particles: int) -> float:
    """TV of self-normalised importance sampling to its target to first order in 1/N:
    ``P_N(y) ≈ π(y)(1 − (w(y) − 1)/N)`` with ``w = π/q``, so ``TV ≈ E_π|w − 1| / 2N``."""
    return float((target * (target / proposal - 1).abs()).sum()) / (2 * particles)


def self_normalised_importance_sampling(
    target: torch.Tensor, proposal: torch.Tensor, particles: int
) -> torch.Tensor:
    """The exact distribution of one draw from N weighted i.i.d. proposals:
    ``P_N(y) = N q(y) w(y) E[1 / (w(y) + S)]``, ``S`` the sum of N − 1 other weights, and
    ``E[1/(a + S)] = ∫₀^∞ e^{−as} M(s)^{N−1} ds`` with ``M(s) = E_q e^{−s w}``."""
    w, q = (target / proposal).numpy(), proposal.numpy()

    def laplace(s: float) -> float:
        return float((q * np.exp(-s * w)).sum())

    def expected_inverse(a: float) -> float:
        def integrand(s: float) -> float:
            return math.exp(-a * s) * laplace(s) ** (particles - 1)

        return integrate.quad(integrand, 0, math.inf, limit=200)[0]

    out = [particles * q[i] * w[i] * expected_inverse(w[i]) for i in range(len(w))]
    return torch.tensor(out, dtype=torch.float64)


@functools.cache
def model_of(setting: Setting) -> Enumerable:
    return Enumerable(setting)


@functools.cache
def smc_run(setting: Setting, particles: int) -> tuple[torch.Tensor, float, SMCStats]:
    """Default options (systematic resampling at ESS < N/2, no bridge), shared by the tests."""
    return model_of(setting).smc(particles)


@functools.cache
def floor_of(setting: Setting) -> float:
    return noise_floor(model_of(setting).target())


# ---------------------------------------------------------------------------------------------
# Exact checks on enumerable models


@pytest.mark.parametrize("setting", SETTINGS, ids=setting_id)
def test_returned_response_tends_to_p_alpha_as_particles_grow(setting):
    model = model_of(setting)
    target, proposal, floor = model.target(), model.proposal(), floor_of(setting)
    runs = {n: smc_run(setting, n) for n in PARTICLES}
    tvs = {n: tv(runs[n][0], target) for n in PARTICLES}
    slack = first_order_bias(target, proposal, PARTICLES[-1])
    report = (
        f"TV to p^α by particles {tvs}; noise floor {floor:.4f}; first-order bias at "
        f"N=64 {slack:.4f}; T=1/α sampling {tv(proposal, target):.4f}"
    )
    # N = 1 returns the proposal's draw: T = 1/α token sampling, which is not p^α.
    assert tv(runs[1][0], proposal) <= 2 * noise_floor(proposal), report
    assert tvs[1] > 5 * floor, report
    assert tvs[1] > tvs[4] > tvs[16], report
    assert tvs[64] <= tvs[16] + floor, report
    # The noise of 20,000 exact draws (twice: the floor is a mean) plus the bias left at N = 64.
    assert tvs[64] <= 2 * floor + slack, report


@pytest.mark.parametrize("bridge_steps", [0, 2])
@pytest.mark.parametrize("setting", SETTINGS, ids=setting_id)
def test_without_resampling_it_is_self_normalised_importance_sampling(setting, bridge_steps):
    """With resampling off, one draw from N weighted particles has a closed-form distribution for
    the proposal q (bridged or not) and π = p^α; the empirical one must match it, and it must be
    far from both p^α and q at N = 4 (so wrong weights or a wrong bridge would show). 80,000
    draws: V = 4, L = 3 has 85 responses, whose noise at 20,000 draws is half the signal."""
    model = model_of(setting)
    target, proposal = model.target(), model.proposal(bridge_steps)
    expected = self_normalised_importance_sampling(target, proposal, 4)
    drawn, _, stats = model.smc(
        4, seed=1, draws=80_000, ess_threshold=0.0, bridge_steps=bridge_steps
    )
    floor = noise_floor(expected, 80_000)
    report = (
        f"TV(draws, exact SNIS) {tv(drawn, expected):.4f}, floor {floor:.4f}; exact SNIS "
        f"to p^α {tv(expected, target):.4f}, to q {tv(expected, proposal):.4f}"
    )
    assert stats.resamplings == 0
    assert tv(drawn, expected) <= 2 * floor, report
    assert min(tv(expected, target), tv(expected, proposal)) > 3 * floor, report


@pytest.mark.parametrize(
    ("resampling", "bridge_steps"), [("multinomial", 0), ("systematic", 2), ("systematic", 5)]
)
def test_other_resampling_and_bridges_also_reach_p_alpha(resampling, bridge_steps):
    """L = 5: a 2-token bridge ends inside most responses, a 5-token one after most of them (the
    remaining exponent is then applied at the end)."""
    setting = SETTINGS[1]
    model = model_of(setting)
    target = model.target()
    drawn, _, stats = model.smc(64, seed=2, resampling=resampling, bridge_steps=bridge_steps)
    slack = first_order_bias(target, model.proposal(bridge_steps), 64)
    report = f"TV {tv(drawn, target):.4f}, floor {floor_of(setting):.4f}, slack {slack:.4f}"
    assert stats.resamplings > 0, stats
    assert tv(drawn, target) <= 2 * floor_of(setting) + slack, report


# ---------------------------------------------------------------------------------------------
# Against Metropolis-Hastings at equal decoded tokens


def mh_run(model: Enumerable, mh_steps: int, draws: int, seed: int) -> tuple[torch.Tensor, float]:
    """power_mh's chain in its published setting (16 blocks: ``block = max(1, L // 16)``)."""
    rng = random.Random(seed)
    propose, base_logp = tabular_proposal(
        model.log_p, model.exact.vocab_size, model.eos, model.setting.alpha, rng
    )
    stats, max_len = MHStats(), model.setting.max_len
    block = max(1, max_len // 16)
    counts = torch.zeros(len(model.responses), dtype=torch.float64)
    for _ in range(draws):
        tokens, _ = power_sample(
            propose, base_logp, model.eos, model.setting.alpha, max_len, block, mh_steps, rng, stats
        )
        counts[model.index[tuple(tokens)]] += 1
    return counts / draws, stats.tokens_generated / draws


def mh_steps_for(model: Enumerable, tokens: float) -> tuple[int, float]:
    """The fewest MH steps per block whose decoded tokens per response reach ``tokens``, and the
    tokens one step adds (they grow linearly with the steps: two pilot runs fix the line)."""
    low, high = mh_run(model, 0, 2000, 99)[1], mh_run(model, 8, 2000, 99)[1]
    per_step = (high - low) / 8
    return max(0, math.ceil((tokens - low) / per_step)), per_step


# Measured: where Power-SMC loses to MH at 4 particles (a few MH steps mix these tiny chains,
# while 4 weighted particles keep a bias of ~E_π|w − 1|/8).
SMC_BEHIND_MH = {
    (SETTINGS[0], 4): "Power-SMC TV 0.103 vs MH 0.066 at ~11-15 tokens",
    (SETTINGS[1], 4): "Power-SMC TV 0.012 vs MH 0.005 at ~11-12 tokens",
}


def mh_cases() -> list:
    cases = []
    for setting, particles in itertools.product(SETTINGS, (4, 16, 64)):
        known = SMC_BEHIND_MH.get((setting, particles))
        marks = [pytest.mark.xfail(strict=True, reason=known)] if known else []
        name = f"{setting_id(setting)}-N{particles}"
        cases.append(pytest.param(setting, particles, marks=marks, id=name))
    return cases


@pytest.mark.parametrize(("setting", "particles"), mh_cases())
def test_power_smc_is_no_worse_than_mh_at_equal_decoded_tokens(setting, particles):
    """Against power_mh's published setting (16 blocks, so one token a block here) with its MH
    steps per block set to decode as many tokens (every particle's token counts). MH run as one
    block over the whole response, the exact chain, does better on these tiny models: see
    benchmarks/power_smc_exact.py."""
    model = model_of(setting)
    target = model.target()
    smc_distribution, smc_tokens, _ = smc_run(setting, particles)
    steps, per_step = mh_steps_for(model, smc_tokens)
    mh_distribution, mh_tokens = mh_run(model, steps, DRAWS, 0)
    smc_tv, mh_tv = tv(smc_distribution, target), tv(mh_distribution, target)
    report = (
        f"N={particles}: Power-SMC TV {smc_tv:.4f} at {smc_tokens:.1f} tokens/response; "
        f"MH ({steps} steps per block) TV {mh_tv:.4f} at {mh_tokens:.1f}; noise floor "
        f"{floor_of(setting):.4f}"
    )
    # MH gets at least Power-SMC's tokens (3% pilot noise aside), and at most one step or 5% more.
    most = smc_tokens + max(1.1 * per_step, 0.05 * smc_tokens)
    assert 0.97 * smc_tokens <= mh_tokens <= most, report
    assert smc_tv <= mh_tv, report


# ---------------------------------------------------------------------------------------------
# Pieces


def test_effective_sample_size_and_systematic_resampling_counts():
    weights = torch.tensor(
        [[0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0], [0.5, 0.3, 0.15, 0.05]],
        dtype=torch.float64,
    )
    log_weights = weights.log()
    ess = effective_sample_size(log_weights)
    torch.testing.assert_close(ess, torch.tensor([4.0, 1.0, 1 / 0.365], dtype=torch.float64))
    generator = torch.Generator().manual_seed(0)
    for _ in range(200):  # systematic: particle i has floor(N W_i) or ceil(N W_i) copies
        ancestors = resample_indices(log_weights, "systematic", generator)
        counts = torch.stack([torch.bincount(row, minlength=4) for row in ancestors]).double()
        assert ((counts >= (4 * weights).floor()) & (counts <= (4 * weights).ceil())).all(), counts
    drawn = torch.cat(
        [resample_indices(log_weights, "multinomial", generator)[2] for _ in range(5000)]
    )
    frequencies = torch.bincount(drawn, minlength=4).double() / drawn.numel()
    torch.testing.assert_close(frequencies, weights[2], atol=0.01, rtol=0)


def test_bridge_exponent_goes_linearly_from_one_to_alpha():
    assert [bridge_exponent(4.0, 3, n) for n in range(6)] == [1.0, 2.0, 3.0, 4.0, 4.0, 4.0]
    assert [bridge_exponent(0.5, 2, n) for n in range(4)] == [1.0, 0.75, 0.5, 0.5]
    assert bridge_exponent(4.0, 0, 0) == bridge_exponent(4.0, 0, 7) == 4.0


# ---------------------------------------------------------------------------------------------
# The sampler on a transformer


QUESTIONS = [
    "What is the capital of France?",
    "Name a colour.",
    "Who wrote the play Hamlet, and when?",
]


def tiny_policy(model_dir: Path) -> CausalLMPolicy:
    """The tiny Llama in float32 with a bias of 12 on the logits of EOS and two ordinary tokens:
    each then has base probability ~0.3. Without it the random model's next-token distribution
    is nearly uniform over 49k tokens, so ``p^α`` puts all its mass on the response "EOS"."""
    tokenizer = load_tokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    head.weight = model.lm_head.weight
    with torch.no_grad():
        head.bias.zero_()
        head.bias[[tokenizer.eos_token_id, 100, 200]] = 12.0
    model.lm_head = head
    return CausalLMPolicy(model, tokenizer, ModelConfig(path=str(model_dir)), torch.device("cpu"))


def prompt_batch(tokenizer, tmp_path: Path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"question": q}) + "\n" for q in QUESTIONS))
    prompts = PromptSet.load(str(path), "data.train", tokenizer, 256)
    return prompts.batch(list(range(len(QUESTIONS))))


def test_sampler_returns_valid_rollouts_with_exact_base_log_probs(tiny_model_dir, tmp_path):
    """Resampling at every step (ess_threshold=1) copies KV-cache rows many times; if a copy put
    the wrong row under a particle, the log-probs it reports would differ from a fresh pass's."""
    policy = tiny_policy(tiny_model_dir)
    batch = prompt_batch(policy.tokenizer, tmp_path)
    sampler = registry.build(
        "sampler", "power_smc", alpha=4.0, particles=6, ess_threshold=1.0, max_new_tokens=10, seed=0
    )
    sampler.setup(policy)
    rollouts = sampler.sample(batch, 2)
    stats = sampler.last_stats
    assert rollouts.response_ids.shape[0] == len(QUESTIONS) * 2
    assert rollouts.response_ids.shape[1] <= 10 and (rollouts.lengths <= 10).all()
    assert torch.equal(rollouts.group, torch.tensor([0, 0, 1, 1, 2, 2]))
    assert torch.equal(rollouts.prompt_ids[::2], batch.prompt_ids)
    last = rollouts.response_ids.gather(1, (rollouts.lengths - 1)[:, None]).squeeze(1)
    assert torch.equal(rollouts.ended_with_eos, last == policy.eos_token_id)
    assert (rollouts.ended_with_eos | (rollouts.lengths == 10)).all()
    assert len(set(rollouts.lengths.tolist())) >= 2, rollouts.lengths
    assert stats.resamplings > 10, stats
    assert stats.tokens_generated > stats.tokens_returned == int(rollouts.lengths.sum())
    fresh = policy.score_base(rollouts, need_eos_logp=False).token_logp
    torch.testing.assert_close(rollouts.behaviour_logp, fresh, atol=1e-5, rtol=0)


def test_sampler_is_reproducible_under_its_seed(tiny_model_dir, tmp_path):
    policy = tiny_policy(tiny_model_dir)
    batch = prompt_batch(policy.tokenizer, tmp_path)

    def draw(seed: int):
        sampler = PowerSMCSampler(alpha=4.0, particles=4, max_new_tokens=8, seed=seed)
        sampler.setup(policy)
        return sampler.sample(batch, 2), sampler.sample(batch, 2)

    first, again, other = draw(0), draw(0), draw(1)
    assert torch.equal(first[0].response_ids, again[0].response_ids)
    assert torch.equal(first[1].response_ids, again[1].response_ids)
    assert not torch.equal(first[0].response_ids, other[0].response_ids)
    assert not torch.equal(first[0].response_ids, first[1].response_ids)  # calls differ


def test_sampler_withholds_exact_behaviour_log_probs():
    sampler = registry.build("sampler", "power_smc")
    assert "exact_behaviour_logp" not in registry.capabilities(sampler, "provides")
    assert "exact_behaviour_logp" in sampler.withheld()


@pytest.mark.parametrize(
    ("option", "value", "rule"),
    [
        ("alpha", 0.0, "must be > 0"),
        ("alpha", -2.0, "must be > 0"),
        ("particles", 0, "must be an integer >= 1"),
        ("ess_threshold", 1.5, "must be in [0, 1]"),
        ("resampling", "stratified", "must be one of systematic"),
        ("bridge_steps", -1, "must be an integer >= 0"),
    ],
)
def test_bad_options_fail_in_one_line_naming_the_option(option, value, rule):
    with pytest.raises(registry.RegistryError) as caught:
        registry.build("sampler", "power_smc", **{option: value})
    message = str(caught.value)
    assert "\n" not in message
    assert f"sampling.sampler_options.{option}={value!r}: {rule}" in message
