"""One optimiser step of the trainer on a fixed batch: run alone (the whole batch) or under
``torchrun`` (each rank its contiguous share). Writes the updated trainable tensors and log Z.

    python distributed_step.py OUT.pt key=value ...            # 1 process, whole batch
    torchrun --nproc_per_node 2 distributed_step.py OUT.pt ...  # 2 processes, halves
"""

import sys

import torch

from gfnlm.models.weights import full_tensor
from gfnlm.training import distributed as dist_utils
from gfnlm.training.config import load_config
from gfnlm.training.trainer import Trainer


def main() -> None:
    out_path, overrides = sys.argv[1], sys.argv[2:]
    trainer = Trainer(load_config(None, overrides), progress=False)
    world, config = trainer.world, trainer.config
    # The same global batch on every rank: fixed seed, fixed-length decoding, all prompts.
    sampler = trainer.components.sampler
    trainer.policy.synced_decoding = True
    # One forward pass per row in every run (FSDP2's choice), so that the runs compare the same
    # arithmetic; the shared-prompt pass is checked against it in test_samplers.py.
    trainer.policy.share_prompts = False
    torch.manual_seed(1234)
    prompts = trainer.train_prompts.batch(list(range(config.train.prompts_per_step)))
    rollouts = sampler.sample(prompts, config.sampling.samples_per_prompt)
    base = trainer.policy.score_base(rollouts, trainer.components.base_needs_eos_logp)
    scores = trainer.components.target.score(rollouts, base)
    share = rollouts.batch_size // world.size
    rows = torch.arange(world.rank * share, (world.rank + 1) * share)
    metrics = trainer.update(rollouts.select(rows), scores.select(rows))
    metrics = dist_utils.reduce_metrics(metrics, world, trainer.device)
    state = trainer.policy.trainable_state_dict()
    grads = {
        name: full_tensor(param.grad.detach()).cpu()
        for name, param in trainer.policy.model.named_parameters()
        if param.grad is not None
    }
    if world.is_main:
        log_z = {k: v.detach().clone() for k, v in trainer.logz.state_dict().items()}
        torch.save({"policy": state, "grads": grads, "logz": log_z, "metrics": metrics}, out_path)
    trainer.close()


if __name__ == "__main__":
    main()
