"""The HF sampler's KV-cache loop against ``transformers``' own ``generate`` and against a full
recomputation of the log-probs, on a tiny random Llama with the real SmolLM2 tokenizer."""

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM
from transformers.generation.logits_process import TopPLogitsWarper

import gfnlm.training.policy as policy_module
from gfnlm.contracts.errors import ConfigError
from gfnlm.models.chunked_logps import output_layer_of
from gfnlm.models.decoding import decode_with_cache, min_p_filter, next_tokens, top_p_filter
from gfnlm.models.loading import load_tokenizer
from gfnlm.samplers.hf import HFSampler
from gfnlm.tasks.prompts import PromptSet
from gfnlm.training.config import ModelConfig
from gfnlm.training.policy import CausalLMPolicy

QUESTIONS = [
    "What is the capital of France?",
    "Name a colour.",
    "Who wrote the play Hamlet, and when?",
]


def prompt_batch(tokenizer, tmp_path: Path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"question": q}) + "\n" for q in QUESTIONS))
    prompts = PromptSet.load(str(path), "data.train", tokenizer, 256)
    return prompts.batch(
        list(range(len(QUESTIONS)))
    )  # different lengths: left padding is exercised


def make_policy(model_dir: Path, eos_bias: float = 0.0, lora: bool = False) -> CausalLMPolicy:
    """The tiny model, optionally with a bias on the EOS logit so that rows end at different
    steps."""
    tokenizer = load_tokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if eos_bias:
        head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
        head.weight = model.lm_head.weight
        with torch.no_grad():
            head.bias.zero_()
            head.bias[tokenizer.eos_token_id] = eos_bias
        model.lm_head = head
    config = ModelConfig(path=str(model_dir), lora=lora, lora_targets=["q_proj", "v_proj"])
    return CausalLMPolicy(model, tokenizer, config, torch.device("cpu"))


@pytest.mark.parametrize(
    ("temperature", "top_p", "min_p"), [(1.0, 1.0, 0.0), (0.7, 0.9, 0.0), (1.3, 1.0, 0.1)]
)
def test_cached_engine_draws_the_same_tokens_as_generate(
    tiny_model_dir, tmp_path, temperature, top_p, min_p
):
    """Same seed, no row ends early → the RNG is consumed identically, so the tokens must be
    equal."""
    policy = make_policy(tiny_model_dir)
    batch = prompt_batch(policy.tokenizer, tmp_path)
    drawn = {}
    for engine in ("cached", "generate"):
        sampler = HFSampler(
            temperature=temperature, top_p=top_p, min_p=min_p, max_new_tokens=8, engine=engine
        )
        sampler.setup(policy)
        torch.manual_seed(0)
        drawn[engine] = sampler.sample(batch, 4)
    cached, reference = drawn["cached"], drawn["generate"]
    assert not reference.ended_with_eos.any()  # precondition of the exact comparison
    assert torch.equal(cached.response_ids, reference.response_ids)
    torch.testing.assert_close(cached.behaviour_logp, reference.behaviour_logp, atol=1e-5, rtol=0)


def test_rows_that_end_leave_the_batch_and_log_probs_stay_exact(tiny_model_dir, tmp_path):
    """With EOS likely, rows finish at different steps and the cache is pruned; the behaviour
    log-probs must still equal a fresh full forward pass over prompt + response (LoRA policy)."""
    policy = make_policy(tiny_model_dir, eos_bias=8.0, lora=True)
    batch = prompt_batch(policy.tokenizer, tmp_path)
    sampler = HFSampler(temperature=1.0, top_p=1.0, max_new_tokens=10)
    sampler.setup(policy)
    torch.manual_seed(0)
    rollouts = sampler.sample(batch, 6)
    lengths = rollouts.lengths
    assert rollouts.ended_with_eos.any() and not rollouts.ended_with_eos.all()
    assert len(set(lengths.tolist())) >= 3, lengths
    recomputed = policy.evaluate(rollouts).token_logp.detach()
    torch.testing.assert_close(rollouts.behaviour_logp, recomputed, atol=1e-4, rtol=0)
    # Each group of 6 rows comes from its own prompt.
    assert torch.equal(rollouts.prompt_ids[::6], batch.prompt_ids)


def test_greedy_decoding_equals_generate(tiny_model_dir, tmp_path):
    policy = make_policy(tiny_model_dir)
    batch = prompt_batch(policy.tokenizer, tmp_path)
    eos, pad = policy.eos_token_id, policy.tokenizer.pad_token_id
    ours, logp = decode_with_cache(
        policy.model,
        batch.prompt_ids,
        batch.prompt_mask,
        1,
        max_new_tokens=7,
        eos_token_id=eos,
        pad_token_id=pad,
        greedy=True,
    )
    reference = policy.model.generate(
        input_ids=batch.prompt_ids,
        attention_mask=batch.prompt_mask.long(),
        do_sample=False,
        max_new_tokens=7,
        eos_token_id=eos,
        pad_token_id=pad,
        temperature=None,
        top_p=None,
        top_k=None,
    )
    assert torch.equal(ours, reference[:, batch.prompt_ids.shape[1] :])
    assert torch.equal(logp, torch.zeros_like(logp))


@pytest.mark.parametrize("top_p", [0.05, 0.5, 0.9, 0.999])
def test_top_p_filter_keeps_what_transformers_keeps(top_p):
    logits = torch.randn(16, 500, generator=torch.Generator().manual_seed(1)) * 3
    expected = TopPLogitsWarper(top_p=top_p)(None, logits.clone())
    assert torch.equal(torch.isinf(top_p_filter(logits, top_p)), torch.isinf(expected))


def test_min_p_gives_the_hand_computed_distribution():
    """p = (0.5, 0.3, 0.15, 0.05). min-p 0.2 keeps the tokens with p >= 0.2 · 0.5 = 0.1: (0.5, 0.3,
    0.15)/0.95. At T = 0.5 the probabilities become p²/Σp² = (0.25, 0.09, 0.0225, 0.0025)/0.365 and
    min-p 0.1 keeps those >= 0.1 · 0.25/0.365, i.e. the first two: (0.25, 0.09)/0.34."""
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    kept = min_p_filter(logits, 0.2).softmax(-1)[0]
    torch.testing.assert_close(kept, torch.tensor([0.5, 0.3, 0.15, 0.0]) / 0.95)
    assert torch.equal(min_p_filter(logits, 0.0), logits)  # 0 = off
    torch.manual_seed(0)
    tokens, logp = next_tokens(
        logits.expand(20_000, 4), temperature=0.5, top_p=1.0, greedy=False, min_p=0.1
    )
    expected = torch.tensor([0.25, 0.09, 0.0, 0.0]) / 0.34
    frequencies = torch.bincount(tokens, minlength=4) / len(tokens)
    assert frequencies[2:].sum() == 0
    assert abs(float(frequencies[0]) - float(expected[0])) < 4 * math.sqrt(
        0.735 * 0.265 / len(tokens)
    )
    torch.testing.assert_close(
        logp, expected.log()[tokens]
    )  # the behaviour log-probs of the truncated law


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"min_p": 1.0}, "sampling.min_p=1.0: must be in [0, 1)"),
        ({"min_p": -0.1}, "sampling.min_p=-0.1: must be in [0, 1)"),
        ({"engine": "vllm"}, "engine='vllm': must be one of cached, generate"),
        ({"top_p": 1.5}, "sampling.top_p=1.5: must be in (0, 1]"),
        ({"temperature": 0.0}, "sampling.temperature=0.0: must be a finite number > 0"),
    ],
)
def test_bad_sampler_options_are_one_line_errors(options, message):
    with pytest.raises(ConfigError, match=None) as error:
        HFSampler(**options)
    assert message in str(error.value)


@pytest.mark.parametrize(
    ("need_hidden", "prefix_pass"), [(False, False), (False, True), (True, False)]
)
def test_shared_prompt_pass_equals_full_forward_values_and_gradients(
    tiny_model_dir, tmp_path, monkeypatch, need_hidden, prefix_pass
):
    """The policy's one-pass-per-distinct-prompt evaluation (responses in length buckets, each as
    wide as its longest; with ``prefix_pass`` the prompts' common prefix in a pass of its own, the
    rest of each left-padded prompt on top) gives the same log-probs, entropies, prompt features and
    LoRA gradients as one forward pass over every row's full sequence."""
    monkeypatch.setattr(policy_module, "SHARED_PREFIX_MIN_SAVING", 0 if prefix_pass else 10**6)
    policy = make_policy(tiny_model_dir, eos_bias=8.0, lora=True)
    batch = prompt_batch(policy.tokenizer, tmp_path)
    sampler = HFSampler(max_new_tokens=8)
    sampler.setup(policy)
    torch.manual_seed(1)
    rollouts = sampler.sample(batch, 3)
    rollouts = rollouts.select(
        torch.randperm(rollouts.batch_size)
    )  # groups scattered, as in a minibatch
    assert len(set(rollouts.lengths.tolist())) >= 3  # the length buckets differ in width
    # EOS log-probs are defined after 0..n ordinary tokens (n = |y| - 1 with EOS, |y| truncated).
    visited = (
        torch.arange(rollouts.response_ids.shape[1] + 1)
        <= (rollouts.lengths - rollouts.ended_with_eos.long())[:, None]
    )
    results, passes, output_rows = {}, [], []
    policy.model.register_forward_pre_hook(lambda module, args: passes.append(module))
    # the chunked log-probs read the output layer's weight: the layer itself runs on no position
    output_layer_of(policy.model).register_forward_hook(
        lambda module, args, out: output_rows.append(args[0].shape[-2])
    )
    for shared in (True, False):
        policy.share_prompts = shared
        policy.model.zero_grad(set_to_none=True)
        passes.clear()
        evaluation = policy.evaluate(rollouts, need_prompt_hidden=need_hidden)
        if shared:  # the prompts, (the prefix,) and one pass per length bucket
            assert len(passes) == 1 + prefix_pass + len(
                rollouts.lengths.chunk(policy_module.LENGTH_BUCKETS)
            )
        loss = (
            evaluation.token_logp.sum()
            + evaluation.eos_logp[visited].sum()
            + (evaluation.prompt_hidden.sum() if need_hidden else 0)
        )
        loss.backward()
        grads = [p.grad.clone() for p in policy.trainable_parameters()]
        base = policy.score_base(rollouts, need_eos_logp=True)
        assert output_rows and not any(output_rows)
        output_rows.clear()
        results[shared] = (evaluation, grads, base)
    (ev_s, grads_s, base_s), (ev_f, grads_f, base_f) = results[True], results[False]
    for name in ("token_logp", "entropy_sample") + (("prompt_hidden",) if need_hidden else ()):
        torch.testing.assert_close(getattr(ev_s, name), getattr(ev_f, name), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ev_s.eos_logp[visited], ev_f.eos_logp[visited], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(base_s.token_logp, base_f.token_logp, atol=1e-4, rtol=1e-4)
    for g_s, g_f in zip(grads_s, grads_f, strict=True):
        torch.testing.assert_close(g_s, g_f, atol=1e-4, rtol=1e-3)


def policy_and_rollouts(model_dir: Path, tmp_path: Path):
    """The tiny policy (one full pass per row) and 2 samples of 5 tokens per prompt."""
    policy = make_policy(model_dir)
    sampler = HFSampler(max_new_tokens=5)
    sampler.setup(policy)
    torch.manual_seed(0)
    rollouts = sampler.sample(prompt_batch(policy.tokenizer, tmp_path), 2)
    policy.share_prompts = False
    return policy, rollouts


def response_logits(policy: CausalLMPolicy, rollouts) -> torch.Tensor:
    """The model's full logits at the positions predicting each response token, recomputed
    plainly."""
    ids = torch.cat([rollouts.prompt_ids, rollouts.response_ids], 1)
    mask = torch.cat([rollouts.prompt_mask, rollouts.response_mask], 1).long()
    return policy.model(
        input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp_min(0)
    ).logits[:, rollouts.prompt_ids.shape[1] - 1 : -1]


def test_policy_reports_self_certainty_as_kl_from_uniform(tiny_model_dir, tmp_path):
    """``self_certainty = logsumexp(z) − mean(z) − log|V|`` = KL(Uniform ‖ π) ≥ 0, recomputed here
    from the model's full logits at the response positions (computed when a component asks:
    ``token_statistics``)."""
    policy, rollouts = policy_and_rollouts(tiny_model_dir, tmp_path)
    policy.token_statistics = True
    evaluation = policy.evaluate(rollouts)
    with torch.no_grad():
        logits = response_logits(policy, rollouts)
    log_pi = logits.log_softmax(-1)
    kl_uniform = (-log_pi.mean(-1) - math.log(logits.shape[-1])) * rollouts.response_mask
    torch.testing.assert_close(evaluation.self_certainty, kl_uniform, atol=1e-4, rtol=1e-4)
    assert (evaluation.self_certainty[rollouts.response_mask] >= -1e-5).all()


def test_evaluation_samples_at_the_requested_temperature(tiny_model_dir, tmp_path):
    """At T → 0 (the low-temperature baseline's limit) every sample is the greedy answer, so the
    sampled mean length equals the greedy one; at T = 1 on a random model it does not."""
    from gfnlm.evaluation.held_out import evaluate

    policy = make_policy(tiny_model_dir)
    path = tmp_path / "eval.jsonl"
    path.write_text(
        "".join(json.dumps({"question": q, "answers": ["x"]}) + "\n" for q in QUESTIONS)
    )
    prompts = PromptSet.load(str(path), "data.eval", policy.tokenizer, 256, require_answers=True)
    torch.manual_seed(0)
    cold = evaluate(policy, prompts, 4, 6, progress=False, temperature=1e-4)
    assert cold.mean_length == pytest.approx(cold.greedy_mean_length)
    eos_policy = make_policy(tiny_model_dir, eos_bias=8.0)
    hot = evaluate(eos_policy, prompts, 8, 6, progress=False, temperature=1.0)
    assert hot.mean_length != pytest.approx(hot.greedy_mean_length)


def test_policy_entropy_keeps_its_gradient_only_when_requested(tiny_model_dir, tmp_path):
    """Default: no per-position entropy; with ``token_statistics`` it is a no-grad statistic. With
    ``entropy_grad`` (EM's capability) the same values come with a graph, and their gradient equals
    the one of ``−Σ p log p`` recomputed from the model's full logits."""
    policy, rollouts = policy_and_rollouts(tiny_model_dir, tmp_path)
    assert policy.evaluate(rollouts).entropy is None
    policy.token_statistics = True
    plain = policy.evaluate(rollouts)
    assert not plain.entropy.requires_grad
    policy.entropy_grad = True
    evaluation = policy.evaluate(rollouts)
    assert evaluation.entropy.requires_grad and not evaluation.self_certainty.requires_grad
    torch.testing.assert_close(evaluation.entropy.detach(), plain.entropy)
    weights = rollouts.response_mask.float()
    (evaluation.entropy * weights).sum().backward()
    got = [p.grad.clone() for p in policy.trainable_parameters()]
    policy.model.zero_grad()
    log_pi = response_logits(policy, rollouts).log_softmax(-1)
    entropy = -(log_pi.exp() * log_pi).sum(-1)
    torch.testing.assert_close(
        evaluation.entropy.detach(), (entropy * weights).detach(), atol=1e-4, rtol=1e-4
    )
    (entropy * weights).sum().backward()
    for mine, reference in zip(got, [p.grad for p in policy.trainable_parameters()], strict=True):
        torch.testing.assert_close(mine, reference, atol=1e-5, rtol=1e-3)
