"""The static-cache decoding path (fixed shapes, replayable as a CUDA graph) against today's dynamic
path, on CPU in float32: the same next-token distributions on the same prefixes, the same tokens
under one seed, behaviour log-probs equal to a teacher-forced forward pass, and finished rows
padded as before. A tiny random Llama with the real SmolLM2 tokenizer, plain and LoRA-wrapped, and
prompts of different lengths (left padding)."""

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from gfnlm.contracts.errors import ConfigError
from gfnlm.contracts.types import PromptBatch
from gfnlm.models.decoding import (
    decode_with_cache,
    decode_with_static_cache,
    decoding_plan,
    prefill,
    static_decoding_unsupported,
)
from gfnlm.models.loading import load_tokenizer
from gfnlm.samplers.hf import HFSampler
from gfnlm.training.config import ModelConfig
from gfnlm.training.policy import CausalLMPolicy

QUESTIONS = [
    "What is the capital of France?",
    "Name a colour.",
    "Who wrote the play Hamlet, and in which year was it first performed?",
]
HEAD_SCALE = 15.0
EOS_RATE = 0.1
SETTINGS = [
    {"temperature": 1.0, "top_p": 1.0, "min_p": 0.0},
    {"temperature": 1.0, "top_p": 0.9, "min_p": 0.0},
    {"temperature": 1.0, "top_p": 1.0, "min_p": 0.1},
    {"temperature": 0.7, "top_p": 0.9, "min_p": 0.05},
]


def make_policy(model_dir: Path, lora: bool, ending: bool = True) -> CausalLMPolicy:
    """The tiny model; with ``lora`` its adapter gets random (non-zero) weights so that it changes
    the distribution. With ``ending`` its output layer is sharpened (the random model's own
    distribution is close to uniform over 49k tokens, where top-p and min-p would keep almost
    everything or, with a likely EOS, only EOS) and EOS given about :data:`EOS_RATE` of the first
    step's probability, so that rows end at different steps."""
    torch.manual_seed(0)  # LoRA's initialisation draws from the global stream
    tokenizer = load_tokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if ending:
        head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
        with torch.no_grad():
            head.weight.copy_(model.lm_head.weight * HEAD_SCALE)
            head.bias.zero_()
        model.lm_head = head
    config = ModelConfig(path=str(model_dir), lora=lora, lora_targets=["q_proj", "v_proj"])
    policy = CausalLMPolicy(model, tokenizer, config, torch.device("cpu"))
    if lora:
        generator = torch.Generator().manual_seed(3)
        with torch.no_grad():
            for name, parameter in policy.model.named_parameters():
                if "lora_B" in name:
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    if ending:
        _give_eos_its_rate(policy)
    return policy


def _give_eos_its_rate(policy: CausalLMPolicy) -> None:
    """Set the EOS bias so that EOS has :data:`EOS_RATE` of the first step's probability (the
    median over the prompts): a fixed bias would end every row at once for some weights and none
    for others."""
    batch = prompt_batch(policy)
    eos = policy.eos_token_id
    with policy.decoding():
        _, logits, _, _ = prefill(policy.model, batch.prompt_ids, batch.prompt_mask)
    others = logits.clone()
    others[:, eos] = -torch.inf
    odds = torch.logit(torch.tensor(EOS_RATE))
    bias = (others.logsumexp(-1) - logits[:, eos] + odds).median()
    with torch.no_grad():
        policy.model.get_output_embeddings().bias[eos] = bias


def prompt_batch(policy: CausalLMPolicy) -> PromptBatch:
    encoded = policy.tokenizer(QUESTIONS, padding=True, padding_side="left", return_tensors="pt")
    mask = encoded.attention_mask.bool()
    assert len(set(mask.sum(-1).tolist())) == len(QUESTIONS)  # every prompt its own length
    return PromptBatch(
        prompt_ids=encoded.input_ids,
        prompt_mask=mask,
        prompt_index=torch.arange(len(QUESTIONS)),
    )


def decode_both(policy, batch, n, max_new_tokens, graph=None, **settings):
    """Both paths from one seed: ``{path: (tokens, behaviour log-probs)}``."""
    results = {}
    for name, decoder in (("dynamic", decode_with_cache), ("static", decode_with_static_cache)):
        extra = {"graph": graph} if name == "static" and graph is not None else {}
        torch.manual_seed(0)
        with policy.decoding():
            results[name] = decoder(
                policy.model,
                batch.prompt_ids,
                batch.prompt_mask,
                n,
                max_new_tokens=max_new_tokens,
                eos_token_id=policy.eos_token_id,
                pad_token_id=policy.tokenizer.pad_token_id,
                **settings,
                **extra,
            )
    return results


class Recorder:
    """An exploration component that samples the policy's own distribution and keeps each step's
    full ``[rows, V]`` log-probs."""

    def __init__(self) -> None:
        self.steps: list[torch.Tensor] = []

    def behaviour_log_probs(self, logp: torch.Tensor) -> torch.Tensor:
        self.steps.append(logp.clone())
        return logp


@pytest.mark.parametrize("lora", [False, True], ids=["plain", "lora"])
@pytest.mark.parametrize("settings", SETTINGS[::3], ids=["t1", "t0.7-p0.9-minp0.05"])
def test_next_token_log_probs_equal_the_dynamic_paths_on_the_same_prefixes(
    tiny_model_dir, lora, settings
):
    """Every step's whole next-token distribution (over the rows still generating) agrees to 1e-5;
    the prefixes are the same because the drawn tokens are."""
    policy = make_policy(tiny_model_dir, lora=lora, ending=True)
    batch = prompt_batch(policy)
    recorders = {"dynamic": Recorder(), "static": Recorder()}
    drawn = {}
    for name, decoder in (("dynamic", decode_with_cache), ("static", decode_with_static_cache)):
        torch.manual_seed(0)
        with policy.decoding():
            drawn[name] = decoder(
                policy.model,
                batch.prompt_ids,
                batch.prompt_mask,
                4,
                max_new_tokens=10,
                eos_token_id=policy.eos_token_id,
                pad_token_id=policy.tokenizer.pad_token_id,
                exploration=recorders[name],
                **settings,
            )
    assert torch.equal(drawn["dynamic"][0], drawn["static"][0])
    dynamic, static = recorders["dynamic"].steps, recorders["static"].steps
    assert len(dynamic) == len(static) >= 2
    assert len({step.shape[0] for step in dynamic}) >= 2  # rows left the batch on the way
    for ours, reference in zip(static, dynamic, strict=True):
        torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)


@pytest.mark.parametrize("settings", SETTINGS, ids=["t1", "p0.9", "minp0.1", "mixed"])
def test_both_paths_draw_the_same_tokens_under_one_seed(tiny_model_dir, settings):
    """Through the sampler (LoRA policy, rows ending at different steps): the same rollouts."""
    policy = make_policy(tiny_model_dir, lora=True, ending=True)
    batch = prompt_batch(policy)
    rollouts = {}
    for decoding in ("dynamic", "static"):
        sampler = HFSampler(max_new_tokens=10, decoding=decoding, **settings)
        sampler.setup(policy)
        torch.manual_seed(0)
        rollouts[decoding] = sampler.sample(batch, 4)
    dynamic, static = rollouts["dynamic"], rollouts["static"]
    assert len(set(dynamic.lengths.tolist())) >= 2  # rows left the batch at different steps
    assert torch.equal(static.response_ids, dynamic.response_ids)
    torch.testing.assert_close(static.behaviour_logp, dynamic.behaviour_logp, atol=1e-5, rtol=0)


def teacher_forced_logps(model, prompt_ids, prompt_mask, response_ids, response_mask):
    """Each response token's log-prob from one forward pass over prompt + response."""
    ids = torch.cat([prompt_ids, response_ids], 1)
    mask = torch.cat([prompt_mask, response_mask], 1).long()
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    predicting = logits[:, prompt_ids.shape[1] - 1 : -1].float().log_softmax(-1)
    token_logp = predicting.gather(-1, response_ids[..., None]).squeeze(-1)
    return token_logp * response_mask


@pytest.mark.parametrize("lora", [False, True], ids=["plain", "lora"])
def test_static_behaviour_log_probs_equal_a_teacher_forced_forward(tiny_model_dir, lora):
    policy = make_policy(tiny_model_dir, lora=lora, ending=True)
    batch = prompt_batch(policy)
    sampler = HFSampler(max_new_tokens=12, decoding="static")
    sampler.setup(policy)
    torch.manual_seed(1)
    rollouts = sampler.sample(batch, 5)
    assert len(set(rollouts.lengths.tolist())) >= 3, rollouts.lengths
    policy.model.eval()
    recomputed = teacher_forced_logps(
        policy.model,
        rollouts.prompt_ids,
        rollouts.prompt_mask,
        rollouts.response_ids,
        rollouts.response_mask,
    )
    torch.testing.assert_close(rollouts.behaviour_logp, recomputed, atol=1e-4, rtol=0)


@pytest.mark.parametrize("synced", [False, True], ids=["rows-leave", "synced"])
def test_finished_rows_stay_finished_and_padded_as_on_the_dynamic_path(tiny_model_dir, synced):
    """EOS then padding only; lengths count the EOS; rows without EOS are cut at max_new_tokens and
    flagged truncated. ``synced`` (every row decodes every step) gives the same responses."""
    policy = make_policy(tiny_model_dir, lora=True, ending=True)
    policy.synced_decoding = synced
    batch = prompt_batch(policy)
    rollouts = {}
    for decoding in ("dynamic", "static"):
        sampler = HFSampler(max_new_tokens=6, decoding=decoding)
        sampler.setup(policy)
        torch.manual_seed(2)
        rollouts[decoding] = sampler.sample(batch, 6)
    static, dynamic = rollouts["static"], rollouts["dynamic"]
    ended = static.ended_with_eos
    assert ended.any() and not ended.all()  # both kinds of rows are exercised
    pad, eos = policy.tokenizer.pad_token_id, policy.eos_token_id
    for row in range(static.batch_size):
        length = int(static.lengths[row])
        ids = static.response_ids[row]
        assert (ids[length:] == pad).all()
        assert (ids[: length - 1] != eos).all()
        assert bool(ids[length - 1] == eos) == bool(ended[row])
        if not ended[row]:
            assert length == 6
    for field in ("response_ids", "response_mask", "lengths", "ended_with_eos"):
        assert torch.equal(getattr(static, field), getattr(dynamic, field)), field


def eager_capture(forward):
    """A stand-in for :func:`capture_cuda_graph` on CPU: the first run is real, "replay" runs the
    step again eagerly (what a correct graph computes)."""
    return forward(), forward


def stale_capture(forward):
    """A broken graph: its replay returns the first step's logits again."""
    first = forward()
    frozen = first.clone()

    def replay():
        forward()  # the step runs (and writes its cache slot), its output is wrong
        return frozen

    return first, replay


def failed_capture(forward):
    return forward(), None


@pytest.mark.parametrize(
    ("capture", "warning"),
    [(eager_capture, None), (stale_capture, "replay differs"), (failed_capture, None)],
    ids=["replayed", "stale-replay-dropped", "capture-failed"],
)
def test_graph_bookkeeping_keeps_the_draws_exact(tiny_model_dir, capture, warning, recwarn):
    """The replay's cache bookkeeping (first step run at capture, a checked second step, the cache
    rewound in between) leaves the tokens and log-probs those of the dynamic path; a replay that
    differs from the eager step is dropped with a warning."""
    policy = make_policy(tiny_model_dir, lora=True, ending=True)
    batch = prompt_batch(policy)
    results = decode_both(policy, batch, 4, 10, graph=capture, top_p=0.9)
    (dynamic_ids, dynamic_logp), (static_ids, static_logp) = results["dynamic"], results["static"]
    assert torch.equal(static_ids, dynamic_ids)
    torch.testing.assert_close(static_logp, dynamic_logp, atol=1e-5, rtol=0)
    messages = [str(w.message) for w in recwarn.list]
    if warning is None:
        assert not any("CUDA graph" in m for m in messages), messages
    else:
        assert any(warning in m for m in messages), messages


@pytest.mark.parametrize(
    ("mode", "device", "synced", "expected"),
    [
        ("auto", "cpu", False, (False, False)),
        ("auto", "cuda", False, (True, True)),
        ("auto", "cuda", True, (False, False)),
        ("static", "cpu", False, (True, False)),
        ("static", "cuda", False, (True, True)),
        ("static", "cuda", True, (True, False)),
        ("dynamic", "cuda", False, (False, False)),
    ],
)
def test_decoding_plan(tiny_model_dir, mode, device, synced, expected):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    assert decoding_plan(mode, model, torch.device(device), synced) == expected


def test_auto_keeps_the_dynamic_path_for_a_model_the_static_one_cannot_run(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    assert static_decoding_unsupported(model) is None
    model.config._attn_implementation = "flash_attention_2"
    assert "flash_attention_2" in static_decoding_unsupported(model)
    assert decoding_plan("auto", model, torch.device("cuda"), False) == (False, False)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"decoding": "graph"}, "decoding='graph': must be one of auto, dynamic, static"),
        (
            {"decoding": "static", "engine": "generate"},
            "decoding='static': applies to engine='cached' only",
        ),
    ],
)
def test_bad_decoding_options_are_one_line_errors(options, message):
    with pytest.raises(ConfigError) as error:
        HFSampler(**options)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_static_decoding_of_an_unsupported_model_fails_at_setup(tiny_model_dir):
    policy = make_policy(tiny_model_dir, lora=False, ending=False)
    policy.model.config._attn_implementation = "flash_attention_2"
    sampler = HFSampler(decoding="static")
    with pytest.raises(ConfigError, match="decoding='static': attention implementation"):
        sampler.setup(policy)
