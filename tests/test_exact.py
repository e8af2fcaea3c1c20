"""Exact verification on a tabular model (gfnlm.evaluation.exact): enumeration, exact log-probs,
sampling, the LA-TB tilt λ*, each objective's loss at its fixed point, and short training runs of
the real registered objectives against the exact distributions."""

import math
from collections import Counter

import attrs
import pytest
import torch
from scipy.stats import chisquare

from gfnlm.contracts import registry
from gfnlm.evaluation.exact import (
    ExactSetting,
    TabularPolicy,
    exact_distributions,
    exact_report,
    expected_length,
    lambda_star,
    length_matching_lambda,
    per_token_sharpened,
    random_bases,
    total_variation,
    train_exact,
)

SMALL = ExactSetting(vocab_size=3, max_len=4)  # 1+3+9+27 EOS-ended + 81 truncated = 121 responses


def alpha_power(alpha: float):
    return registry.build("target", "alpha_power", alpha=alpha)


def response_keys(rollouts) -> list[tuple[int, ...]]:
    """Each response as the tuple of its real tokens (EOS included when it ended with EOS)."""
    return [tuple(row[:n].tolist()) for row, n in zip(rollouts.response_ids, rollouts.lengths)]


def naive_log_prob(policy: TabularPolicy, tokens: tuple[int, ...]) -> float:
    """log π(y) by walking the prefix tree one token at a time (independent of the vectorised
    ids)."""
    setting = policy.setting
    table = policy.logits.detach().log_softmax(-1)
    offsets = [sum(setting.vocab_size**j for j in range(k)) for k in range(setting.max_len + 1)]
    total, prefix = 0.0, []
    for token in tokens:
        state = offsets[len(prefix)] + sum(
            t * setting.vocab_size ** (len(prefix) - 1 - i) for i, t in enumerate(prefix)
        )
        total += float(table[state, token])
        prefix.append(token)
    return total


# ---------------------------------------------------------------------------------------------
# Enumeration and exact log-probs


@pytest.mark.parametrize(("vocab", "max_len"), [(4, 5), (3, 4), (2, 1), (1, 3)])
def test_enumeration_counts_every_response_once(vocab: int, max_len: int) -> None:
    setting = ExactSetting(vocab, max_len)
    responses = setting.enumerate_responses()
    eos_ended = sum(vocab**k for k in range(max_len))
    assert setting.num_responses == eos_ended + vocab**max_len == responses.batch_size
    keys = response_keys(responses)
    assert len(set(keys)) == len(keys)
    eos = setting.eos_id
    for key, ended in zip(keys, responses.ended_with_eos.tolist()):
        # EOS is the last token exactly when the response ended with it; truncated ones have L
        # tokens.
        assert (key[-1] == eos) == ended if key else False
        assert eos not in key[:-1]
        assert ended or len(key) == max_len
    assert torch.equal(responses.lengths, responses.response_mask.sum(-1))


def test_enumeration_matches_1365_of_the_reference_setting() -> None:
    assert ExactSetting(4, 5).enumerate_responses().batch_size == 1365


def test_state_ids_are_a_bijection_onto_the_non_terminal_prefixes() -> None:
    # Each non-terminal prefix is the last state of exactly one EOS-ended response.
    setting = ExactSetting(4, 5)
    responses = setting.enumerate_responses()
    ids, acting = setting.prefix_state_ids(responses)
    ended = responses.ended_with_eos
    last = ids[ended, responses.num_steps[ended]]
    assert sorted(last.tolist()) == list(range(setting.num_states))
    assert bool(acting[torch.arange(responses.batch_size), responses.num_steps][ended].all())
    assert not bool(acting[~ended, setting.max_len].any())  # truncated: s_L takes no action


def test_exact_policy_distribution_sums_to_one() -> None:
    setting = ExactSetting(4, 5)
    policy = TabularPolicy.random(setting, seed=1)
    log_pi = policy.response_log_probs(setting.enumerate_responses())
    assert float(log_pi.exp().sum()) == pytest.approx(1.0, abs=1e-12)


def test_evaluate_agrees_with_a_token_by_token_walk() -> None:
    policy = TabularPolicy.random(SMALL, seed=2)
    responses = SMALL.enumerate_responses()
    vectorised = policy.response_log_probs(responses)
    for key, value in zip(response_keys(responses), vectorised.tolist()):
        assert value == pytest.approx(naive_log_prob(policy, key), abs=1e-12)


def test_eos_logp_convention() -> None:
    policy = TabularPolicy.random(SMALL, seed=3)
    responses = SMALL.enumerate_responses()
    evaluated = policy.evaluate(responses)
    rows = torch.arange(responses.batch_size)
    steps = responses.num_steps
    ended = responses.ended_with_eos
    # The EOS token's log-prob is log π(⊤|s_n); a truncated response has 0 at its terminal s_L.
    eos_token = evaluated.token_logp[rows, responses.lengths - 1]
    assert torch.allclose(eos_token[ended], evaluated.eos_logp[rows, steps][ended])
    assert bool((evaluated.eos_logp[rows, steps][~ended] == 0).all())
    positions = torch.arange(evaluated.eos_logp.shape[1])
    past = positions[None, :] > steps[:, None]
    assert bool((evaluated.eos_logp[past] == 0).all())
    assert bool((evaluated.eos_logp[~past & (positions[None, :] < SMALL.max_len)] < 0).all())
    assert bool((evaluated.entropy[~responses.response_mask] == 0).all())


# ---------------------------------------------------------------------------------------------
# Sampling


def test_sampling_frequencies_match_the_exact_distribution() -> None:
    policy = TabularPolicy.random(SMALL, seed=4)
    responses = SMALL.enumerate_responses()
    probs = policy.response_log_probs(responses).exp()
    num_samples = 60_000
    samples = policy.sample(num_samples, torch.Generator().manual_seed(0))
    counts = Counter(response_keys(samples))
    observed = torch.tensor(
        [counts.get(key, 0) for key in response_keys(responses)], dtype=torch.float64
    )
    assert observed.sum() == num_samples  # every sample is a valid response of the setting
    assert float(0.5 * (observed / num_samples - probs).abs().sum()) < 0.03
    assert chisquare(observed.numpy(), (probs * num_samples).numpy()).pvalue > 1e-4
    # behaviour_logp is the sampler's own log-prob: the importance ratio to the policy is 1.
    assert torch.allclose(policy.evaluate(samples).token_logp, samples.behaviour_logp)


# ---------------------------------------------------------------------------------------------
# Exact distributions and the LA-TB tilt


@pytest.mark.parametrize("alpha", [0.5, 2.0, 4.0])
def test_tilted_fixed_point_solves_the_normalisation_equation(alpha: float) -> None:
    setting = ExactSetting(4, 5)
    base = TabularPolicy.random(setting, seed=5)
    dists = exact_distributions(setting, base, alpha_power(alpha))
    # Σ_y p_base^α · exp(−λ*|y|) = 1, computed here from the base log-probs directly.
    mass = (alpha * dists.log_base - dists.lambda_star * dists.lengths).exp().sum()
    assert float(mass) == pytest.approx(1.0, abs=1e-9)
    assert float(dists.log_tilted.exp().sum()) == pytest.approx(1.0, abs=1e-12)
    assert torch.allclose(
        dists.log_tilted, alpha * dists.log_base - dists.lambda_star * dists.lengths
    )
    # The λ that matches the tilt's own expected length is λ* again.
    tilted_length = expected_length(dists.log_tilted, dists.lengths)
    assert length_matching_lambda(dists.log_reward, dists.lengths, tilted_length) == pytest.approx(
        dists.lambda_star, abs=1e-6
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lambda_star_sign(seed: int) -> None:
    setting = ExactSetting(4, 5)
    base = TabularPolicy.random(setting, seed=seed)
    star = {
        a: exact_distributions(setting, base, alpha_power(a)).lambda_star for a in (0.5, 1.0, 2.0)
    }
    assert star[0.5] > 0  # α < 1: Σ p^α > 1, the tilt penalises length
    assert star[1.0] == pytest.approx(0.0, abs=1e-9)  # the base is normalised over responses
    assert star[2.0] < 0  # α > 1: Σ p^α < 1, the tilt favours length


def test_lambda_star_against_a_known_root() -> None:
    # Two responses of lengths 1 and 2 with R = 1/2 each: e^{-λ}/2 + e^{-2λ}/2 = 1 → e^{-λ} = 1.
    log_reward = torch.log(torch.tensor([0.5, 0.5], dtype=torch.float64))
    lengths = torch.tensor([1.0, 2.0], dtype=torch.float64)
    assert lambda_star(log_reward, lengths) == pytest.approx(0.0, abs=1e-10)
    # R = 1 each: e^{-λ} + e^{-2λ} = 1 → e^{-λ} = (√5 − 1)/2.
    assert lambda_star(torch.zeros(2, dtype=torch.float64), lengths) == pytest.approx(
        -math.log((math.sqrt(5) - 1) / 2), abs=1e-10
    )


@pytest.mark.parametrize("objective", ["tb", "tb_token", "la_tb", "subtb", "db"])
def test_each_objective_has_zero_loss_exactly_at_its_fixed_point(objective: str) -> None:
    # The policy built to sample the claimed fixed point, with log Z at its claimed limit, must
    # zero the loss of the registered objective on every response; the base policy must not.
    base = TabularPolicy.random(SMALL, seed=6)
    target = alpha_power(2.0)
    dists = exact_distributions(SMALL, base, target)
    built = registry.build("objective", objective)
    declared = dists.fixed_point(built)  # declared on the objective's class
    fixed = TabularPolicy.from_response_distribution(SMALL, declared.log_probs)
    responses = dists.responses
    assert total_variation(fixed.response_log_probs(responses), declared.log_probs) < 1e-12
    scores = target.score(responses, base.sequence_log_probs(responses))
    assert math.isnan(declared.log_z) == ("log_z" not in built.requires)
    log_z = torch.full((responses.batch_size,), declared.log_z, dtype=torch.float64)
    # Every row sampled by the policy itself: LA-TB's importance weight is 1.
    responses = attrs.evolve(responses, behaviour_logp=fixed.evaluate(responses).token_logp)
    loss = built.loss
    with torch.no_grad():
        at_fixed_point = loss(responses, fixed.evaluate(responses), scores, log_z).loss
        at_base = loss(responses, base.evaluate(responses), scores, log_z).loss
    assert float(at_fixed_point) < 1e-20
    assert float(at_base) > 1e-2


def test_report_of_the_target_itself() -> None:
    base = TabularPolicy.random(SMALL, seed=7)
    dists = exact_distributions(SMALL, base, alpha_power(2.0))
    at_target = TabularPolicy.from_response_distribution(SMALL, dists.log_target)
    report = exact_report(at_target, dists, registry.build("objective", "tb"), alpha=2.0)
    assert report.tv_target < 1e-12 and abs(report.kl_policy_target) < 1e-12
    assert report.tv_tilted > 0.01  # α ≠ 1: the tilt is a different distribution
    assert report.policy_mass == pytest.approx(1.0)
    assert report.tv_fixed_point < 1e-12  # TB declares the normalised target
    assert report.as_row()["num_responses"] == SMALL.num_responses


@pytest.mark.parametrize(
    ("objective", "declared"),
    [
        ("tb", "log_target"),
        ("subtb", "log_target"),
        ("db", "log_target"),
        ("la_tb", "log_tilted"),
        ("tb_token", "log_token_fixed_point"),
    ],
)
def test_objectives_declare_their_fixed_points(objective: str, declared: str) -> None:
    dists = exact_distributions(SMALL, TabularPolicy.random(SMALL, seed=8), alpha_power(3.0))
    fixed_point = dists.fixed_point(registry.build("objective", objective))
    torch.testing.assert_close(fixed_point.log_probs, getattr(dists, declared))


@pytest.mark.parametrize("objective", ["grpo", "entropy_min"])
def test_objectives_without_a_target_distribution_declare_none(objective: str) -> None:
    dists = exact_distributions(SMALL, TabularPolicy.random(SMALL, seed=8), alpha_power(3.0))
    assert dists.fixed_point(registry.build("objective", objective)) is None


def test_per_token_sharpening_is_not_the_power_distribution() -> None:
    """Temperature 1/α sharpens each next-token distribution; p^α renormalises whole responses."""
    base = TabularPolicy.random(SMALL, scale=1.5, seed=9)
    dists = exact_distributions(SMALL, base, alpha_power(3.0))
    sharpened = per_token_sharpened(base, 3.0)
    log_sharpened = sharpened.response_log_probs(dists.responses)
    # By hand at the root: π_T(⊤|s_0) = p(⊤|s_0)^3 / Σ_a p(a|s_0)^3.
    root = base.logits[0].detach().log_softmax(-1)
    by_hand = 3 * root[-1] - torch.logsumexp(3 * root, 0)
    assert float(log_sharpened[0]) == pytest.approx(float(by_hand), abs=1e-12)
    assert total_variation(log_sharpened, dists.log_target) > 0.05
    assert (
        per_token_sharpened(base, 1.0).response_log_probs(dists.responses).allclose(dists.log_base)
    )


# ---------------------------------------------------------------------------------------------
# Short training runs of the registered objectives


TRAIN_SEED = 3  # its random base is far from both p^2 and the tilt (TV > 0.3 to each)


def build_run(objective: str, logz: str | None = "scalar", **objective_options):
    """The objective and, when it learns one, its log Z."""
    built = registry.build("objective", objective, **objective_options)
    return built, (registry.build("logz", logz) if "log_z" in built.requires and logz else None)


@pytest.mark.parametrize(
    ("objective", "own", "other"),
    [
        ("tb", "tv_target", "tv_tilted"),
        ("la_tb", "tv_tilted", "tv_target"),
        ("subtb", "tv_target", "tv_tilted"),
        ("db", "tv_target", "tv_tilted"),
    ],
)
def test_training_reaches_the_fixed_point(objective: str, own: str, other: str) -> None:
    base = random_bases(SMALL, 1.5, [TRAIN_SEED])
    before = exact_report(base, exact_distributions(SMALL, base, alpha_power(2.0)))
    assert getattr(before, own) > 0.25  # doing nothing does not pass the bound below

    built, logz = build_run(objective)
    report = train_exact(
        built, alpha_power(2.0), base, logz=logz, steps=400, batch_size=64, seed=TRAIN_SEED
    )
    assert report.tv_fixed_point == getattr(report, own)
    assert report.tv_fixed_point < 0.1
    # p^2 and the LA-TB tilt differ here: the run went to its own fixed point, not the other one.
    assert getattr(report, other) > 2 * report.tv_fixed_point
    if objective in ("tb", "la_tb"):  # log Z → log Σ R for TB, → λ* for LA-TB
        assert report.log_z == pytest.approx(report.log_z_expected, abs=0.1)


def test_la_tb_with_group_mean_log_z_reaches_the_same_fixed_point() -> None:
    """The VarGrad estimate changes how log Z' is obtained, not where training converges."""
    built, logz = build_run("la_tb", log_z_source="group_mean")
    assert logz is None
    report = train_exact(
        built,
        alpha_power(2.0),
        random_bases(SMALL, 1.5, [TRAIN_SEED]),
        steps=400,
        batch_size=64,
        seed=TRAIN_SEED,
    )
    assert report.tv_tilted < 0.1
    assert report.tv_target > 2 * report.tv_tilted
    assert report.log_z_error < 0.1  # the group-mean estimate of log Z' is at λ* as well


def test_group_mean_log_z_is_checked_per_prompt() -> None:
    built, _ = build_run("la_tb", log_z_source="group_mean")
    report = train_exact(built, alpha_power(2.0), THREE_PROMPTS, steps=300, batch_size=32, lr=0.1)
    assert report.tv_fixed_point_worst < 0.05
    assert report.log_z_error < 0.1


# ---------------------------------------------------------------------------------------------
# Several prompts: per-prompt log Z


THREE_PROMPTS = random_bases(
    SMALL, [1.0, 2.0, 1.5], [2, 3, 4]
)  # three prompts, three different bases


@pytest.mark.parametrize("objective", ["tb", "la_tb"])
@pytest.mark.parametrize("logz", ["table", "mlp"])
def test_per_prompt_log_z_converges_to_each_prompts_limit(objective: str, logz: str) -> None:
    built = registry.build("objective", objective)
    options = {"num_prompts": 3} if logz == "table" else {"hidden_size": 3, "width": 16}
    report = train_exact(
        built,
        alpha_power(2.0),
        THREE_PROMPTS,
        logz=registry.build("logz", logz, **options),
        steps=300,
        batch_size=32,
        lr=0.1,
    )
    assert report.num_prompts == 3
    assert report.tv_fixed_point_worst < 0.05
    assert report.log_z_error < 0.1  # each prompt's log Z at its own log Σ R (TB) or λ* (LA-TB)


def test_one_scalar_log_z_cannot_serve_prompts_with_different_partition_functions() -> None:
    built, logz = build_run("tb")
    report = train_exact(
        built, alpha_power(2.0), THREE_PROMPTS, logz=logz, steps=300, batch_size=32, lr=0.1
    )
    assert report.log_z_error > 0.5  # log Σ R differs by > 2 nats between the prompts


def test_prompts_are_independent_models() -> None:
    rollouts = THREE_PROMPTS.sample(5, torch.Generator().manual_seed(0))
    assert rollouts.prompt_index.tolist() == [0] * 5 + [1] * 5 + [2] * 5
    for prompt in range(3):
        alone = TabularPolicy(SMALL, THREE_PROMPTS.logits[prompt])
        rows = rollouts.select(torch.arange(5 * prompt, 5 * prompt + 5))
        single = attrs.evolve(rows, prompt_index=torch.zeros(5, dtype=torch.long))
        torch.testing.assert_close(
            THREE_PROMPTS.response_log_probs(rows), alone.response_log_probs(single)
        )


# ---------------------------------------------------------------------------------------------
# Exploration and replay


@pytest.mark.parametrize(
    ("name", "options"), [("tempered", {"temperature": 2.0}), ("uniform_mix", {"epsilon": 0.3})]
)
def test_exploration_samples_the_distribution_it_reports(name: str, options: dict) -> None:
    """The recorded behaviour_logp is the probability of what was drawn, and the draws follow it."""
    exploration = registry.build("exploration", name, **options)
    policy = TabularPolicy.random(ExactSetting(2, 2), scale=2.0, seed=1)
    rollouts = policy.sample(20_000, torch.Generator().manual_seed(0), exploration)
    keys = response_keys(rollouts)
    recorded = dict(zip(keys, rollouts.behaviour_logp.sum(-1).tolist(), strict=True))
    everything = policy.setting.enumerate_responses()
    log_pi = policy.response_log_probs(everything)
    counts = Counter(keys)
    expected = [math.exp(recorded[k]) * len(keys) for k in response_keys(everything)]
    observed = [counts[k] for k in response_keys(everything)]
    assert sum(math.exp(recorded[k]) for k in response_keys(everything)) == pytest.approx(
        1.0, abs=1e-9
    )
    assert chisquare(observed, expected).pvalue > 1e-3
    # ...and it is not the policy's distribution (exploration changed it).
    assert (
        max(
            abs(math.exp(recorded[k]) - float(p.exp()))
            for k, p in zip(response_keys(everything), log_pi)
        )
        > 0.02
    )


def test_uniform_mix_by_hand() -> None:
    mix = registry.build("exploration", "uniform_mix", epsilon=0.2)
    log_probs = torch.tensor([[0.5, 0.5, 0.0, 0.0]]).log()
    torch.testing.assert_close(
        mix.behaviour_log_probs(log_probs).exp(), torch.tensor([[0.45, 0.45, 0.05, 0.05]])
    )
    tempered = registry.build("exploration", "tempered", temperature=2.0)
    flat = tempered.behaviour_log_probs(torch.tensor([[0.8, 0.2]]).log()).exp()
    torch.testing.assert_close(flat, torch.tensor([[2 / 3, 1 / 3]]))  # √.8 : √.2 = 2 : 1


@pytest.mark.parametrize(
    ("name", "option", "value"),
    [
        ("tempered", "temperature", 0.5),
        ("tempered", "temperature", math.inf),
        ("uniform_mix", "epsilon", 1.0),
        ("uniform_mix", "epsilon", 0.0),
    ],
)
def test_bad_exploration_options_are_one_line_errors(name: str, option: str, value: float) -> None:
    with pytest.raises(registry.RegistryError, match=f"{option}") as info:
        registry.build("exploration", name, **{option: value})
    assert "\n" not in str(info.value)


def test_replay_keeps_the_best_distinct_responses_and_mixes_them_in() -> None:
    replay = registry.build("replay", "reward_prioritised", capacity=3, ratio=0.5)
    policy = TabularPolicy.random(SMALL, seed=1)
    generator = torch.Generator().manual_seed(0)
    fresh = policy.sample(8, generator)
    assert replay.mix(fresh, generator).batch_size == 8  # nothing stored yet
    log_reward = -torch.arange(8, dtype=torch.float64)
    replay.add(fresh, log_reward)
    stored, rewards = replay.stored(0)
    distinct = {}
    for key, reward in zip(response_keys(fresh), log_reward.tolist(), strict=True):
        distinct.setdefault(key, reward)  # the first occurrence of a repeated response is kept
    best = sorted(distinct.items(), key=lambda kv: -kv[1])[:3]
    assert response_keys(stored) == [k for k, _ in best]
    assert rewards.tolist() == [r for _, r in best]
    mixed = replay.mix(policy.sample(8, generator), generator)
    assert mixed.batch_size == 12  # 8 fresh + round(0.5 × 8) replayed
    assert set(response_keys(mixed.select(torch.arange(8, 12)))) <= {k for k, _ in best}
    assert mixed.group.unique().tolist() == [0]  # replayed rows join their prompt's group


@pytest.mark.parametrize("objective", ["tb", "subtb", "db", "la_tb", "tb_token"])
def test_off_policy_training_reaches_the_same_fixed_point(objective: str) -> None:
    built, logz = build_run(objective)
    exploration = registry.build("exploration", "tempered", temperature=1.5)
    replay = registry.build("replay", "reward_prioritised")
    report = train_exact(
        built,
        alpha_power(2.0),
        random_bases(SMALL, 1.5, [TRAIN_SEED]),
        logz=logz,
        exploration=exploration,
        replay=replay,
        steps=400,
        batch_size=64,
        seed=TRAIN_SEED,
    )
    assert report.tv_fixed_point < 0.1
    assert (report.exploration, report.replay) == ("tempered", "reward_prioritised")


def test_objectives_state_where_they_are_valid() -> None:
    from gfnlm.exploration import check_off_policy

    explore, replay = (
        registry.build("exploration", "tempered"),
        registry.build("replay", "reward_prioritised"),
    )
    for name in ("tb", "subtb", "db", "la_tb", "tb_token"):
        check_off_policy(registry.build("objective", name), explore, replay)
    check_off_policy(
        registry.build("objective", "grpo"), explore, None
    )  # an exact ratio corrects it
    with pytest.raises(
        registry.RegistryError, match="replay.name='reward_prioritised': objective 'grpo'"
    ):
        check_off_policy(registry.build("objective", "grpo"), None, replay)
    with pytest.raises(
        registry.RegistryError, match="exploration.name='tempered': objective 'entropy_min'"
    ):
        check_off_policy(registry.build("objective", "entropy_min"), explore, None)
    check_off_policy(
        registry.build("objective", "entropy_min"),
        registry.build("exploration", "none"),
        registry.build("replay", "none"),
    )


# A setting where the fixed point is far from the base and nearly flat (V=6, L=4, logit scale 2.21):
# at α = 0.5 TB-token's fixed point ∝ p^(α/|y|) is about p^(1/8) on the long responses, the same
# distribution TB reaches at α = 1/8. Covering the deep prefixes is what decides convergence there.
FAR_AND_FLAT = ExactSetting(vocab_size=6, max_len=4)


@pytest.mark.parametrize(("objective", "alpha"), [("tb_token", 0.5), ("tb", 0.125)])
def test_a_flat_fixed_point_far_from_the_base_needs_exploration_that_covers_the_prefixes(
    objective: str, alpha: float
) -> None:
    base = random_bases(FAR_AND_FLAT, 2.21, [6534])

    def tv(exploration: str, **options: float) -> float:
        return train_exact(
            registry.build("objective", objective),
            alpha_power(alpha),
            base,
            logz=registry.build("logz", "table", num_prompts=1),
            exploration=registry.build("exploration", exploration, **options),
            replay=registry.build("replay", "reward_prioritised", ratio=0.25),
            steps=1000,
            batch_size=64,
            lr=0.1,
            seed=4,
        ).tv_fixed_point

    assert (
        tv("tempered", temperature=1.5) > 0.1
    )  # a mild tempering leaves the deep prefixes undertrained
    assert tv("uniform_mix", epsilon=0.5) < 0.05
