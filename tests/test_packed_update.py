"""The packed log-prob pass (``model.logp_pass=packed``: each prompt once, its samples' responses
behind it in padding-free rows, one forward pass with one shared attention mask) against the
bucket passes (a prompt KV-cache pass and length buckets) and against one plain pass per row: the
same log-probs, entropies, prompt features and LoRA gradients, in float32, with and without
gradient checkpointing."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from gfnlm.contracts.errors import ConfigError
from gfnlm.contracts.types import Rollouts
from gfnlm.models.loading import load_tokenizer
from gfnlm.models.packing import pack
from gfnlm.training.config import ModelConfig
from gfnlm.training.policy import CausalLMPolicy

EOS_ID = 2
TOLERANCE = 1e-5
# Three prompts of different lengths (left-padded to 7), 3 samples each of lengths 1 to 9.
PROMPT_LENGTHS = (7, 3, 5)
RESPONSE_LENGTHS = ((9, 2, 5), (1, 9, 4), (6, 3, 8))


def rollouts_of(prompt_lengths, response_lengths, vocab: int, seed: int = 0) -> Rollouts:
    """Random-token rollouts: prompt ``g`` has ``prompt_lengths[g]`` real tokens and samples of
    ``response_lengths[g]`` tokens (every other one ending with EOS); the rows are shuffled so that
    a prompt's samples are scattered, as in a minibatch."""
    generator = torch.Generator().manual_seed(seed)
    width, steps = max(prompt_lengths), max(max(r) for r in response_lengths)
    prompt_rows, response_rows, lengths, ended = [], [], [], []
    for prompt_length, samples in zip(prompt_lengths, response_lengths, strict=True):
        prompt = torch.randint(EOS_ID + 1, vocab, (prompt_length,), generator=generator)
        for index, length in enumerate(samples):
            prompt_rows.append(torch.cat([torch.zeros(width - prompt_length).long(), prompt]))
            response = torch.randint(EOS_ID + 1, vocab, (steps,), generator=generator)
            response[length:] = 0
            if index % 2:
                response[length - 1] = EOS_ID
            response_rows.append(response)
            lengths.append(length)
            ended.append(bool(index % 2))
    prompt_ids, response_ids = torch.stack(prompt_rows), torch.stack(response_rows)
    lengths_t = torch.tensor(lengths)
    positions = torch.arange(width)
    prompt_mask = (
        positions
        >= width
        - torch.tensor(
            [p for p, s in zip(prompt_lengths, response_lengths, strict=True) for _ in s]
        )[:, None]
    )
    batch = len(lengths)
    rollouts = Rollouts(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        response_ids=response_ids,
        response_mask=torch.arange(steps) < lengths_t[:, None],
        lengths=lengths_t,
        ended_with_eos=torch.tensor(ended),
        group=torch.tensor([g for g, s in enumerate(response_lengths) for _ in s]),
        prompt_index=torch.tensor([g for g, s in enumerate(response_lengths) for _ in s]),
        behaviour_logp=torch.zeros(batch, steps),
    )
    return rollouts.select(torch.randperm(batch, generator=generator))


def make_policy(model_dir, **options) -> CausalLMPolicy:
    """The tiny Llama with a non-zero LoRA adapter (q/v), float32, 4 positions per output-layer
    chunk (several chunks)."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = ModelConfig(
        path=str(model_dir), lora=True, dtype="float32", logp_chunk_size=4, **options
    )
    policy = CausalLMPolicy(model, load_tokenizer(model_dir), config, torch.device("cpu"))
    with torch.no_grad():
        for name, param in policy.model.named_parameters():
            if "lora_B" in name:
                param.copy_(
                    0.05 * torch.randn(param.shape, generator=torch.Generator().manual_seed(3))
                )
    return policy


def evaluation_and_gradients(policy: CausalLMPolicy, rollouts: Rollouts, layout: str) -> dict:
    """Every output of the update pass that a component may require, base scoring, and the LoRA
    gradients of a loss through log-probs, EOS log-probs, entropy and the prompt features."""
    policy.logp_pass = layout
    policy.model.zero_grad(set_to_none=True)
    evaluation = policy.evaluate(rollouts, need_prompt_hidden=True)
    visited = (
        torch.arange(rollouts.response_ids.shape[1] + 1)
        <= (rollouts.lengths - rollouts.ended_with_eos.long())[:, None]
    )
    weights = torch.linspace(-1, 1, evaluation.token_logp.numel()).view_as(evaluation.token_logp)
    loss = (
        (evaluation.token_logp * weights).sum()
        + evaluation.eos_logp[visited].sum()
        + 0.3 * evaluation.entropy.sum()
        + evaluation.prompt_hidden.square().mean()
    )
    loss.backward()
    base = policy.score_base(rollouts, need_eos_logp=True)
    values = {
        "token_logp": evaluation.token_logp,
        "eos_logp": evaluation.eos_logp[visited],
        "entropy": evaluation.entropy,
        "self_certainty": evaluation.self_certainty,
        "prompt_hidden": evaluation.prompt_hidden,
        "base token_logp": base.token_logp,
        "base eos_logp": base.eos_logp[visited],
    }
    grads = {n: p.grad.clone() for n, p in policy.model.named_parameters() if p.requires_grad}
    return values | {f"grad {n}": g for n, g in grads.items()}


def assert_all_close(packed: dict, reference: dict) -> None:
    assert packed.keys() == reference.keys()
    for name, value in reference.items():
        difference = float((packed[name] - value).detach().abs().max())
        assert difference <= TOLERANCE, f"{name}: {difference:.2e}"
    assert max(float(v.abs().max()) for k, v in reference.items() if k.startswith("grad")) > 1e-3


@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("min_width", [1024, 12])
def test_packed_pass_equals_the_bucket_passes(
    tiny_model_dir, checkpointing, min_width, monkeypatch
):
    """Packed (one wide row, or rows of at least 12 positions: prompts repeated in several blocks)
    vs today's passes, with entropy and self-certainty at every position and their gradient, prompt
    features and base scoring; packed with gradient checkpointing on (from 1 token) or off."""
    from gfnlm.models import packing

    monkeypatch.setattr(packing, "PACK_WIDTH", min_width)
    policy = make_policy(tiny_model_dir, gradient_checkpointing_from=1 if checkpointing else 0)
    policy.entropy_grad = True
    rollouts = rollouts_of(PROMPT_LENGTHS, RESPONSE_LENGTHS, policy.transformer_config.vocab_size)
    packed = evaluation_and_gradients(policy, rollouts, "packed")
    buckets = evaluation_and_gradients(policy, rollouts, "buckets")
    assert_all_close(packed, buckets)
    policy.share_prompts = False  # one plain pass per row
    assert_all_close(packed, evaluation_and_gradients(policy, rollouts, "buckets"))


def test_packed_logged_entropy_sample_equals_the_bucket_passes(tiny_model_dir):
    """Without token statistics the update logs an entropy subsample: the same positions and
    values either way."""
    policy = make_policy(tiny_model_dir)
    rollouts = rollouts_of(PROMPT_LENGTHS, RESPONSE_LENGTHS, policy.transformer_config.vocab_size)
    samples = {}
    for layout in ("packed", "buckets"):
        policy.logp_pass = layout
        evaluation = policy.evaluate(rollouts)
        assert evaluation.entropy is None
        samples[layout] = evaluation.entropy_sample
    assert samples["packed"].shape == (int(rollouts.response_mask.sum()),)
    assert float((samples["packed"] - samples["buckets"]).abs().max()) <= TOLERANCE


@pytest.mark.parametrize(
    ("options", "layout", "forwards"),
    [
        ({"gradient_checkpointing_from": 9}, "packed", 2),
        ({"gradient_checkpointing_from": 10}, "packed", 1),
        ({"gradient_checkpointing_from": 0}, "packed", 1),
        ({"gradient_checkpointing": True}, "buckets", 2),
        ({"gradient_checkpointing": True, "gradient_checkpointing_from": 0}, "packed", 2),
    ],
)
def test_update_recomputes_layers_when_checkpointing(tiny_model_dir, options, layout, forwards):
    """A decoder layer runs again in the backward pass when ``gradient_checkpointing`` is set, or,
    packed, once the batch's longest response (9 here) reaches ``gradient_checkpointing_from``,
    even in eval mode (a model loaded without LoRA stays in it)."""
    policy = make_policy(tiny_model_dir, **options)
    policy.logp_pass = layout
    policy.eval()
    rollouts = rollouts_of(PROMPT_LENGTHS, RESPONSE_LENGTHS, policy.transformer_config.vocab_size)
    calls = []
    mlp = policy.model.get_base_model().model.layers[0].mlp
    forward = mlp.forward  # counted on the instance: the recomputation runs no module hooks
    mlp.forward = lambda x: calls.append(1) or forward(x)
    policy.evaluate(rollouts).token_logp.sum().backward()
    assert len(calls) == forwards


def test_pack_lays_out_each_prompt_once_per_block_without_padding():
    """The packed ids at the predicting positions are the prompts' last tokens and the responses'
    tokens; positions restart at the prompt's end; only row tails are padding; a query sees its
    block's prompt and its own earlier tokens, nothing else."""
    rollouts = rollouts_of(PROMPT_LENGTHS, RESPONSE_LENGTHS, vocab=50)
    for min_width, rows in ((1024, 1), (20, None)):
        packed = pack(
            rollouts.prompt_ids,
            rollouts.prompt_mask,
            rollouts.response_ids,
            rollouts.lengths,
            torch.float32,
            min_width=min_width,
        )
        if rows is not None:
            assert packed.input_ids.shape[0] == rows
        flat_ids = packed.input_ids.reshape(-1)
        reached = torch.arange(rollouts.response_ids.shape[1] + 1) <= rollouts.lengths[:, None]
        last_prompt = rollouts.prompt_ids[:, -1]
        predicted_from = flat_ids[packed.predicting]
        assert torch.equal(predicted_from[:, 0], last_prompt)
        inner = reached[:, 1:]
        assert torch.equal(predicted_from[:, 1:][inner], rollouts.response_ids[inner])
        prompt_tokens = flat_ids[packed.prompt_positions]
        assert torch.equal(
            prompt_tokens[rollouts.prompt_mask], rollouts.prompt_ids[rollouts.prompt_mask]
        )
        flat_positions = packed.position_ids.reshape(-1)
        prompt_length = rollouts.prompt_mask.sum(1)
        expected = prompt_length[:, None] + torch.arange(rollouts.response_ids.shape[1] + 1) - 1
        assert torch.equal(flat_positions[packed.predicting][reached], expected[reached])
        real = int(rollouts.prompt_mask.sum()) + int(rollouts.lengths.sum())
        assert packed.num_tokens - real < packed.input_ids.shape[1]  # row tails only
        assert_tree_mask(packed, rollouts)


def assert_tree_mask(packed, rollouts: Rollouts) -> None:
    """The mask, position by position: response token ``k`` of rollout ``b`` sees exactly its
    prompt's real tokens and its own tokens up to ``k``."""
    width = packed.input_ids.shape[1]
    visible = packed.attention_mask[:, 0] == 0  # [R, W, W]
    prompt_length = rollouts.prompt_mask.sum(1)
    for b in range(rollouts.batch_size):
        prompt = packed.prompt_positions[b][rollouts.prompt_mask[b]]
        own = packed.predicting[b, 1 : int(rollouts.lengths[b]) + 1]
        row = int(own[0]) // width if own.numel() else int(prompt[0]) // width
        for k, query in enumerate(own.tolist()):
            seen = visible[row, query % width].nonzero().squeeze(-1) + row * width
            expected = torch.cat([prompt, own[: k + 1]]).sort().values
            assert torch.equal(seen, expected), (b, k)
        assert int(prompt_length[b]) == prompt.numel()


def test_packed_pass_needs_the_chunked_path():
    with pytest.raises(ConfigError, match="logp_chunk_size"):
        from gfnlm.training.policy import _logp_pass

        model = torch.nn.Linear(1, 1)
        model.config = type("Config", (), {"_attn_implementation": "sdpa"})()
        _logp_pass(ModelConfig(logp_pass="packed", logp_chunk_size=0), torch.device("cpu"), model)


def test_checkpointing_ready_keeps_the_kv_cache_of_a_training_mode_forward(tiny_model_dir):
    """Readying checkpointing (on by default from ``gradient_checkpointing_from``) must not switch
    transformers' model-level flag on: in training mode with gradients it forces ``use_cache=False``
    on every forward, which drops the KV cache the prompt pass and the sampler rely on."""
    policy = make_policy(tiny_model_dir)
    assert policy.config.gradient_checkpointing_from > 0
    policy.model.train()
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.enable_grad():
        out = policy.model(input_ids=ids, use_cache=True)
    assert out.past_key_values is not None and out.past_key_values.get_seq_length() == 4
