"""Targets against hand computations (method.md §1) on the two-response example."""

import attrs
import pytest
import torch
from conftest import temporarily_registered
from jaxtyping import Float
from torch import Tensor

from gfnlm.contracts import registry
from gfnlm.contracts.shapes import ShapeError
from gfnlm.contracts.types import Rollouts, SequenceLogProbs, TargetScores
from gfnlm.targets import Target

DTYPE = torch.float64


def alpha_power(**config):
    return registry.build("target", "alpha_power", **config)


# ---------------------------------------------------------------------------------------------
# α-power.


def test_alpha_power_log_reward_by_hand(two):
    alpha = 2.0
    scores = alpha_power(alpha=alpha).score(two.rollouts(), two.base())
    # A: y1, y2, EOS (padding −5.0 excluded); B: four tokens, truncated.
    want = [alpha * (-0.6 + -1.0 + -0.2), alpha * (-0.8 + -0.5 + -1.0 + -0.6)]
    assert scores.log_reward.tolist() == pytest.approx(want, rel=1e-12)
    assert scores.metrics["target/base_logp_mean"] == pytest.approx(
        ((-0.6 - 1.0 - 0.2) + (-0.8 - 0.5 - 1.0 - 0.6)) / 2
    )


def test_alpha_power_prefix_rewards_by_hand(two):
    alpha = 2.0
    bt, be = two.base_tok, two.base_eos
    scores = alpha_power(alpha=alpha).score(two.rollouts(), two.base())
    prefix = scores.prefix_log_reward
    assert prefix is not None and prefix.shape == (2, 5)
    # A ends with EOS, n = 2: log R(s_i ⊤) = α(Σ_{t≤i} log p(y_t) + log p(⊤|s_i)) for i = 0..2.
    want_a = [
        alpha * be[0][0],
        alpha * (bt[0][0] + be[0][1]),
        alpha * (bt[0][0] + bt[0][1] + be[0][2]),
        0.0,  # past the visited states
        0.0,
    ]
    # B is truncated, n = 4: entries 0..3 as above, entry 4 is forced termination (no EOS factor).
    want_b = [
        alpha * be[1][0],
        alpha * (bt[1][0] + be[1][1]),
        alpha * (bt[1][0] + bt[1][1] + be[1][2]),
        alpha * (bt[1][0] + bt[1][1] + bt[1][2] + be[1][3]),
        alpha * (bt[1][0] + bt[1][1] + bt[1][2] + bt[1][3]),
    ]
    assert prefix[0].tolist() == pytest.approx(want_a, rel=1e-12)
    assert prefix[1].tolist() == pytest.approx(want_b, rel=1e-12)
    # The last visited state's entry is the sequence reward in both cases (A: log p(⊤|s_2) is the
    # EOS token's own log-prob in this example).
    assert prefix[1, 4].item() == pytest.approx(scores.log_reward[1].item(), rel=1e-12)
    assert prefix[0, 2].item() == pytest.approx(scores.log_reward[0].item(), rel=1e-12)


def test_alpha_power_ignores_base_eos_at_forced_state(two):
    # Changing log p_base(⊤|s_4) of the truncated response, or anything past A's end, changes
    # nothing.
    target = alpha_power(alpha=3.0)
    ref = target.score(two.rollouts(), two.base()).prefix_log_reward
    eos = torch.tensor(two.base_eos, dtype=DTYPE)
    eos[1, 4] = -40.0
    eos[0, 3:] = 40.0
    base = SequenceLogProbs(token_logp=torch.tensor(two.base_tok, dtype=DTYPE), eos_logp=eos)
    assert torch.equal(target.score(two.rollouts(), base).prefix_log_reward, ref)


def test_alpha_power_without_eos_logp_has_no_prefix_rewards(two):
    scores = alpha_power(alpha=2.0).score(two.rollouts(), two.base(with_eos=False))
    assert scores.prefix_log_reward is None


def test_alpha_power_capabilities():
    plain = alpha_power(alpha=2.0)
    assert "prefix_rewards" in plain.provides and plain.needs_eos_logp
    assert not plain.requires
    penalised = alpha_power(alpha=2.0, format_penalty=-0.5)
    assert "prefix_rewards" not in penalised.provides and not penalised.needs_eos_logp
    assert "response_text" in penalised.requires


@pytest.mark.parametrize("alpha", [0.0, -1.0])
def test_alpha_power_rejects_non_positive_alpha(alpha):
    with pytest.raises(registry.RegistryError, match="alpha"):
        alpha_power(alpha=alpha)


def test_alpha_power_format_penalty_by_hand(two):
    alpha, psi = 2.0, -0.5
    text = ("so the answer is \\boxed{3}.", "no boxed answer here")
    scores = alpha_power(alpha=alpha, format_penalty=psi).score(
        two.rollouts(response_text=text), two.base()
    )
    # log R = α·[log p_base + |y|·ψ(y)], so that log R/|y| = α·[(1/|y|)·log p_base + ψ].
    base_a = -0.6 + -1.0 + -0.2
    base_b = -0.8 + -0.5 + -1.0 + -0.6
    want = [alpha * (base_a + 3 * 0.0), alpha * (base_b + 4 * psi)]
    assert scores.log_reward.tolist() == pytest.approx(want, rel=1e-12)
    assert scores.log_reward[1].item() / 4 == pytest.approx(alpha * (base_b / 4 + psi), rel=1e-12)
    assert scores.prefix_log_reward is None  # ψ is defined on finished responses only
    assert scores.metrics["target/format_ok_frac"] == pytest.approx(0.5)


def test_alpha_power_format_penalty_custom_regex(two):
    text = ("Answer: 42", "no answer")
    scores = alpha_power(alpha=1.0, format_penalty=-1.0, format_regex=r"Answer: \d+").score(
        two.rollouts(response_text=text), two.base()
    )
    want = [-0.6 - 1.0 - 0.2, (-0.8 - 0.5 - 1.0 - 0.6) + 4 * -1.0]
    assert scores.log_reward.tolist() == pytest.approx(want, rel=1e-12)


def test_alpha_power_rejects_base_of_another_batch(two):
    base = SequenceLogProbs(token_logp=torch.zeros(3, 4, dtype=DTYPE))
    with pytest.raises(ShapeError) as info:
        alpha_power().score(two.rollouts(), base)
    message = str(info.value)
    assert "target 'alpha_power'" in message and "'base'" in message and "token_logp" in message
    assert "'B T'" in message and "(3, 4)" in message


# ---------------------------------------------------------------------------------------------
# Reward-tilted.


def length_reward(rollouts: Rollouts) -> torch.Tensor:
    """A module-level scorer that import-path strings can name: r = |y|."""
    return rollouts.lengths.to(torch.float64)


def test_reward_tilted_with_callable_by_hand(two):
    beta = 0.5
    target = registry.build("target", "reward_tilted", reward=length_reward, beta=beta)
    scores = target.score(two.rollouts(), two.base())
    want = [(-0.6 - 1.0 - 0.2) + beta * 3, (-0.8 - 0.5 - 1.0 - 0.6) + beta * 4]
    assert scores.log_reward.tolist() == pytest.approx(want, rel=1e-12)
    assert scores.prefix_log_reward is None
    assert scores.metrics["target/reward_mean"] == pytest.approx(3.5)
    assert "prefix_rewards" not in target.provides and not target.needs_eos_logp


def test_reward_tilted_with_lambda(two):
    target = registry.build("target", "reward_tilted", reward=lambda r: torch.tensor([1.0, -2.0]))
    scores = target.score(two.rollouts(), two.base())
    want = [(-0.6 - 1.0 - 0.2) + 1.0, (-0.8 - 0.5 - 1.0 - 0.6) - 2.0]
    assert scores.log_reward.tolist() == pytest.approx(want, rel=1e-6)


def test_reward_tilted_with_import_path(two):
    target = registry.build("target", "reward_tilted", reward=f"{__name__}:length_reward", beta=2.0)
    assert target.reward is length_reward
    scores = target.score(two.rollouts(), two.base())
    want = [(-0.6 - 1.0 - 0.2) + 2.0 * 3, (-0.8 - 0.5 - 1.0 - 0.6) + 2.0 * 4]
    assert scores.log_reward.tolist() == pytest.approx(want, rel=1e-12)


def test_alpha_power_is_reward_tilted_special_case(two):
    # α-power = reward-tilted with r = (α−1)·log p_ref, β = 1.
    alpha = 3.0
    base = two.base()
    rollouts = two.rollouts()

    def r(ro: Rollouts) -> torch.Tensor:
        return (alpha - 1) * (base.token_logp * ro.response_mask).sum(-1)

    tilted = registry.build("target", "reward_tilted", reward=r).score(rollouts, base)
    power = alpha_power(alpha=alpha).score(rollouts, base)
    assert torch.allclose(tilted.log_reward, power.log_reward)


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("no_colon_here", "must be a callable or 'package.module:function'"),
        ("gfnlm_no_such_module_xyz:f", "cannot import it"),
        ("math:no_such_function", "cannot import it"),
        (42, "must be a callable"),
    ],
)
def test_reward_tilted_bad_reward_spec(spec, fragment):
    with pytest.raises(registry.RegistryError) as info:
        registry.build("target", "reward_tilted", reward=spec)
    message = str(info.value)
    assert "\n" not in message
    assert "reward_tilted" in message and repr(spec) in message and fragment in message


def test_reward_tilted_rejects_wrongly_shaped_reward(two):
    target = registry.build("target", "reward_tilted", reward=lambda r: torch.zeros(3))
    with pytest.raises(ValueError, match=r"shape \(3,\).*expected \(2,\)"):
        target.score(two.rollouts(), two.base())


# ---------------------------------------------------------------------------------------------
# A deliberately broken target.

BROKEN = "test_broken_target"


@attrs.frozen
class BrokenTarget(Target):
    """Prefix rewards one column short ([B, T] instead of [B, T+1])."""

    def score(self, rollouts: Rollouts, base: SequenceLogProbs) -> TargetScores:
        log_reward = (base.token_logp * rollouts.response_mask).sum(-1)
        return TargetScores(
            log_reward=log_reward, prefix_log_reward=torch.zeros_like(base.token_logp)
        )

    def scale(self, rollouts: Rollouts, values: Float[Tensor, " B"]) -> Float[Tensor, " B"]:
        return 2 * values


@pytest.fixture
def broken_target():
    with temporarily_registered("target", BROKEN, BrokenTarget) as component:
        yield component


def test_broken_target_return_value_is_rejected(two, broken_target):
    with pytest.raises(ShapeError) as info:
        broken_target.score(two.rollouts(), two.base())
    message = str(info.value)
    assert f"target {BROKEN!r}.score()" in message
    assert "return value" in message and "prefix_log_reward" in message
    assert "Float[Tensor, 'B T+1']" in message
    assert "shape (2, 4)" in message
    assert "T=4" in message


def test_broken_target_argument_is_rejected(two, broken_target):
    with pytest.raises(ShapeError) as info:
        broken_target.scale(two.rollouts(), torch.zeros(5, dtype=DTYPE))
    message = str(info.value)
    assert f"target {BROKEN!r}.scale()" in message and "argument 'values'" in message
    assert "Float[Tensor, 'B']" in message and "shape (5,)" in message and "B=2" in message
