r"""Time one training step and its parts, and the same parts run alone.

For each model (SmolLM2-135M-Instruct and a tiny random Llama with the same tokenizer) and each of
``--steps`` rounds (after ``--warmup`` rounds), on the same prompts and seeds:

* ``trainer``: :meth:`gfnlm.training.trainer.Trainer.train_step` (PowerFlow: sample → base
  scoring → LA-TB update), with the time split the trainer itself logs;
* ``parts alone``: the same heavy calls with no trainer around them — the sampler's decoding, the
  no-grad base forward (adapter disabled), one policy forward + backward, ``optimizer.step()`` —
  each timed alone on the same prompts and seed (so the same rollouts);
* ``plain policy gradient``: generate + one policy forward/backward of a REINFORCE loss with
  group-normalised rewards given (no base forward, no log Z) + optimiser step.

Prints medians with min-max, the trainer's overhead over the sum of the parts (goal ≤ 10 %) and the
PowerFlow step over the plain policy-gradient step (goal ≤ 1.15×).

    python benchmarks/step_time.py [--models smollm2 tiny] [--steps 5] [--device cpu] \
        [--set key=value ...]

``--set`` adds configuration overrides, e.g. ``--set model.logp_chunk_size=0`` for the full-logits
path.
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from gfnlm.models.loading import ensure_smollm2, save_random_llama
from gfnlm.training.config import load_config
from gfnlm.training.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]


def tiny_model(tmp: Path) -> Path:
    return save_random_llama(tmp, ensure_smollm2(), max_positions=512)


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def parts_alone(trainer: Trainer, prompts, n: int) -> dict[str, float]:
    """The step's heavy calls one by one, with no trainer around them: decoding (the sampler), the
    base forward (adapter off, no grad), one policy forward + backward, the optimiser step."""
    policy, sampler = trainer.policy, trainer.components.sampler
    rollouts, t_generate = timed(lambda: sampler.sample(prompts, n))
    _, t_base = timed(lambda: policy.score_base(rollouts, need_eos_logp=True))

    def policy_forward_backward() -> None:
        evaluation = policy.evaluate(rollouts)
        (evaluation.token_logp.sum() + evaluation.eos_logp[:, 0].sum()).backward()

    _, t_update = timed(policy_forward_backward)
    _, t_optim = timed(trainer.optimizer.step)
    trainer.optimizer.zero_grad(set_to_none=True)
    return {
        "generate": t_generate,
        "base_forward": t_base,
        "policy_fwd_bwd": t_update,
        "optimizer": t_optim,
    }


def plain_pg_step(trainer: Trainer, prompts, n: int) -> float:
    """REINFORCE with group-normalised rewards given: the baseline a PowerFlow step is compared
    to."""
    start = time.perf_counter()
    rollouts = trainer.components.sampler.sample(prompts, n)
    evaluation = trainer.policy.evaluate(rollouts)
    reward = torch.randn(rollouts.batch_size, generator=torch.Generator().manual_seed(0)).to(
        trainer.device
    )
    groups = reward.view(-1, n)
    advantage = (
        (groups - groups.mean(1, keepdim=True)) / (groups.std(1, keepdim=True) + 1e-6)
    ).view(-1)
    loss = -(advantage * evaluation.sequence_logp(rollouts.response_mask)).mean()
    trainer.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(trainer.policy.trainable_parameters(), 1.0)
    trainer.optimizer.step()
    return time.perf_counter() - start


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):7.3f} ({min(values):.3f}-{max(values):.3f})"


def run_model(
    name: str, model_path: str, args: argparse.Namespace, out: Path
) -> dict[str, list[float]]:
    overrides = [
        f"model.path={model_path}",
        "data.eval=''",
        f"train.device={args.device}",
        f"train.out_dir={out / name}",
        f"train.prompts_per_step={args.prompts}",
        f"sampling.samples_per_prompt={args.samples}",
        f"sampling.max_new_tokens={args.max_new_tokens}",
        "train.logz_warm_start=false",
        *args.set,
    ]
    trainer = Trainer(load_config(REPO / "configs/default.yaml", overrides), progress=False)
    times: dict[str, list[float]] = {}
    for round_index in range(args.warmup + args.steps):
        torch.manual_seed(round_index)
        indices = [
            i % len(trainer.train_prompts)
            for i in range(round_index * args.prompts, (round_index + 1) * args.prompts)
        ]
        prompts = trainer.train_prompts.batch(indices)
        trainer.rollouts.next_prompt_indices = lambda chosen=indices: (
            chosen
        )  # the trainer's step works on the same prompts
        torch.manual_seed(round_index)
        metrics = trainer.train_step()
        torch.manual_seed(round_index)
        alone = parts_alone(trainer, prompts, args.samples)
        torch.manual_seed(round_index)
        pg = plain_pg_step(trainer, prompts, args.samples)
        if round_index < args.warmup:
            continue
        record = {
            "trainer step": metrics["time/step"],
            "trainer sample": metrics["time/sample"],
            "trainer score": metrics["time/score"],
            "trainer update": metrics["time/update"],
            **{f"alone {k}": v for k, v in alone.items()},
            "plain PG step": pg,
        }
        record["alone sum"] = sum(alone.values())
        for key, value in record.items():
            times.setdefault(key, []).append(value)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--models", nargs="+", default=["smollm2", "tiny"], choices=["smollm2", "tiny"]
    )
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra configuration overrides"
    )
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}; "
        f"{args.prompts} prompts x {args.samples} samples, <= {args.max_new_tokens} new tokens; "
        f"median (min-max) of {args.steps} rounds after {args.warmup} warm-up, seeds "
        f"0..{args.warmup + args.steps - 1}"
        + (f"; overrides {' '.join(args.set)}" if args.set else "")
    )
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            path = (
                str(ensure_smollm2()) if name == "smollm2" else str(tiny_model(Path(tmp) / "tiny"))
            )
            times = run_model(name, path, args, Path(tmp) / "runs")
            print(f"\n== {name} (seconds) ==")
            for key, values in times.items():
                print(f"  {key:24s} {summary(values)}")
            step, parts = (
                statistics.median(times["trainer step"]),
                statistics.median(times["alone sum"]),
            )
            overhead = step / parts - 1
            ratio = step / statistics.median(times["plain PG step"])
            print(
                f"  trainer overhead over the sum of parts: {100 * overhead:+.1f}%  (goal <= 10%)"
                f"  {'PASS' if overhead <= 0.10 else 'FAIL'}"
            )
            print(
                f"  PowerFlow step / plain PG step:         {ratio:.3f}x   (goal <= 1.15x)"
                f"  {'PASS' if ratio <= 1.15 else 'FAIL'}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
