"""How far a vLLM server's base scores (``scores_base``) are from the trainer's float32 pass: the
base model's responses to the first ``--prompts`` training prompts (HF sampler, ``-n`` each, ≤ 48
new tokens, T = 1), scored by ``policy.score_base`` and by a server in ``--dtype`` (CPU recipe,
``tools/vllm_cpu``); per token and per response (the sum, which a target multiplies by α).

    python benchmarks/vllm_base_scoring_precision.py                    # a bfloat16 server
    python benchmarks/vllm_base_scoring_precision.py --dtype float32    # a float32 one
"""

import argparse
import statistics
import sys

import torch
from vllm_cpu_sweep import launch_for

from gfnlm.models.loading import ensure_smollm2
from gfnlm.samplers.hf import HFSampler
from gfnlm.samplers.vllm import VLLMSampler
from gfnlm.serving.vllm_serve import VLLMServer
from gfnlm.tasks.prompts import PromptSet
from gfnlm.training.config import ModelConfig
from gfnlm.training.policy import CausalLMPolicy


def spread(values: list[float], digits: int) -> str:
    return (
        f"mean {statistics.mean(values):.{digits}f}, median "
        f"{statistics.median(values):.{digits}f}, max {max(values):.{digits}f}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("-n", type=int, default=4, help="responses per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    args = parser.parse_args(argv)
    model_dir = ensure_smollm2()
    policy = CausalLMPolicy.from_config(
        ModelConfig(path=str(model_dir)), model_dir, torch.device("cpu")
    )
    prompts = PromptSet.load("factual_train", "data.train", policy.tokenizer, 256)
    local = HFSampler(max_new_tokens=args.max_new_tokens)
    local.setup(policy)
    per_token, per_response = [], []
    with VLLMServer(model_dir, launch_for({}, [], args.dtype)) as server:
        scorer = VLLMSampler(
            url=server.url, weight_sync="none", scores_base=True, base_url=server.url, timeout_s=600
        )
        scorer.setup(policy)
        for start in range(0, args.prompts, 4):
            torch.manual_seed(start)  # the responses are the same for every --dtype
            rollouts = local.sample(
                prompts.batch(list(range(start, min(start + 4, args.prompts)))), args.n
            )
            gap = (
                scorer.score_base(rollouts, False).token_logp
                - policy.score_base(rollouts, False).token_logp
            )
            per_token += gap.abs()[rollouts.response_mask].tolist()
            per_response += gap.sum(1).abs().tolist()
        scorer.close()
    print(
        f"vLLM server in {args.dtype} vs the trainer's float32 base pass: {len(per_response)} "
        f"responses of the base model to {args.prompts} training prompts, {len(per_token)} tokens "
        f"(torch seeds 0-{args.prompts - 1} by 4)"
    )
    print(f"|Δ log p| per token: {spread(per_token, 4)}")
    print(f"|Δ log p| per response (sum over its tokens): {spread(per_response, 3)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
