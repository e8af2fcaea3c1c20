"""Chunked log-probs (``model.logp_chunk_size`` > 0) against the plain full-logits path: the same
token and EOS log-probs, entropies and gradients (float64 to 1e-10, float32 to 1e-5; absolute, or
relative to the tensor's largest entry where that exceeds 1), for the
kernel alone and for the policy (LoRA and full fine-tuning, shared-prompt and full-sequence passes,
base scoring), on a tiny random Llama with the real SmolLM2 tokenizer."""

import math

import pytest
import torch
import torch.nn.functional as F
from test_samplers import prompt_batch
from transformers import AutoModelForCausalLM

import gfnlm.models.chunked_logps as chunked_module
from gfnlm.contracts.errors import ConfigError, RunError
from gfnlm.models.chunked_logps import chunked_logps
from gfnlm.models.loading import load_tokenizer
from gfnlm.samplers.hf import HFSampler
from gfnlm.training.config import ModelConfig, load_config
from gfnlm.training.policy import CausalLMPolicy

TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}


def plain_logps(hidden, layer, targets, eos):
    """The reference: full logits, log-softmax, gather."""
    logits = F.linear(hidden, layer.weight, layer.bias)
    log_probs = logits.log_softmax(-1)
    entropy = -(log_probs.exp() * log_probs).sum(-1)
    certainty = logits.logsumexp(-1) - logits.mean(-1) - math.log(logits.shape[-1])
    return (
        log_probs.gather(-1, targets[..., None]).squeeze(-1),
        log_probs[..., eos],
        entropy,
        certainty,
    )


def max_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """The largest absolute difference, relative to the reference's scale where that exceeds 1
    (a float32 gradient of magnitude 30 carries rounding of ~30 · 2⁻²⁴ in any summation order)."""
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max()) / max(1.0, float(b.abs().max()))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("chunk_size", [1, 7, 64, 1000])
def test_kernel_equals_full_logits_values_and_gradients(dtype, chunk_size):
    """Values, and the gradients to the hidden states, weight and bias of a loss mixing token
    log-probs, EOS log-probs and entropy, for chunk sizes that do and do not divide the rows."""
    generator = torch.Generator().manual_seed(0)
    batch, positions, hidden_size, vocab, eos = 3, 21, 16, 50, 4
    hidden = torch.randn(batch, positions, hidden_size, generator=generator, dtype=dtype)
    targets = torch.randint(vocab, (batch, positions), generator=generator)
    weights = [torch.randn(batch, positions, generator=generator, dtype=dtype) for _ in range(3)]
    results = []
    for chunked in (True, False):
        torch.manual_seed(1)
        layer = torch.nn.Linear(hidden_size, vocab, bias=True, dtype=dtype)
        leaf = hidden.clone().requires_grad_(True)
        if chunked:
            token, eos_logp, entropy, certainty = chunked_logps(
                leaf, layer, targets, eos, chunk_size, statistics=True
            )
        else:
            token, eos_logp, entropy, certainty = plain_logps(leaf, layer, targets, eos)
        loss = (
            (token * weights[0]).sum()
            + (eos_logp * weights[1]).sum()
            + (entropy * weights[2]).sum()
        )
        loss.backward()
        results.append(
            [token, eos_logp, entropy, certainty, leaf.grad, layer.weight.grad, layer.bias.grad]
        )
    for got, expected in zip(*results, strict=True):
        assert got.shape == expected.shape
        assert max_difference(got.detach(), expected.detach()) <= TOLERANCE[dtype]
    assert float(results[0][5].abs().max()) > 1e-3  # the compared gradients are not all zero


@pytest.mark.parametrize("chunk_size", [7, 63, 1000])
def test_kernel_without_statistics_equals_full_logits_gradients(chunk_size):
    """The update's own path (token and EOS log-probs, no statistics; several chunks, one chunk of
    exactly every row, one larger than the rows) gives the full-logits gradients, and a second
    backward pass over the retained graph gives the same ones (nothing saved is overwritten)."""
    generator = torch.Generator().manual_seed(3)
    batch, positions, hidden_size, vocab, eos = 3, 21, 16, 50, 4
    hidden = torch.randn(batch, positions, hidden_size, generator=generator, dtype=torch.float64)
    targets = torch.randint(vocab, (batch, positions), generator=generator)
    weights = [
        torch.randn(batch, positions, generator=generator, dtype=torch.float64) for _ in range(2)
    ]
    grads = []
    for chunked in (True, False):
        torch.manual_seed(1)
        layer = torch.nn.Linear(hidden_size, vocab, bias=True, dtype=torch.float64)
        leaf = hidden.clone().requires_grad_(True)
        if chunked:
            token, eos_logp, _, _ = chunked_logps(leaf, layer, targets, eos, chunk_size)
        else:
            token, eos_logp, _, _ = plain_logps(leaf, layer, targets, eos)
        loss = (token * weights[0]).sum() + (eos_logp * weights[1]).sum()
        first = torch.autograd.grad(loss, [leaf, layer.weight, layer.bias], retain_graph=True)
        second = torch.autograd.grad(loss, [leaf, layer.weight, layer.bias])
        for a, b in zip(first, second, strict=True):
            assert torch.equal(a, b)
        grads.append(first)
    for got, expected in zip(*grads, strict=True):
        assert max_difference(got, expected) <= TOLERANCE[torch.float64]
    assert float(grads[0][0].abs().max()) > 1e-3


@pytest.mark.parametrize(
    ("statistics", "chunk_size", "backward_products"),
    [
        (False, 7, 8),
        (False, 21, 2),
        (False, 63, 0),
        (False, 1000, 0),
        (True, 21, 2),
        (True, 1000, 0),
    ],
)
def test_backward_recomputes_all_but_the_last_chunk(
    monkeypatch, statistics, chunk_size, backward_products
):
    """The backward pass recomputes the logits of every chunk but the last, whose buffer the
    forward pass kept: with every row in one chunk the output layer's product runs once in all."""
    products = []
    real = chunked_module._chunk_logits
    monkeypatch.setattr(
        chunked_module, "_chunk_logits", lambda *args: products.append(1) or real(*args)
    )
    layer = torch.nn.Linear(16, 50, dtype=torch.float64)
    hidden = torch.randn(3, 21, 16, dtype=torch.float64, requires_grad=True)
    token, eos_logp, entropy, _ = chunked_logps(
        hidden, layer, torch.randint(50, (3, 21)), 4, chunk_size, statistics
    )
    forward_products = len(products)
    assert forward_products == math.ceil(63 / chunk_size)
    (token.sum() + eos_logp.sum() + (entropy.sum() if statistics else 0)).backward()
    assert len(products) - forward_products == backward_products


def test_kernel_without_statistics_returns_none_and_skips_frozen_weight_gradients():
    layer = torch.nn.Linear(8, 30, bias=False).requires_grad_(False)
    hidden = torch.randn(2, 5, 8, requires_grad=True)
    token, _eos, entropy, certainty = chunked_logps(
        hidden, layer, torch.zeros(2, 5, dtype=torch.long), 1, 3
    )
    assert entropy is None and certainty is None
    token.sum().backward()
    assert hidden.grad is not None and layer.weight.grad is None
    with pytest.raises(ValueError, match="chunk_size=0"):
        chunked_logps(hidden, layer, torch.zeros(2, 5, dtype=torch.long), 1, 0)


def make_policy(model_dir, dtype: str, lora: bool, chunk_size: int) -> CausalLMPolicy:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = ModelConfig(
        path=str(model_dir),
        lora=lora,
        lora_targets=["q_proj", "v_proj"],
        dtype=dtype,
        logp_chunk_size=chunk_size,
    )
    policy = CausalLMPolicy(model, load_tokenizer(model_dir), config, torch.device("cpu"))
    if lora:  # a non-zero adapter, so that the policy differs from its base
        with torch.no_grad():
            for name, param in policy.model.named_parameters():
                if "lora_B" in name:
                    param.copy_(
                        0.05 * torch.randn(param.shape, generator=torch.Generator().manual_seed(3))
                    )
    return policy


def sampled_rollouts(policy: CausalLMPolicy, tmp_path):
    sampler = HFSampler(max_new_tokens=9)
    sampler.setup(policy)
    torch.manual_seed(1)
    rollouts = sampler.sample(prompt_batch(policy.tokenizer, tmp_path), 3)
    return rollouts.select(
        torch.randperm(rollouts.batch_size, generator=torch.Generator().manual_seed(2))
    )


def evaluate_with_gradients(policy: CausalLMPolicy, rollouts, visited):
    """Token / EOS log-probs, entropy, self-certainty, base log-probs and the trainable gradients
    of a loss through the log-probs and the entropy."""
    policy.model.zero_grad(set_to_none=True)
    evaluation = policy.evaluate(rollouts)
    weights = torch.linspace(
        -1, 1, evaluation.token_logp.numel(), dtype=evaluation.token_logp.dtype
    )
    loss = (
        (evaluation.token_logp * weights.view_as(evaluation.token_logp)).sum()
        + evaluation.eos_logp[visited].sum()
        + 0.3 * evaluation.entropy.sum()
    )
    loss.backward()
    base = policy.score_base(rollouts, need_eos_logp=True)
    values = {
        "token_logp": evaluation.token_logp,
        "eos_logp": evaluation.eos_logp[visited],
        "entropy": evaluation.entropy,
        "self_certainty": evaluation.self_certainty,
        "base token_logp": base.token_logp,
        "base eos_logp": base.eos_logp[visited],
    }
    values |= {
        f"grad {n}": p.grad.clone() for n, p in policy.model.named_parameters() if p.requires_grad
    }
    return values


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("lora", [True, False])
@pytest.mark.parametrize("shared_prompts", [True, False])
def test_policy_chunked_equals_full_logits(tiny_model_dir, tmp_path, dtype, lora, shared_prompts):
    """The policy's evaluation and base scoring, chunked (5 positions per chunk) and plain, on the
    same weights and rollouts: equal values and equal gradients of every trainable tensor (the
    tied embedding / output matrix included under full fine-tuning)."""
    policy = make_policy(tiny_model_dir, dtype, lora, chunk_size=5)
    policy.entropy_grad = True  # entropy at every position, with its gradient
    policy.share_prompts = shared_prompts
    rollouts = sampled_rollouts(policy, tmp_path)
    visited = (
        torch.arange(rollouts.response_ids.shape[1] + 1)
        <= (rollouts.lengths - rollouts.ended_with_eos.long())[:, None]
    )
    chunked = evaluate_with_gradients(policy, rollouts, visited)
    policy.logp_chunk_size = 0
    plain = evaluate_with_gradients(policy, rollouts, visited)
    assert chunked.keys() == plain.keys()
    if not lora:
        assert "grad lm_head.weight" in chunked or "grad model.embed_tokens.weight" in chunked
    tolerance = TOLERANCE[getattr(torch, dtype)]
    for name, value in plain.items():
        assert value.dtype == getattr(torch, dtype), name
        assert max_difference(chunked[name], value) <= tolerance, name
    if lora:  # the adapter is on in evaluate and off in score_base
        assert max_difference(chunked["token_logp"], chunked["base token_logp"]) > 1e-3
    assert max(float(v.abs().max()) for k, v in plain.items() if k.startswith("grad")) > 1e-3


def test_policy_computes_token_statistics_only_when_asked(tiny_model_dir, tmp_path):
    """By default the chunked evaluation has no per-position entropy, and logs the mean entropy of
    a subsample of positions (here all of them: fewer than the subsample size), which equals the
    plain path's mean entropy; ``token_statistics`` gives the full tensors without gradient."""
    policy = make_policy(tiny_model_dir, "float64", lora=True, chunk_size=4)
    rollouts = sampled_rollouts(policy, tmp_path)
    default = policy.evaluate(rollouts)
    assert default.entropy is None and default.self_certainty is None
    assert default.entropy_sample.shape == (int(rollouts.response_mask.sum()),)
    policy.token_statistics = True
    full = policy.evaluate(rollouts)
    assert not full.entropy.requires_grad and not full.self_certainty.requires_grad
    policy.logp_chunk_size = 0
    plain = policy.evaluate(rollouts)
    for name in ("entropy", "self_certainty"):
        assert max_difference(getattr(full, name), getattr(plain, name)) <= 1e-10
    mask = rollouts.response_mask
    assert abs(default.mean_entropy(mask) - plain.mean_entropy(mask)) <= 1e-10


def test_logged_entropy_subsample_is_evenly_spaced_and_bounded(
    tiny_model_dir, tmp_path, monkeypatch
):
    from gfnlm.training import policy as policy_module

    monkeypatch.setattr(policy_module, "ENTROPY_SAMPLE_POSITIONS", 5)
    policy = make_policy(tiny_model_dir, "float64", lora=True, chunk_size=4)
    rollouts = sampled_rollouts(policy, tmp_path)
    sample = policy.evaluate(rollouts).entropy_sample
    policy.token_statistics = True
    full = policy.evaluate(rollouts).entropy
    real = full[rollouts.response_mask]
    expected = real[torch.linspace(0, real.numel() - 1, 5).long()]
    assert max_difference(sample, expected) <= 1e-10


def test_rent_objective_makes_the_trainer_compute_token_statistics():
    from gfnlm.contracts.registry import build

    rent = build("objective", "grpo", {"reward": "neg_entropy"})
    plain = build("objective", "grpo", {})
    assert "token_statistics" in rent.requires and "token_statistics" not in plain.requires


def test_output_layer_other_than_linear_is_a_one_line_error(tiny_model_dir):
    """A LoRA adapter on the output layer changes what the layer computes: refused at load."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    config = ModelConfig(path=str(tiny_model_dir), lora=True, lora_targets=["q_proj", "lm_head"])
    with pytest.raises(RunError, match="model.logp_chunk_size=0"):
        CausalLMPolicy(model, load_tokenizer(tiny_model_dir), config, torch.device("cpu"))


def test_negative_chunk_size_is_a_config_error():
    with pytest.raises(ConfigError, match="logp_chunk_size"):
        load_config(None, ["model.logp_chunk_size=-1"])
