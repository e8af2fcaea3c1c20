"""Each objective against a hand computation of its formula (method.md §2) on the two-response
example, plus gradient checks, degenerate batches, the Huber penalty and shape rejection."""

import math

import attrs
import pytest
import torch
from conftest import temporarily_registered
from jaxtyping import Float
from torch import Tensor

from gfnlm.contracts import registry
from gfnlm.contracts.shapes import ShapeError
from gfnlm.contracts.types import (
    ObjectiveOutput,
    PolicyEval,
    Rollouts,
    SequenceLogProbs,
    TargetScores,
)
from gfnlm.objectives.base import Objective, PenalisedObjective, regression_penalty

DTYPE = torch.float64

OBJECTIVES = ("tb", "tb_token", "la_tb", "subtb", "db")


# ---------------------------------------------------------------------------------------------
# Plain-Python reference computations (no library helpers).


def seq_sum(values: list[float], length: int) -> float:
    """Σ over the first ``length`` response tokens (|y| counts EOS)."""
    return sum(values[:length])


def one_step_deltas(two, b: int) -> list[float]:
    """δ_i = log R̃(s_i) + log π(y_{i+1}|s_i) + log π(⊤|s_{i+1}) − log R̃(s_{i+1}) − log π(⊤|s_i)."""
    n = two.steps[b]
    pi_eos = list(two.policy_eos[b])
    if not two.ended_with_eos[b]:
        pi_eos[n] = 0.0  # a truncated response terminates by force: no EOS factor at s_n
    prefix = two.prefix_log_reward[b]
    tok = two.policy_tok[b]
    return [prefix[i] + tok[i] + pi_eos[i + 1] - prefix[i + 1] - pi_eos[i] for i in range(n)]


def subtb_by_hand(deltas: list[float], lam: float) -> float:
    """Σ_{i<j} λ^{j−i−1}·(Σ_{k=i}^{j−1} δ_k)² / Σ_{i<j} λ^{j−i−1} over the visited states 0..n."""
    n = len(deltas)
    num = den = 0.0
    for i in range(n):
        for j in range(i + 1, n + 1):
            w = lam ** (j - i - 1)
            num += w * sum(deltas[i:j]) ** 2
            den += w
    return num / den


def build(name: str, **config):
    return registry.build("objective", name, **config)


def run(
    name: str,
    two,
    policy: PolicyEval | None = None,
    log_z: Tensor | None = None,
    rollouts=None,
    **config,
) -> ObjectiveOutput:
    objective = build(name, **config)
    return objective.loss(
        rollouts if rollouts is not None else two.rollouts(),
        policy if policy is not None else two.policy(),
        two.scores(),
        log_z if log_z is not None else two.log_z_tensor(),
    )


# ---------------------------------------------------------------------------------------------
# Hand computations.


def test_tb_by_hand(two):
    ra = two.log_z[0] + seq_sum(two.policy_tok[0], 3) - two.log_reward[0]
    rb = two.log_z[1] + seq_sum(two.policy_tok[1], 4) - two.log_reward[1]
    out = run("tb", two)
    assert out.loss.item() == pytest.approx((ra**2 + rb**2) / 2, rel=1e-12)
    assert out.residual.tolist() == pytest.approx([ra, rb], rel=1e-12)
    assert out.metrics["residual_mean"] == pytest.approx((ra + rb) / 2)


def test_tb_sums_explicit_numbers(two):
    # The same as above with every number written out, so the example itself is checked once.
    ra = 0.3 + (-0.5 - 1.2 - 0.3) - (-3.6)  # padding -9.0 excluded; EOS (-0.3) included
    rb = -0.2 + (-0.7 - 0.4 - 1.1 - 0.9) - (-5.8)
    assert run("tb", two).loss.item() == pytest.approx((ra**2 + rb**2) / 2, rel=1e-12)


def test_tb_token_by_hand(two):
    ra = two.log_z[0] + seq_sum(two.policy_tok[0], 3) - two.log_reward[0] / 3
    rb = two.log_z[1] + seq_sum(two.policy_tok[1], 4) - two.log_reward[1] / 4
    out = run("tb_token", two)
    assert out.loss.item() == pytest.approx((ra**2 + rb**2) / 2, rel=1e-12)
    assert out.residual.tolist() == pytest.approx([ra, rb], rel=1e-12)


def behaviour_with_log_ratio(two, shifts: list[float]) -> list[list[float]]:
    """Behaviour log-probs whose masked sum is Σ log π − shift (so log π/π_old = shift); padding is
    garbage."""
    rows = []
    for b, shift in enumerate(shifts):
        row = list(two.policy_tok[b])
        row[0] -= shift
        for t in range(two.lengths[b], len(row)):
            row[t] = 4.0
        rows.append(row)
    return rows


@pytest.mark.parametrize(
    ("shifts", "clipped"),
    [
        ([0.1, -0.1], [False, False]),  # ratios 1.105, 0.905: inside [0.8, 1.28]
        ([0.5, -0.5], [True, True]),  # ratios 1.65 → 1.28 (high side), 0.61 → 0.8 (low side)
        ([0.0, -0.5], [False, True]),
    ],
)
def test_la_tb_by_hand_with_importance_weight(two, shifts, clipped):
    eps_low, eps_high = 0.2, 0.28
    rollouts = two.rollouts(behaviour_logp=behaviour_with_log_ratio(two, shifts))
    tok = torch.tensor(two.policy_tok, dtype=DTYPE, requires_grad=True)
    log_z = two.log_z_tensor().requires_grad_(True)
    out = run(
        "la_tb",
        two,
        policy=two.policy(tok=tok),
        log_z=log_z,
        rollouts=rollouts,
        eps_low=eps_low,
        eps_high=eps_high,
    )

    lengths = two.lengths
    residual = [
        two.log_z[b] + (seq_sum(two.policy_tok[b], lengths[b]) - two.log_reward[b]) / lengths[b]
        for b in range(2)
    ]
    ratio = [math.exp(s) for s in shifts]
    weight = [min(max(r, 1 - eps_low), 1 + eps_high) for r in ratio]
    expected = (weight[0] * residual[0] ** 2 + weight[1] * residual[1] ** 2) / 2
    assert out.loss.item() == pytest.approx(expected, rel=1e-12)
    assert out.residual.tolist() == pytest.approx(residual, rel=1e-12)
    assert out.metrics["iw_mean"] == pytest.approx(sum(weight) / 2, rel=1e-9)
    assert out.metrics["iw_min"] == pytest.approx(min(weight), rel=1e-9)
    assert out.metrics["iw_max"] == pytest.approx(max(weight), rel=1e-9)
    assert out.metrics["iw_clip_frac"] == pytest.approx(sum(clipped) / 2)

    # w is detached: ∂L/∂θ = (1/B)·w·∂(residual²)/∂θ, with no r²·∂w/∂θ term.
    out.loss.backward()
    for b in range(2):
        for t in range(two.num_positions):
            inside = t < lengths[b]
            want = weight[b] * 2 * residual[b] / lengths[b] / 2 if inside else 0.0
            assert tok.grad[b, t].item() == pytest.approx(want, rel=1e-9, abs=1e-12)
        assert log_z.grad[b].item() == pytest.approx(weight[b] * 2 * residual[b] / 2, rel=1e-9)


def test_la_tb_weight_does_not_depend_on_padding(two):
    # The behaviour log-probs of padding positions must not enter the ratio.
    rows = behaviour_with_log_ratio(two, [0.0, 0.0])
    rows[0][3] = -50.0
    out = run("la_tb", two, rollouts=two.rollouts(behaviour_logp=rows))
    assert out.metrics["iw_mean"] == pytest.approx(1.0)


def test_subtb_lambda_one_explicit_for_eos_response(two):
    # Response A has n = 2: pairs (0,1), (1,2), (0,2), all of weight 1.
    pr, tok, pe = two.prefix_log_reward[0], two.policy_tok[0], two.policy_eos[0]
    d0 = pr[0] + tok[0] + pe[1] - pr[1] - pe[0]
    d1 = pr[1] + tok[1] + pe[2] - pr[2] - pe[1]
    loss_a = (d0**2 + d1**2 + (d0 + d1) ** 2) / 3
    assert one_step_deltas(two, 0) == pytest.approx([d0, d1])
    # Response B (truncated, n = 4): log π(⊤|s_4) := 0 and log R̃(s_4) = log R.
    pr, tok, pe = two.prefix_log_reward[1], two.policy_tok[1], two.policy_eos[1]
    deltas_b = [pr[i] + tok[i] + pe[i + 1] - pr[i + 1] - pe[i] for i in range(3)]
    deltas_b.append(pr[3] + tok[3] + 0.0 - two.log_reward[1] - pe[3])
    pairs = [(i, j) for i in range(4) for j in range(i + 1, 5)]
    loss_b = sum(sum(deltas_b[i:j]) ** 2 for i, j in pairs) / len(pairs)
    out = run("subtb", two, lamda=1.0)
    assert out.residual.tolist() == pytest.approx([loss_a, loss_b], rel=1e-12)
    assert out.loss.item() == pytest.approx((loss_a + loss_b) / 2, rel=1e-12)


@pytest.mark.parametrize("lam", [1.0, 0.5, 0.9])
def test_subtb_by_hand(two, lam):
    per_sample = [subtb_by_hand(one_step_deltas(two, b), lam) for b in range(2)]
    out = run("subtb", two, lamda=lam)
    assert out.residual.tolist() == pytest.approx(per_sample, rel=1e-12)
    assert out.loss.item() == pytest.approx(sum(per_sample) / 2, rel=1e-12)


def test_subtb_lambda_changes_the_loss(two):
    # Guards the λ-weighting itself (a loss that ignored λ would pass the λ=1 checks).
    assert run("subtb", two, lamda=0.5).loss.item() != pytest.approx(
        run("subtb", two, lamda=1.0).loss.item()
    )


def test_db_by_hand(two):
    da, db_ = one_step_deltas(two, 0), one_step_deltas(two, 1)
    assert len(da) == 2 and len(db_) == 4
    per_sample = [sum(d * d for d in da) / 2, sum(d * d for d in db_) / 4]
    out = run("db", two)
    assert out.residual.tolist() == pytest.approx(per_sample, rel=1e-12)
    assert out.loss.item() == pytest.approx(sum(per_sample) / 2, rel=1e-12)


def test_db_equals_subtb_with_lambda_zero_limit(two):
    # SubTB with λ→0 keeps only the one-step pairs: DB.
    subtb = run("subtb", two, lamda=1e-12).loss.item()
    assert run("db", two).loss.item() == pytest.approx(subtb, rel=1e-9)


def test_garbage_past_the_end_is_ignored(two):
    ref = {name: run(name, two).loss.item() for name in OBJECTIVES}
    tok = torch.tensor(two.policy_tok, dtype=DTYPE)
    eos = torch.tensor(two.policy_eos, dtype=DTYPE)
    tok[0, 3] = 123.0  # padding of A
    eos[0, 3:] = -77.0  # states past A's last visited state s_2
    eos[1, 4] = -55.0  # B's forced-termination state: no EOS factor
    for name in OBJECTIVES:
        assert run(name, two, policy=two.policy(tok=tok, eos=eos)).loss.item() == pytest.approx(
            ref[name], rel=1e-12
        ), name


def test_fixed_point_alpha_one_policy_equals_base(two):
    """α = 1 and π = p_base: every residual is zero with log Z = 0 (TB-token's fixed point is
    another distribution, exp(log R/|y|), so it is left out)."""
    rollouts = two.rollouts()
    base = two.base()
    scores = registry.build("target", "alpha_power", alpha=1.0).score(rollouts, base)
    policy = PolicyEval(
        token_logp=base.token_logp,
        eos_logp=base.eos_logp,
        entropy=torch.zeros_like(base.token_logp),
    )
    log_z = torch.zeros(2, dtype=DTYPE)
    for name in ("tb", "la_tb", "subtb", "db"):
        out = build(name).loss(rollouts, policy, scores, log_z)
        assert out.loss.item() == pytest.approx(0.0, abs=1e-12), name
    # ... and moving the policy away from the base breaks it for the prefix objectives.
    moved = PolicyEval(
        token_logp=base.token_logp,
        eos_logp=base.eos_logp + 0.1,
        entropy=torch.zeros_like(base.token_logp),
    )
    for name in ("subtb", "db"):
        assert build(name).loss(rollouts, moved, scores, log_z).loss.item() > 1e-6, name


# ---------------------------------------------------------------------------------------------
# Huber penalty.


def test_huber_is_squared_inside_delta_and_linear_beyond(two):
    delta = 1.0
    # Residuals of TB are log Z + Σ log π − log R; choose log Z to give r = (0.4, −3.0).
    base_r = [
        seq_sum(two.policy_tok[0], 3) - two.log_reward[0],
        seq_sum(two.policy_tok[1], 4) - two.log_reward[1],
    ]
    want_r = [0.4, -3.0]
    log_z = torch.tensor(
        [w - r for w, r in zip(want_r, base_r, strict=True)], dtype=DTYPE, requires_grad=True
    )
    out = run("tb", two, log_z=log_z, penalty="huber", huber_delta=delta)
    assert out.residual.tolist() == pytest.approx(want_r, rel=1e-9)
    small = 0.4**2  # |r| ≤ δ: r²
    large = 2 * delta * 3.0 - delta**2  # |r| > δ: 2δ|r| − δ², continuous with r² at |r| = δ
    assert out.loss.item() == pytest.approx((small + large) / 2, rel=1e-9)
    out.loss.backward()
    # Slope: 2r inside, the constant 2δ·sign(r) beyond (divided by B = 2).
    assert log_z.grad.tolist() == pytest.approx([2 * 0.4 / 2, -2 * delta / 2], rel=1e-9)


@pytest.mark.parametrize("name", OBJECTIVES)
def test_huber_matches_squared_for_small_residuals(two, name):
    # With δ larger than every (sub-)trajectory residual, Huber and squared agree exactly...
    squared = run(name, two).loss.item()
    assert run(name, two, penalty="huber", huber_delta=1e3).loss.item() == pytest.approx(
        squared, rel=1e-12
    )
    # ... and with a small δ the large residuals are penalised linearly, i.e. less.
    assert run(name, two, penalty="huber", huber_delta=0.05).loss.item() < squared


def test_unknown_penalty_is_rejected():
    with pytest.raises(registry.RegistryError, match="penalty"):
        build("tb", penalty="cubic")


@pytest.mark.parametrize("name", OBJECTIVES)
def test_every_gflownet_objective_shares_one_penalty_declaration(name):
    cls = registry.lookup("objective", name)
    assert issubclass(cls, PenalisedObjective)
    fields = attrs.fields_dict(cls)
    shared = attrs.fields_dict(PenalisedObjective)
    for option in ("penalty", "huber_delta"):  # inherited, with the base's help and check
        assert fields[option].metadata["help"] == shared[option].metadata["help"]
        assert fields[option].validator is shared[option].validator
    objective = build(name, penalty="huber", huber_delta=0.5)
    assert (objective.penalty, objective.huber_delta) == ("huber", 0.5)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"penalty": "cubic"}, "objective 'subtb': penalty='cubic': must be one of squared, huber"),
        (
            {"penalty": ["huber"]},
            "objective 'db': penalty=['huber']: must be one of squared, huber",
        ),
        ({"huber_delta": 0.0}, "objective 'la_tb': huber_delta=0.0: must be a finite number > 0"),
        ({"huber_delta": -1}, "objective 'tb_token': huber_delta=-1: must be a finite number > 0"),
        ({"huber_delta": "abc"}, "objective 'tb': huber_delta='abc': must be a number"),
        ({"huber_delta": True}, "objective 'tb': huber_delta=True: must be a finite number > 0"),
    ],
)
def test_bad_penalty_options_are_one_line_errors_naming_the_option(options, message):
    name = message.split("'")[1]
    with pytest.raises(registry.RegistryError) as info:
        build(name, **options)
    assert str(info.value) == message


def test_penalise_is_regression_penalty_with_the_objectives_options():
    residual = torch.tensor([0.3, -2.5, 4.0], dtype=DTYPE)
    huber = build("tb", penalty="huber", huber_delta=0.5)
    assert torch.equal(huber.penalise(residual), regression_penalty(residual, "huber", 0.5))
    assert torch.equal(build("db").penalise(residual), residual.pow(2))


def test_a_subclass_keeps_its_own_options_positional_and_may_require_one():
    @attrs.frozen
    class Scaled(PenalisedObjective):
        scale: float

    scaled = Scaled(2.0, penalty="huber")
    assert (scaled.scale, scaled.penalty, scaled.huber_delta) == (2.0, "huber", 1.0)
    assert torch.equal(scaled.penalise(torch.tensor([3.0])), torch.tensor([5.0]))  # 2·(δ|r| − δ²/2)


def test_subtb_help_states_the_weight_the_loss_uses():
    help_text = attrs.fields_dict(registry.lookup("objective", "subtb"))["lamda"].metadata["help"]
    assert "λ^(j−i−1)" in help_text


# ---------------------------------------------------------------------------------------------
# Degenerate batches: zero-length responses and all-truncated batches.


def degenerate_case(make_rollouts, lengths, eos, num_positions, seed):
    gen = torch.Generator().manual_seed(seed)
    batch = len(lengths)
    rollouts = make_rollouts(lengths, eos, num_positions)
    base = SequenceLogProbs(
        token_logp=-torch.rand(batch, num_positions, generator=gen, dtype=DTYPE) * 2,
        eos_logp=-torch.rand(batch, num_positions + 1, generator=gen, dtype=DTYPE) * 2,
    )
    scores = registry.build("target", "alpha_power", alpha=2.0).score(rollouts, base)
    tok = (-torch.rand(batch, num_positions, generator=gen, dtype=DTYPE) * 2).requires_grad_(True)
    eos_ = (-torch.rand(batch, num_positions + 1, generator=gen, dtype=DTYPE) * 2).requires_grad_(
        True
    )
    log_z = torch.randn(batch, generator=gen, dtype=DTYPE).requires_grad_(True)
    return rollouts, scores, tok, eos_, log_z


DEGENERATE = {
    "all_zero_length": ([0, 0], [False, False], 3),
    "zero_length_and_eos": ([0, 3], [False, True], 3),
    "eos_only_response": ([1, 2], [True, False], 3),
    "all_truncated": ([3, 1], [False, False], 3),
    "all_truncated_full": ([3, 3], [False, False], 3),
}


@pytest.mark.parametrize("name", OBJECTIVES)
@pytest.mark.parametrize("case", sorted(DEGENERATE))
def test_degenerate_batches_are_finite(make_rollouts, name, case):
    lengths, eos, num_positions = DEGENERATE[case]
    rollouts, scores, tok, eos_, log_z = degenerate_case(
        make_rollouts, lengths, eos, num_positions, seed=3
    )
    policy = PolicyEval(token_logp=tok, eos_logp=eos_, entropy=torch.zeros_like(tok))
    out = build(name).loss(rollouts, policy, scores, log_z)
    assert torch.isfinite(out.loss), out.loss
    assert torch.isfinite(out.residual).all()
    assert all(math.isfinite(v) for v in out.metrics.values()), out.metrics
    if out.loss.requires_grad:
        grads = torch.autograd.grad(out.loss, (tok, eos_, log_z), allow_unused=True)
        for g in grads:
            assert g is None or torch.isfinite(g).all()


@pytest.mark.parametrize("name", ["subtb", "db"])
def test_prefix_objectives_on_all_zero_length_batch_are_zero(make_rollouts, name):
    rollouts, scores, tok, eos_, log_z = degenerate_case(
        make_rollouts, [0, 0], [False, False], 3, seed=1
    )
    policy = PolicyEval(token_logp=tok, eos_logp=eos_, entropy=torch.zeros_like(tok))
    assert build(name).loss(rollouts, policy, scores, log_z).loss.item() == 0.0


@pytest.mark.parametrize("name", ["tb", "tb_token", "la_tb"])
def test_zero_length_residual_is_log_z(make_rollouts, name):
    # |y| = 0: log π = log R = 0, and |y| is clamped at 1, so the residual is log Z itself.
    rollouts, scores, tok, eos_, log_z = degenerate_case(
        make_rollouts, [0, 2], [False, True], 3, seed=2
    )
    policy = PolicyEval(token_logp=tok, eos_logp=eos_, entropy=torch.zeros_like(tok))
    out = build(name).loss(rollouts, policy, scores, log_z)
    assert out.residual[0].item() == pytest.approx(log_z[0].item(), rel=1e-12)


# ---------------------------------------------------------------------------------------------
# Gradient checks (float64) w.r.t. the policy's token/EOS log-probs and log Z.


@pytest.mark.parametrize(
    ("name", "config"),
    [
        ("tb", {}),
        ("tb_token", {}),
        ("la_tb", {}),
        ("subtb", {"lamda": 1.0}),
        ("subtb", {"lamda": 0.7}),
        ("db", {}),
        ("tb", {"penalty": "huber", "huber_delta": 0.5}),
        ("subtb", {"penalty": "huber", "huber_delta": 0.5}),
    ],
)
def test_gradcheck(two, name, config):
    objective = build(name, **config)
    # For la_tb, both importance ratios are clipped (one on each side), so the detached weight is
    # locally constant and finite differences agree with the analytic gradient.
    rollouts = two.rollouts(behaviour_logp=behaviour_with_log_ratio(two, [0.5, -0.5]))
    scores = two.scores()

    def f(tok, eos, log_z):
        policy = PolicyEval(token_logp=tok, eos_logp=eos, entropy=torch.zeros_like(tok))
        return objective.loss(rollouts, policy, scores, log_z).loss

    inputs = (
        torch.tensor(two.policy_tok, dtype=DTYPE, requires_grad=True),
        torch.tensor(two.policy_eos, dtype=DTYPE, requires_grad=True),
        two.log_z_tensor().requires_grad_(True),
    )
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Shape rejection.


@pytest.mark.parametrize("name", OBJECTIVES)
def test_policy_with_another_batch_size_is_rejected(two, name):
    policy = PolicyEval(
        token_logp=torch.zeros(3, 4, dtype=DTYPE),
        eos_logp=torch.zeros(3, 5, dtype=DTYPE),
        entropy=torch.zeros(3, 4, dtype=DTYPE),
    )
    with pytest.raises(ShapeError) as info:
        run(name, two, policy=policy)
    message = str(info.value)
    assert f"objective {name!r}" in message
    assert "'policy'" in message and "token_logp" in message
    assert "'B T'" in message
    assert "(3, 4)" in message
    assert "B=2" in message
    assert "\n" not in message


@pytest.mark.parametrize("name", ["tb", "la_tb"])
def test_log_z_with_wrong_shape_is_rejected(two, name):
    with pytest.raises(ShapeError) as info:
        run(name, two, log_z=torch.zeros(2, 1, dtype=DTYPE))
    message = str(info.value)
    assert f"objective {name!r}" in message and "'log_z'" in message
    assert "'B'" in message and "(2, 1)" in message


def test_prefix_rewards_with_wrong_width_are_rejected(two):
    scores = TargetScores(
        log_reward=two.scores().log_reward, prefix_log_reward=torch.zeros(2, 4, dtype=DTYPE)
    )
    with pytest.raises(ShapeError) as info:
        build("subtb").loss(two.rollouts(), two.policy(), scores, None)
    message = str(info.value)
    assert "objective 'subtb'" in message and "'target'" in message
    assert "prefix_log_reward" in message and "'B T+1'" in message and "(2, 4)" in message


BROKEN = "test_broken_objective"


@attrs.frozen
class BrokenObjective(Objective):
    """Returns a residual with one entry too many; its helper takes a [B, T] tensor."""

    def loss(
        self,
        rollouts: Rollouts,
        policy: PolicyEval,
        target: TargetScores,
        log_z: Float[Tensor, " B"] | None,
    ) -> ObjectiveOutput:
        residual = torch.zeros(rollouts.batch_size + 1, dtype=DTYPE)
        return ObjectiveOutput(loss=residual.sum(), residual=residual)

    def per_sample(self, rollouts: Rollouts, values: Float[Tensor, "B T"]) -> Float[Tensor, " B"]:
        return values.sum(-1)


@pytest.fixture
def broken_objective():
    with temporarily_registered("objective", BROKEN, BrokenObjective) as component:
        yield component


def test_broken_objective_return_value_is_rejected(two, broken_objective):
    with pytest.raises(ShapeError) as info:
        broken_objective.loss(two.rollouts(), two.policy(), two.scores(), two.log_z_tensor())
    message = str(info.value)
    assert f"objective {BROKEN!r}" in message
    assert "return value" in message and "residual" in message
    assert "Float[Tensor, 'B']" in message
    assert "shape (3,)" in message
    assert "B=2" in message


def test_broken_objective_argument_is_rejected(two, broken_objective):
    rollouts = two.rollouts()
    ok = broken_objective.per_sample(rollouts, torch.ones(2, 4, dtype=DTYPE))
    assert ok.tolist() == [4.0, 4.0]
    with pytest.raises(ShapeError) as info:
        broken_objective.per_sample(rollouts, torch.ones(2, 5, dtype=DTYPE))
    message = str(info.value)
    assert f"objective {BROKEN!r}.per_sample()" in message
    assert "argument 'values'" in message
    assert "Float[Tensor, 'B T']" in message
    assert "shape (2, 5)" in message
    assert "T=4" in message


def test_la_tb_group_mean_log_z_by_hand(two):
    """``log_z_source='group_mean'``: log Z' is minus the group's mean residual-without-log-Z,
    detached; both responses share group 0, so the residuals are ±half their difference."""
    objective = build("la_tb", log_z_source="group_mean")
    assert "log_z" not in registry.capabilities(objective, "requires")
    rollouts = two.rollouts(behaviour_logp=behaviour_with_log_ratio(two, [0.0, 0.0]))
    tok = torch.tensor(two.policy_tok, dtype=DTYPE, requires_grad=True)
    out = objective.loss(rollouts, two.policy(tok=tok), two.scores(), None)
    lengths = two.lengths
    partial = [
        (seq_sum(two.policy_tok[b], lengths[b]) - two.log_reward[b]) / lengths[b] for b in range(2)
    ]
    centre = sum(partial) / 2
    residual = [p - centre for p in partial]
    assert out.residual.tolist() == pytest.approx(residual, rel=1e-12)
    assert out.loss.item() == pytest.approx((residual[0] ** 2 + residual[1] ** 2) / 2, rel=1e-12)
    assert out.metrics["log_z"] == pytest.approx(-centre, rel=1e-12)
    out.loss.backward()  # the estimate is detached: ∂L/∂θ = (1/B)·2·r_b/|y_b| on y_b's tokens only
    for b in range(2):
        for t in range(two.num_positions):
            want = 2 * residual[b] / lengths[b] / 2 if t < lengths[b] else 0.0
            assert tok.grad[b, t].item() == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_group_mean_log_z_centres_each_group_separately():
    from gfnlm.objectives.base import group_mean_log_z

    partial = torch.tensor([1.0, 3.0, 10.0, 20.0, 30.0], dtype=DTYPE)
    group = torch.tensor([7, 7, 2, 2, 2])
    assert group_mean_log_z(partial, group).tolist() == [-2.0, -2.0, -20.0, -20.0, -20.0]


def test_group_normalised_advantages_by_hand():
    from gfnlm.objectives.grpo import group_normalised_advantages

    reward = torch.tensor([1.0, 0.0, 0.0, 0.0, 5.0, 5.0], dtype=DTYPE)
    group = torch.tensor([0, 0, 0, 0, 1, 1])
    std = math.sqrt((0.75**2 + 3 * 0.25**2) / 3)  # unbiased, as TRL
    want = [0.75 / (std + 1e-4)] + [-0.25 / (std + 1e-4)] * 3 + [0.0, 0.0]
    assert group_normalised_advantages(reward, group).tolist() == pytest.approx(want, rel=1e-12)
    assert group_normalised_advantages(reward, group, scale=False).tolist() == pytest.approx(
        [0.75, -0.25, -0.25, -0.25, 0.0, 0.0]
    )


@pytest.mark.parametrize("shift", [0.0, 0.5])
def test_grpo_loss_by_hand(two, shift):
    """Token-mean PPO-clipped surrogate; with ratio e^0.5 = 1.65 the positive advantage is clipped
    at 1.2 (no gradient), the negative one is not (min picks the unclipped, lower value)."""
    rollouts = two.rollouts(behaviour_logp=behaviour_with_log_ratio(two, [0.0, 0.0]))
    # Per-token ratio: the policy's log-probs shifted by `shift` on every real token.
    tok = (torch.tensor(two.policy_tok, dtype=DTYPE) + shift).requires_grad_(True)
    scores = attrs.evolve(two.scores(), log_reward=torch.tensor([1.0, 0.0], dtype=DTYPE))
    out = build("grpo").loss(rollouts, two.policy(tok=tok), scores, None)
    lengths = two.lengths
    std = math.sqrt(0.5)  # unbiased std of {1, 0}
    adv = [0.5 / (std + 1e-4), -0.5 / (std + 1e-4)]
    ratio = math.exp(shift)
    terms = []
    for b in range(2):
        clipped = min(max(ratio, 0.8), 1.2)
        terms += [-min(ratio * adv[b], clipped * adv[b])] * lengths[b]
    assert out.loss.item() == pytest.approx(sum(terms) / len(terms), rel=1e-9)
    out.loss.backward()
    total = sum(lengths)
    for b in range(2):
        active = adv[b] < 0 or ratio <= 1.2  # the clipped branch has no gradient
        want = -adv[b] * ratio / total if active else 0.0
        for t in range(two.num_positions):
            expected = want if t < lengths[b] else 0.0
            assert tok.grad[b, t].item() == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_grpo_label_free_rewards_rent_and_intuitor_by_hand(two):
    """RENT: r = −mean token entropy over the response; Intuitor: r = mean self-certainty.
    Padding (garbage values here) must not enter either mean."""
    rollouts = two.rollouts()
    entropy = torch.tensor([[0.5, 1.0, 1.5, 99.0], [0.2, 0.4, 0.6, 0.8]], dtype=DTYPE)
    certainty = torch.tensor([[2.0, 1.0, 3.0, 99.0], [1.0, 1.0, 1.0, 5.0]], dtype=DTYPE)
    policy = attrs.evolve(two.policy(), entropy=entropy, self_certainty=certainty)
    lengths = two.lengths  # [3, 4]
    want_rent = [-sum(entropy[b, : lengths[b]].tolist()) / lengths[b] for b in range(2)]
    want_intuitor = [sum(certainty[b, : lengths[b]].tolist()) / lengths[b] for b in range(2)]
    rent = build("grpo", reward="neg_entropy").rewards(rollouts, policy, two.scores())
    intuitor = build("grpo", reward="self_certainty").rewards(rollouts, policy, two.scores())
    assert rent.tolist() == pytest.approx(want_rent, rel=1e-12)
    assert intuitor.tolist() == pytest.approx(want_intuitor, rel=1e-12)
    with pytest.raises(ValueError, match="self_certainty"):
        build("grpo", reward="self_certainty").rewards(rollouts, two.policy(), two.scores())


def test_entropy_min_loss_and_gradient_by_hand(two):
    """EM: the token-level mean entropy over the 3 + 4 real tokens; d loss / d H[b, t] = 1/7 on real
    tokens, 0 on padding (which holds garbage here)."""
    entropy = torch.tensor(
        [[0.5, 1.0, 1.5, 99.0], [0.2, 0.4, 0.6, 0.8]], dtype=DTYPE, requires_grad=True
    )
    policy = attrs.evolve(two.policy(), entropy=entropy)
    out = build("entropy_min").loss(two.rollouts(), policy, two.scores(), None)
    assert out.loss.item() == pytest.approx(
        (0.5 + 1.0 + 1.5 + 0.2 + 0.4 + 0.6 + 0.8) / 7, rel=1e-12
    )
    assert out.residual.tolist() == pytest.approx([1.0, 0.5], rel=1e-12)  # per-response means
    out.loss.backward()
    assert entropy.grad.flatten().tolist() == pytest.approx(
        [1 / 7] * 3 + [0.0] + [1 / 7] * 4, rel=1e-12
    )
    assert "entropy_grad" in build("entropy_min").requires


def test_grpo_kl_k1_in_the_reward_by_hand(two):
    """RL-traj: the alpha_power target (α−1 = 3) as reward, minus β·Σ_t (log π_old − log p_base)
    with the base log-probs the target reports; β = 1 gives the reward α·log p_base − log π_old."""
    from gfnlm.targets import AlphaPowerTarget

    rollouts = two.rollouts(behaviour_logp=two.policy_tok)  # on-policy: π_old = π_θ
    scores = AlphaPowerTarget(alpha=3.0).score(rollouts, two.base())
    base_seq = [seq_sum(two.base_tok[b], two.lengths[b]) for b in range(2)]
    old_seq = [seq_sum(two.policy_tok[b], two.lengths[b]) for b in range(2)]
    assert scores.ref_token_logp is not None
    for beta in (0.0, 1.0, 0.5):
        out = build("grpo", kl_beta=beta).loss(rollouts, two.policy(), scores, None)
        reward = [3 * base_seq[b] - beta * (old_seq[b] - base_seq[b]) for b in range(2)]
        centred = (reward[0] - reward[1]) / 2
        std = math.sqrt(2 * centred**2)  # unbiased std of two values
        assert out.residual.tolist() == pytest.approx(
            [centred / (std + 1e-4), -centred / (std + 1e-4)], rel=1e-9
        )
        assert out.metrics["reward_mean"] == pytest.approx(sum(reward) / 2, rel=1e-9)


def test_grpo_kl_k3_in_the_loss_by_hand(two):
    """k3 per token, β·(e^{ref−lp} − (ref−lp) − 1), added to the surrogate's token mean; equal
    rewards (advantage 0) leave the KL term alone, whose gradient is β·(1 − e^{ref−lp})/Σ|y|."""
    rollouts = two.rollouts(behaviour_logp=two.policy_tok)
    tok = torch.tensor(two.policy_tok, dtype=DTYPE, requires_grad=True)
    ref = torch.tensor(two.base_tok, dtype=DTYPE)
    scores = TargetScores(log_reward=torch.zeros(2, dtype=DTYPE), ref_token_logp=ref)
    beta = 0.5
    out = build("grpo", kl_beta=beta, kl_estimator="k3").loss(
        rollouts, two.policy(tok=tok), scores, None
    )
    terms, grads = [], [[0.0] * two.num_positions for _ in range(2)]
    total = sum(two.lengths)
    for b in range(2):
        for t in range(two.lengths[b]):
            d = two.base_tok[b][t] - two.policy_tok[b][t]
            terms.append(math.exp(d) - d - 1)
            grads[b][t] = beta * (1 - math.exp(d)) / total
    assert out.loss.item() == pytest.approx(beta * sum(terms) / total, rel=1e-9)
    assert out.metrics["kl_token_mean"] == pytest.approx(sum(terms) / total, rel=1e-9)
    out.loss.backward()
    assert tok.grad.flatten().tolist() == pytest.approx(grads[0] + grads[1], rel=1e-9, abs=1e-12)


def test_grpo_kl_needs_a_target_with_reference_log_probs():
    """kl_beta > 0 with the reward-only ``uniform`` target is rejected when composed."""
    from gfnlm.contracts.registry import RegistryError, check_composition

    grpo = build("grpo", kl_beta=1.0)
    sampler = registry.build("sampler", "hf")  # exact behaviour log-probs, which GRPO's ratio needs
    with pytest.raises(RegistryError, match="ref_logp"):
        check_composition(
            {"target": registry.build("target", "uniform"), "objective": grpo, "sampler": sampler}
        )
    check_composition(
        {"target": registry.build("target", "alpha_power"), "objective": grpo, "sampler": sampler}
    )
    check_composition(
        {
            "target": registry.build("target", "uniform"),
            "objective": build("grpo"),
            "sampler": sampler,
        }
    )


# ---------------------------------------------------------------------------------------------
# GRPO's loss shapes, reward scalings and truncation mask (TRL's loss_type, scale_rewards,
# mask_truncated_completions), each against a plain-Python computation.

# Two prompts × three responses of different lengths; response 3 is cut at T = 6 without EOS.
SHAPE_LENGTHS = [2, 5, 3, 6, 1, 4]
SHAPE_EOS = [True, True, True, False, True, True]
SHAPE_GROUP = [0, 0, 0, 1, 1, 1]
SHAPE_REWARD = [1.0, 0.0, 0.25, 0.2, 0.9, 0.4]
SHAPE_T = 6
# log π_θ − log π_old per token: inside the clip range, above 1.2 and below 0.8 (e^±0.4).
SHAPE_LOG_RATIO = [
    [0.1, -0.4, 0.0, 0.0, 0.0, 0.0],
    [0.4, 0.05, -0.1, 0.3, -0.4, 0.0],
    [-0.05, 0.4, 0.2, 0.0, 0.0, 0.0],
    [0.3, -0.3, 0.1, 0.4, -0.2, 0.05],
    [0.4, 0.0, 0.0, 0.0, 0.0, 0.0],
    [-0.4, 0.15, 0.4, -0.1, 0.0, 0.0],
]


def shape_batch(make_rollouts):
    """Rollouts, the policy's log-probs (a leaf to differentiate) and the target's rewards.
    Padding holds garbage in both log-prob tensors."""
    policy_tok = [[-0.3 - 0.1 * b - 0.05 * t for t in range(SHAPE_T)] for b in range(6)]
    behaviour, tok = [], []
    for b in range(6):
        behaviour.append(
            [
                policy_tok[b][t] - SHAPE_LOG_RATIO[b][t] if t < SHAPE_LENGTHS[b] else 4.0
                for t in range(SHAPE_T)
            ]
        )
        tok.append([policy_tok[b][t] if t < SHAPE_LENGTHS[b] else -9.0 for t in range(SHAPE_T)])
    rollouts = make_rollouts(SHAPE_LENGTHS, SHAPE_EOS, SHAPE_T, behaviour)
    rollouts = attrs.evolve(rollouts, group=torch.tensor(SHAPE_GROUP))
    tok = torch.tensor(tok, dtype=DTYPE, requires_grad=True)
    policy = PolicyEval(token_logp=tok, eos_logp=torch.zeros(6, SHAPE_T + 1, dtype=DTYPE))
    scores = TargetScores(log_reward=torch.tensor(SHAPE_REWARD, dtype=DTYPE))
    return rollouts, policy, scores, tok


def grpo_by_hand(loss_type: str, scale_rewards: str, mask_truncated: bool, l_max: int = SHAPE_T):
    """(loss, d loss / d log π_θ[b][t], advantages), written out with loops."""
    n = len(SHAPE_REWARD)
    advantages = []
    batch_mean = sum(SHAPE_REWARD) / n
    batch_std = math.sqrt(sum((r - batch_mean) ** 2 for r in SHAPE_REWARD) / (n - 1))
    for i in range(n):
        # Every response's reward takes part in the group statistics, truncated or not.
        members = [SHAPE_REWARD[j] for j in range(n) if SHAPE_GROUP[j] == SHAPE_GROUP[i]]
        mean = sum(members) / len(members)
        centred = SHAPE_REWARD[i] - mean
        if scale_rewards == "group":
            std = math.sqrt(sum((r - mean) ** 2 for r in members) / (len(members) - 1))
            advantages.append(centred / (std + 1e-4))
        elif scale_rewards == "batch":
            advantages.append(centred / (batch_std + 1e-4))
        else:
            advantages.append(centred)
    kept = [not mask_truncated or SHAPE_EOS[i] for i in range(n)]
    if loss_type == "token":
        weights = [1 / sum(SHAPE_LENGTHS[i] for i in range(n) if kept[i])] * n
    elif loss_type == "sequence":
        weights = [1 / (SHAPE_LENGTHS[i] * sum(kept)) for i in range(n)]
    else:
        weights = [1 / (n * l_max)] * n
    loss = 0.0
    grad = [[0.0] * SHAPE_T for _ in range(n)]
    for i in range(n):
        if not kept[i]:
            continue
        a = advantages[i]
        for t in range(SHAPE_LENGTHS[i]):
            ratio = math.exp(SHAPE_LOG_RATIO[i][t])
            clipped = min(max(ratio, 0.8), 1.2)
            loss += -min(ratio * a, clipped * a) * weights[i]
            if ratio * a <= clipped * a:  # the unclipped term is the min: d(−ρA)/d log π = −ρA
                grad[i][t] = -ratio * a * weights[i]
    return loss, grad, advantages


@pytest.mark.parametrize("mask_truncated", [False, True])
@pytest.mark.parametrize("scale_rewards", ["group", "batch", "none"])
@pytest.mark.parametrize("loss_type", ["token", "sequence", "dr_grpo"])
def test_grpo_shapes_loss_and_gradient_by_hand(
    make_rollouts, loss_type, scale_rewards, mask_truncated
):
    rollouts, policy, scores, tok = shape_batch(make_rollouts)
    objective = build(
        "grpo", loss_type=loss_type, scale_rewards=scale_rewards, mask_truncated=mask_truncated
    )
    out = objective.loss(rollouts, policy, scores, None)
    want, want_grad, advantages = grpo_by_hand(loss_type, scale_rewards, mask_truncated)
    assert out.loss.item() == pytest.approx(want, rel=1e-6, abs=1e-12)
    assert out.residual.tolist() == pytest.approx(advantages, rel=1e-6, abs=1e-12)
    out.loss.backward()
    for b in range(6):
        assert tok.grad[b].tolist() == pytest.approx(want_grad[b], rel=1e-6, abs=1e-12), b


def test_grpo_shapes_differ_on_this_batch(make_rollouts):
    """The three shapes, and masking or not, give different losses here, so the test above would
    fail if one silently computed another (dr_grpo as token-level, say)."""
    for scale in ("group", "batch", "none"):
        for masked in (False, True):
            losses = [
                grpo_by_hand(shape, scale, masked)[0] for shape in ("token", "sequence", "dr_grpo")
            ]
            assert min(abs(x - y) for x, y in [losses[:2], losses[1:], losses[::2]]) > 1e-3, losses
        unmasked = grpo_by_hand("token", scale, False)[0]
        assert abs(unmasked - grpo_by_hand("token", scale, True)[0]) > 1e-3
    advantages = [grpo_by_hand("token", scale, False)[2] for scale in ("group", "batch", "none")]
    assert all(abs(x - y) > 1e-3 for x, y in zip(advantages[0], advantages[1], strict=True))
    assert all(abs(x - y) > 1e-3 for x, y in zip(advantages[1], advantages[2], strict=True))


def test_grpo_dr_grpo_divides_by_max_completion_length(make_rollouts):
    """L_max = max_completion_length when set (independent of the batch's padding); a response
    longer than it is a one-line error naming the option."""
    rollouts, policy, scores, tok = shape_batch(make_rollouts)
    objective = build("grpo", loss_type="dr_grpo", max_completion_length=10)
    out = objective.loss(rollouts, policy, scores, None)
    want, want_grad, _ = grpo_by_hand("dr_grpo", "group", False, l_max=10)
    assert out.loss.item() == pytest.approx(want, rel=1e-6)
    out.loss.backward()
    for b in range(6):
        assert tok.grad[b].tolist() == pytest.approx(want_grad[b], rel=1e-6, abs=1e-12), b
    with pytest.raises(ValueError, match=r"max_completion_length=5: a response has 6 tokens"):
        short = build("grpo", loss_type="dr_grpo", max_completion_length=5)
        short.loss(rollouts, policy, scores, None)


def test_grpo_accepts_trl_spellings_and_the_boolean_scale_rewards():
    """TRL's loss_type names and the boolean scale_rewards of earlier configs (and of TRL)."""
    assert build("grpo", loss_type="dapo").loss_type == "token"
    assert build("grpo", loss_type="grpo").loss_type == "sequence"
    assert build("grpo", scale_rewards=True).scale_rewards == "group"
    assert build("grpo", scale_rewards=False).scale_rewards == "none"
    defaults = build("grpo")
    assert defaults.loss_type == "token" and defaults.scale_rewards == "group"
    assert defaults.mask_truncated is False
    assert defaults.max_completion_length is None


@pytest.mark.parametrize(
    ("option", "value", "allowed"),
    [
        ("scale_rewards", "std", "group, batch, none"),
        ("loss_type", "bnpo", "token, sequence, dr_grpo"),
    ],
)
def test_grpo_rejects_an_unknown_choice_in_one_line(option, value, allowed):
    with pytest.raises(registry.RegistryError) as caught:
        build("grpo", **{option: value})
    message = str(caught.value)
    assert message.startswith(f"objective 'grpo': {option}='{value}': must be one of {allowed}")
    assert "\n" not in message
