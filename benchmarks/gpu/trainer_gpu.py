"""PowerFlow training steps on a GPU with a ~0.5B-parameter Llama built from a config (random
weights, bf16 autocast), so nothing is downloaded. Reports step time split, rollout tokens/s, peak
GPU memory, and how closely the trainer's recomputed policy log-probs match the sampler's behaviour
log-probs.

    python benchmarks/gpu/trainer_gpu.py --tokenizer DIR [--steps 6] [--full] [--parallel ddp|fsdp2]
        [--logp-pass auto|packed|buckets] [--max-new-tokens 4096]
    torchrun --standalone --nproc_per_node N benchmarks/gpu/trainer_gpu.py --tokenizer DIR ...
    python benchmarks/gpu/trainer_gpu.py --tokenizer DIR --device cpu --size tiny --steps 2
                                                                      # a smoke run

``--device cpu --size tiny`` runs the same code on a 2-layer model on CPU in float32 (the test
suite does, so that the script still works when no GPU has run it for a while).

Under torchrun every rank runs its share of ``--prompts`` (which must be a multiple of N); the
tokens/s printed are summed over ranks and the peak memory is rank 0's.

DIR is any Hugging Face tokenizer folder (e.g. the SmolLM2 one gfnlm caches under
``~/.cache/gfnlm/smollm2-135m-instruct``). Exits with a clear message when no CUDA device exists.
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from gfnlm.training import distributed as dist_utils
from gfnlm.training.config import load_config
from gfnlm.training.trainer import Trainer

REPO = Path(__file__).resolve().parents[2]


# Llama shapes: a Qwen2.5-0.5B-shaped one, and a tiny one for smoke runs.
SIZES = {
    "0.5b": {
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
    },
    "tiny": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
    },
}


def build_model(tokenizer_dir: Path, out: Path, size: str) -> int:
    """A Llama of ``SIZES[size]`` with random weights; returns #params."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        **SIZES[size],
        max_position_embeddings=8192,  # room for a prompt and --max-new-tokens 4096
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return sum(p.numel() for p in model.parameters())


def update_mfu(tokens_per_s: float, args: argparse.Namespace) -> str:
    """``, MFU x %``: 4·N·tokens/s over the GPU's peak bf16 FLOP/s (benchmarks/vs_trl.py's table
    and count: N = the weights of the model's matrices); empty where the GPU is not listed."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from vs_trl import peak_flops

    flops = peak_flops("cuda")[0]
    shape = SIZES[args.size]
    hidden, layers = shape["hidden_size"], shape["num_hidden_layers"]
    head = hidden // shape["num_attention_heads"]
    heads = 2 * shape["num_attention_heads"] + 2 * shape["num_key_value_heads"]
    per_layer = hidden * head * heads + 3 * hidden * shape["intermediate_size"]
    vocab = len(AutoTokenizer.from_pretrained(args.tokenizer))
    matrices = layers * per_layer + vocab * hidden
    return f", MFU {100 * 4 * matrices * tokens_per_s / flops:.1f} %" if flops else ""


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokenizer", required=True, type=Path)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--full", action="store_true", help="full fine-tuning instead of LoRA")
    parser.add_argument(
        "--logp-pass",
        default="auto",
        choices=["auto", "packed", "buckets"],
        help="model.logp_pass: the layout of the update and base-scoring passes",
    )
    parser.add_argument(
        "--device", default="cuda", choices=["cuda", "cpu"], help="cpu: a smoke run in float32"
    )
    parser.add_argument(
        "--size", default="0.5b", choices=list(SIZES), help="the random Llama's shape"
    )
    parser.add_argument("--train", default="factual_train", help="prompt file or bundled set")
    parser.add_argument(
        "--parallel", default="ddp", choices=["ddp", "fsdp2"], help="under torchrun"
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "gfnlm-gpu-bench",
        help="where rank 0 saves the random model (every rank must see it)",
    )
    args = parser.parse_args()
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        print("SKIP: no CUDA device here; this script measures the trainer on a GPU")
        return 0
    env = dist_utils.world_from_env()
    rank, world = env.rank, env.size
    device_name = torch.cuda.get_device_name(0) if cuda else "CPU"
    model_dir, ready = args.work_dir / "model", args.work_dir / "model.ready"
    if rank == 0:
        ready.unlink(missing_ok=True)
        params = build_model(args.tokenizer, model_dir, args.size)
        ready.write_text(str(params))
    while not ready.is_file():  # the other ranks wait for rank 0's model
        time.sleep(1)
    params = int(ready.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        overrides = [
            f"model.path={model_dir}",
            f"model.lora={not args.full}",
            f"model.logp_pass={args.logp_pass}",
            "data.eval=''",
            f"data.train={args.train}",
            f"train.parallel={args.parallel}",
            f"train.device={args.device}",
            f"train.out_dir={Path(tmp) / 'run'}",
            f"train.steps={args.steps}",
            f"train.prompts_per_step={args.prompts}",
            f"sampling.samples_per_prompt={args.samples}",
            f"sampling.max_new_tokens={args.max_new_tokens}",
            "train.lr=1e-5",
        ]
        trainer = Trainer(load_config(REPO / "configs/default.yaml", overrides), progress=False)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        rows = []
        for step in range(args.steps):
            metrics = dist_utils.reduce_metrics(trainer.train_step(), trainer.world, trainer.device)
            trainer.step += 1
            tokens = metrics["length/mean"] * args.prompts * args.samples  # all ranks together
            rows.append(
                {
                    **metrics,
                    "tokens_per_s": tokens / metrics["time/sample"],
                    "update_tokens_per_s": tokens / metrics["time/update"],
                }
            )
            if rank == 0:
                print(
                    json.dumps(
                        {
                            "step": step + 1,
                            **{
                                k: round(v, 4)
                                for k, v in metrics.items()
                                if k.startswith(("time", "loss", "length/mean", "iw"))
                            },
                        }
                    )
                )
        # Recomputation check: behaviour log-probs (generate, KV cache) vs one policy forward.
        prompts = trainer.train_prompts.batch(trainer.rollouts.next_prompt_indices())
        rollouts = trainer.components.sampler.sample(prompts, 2)
        with torch.no_grad():
            recomputed = trainer.policy.evaluate(rollouts).token_logp
        diff = (recomputed - rollouts.behaviour_logp).abs()[rollouts.response_mask]
    trainer.close()
    if rank != 0:
        return 0
    timed = rows[1:] if len(rows) > 1 else rows
    med = lambda key: statistics.median(r[key] for r in timed)
    peak = f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if cuda else "not measured on CPU"
    print(
        f"\ndevice: {device_name}; model: random Llama, {params / 1e6:.0f}M parameters, "
        f"{'full fine-tune' if args.full else 'LoRA r=8 q/k/v/o'}, "
        f"{'bf16 autocast' if cuda else 'float32'}; {args.prompts} prompts x {args.samples} "
        f"samples, {args.max_new_tokens} new tokens max; {world} process(es), "
        f"{args.parallel if world > 1 else 'single'}"
    )
    print(
        f"median of steps 2..{len(rows)}: step {med('time/step'):.3f} s = sample "
        f"{med('time/sample'):.3f} + score {med('time/score'):.3f} + update "
        f"{med('time/update'):.3f}; rollout {med('tokens_per_s'):.0f} tokens/s; peak GPU memory "
        f"{peak}"
    )
    print(
        f"update ({args.logp_pass} passes): {med('update_tokens_per_s'):.0f} response tokens/s"
        f"{update_mfu(med('update_tokens_per_s'), args) if cuda else ''}"
    )
    print(
        f"|behaviour - recomputed| token log-prob: mean {diff.mean():.2e}, max {diff.max():.2e} "
        f"({'bf16' if cuda else 'float32'})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
