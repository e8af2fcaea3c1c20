"""Resuming a run: the checkpoint it continues from (checked against the config), and the training
state beside the weights (log Z, the optimiser, every random-number generator, the step) as a
checkpoint holds it and as it is put back."""

import random
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch

from gfnlm.contracts.errors import ConfigError
from gfnlm.contracts.registry import lookup
from gfnlm.models.weights import full_tensor, place_like
from gfnlm.training import checkpoint
from gfnlm.training import distributed as dist_utils
from gfnlm.training.config import RunConfig, load_config, saved_form


def find_resume_point(config: RunConfig, out_dir: Path) -> checkpoint.ResumePoint | None:
    """The checkpoint a run in ``out_dir`` continues from (loaded now, before the model, so a
    broken run directory or a changed config fails first); ``None`` for a new run."""
    point = checkpoint.find_resume_point(out_dir / "checkpoints")
    if point is None:
        return None
    if not config.train.resume:
        raise ConfigError(
            f"train.out_dir={str(out_dir)!r} already holds a run's checkpoints; pass "
            "train.resume=true to continue it, or choose another train.out_dir"
        )
    saved = point.path / checkpoint.CONFIG_FILE
    # compared as saved: a reward function as its import path, in-memory data by its label
    for name, mine, theirs in config_differences(
        saved_form(config), load_config(saved if saved.is_file() else out_dir / "config.yaml")
    ):
        raise ConfigError(
            f"{name}={mine!r} differs from the run being resumed in {str(out_dir)!r} "
            f"({theirs!r}); keep {name}={theirs!r} to continue it, or choose another train.out_dir"
        )
    return point


# Fields that do not change what a resumed run computes: how long it runs, where it lives, how it
# is run (device, threads, processes) and how a server is reached. Everything else must match.
_RESUMABLE_CHANGES = {
    ("train", "steps"),
    ("train", "eval_every"),
    ("train", "save_every"),
    ("train", "threads"),
    ("train", "parallel"),
    ("train", "out_dir"),
    ("train", "resume"),
    ("train", "device"),
}


def _same_location(mine: str, theirs: str) -> bool:
    """Two spellings of a model or data location that name the same thing (a relative and an
    absolute path, or two files with the same bytes)."""
    if mine == theirs:
        return True
    a, b = Path(mine).expanduser(), Path(theirs).expanduser()
    if a.exists() and b.exists():
        if a.resolve() == b.resolve():
            return True
        return a.is_file() and b.is_file() and a.read_bytes() == b.read_bytes()
    return False


def _computing_options(sampler: str, options: dict[str, Any] | None) -> dict[str, Any]:
    """A sampler's options less those its class declares runtime-only (``runtime_options``: how a
    server is reached or started)."""
    runtime = getattr(lookup("sampler", sampler), "runtime_options", frozenset())
    return {k: v for k, v in (options or {}).items() if k not in runtime}


def config_differences(mine: RunConfig, theirs: RunConfig) -> list[tuple[str, Any, Any]]:
    """(field, mine, theirs) for each field that changes what a resumed run computes."""
    a, b = attrs.asdict(mine), attrs.asdict(theirs)
    found = []
    for section, values in a.items():
        if not isinstance(
            values, dict
        ):  # imports: where components come from, not what they compute
            continue
        for key, value in values.items():
            other = b[section].get(key)
            if (section, key) in _RESUMABLE_CHANGES or value == other:
                continue
            if (section, key) in {
                ("model", "path"),
                ("data", "train"),
                ("data", "eval"),
            } and _same_location(str(value), str(other)):
                continue
            if (
                (section, key) == ("sampling", "sampler_options")
                and mine.sampling.sampler == theirs.sampling.sampler
                and _computing_options(mine.sampling.sampler, value)
                == _computing_options(mine.sampling.sampler, other)
            ):
                continue
            found.append((f"{section}.{key}", value, other))
    return found


# ---------------------------------------------------------------------- random-number generators
def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state(world: dist_utils.World, prompt_state: torch.Tensor) -> dict[str, Any]:
    """Every generator a run draws from, as tensors and plain types (``prompt_state``: the prompt
    order's generator, as of the step the checkpoint is of)."""
    return {
        "torch": torch.get_rng_state(),
        "torch_per_rank": dist_utils.all_gather_objects(torch.get_rng_state(), world),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "python": random.getstate(),
        "numpy": checkpoint.portable_rng_state(np.random.get_state()),
        "prompts": prompt_state,
    }


def restore_rng_state(
    rng: dict[str, Any], world: dist_utils.World, prompt_rng: torch.Generator, fresh_seed: int
) -> None:
    """Put back what :func:`rng_state` saved. With another number of processes the per-rank
    sampling streams cannot continue: each rank starts a fresh one from ``fresh_seed``."""
    per_rank = rng.get("torch_per_rank") or [rng["torch"]]
    if len(per_rank) == world.size:
        torch.set_rng_state(per_rank[world.rank])
    else:
        torch.manual_seed(fresh_seed + 7919 * world.rank)
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    random.setstate(rng["python"])
    np.random.set_state(checkpoint.numpy_rng_state(rng["numpy"]))
    prompt_rng.set_state(rng["prompts"])


# ---------------------------------------------------------------------- the optimiser
def portable_optimizer_state(
    optimizer: torch.optim.Optimizer, module: torch.nn.Module
) -> dict[str, Any]:
    """The optimiser's state keyed by parameter name, as full tensors (FSDP2 shards gathered),
    so that a run can resume with another number of processes."""
    names = {id(p): n for n, p in module.named_parameters()}
    per_param = {
        names[id(p)]: {
            k: full_tensor(v).cpu() if torch.is_tensor(v) else v for k, v in state.items()
        }
        for p, state in optimizer.state.items()
    }
    groups = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    return {"state": per_param, "param_groups": groups}


def load_portable_optimizer_state(
    optimizer: torch.optim.Optimizer, module: torch.nn.Module, saved: dict[str, Any]
) -> None:
    """Put back what :func:`portable_optimizer_state` saved, placed like each parameter."""
    params = dict(module.named_parameters())
    for group, saved_group in zip(optimizer.param_groups, saved["param_groups"], strict=True):
        group.update(saved_group)
    for name, state in saved["state"].items():
        param = params[name]
        optimizer.state[param] = {k: place_like(v, param) for k, v in state.items()}
