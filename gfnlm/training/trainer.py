"""The training loop: sample → score target → minibatch updates → log → checkpoint.

Each step draws ``prompts_per_step`` prompts, ``samples_per_prompt`` responses each, scores them with
ONE base forward pass, then makes ``updates_per_batch`` passes over the batch in minibatches (one
policy forward + backward + optimiser step each; the objective's importance weights cover the
policy having moved since sampling). Everything that touches files or devices lives here.
"""

import gc
import json
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from gfnlm.contracts.errors import RunError
from gfnlm.contracts.paths import check_writable_folder
from gfnlm.contracts.registry import build, check_composition, import_components, lookup
from gfnlm.contracts.types import Rollouts, TargetScores
from gfnlm.exploration import check_off_policy
from gfnlm.tasks.evaluation import evaluate
from gfnlm.tasks.prompts import PromptSet
from gfnlm.training import checkpoint
from gfnlm.training import distributed as dist_utils
from gfnlm.training.config import ConfigError, RunConfig, to_yaml
from gfnlm.training.models import check_context, resolve_model_path
from gfnlm.training.policy import (
    CausalLMPolicy,
    full_tensor,
    load_tokenizer,
    place_like,
    resolve_device,
)
from gfnlm.training.prefetch import RolloutPrefetch


class TrainingError(RunError):
    """Training cannot go on (e.g. a non-finite loss); the last checkpoint is left intact."""


@attrs.define
class Components:
    """The registered components a run is composed of."""

    target: Any
    objective: Any
    logz: Any | None
    sampler: Any
    task: Any
    exploration: Any = None
    replay: Any = None

    def as_dict(self) -> dict[str, Any]:
        """Role → component, as :func:`gfnlm.contracts.registry.check_composition` takes it."""
        roles = {"target": self.target, "objective": self.objective, "logz": self.logz, "sampler": self.sampler,
                 "task": self.task}
        # exploration/replay take part only when they do something (``none`` needs and offers nothing)
        if self.exploration is not None and self.exploration.changes_sampling:
            roles["exploration"] = self.exploration
        if self.replay is not None and self.replay.active:
            roles["replay"] = self.replay
        return roles

    @property
    def base_needs_eos_logp(self) -> bool:
        """Whether the base pass must return the EOS log-prob at every prefix: only when the target
        turns it into prefix rewards and the objective uses them (SubTB, DB; not TB or LA-TB)."""
        return bool(self.target.needs_eos_logp and "prefix_rewards" in self.objective.requires)


def build_task(config: RunConfig) -> Any:
    """The run's task (cheap: no model), checked against what the data settings ask of it."""
    import_components(config.imports, "imports")
    task = build("task", config.task.name, config.task.options)
    if config.data.eval and task.metrics != "accuracy":
        raise ConfigError(f"data.eval={config.data.eval!r}: task {config.task.name!r} has no graded answers; set "
                          f"data.eval='' and evaluate with gfnlm eval --task {config.task.name} --run RUN")
    return task


def compose(config: RunConfig, hidden_size: int, num_train_prompts: int, task: Any = None) -> Components:
    """Build every component from the config and check they fit together (cheap: no model). The
    task is given to the components that grade or check responses (``bind_task``)."""
    import_components(config.imports, "imports")
    task = task if task is not None else build_task(config)
    target = build("target", config.target.name, config.target.options)
    objective = build("objective", config.objective.name, config.objective.options)
    needed = objective.min_samples_per_prompt
    if config.sampling.samples_per_prompt < needed:
        raise ConfigError(f"sampling.samples_per_prompt={config.sampling.samples_per_prompt}: objective "
                          f"{config.objective.name!r} with these options needs >= {needed} (it uses group "
                          "statistics; with one response per prompt its loss is exactly zero)")
    lookup("logz", config.logz.name)  # a typo is an error even when this objective uses no log Z
    logz = None
    if "log_z" in objective.requires:
        facts = {"num_train_prompts": num_train_prompts, "hidden_size": hidden_size}
        logz = build("logz", config.logz.name, config.logz.options, run_facts=facts)
    sampling = config.sampling
    sampler = build("sampler", sampling.sampler, {
        "temperature": sampling.temperature, "top_p": sampling.top_p,
        "max_new_tokens": sampling.max_new_tokens, **sampling.sampler_options,
        # only when set: a sampler without min-p support then rejects it by name
        **({"min_p": sampling.min_p} if sampling.min_p else {}),
    })
    exploration = build("exploration", config.exploration.name, config.exploration.options)
    replay = build("replay", config.replay.name, config.replay.options)
    components = Components(target, objective, logz, sampler, task, exploration, replay)
    for component in (target, objective, sampler):
        if hasattr(component, "bind_task"):
            component.bind_task(task)
    check_composition(components.as_dict(), provided_by_run={"prompt_hidden", "entropy_grad", "token_statistics"})
    check_off_policy(objective, exploration, replay, sampling.async_rollouts)
    if sampling.async_rollouts and not sampler.overlaps_training:
        raise ConfigError(f"sampling.async_rollouts=true with sampling.sampler={sampling.sampler!r}: this sampler "
                          "draws with the policy being trained, in the trainer's process, so it cannot sample "
                          "while the trainer updates; allowed: a server sampler (sglang, vllm) or "
                          "sampling.async_rollouts=false")
    if sampler.scores_base and components.base_needs_eos_logp and not sampler.scores_eos_logp:
        raise ConfigError(f"sampling.sampler_options.scores_base=true: objective {config.objective.name!r} uses "
                          f"prefix rewards, which need the base model's EOS log-prob at every prefix, and the "
                          f"{sampling.sampler!r} sampler's server does not return it; allowed: scores_base=false "
                          "(the trainer scores the base model) or an objective without prefix rewards (tb, la_tb)")
    if exploration.changes_sampling:
        sampler.explore_with(exploration)
    return components


class TrainableModule(torch.nn.Module):
    """Everything the optimiser updates (the policy and log Z) behind ONE forward call, so that
    DDP sees one forward per backward and averages every gradient, log Z's included."""

    def __init__(self, policy: CausalLMPolicy, logz: torch.nn.Module | None) -> None:
        super().__init__()
        self.policy = policy
        self.logz = logz

    def forward(self, rollouts: Rollouts, need_prompt_hidden: bool) -> tuple[Any, torch.Tensor | None]:
        """The policy's evaluation of ``rollouts`` and log Z of their prompts (``None`` without log Z)."""
        evaluation = self.policy.evaluate(rollouts, need_prompt_hidden=need_prompt_hidden)
        log_z = None if self.logz is None else self.logz(rollouts.prompt_index, evaluation.prompt_hidden)
        return evaluation, log_z


def _read_model_config(model_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError) as error:
        raise ConfigError(f"model.path={str(model_dir)!r}: unreadable config.json ({type(error).__name__})") from None


# Fields that do not change what a resumed run computes: how long it runs, where it lives, how it
# is run (device, threads, processes) and how a server is reached. Everything else must match.
_RESUMABLE_CHANGES = {("train", "steps"), ("train", "eval_every"), ("train", "save_every"), ("train", "threads"),
                      ("train", "parallel"), ("train", "out_dir"), ("train", "resume"), ("train", "device")}
_SERVER_OPTIONS = {"url", "base_url", "launch", "sync_dir", "timeout_s", "retries", "concurrency"}


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


def _without_server_options(options: dict[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (options or {}).items() if k not in _SERVER_OPTIONS}


def config_differences(mine: RunConfig, theirs: RunConfig) -> list[tuple[str, Any, Any]]:
    """(field, mine, theirs) for each field that changes what a resumed run computes."""
    a, b = attrs.asdict(mine), attrs.asdict(theirs)
    found = []
    for section, values in a.items():
        if not isinstance(values, dict):  # imports: where components come from, not what they compute
            continue
        for key, value in values.items():
            other = b[section].get(key)
            if (section, key) in _RESUMABLE_CHANGES or value == other:
                continue
            if (section, key) in {("model", "path"), ("data", "train"), ("data", "eval")} and \
                    _same_location(str(value), str(other)):
                continue
            if (section, key) == ("sampling", "sampler_options") and \
                    _without_server_options(value) == _without_server_options(other):
                continue
            found.append((f"{section}.{key}", value, other))
    return found


class Trainer:
    """Owns the policy, the optimiser, the loop, logging and checkpoints of one run."""

    def __init__(self, config: RunConfig, progress: bool = True) -> None:
        self.config = config
        self.progress = progress
        self.out_dir = Path(config.train.out_dir)
        self.checkpoints_dir = self.out_dir / "checkpoints"
        # Everything cheap and checkable comes first, so bad input fails before the model loads.
        self.world = dist_utils.world_from_env()
        self.device = resolve_device(config.train.device, self.world.local_rank)
        if config.train.prompts_per_step % self.world.size:
            raise ConfigError(f"train.prompts_per_step={config.train.prompts_per_step}: must be a multiple of "
                              f"the number of processes ({self.world.size})")
        self.model_dir = resolve_model_path(config.model.path)
        model_config = _read_model_config(self.model_dir)
        self.task = build_task(config)
        tokenizer = load_tokenizer(self.model_dir)
        data = config.data
        columns = {"task": self.task, "question_field": data.question_field, "answer_field": data.answer_field}
        self.train_prompts = PromptSet.load(data.train, "data.train", tokenizer, data.max_prompt_tokens, **columns)
        self.eval_prompts = None
        if data.eval:
            self.eval_prompts = PromptSet.load(data.eval, "data.eval", tokenizer, data.max_prompt_tokens,
                                               require_answers=True, **columns)
            if config.data.eval_max_questions:
                self.eval_prompts = _truncate(self.eval_prompts, config.data.eval_max_questions)
        longest_prompt = max(len(ids) for ids in self.train_prompts.token_ids)
        max_new = config.sampling.max_new_tokens
        check_context(self.model_dir, longest_prompt, max_new, f"sampling.max_new_tokens={max_new}")
        self.components = compose(config, int(model_config["hidden_size"]), len(self.train_prompts), self.task)
        self.run_lock: checkpoint.RunLock | None = None
        if self.world.is_main:
            check_writable_folder(str(self.out_dir), "train.out_dir")
            # Held until close() or exit: two trainers in one folder would interleave checkpoints.
            self.run_lock = checkpoint.RunLock(self.out_dir).acquire()
        try:
            self._set_up(config)
        except BaseException:
            if self.run_lock is not None:
                self.run_lock.abandon()  # a Trainer that failed to build neither holds nor leaves the folder
            raise

    def _set_up(self, config: RunConfig) -> None:
        """Everything after the run directory is held: resume point, model, sampler, optimiser."""
        self.resume_point = self._find_resume_point()
        if config.train.threads:
            torch.set_num_threads(config.train.threads)
        dist_utils.init_process_group(self.world, self.device)
        _seed_everything(config.train.seed)  # the same initial adapter / log Z on every rank
        self.policy = CausalLMPolicy.from_config(config.model, self.model_dir, self.device)
        self.policy.entropy_grad = "entropy_grad" in self.components.objective.requires
        self.policy.token_statistics = "token_statistics" in self.components.objective.requires
        self.logz = self.components.logz.to(self.device) if self.components.logz is not None else None
        if self.logz is not None and config.model.dtype == "float64":
            self.logz = self.logz.double()  # a float32 log Z would round every float64 residual
        self.trainable = TrainableModule(self.policy, self.logz)
        self.train_module = self._parallelize(self.trainable)
        if self.world.distributed:
            _seed_everything(config.train.seed + 7919 * self.world.rank)  # each rank samples its own rollouts
        self.components.sampler.setup(self.policy)
        self.prefetch = RolloutPrefetch(self.components.sampler)
        self.optimizer = self._make_optimizer()
        self.prompt_rng = torch.Generator().manual_seed(config.train.seed)
        # Replay draws from its own stream: the prompt stream must stay identical on every rank,
        # and each rank's buffer differs. (The buffer is not checkpointed: a resumed run refills it.)
        self.replay_rng = torch.Generator().manual_seed(config.train.seed + 7919 * self.world.rank + 1)
        self.step = 0
        self._saved_step: int | None = None  # the step whose checkpoint is on disk and unchanged since
        self.writer: SummaryWriter | None = None

    # ------------------------------------------------------------------ set-up checks
    def _find_resume_point(self) -> checkpoint.ResumePoint | None:
        """The checkpoint this run continues from (loaded now, before the model, so a broken run
        directory or a changed config fails first); ``None`` for a new run."""
        point = checkpoint.find_resume_point(self.checkpoints_dir)
        if point is None:
            return None
        if not self.config.train.resume:
            raise ConfigError(
                f"train.out_dir={str(self.out_dir)!r} already holds a run's checkpoints; pass "
                "train.resume=true to continue it, or choose another train.out_dir"
            )
        from gfnlm.training.config import load_config  # local: avoids a cycle at import time

        saved = point.path / checkpoint.CONFIG_FILE
        if not saved.is_file():
            saved = self.out_dir / "config.yaml"
        for name, mine, theirs in config_differences(self.config, load_config(saved)):
            raise ConfigError(f"{name}={mine!r} differs from the run being resumed in {str(self.out_dir)!r} "
                              f"({theirs!r}); keep {name}={theirs!r} to continue it, or choose another train.out_dir")
        return point

    def _parallelize(self, module: TrainableModule) -> torch.nn.Module:
        """DDP or FSDP2 around the trainable module when run by ``torchrun`` with several processes."""
        if not self.world.distributed:
            return module
        if self.config.train.parallel == "fsdp2":
            return dist_utils.shard_fsdp2(module)
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=device_ids)

    def close(self) -> None:
        """Leave ``torch.distributed`` (a no-op in one process). The DDP wrapper goes first: its
        reducer holds the process group, and a group torn down when the reducer is freed at exit
        (the GIL held) can deadlock with a gloo worker thread that still frees a finished
        all-reduce's tensors (it needs the GIL): one rank then never exits."""
        self.train_module = self.trainable
        gc.collect()
        dist_utils.destroy(self.world)
        if self.run_lock is not None:
            self.run_lock.release()

    def _make_optimizer(self) -> torch.optim.Optimizer:
        groups = [{"params": self.policy.trainable_parameters(), "lr": self.config.train.lr,
                   "weight_decay": self.config.train.weight_decay}]
        if self.logz is not None:
            groups.append({"params": list(self.logz.parameters()), "lr": self.config.train.logz_lr,
                           "weight_decay": 0.0})
        return torch.optim.AdamW(groups)

    # ------------------------------------------------------------------ the loop
    def train(self) -> dict[str, Any]:
        """Run (or resume) the configured number of steps; returns before/after evaluation."""
        cfg = self.config.train
        main = self.world.is_main
        if main:
            if not self.run_lock.held:  # train() called again after it released the folder
                self.run_lock.acquire()
            self.out_dir.mkdir(parents=True, exist_ok=True)
            checkpoint.write_text_atomic(self.out_dir / "config.yaml", to_yaml(self.config))
            # purge_step drops events a crashed run logged after its last checkpoint.
            self.writer = SummaryWriter(log_dir=str(self.out_dir / "tb"), purge_step=self.resume_step() + 1)
        sampler = self.components.sampler
        if self.resume():
            sampler.sync(self.policy, self.step, force=True)  # a server must serve the resumed weights
        results: dict[str, Any] = {"before": self.evaluate_cached(0)}
        bar = tqdm(total=cfg.steps, initial=self.step, desc="train", unit="step", disable=not (self.progress and main))
        try:
            while self.step < cfg.steps:
                metrics = dist_utils.reduce_metrics(self.train_step(), self.world, self.device)
                self.step += 1
                if not self.config.sampling.async_rollouts:  # async: train_step syncs, the server idle
                    sampler.sync(self.policy, self.step)
                self.log(metrics)
                bar.update(1)
                bar.set_postfix(loss=f"{metrics['loss']:.3g}", len=f"{metrics['length/mean']:.1f}")
                if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.steps:
                    self.evaluate_cached(self.step)
                if cfg.save_every and self.step % cfg.save_every == 0:
                    self.save()
            self.save()
            results["after"] = self.evaluate_cached(self.step)
        finally:
            bar.close()
            self.prefetch.close()
            sampler.close()
            if self.writer is not None:
                self.writer.close()
            if self.run_lock is not None:
                self.run_lock.release()  # the run is over: eval/resume/another train may use the folder
        return results

    def train_step(self) -> dict[str, float]:
        """One step: sample, score, update. Returns scalar metrics."""
        cfg = self.config
        started = time.perf_counter()
        timing: dict[str, float] = {}
        fresh = self._async_rollouts(timing) if cfg.sampling.async_rollouts else self._rollouts()
        replay = self.components.replay
        rollouts = replay.mix(fresh, self.replay_rng)  # fresh rows first, then replayed ones
        sampled = time.perf_counter()
        target = self.components.target
        base = None
        if target.needs_base:
            scorer = self.components.sampler if self.components.sampler.scores_base else self.policy
            base = scorer.score_base(rollouts, self.components.base_needs_eos_logp)
        scores = target.score(rollouts, base)
        replay.add(fresh, scores.log_reward[: fresh.batch_size])
        scored = time.perf_counter()
        metrics = self.update(rollouts, scores)
        updated = time.perf_counter()
        metrics |= _rollout_metrics(rollouts, scores) | replay.metrics()
        metrics["sampler/staleness"] = float(self.step - rollouts.weight_version)
        metrics |= {"time/sample": sampled - started - timing.get("time/sync", 0.0), "time/score": scored - sampled,
                    "time/update": updated - scored, "time/step": updated - started} | timing
        return metrics

    def _rollouts(self) -> Rollouts:
        """This step's rollouts, drawn now by the current weights."""
        prompts = self.train_prompts.batch(self._next_prompt_indices())
        return self.components.sampler.sample(prompts, self.config.sampling.samples_per_prompt)

    def _async_rollouts(self, timing: dict[str, float]) -> Rollouts:
        """This step's rollouts, drawn during the previous step by the weights before its update
        (the first step of a run draws them now); then the last update's weights go to the idle
        server, which starts on the next step's rollouts (see :mod:`gfnlm.training.prefetch`)."""
        sampler = self.components.sampler
        fresh = self.prefetch.take()
        if fresh is None:  # the server already serves the current weights (set-up or resume)
            fresh = self._rollouts()
        else:
            synced = time.perf_counter()
            sampler.sync(self.policy, self.step)
            timing["time/sync"] = time.perf_counter() - synced
        if self.step + 1 < self.config.train.steps:  # no batch for a step that will not run
            prompt_state = self.prompt_rng.get_state()
            prompts = self.train_prompts.batch(self._next_prompt_indices())
            self.prefetch.submit(prompts, self.config.sampling.samples_per_prompt, prompt_state)
        return fresh

    def update(self, rollouts: Rollouts, scores: TargetScores) -> dict[str, float]:
        """``updates_per_batch`` passes of minibatch optimiser steps over the rollouts."""
        cfg = self.config.train
        size = rollouts.batch_size
        minibatch = cfg.minibatch_size or size
        need_hidden = self.logz is not None and "prompt_hidden" in self.logz.requires
        totals: dict[str, list[float]] = {}
        if self.step == 0 and cfg.logz_warm_start and self.logz is not None:
            self._warm_start_logz(rollouts, scores, need_hidden)
        for _ in range(cfg.updates_per_batch):
            order = torch.randperm(size, generator=self.prompt_rng)
            for start in range(0, size, minibatch):
                idx = order[start : start + minibatch].to(self.device)
                sub = rollouts.select(idx)
                evaluation, log_z = self.train_module(sub, need_hidden)
                out = self.components.objective.loss(sub, evaluation, scores.select(idx), log_z)
                if not torch.isfinite(out.loss):
                    raise TrainingError(self._non_finite_message(float(out.loss.detach())))
                self.optimizer.zero_grad(set_to_none=True)
                out.loss.backward()
                if self.world.distributed and self.config.train.parallel == "fsdp2" and self.logz is not None:
                    dist_utils.average_replicated_grads(list(self.logz.parameters()), self.world)
                grad_norm = self._clip_gradients()
                self.optimizer.step()
                record = {"loss": float(out.loss.detach()), "grad_norm": grad_norm, **out.metrics}
                record["entropy"] = evaluation.mean_entropy(sub.response_mask)
                if log_z is not None:
                    record["log_z"] = float(log_z.detach().mean())
                for key, value in record.items():
                    totals.setdefault(key, []).append(value)
        return {key: float(np.mean(values)) for key, values in totals.items()}

    @torch.no_grad()
    def _warm_start_logz(self, rollouts: Rollouts, scores: TargetScores, need_hidden: bool) -> None:
        """Shift log Z by minus the first batch's residuals (they are log Z + c for every objective
        that uses log Z), so training starts at the best log Z for the initial policy."""
        assert self.logz is not None
        evaluation = self.policy.evaluate(rollouts, need_prompt_hidden=need_hidden)
        log_z = self.logz(rollouts.prompt_index, evaluation.prompt_hidden)
        out = self.components.objective.loss(rollouts, evaluation, scores, log_z)
        # Every rank applies the shift of the whole (all-gathered) batch, so log Z stays identical.
        self.logz.shift_(dist_utils.all_gather_cat(rollouts.prompt_index, self.world),
                         -dist_utils.all_gather_cat(out.residual, self.world))

    def _clip_gradients(self) -> float:
        params = [p for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
        limit = self.config.train.grad_clip or math.inf
        return dist_utils.clip_grad_norm(params, limit)

    def _non_finite_message(self, value: float) -> str:
        return (f"non-finite loss ({value}) at step {self.step + 1}: training stopped before the "
                f"optimiser step; {checkpoint.what_is_kept(self.checkpoints_dir)}. Lower train.lr or "
                "check the target's log-rewards")

    def _next_prompt_indices(self) -> list[int]:
        """This rank's slice of the step's prompts (every rank draws the same global order)."""
        count = self.config.train.prompts_per_step
        n = len(self.train_prompts)
        if count <= n:
            indices = torch.randperm(n, generator=self.prompt_rng)[:count].tolist()
        else:
            indices = torch.randint(n, (count,), generator=self.prompt_rng).tolist()
        share = count // self.world.size
        return indices[self.world.rank * share : (self.world.rank + 1) * share]

    # ------------------------------------------------------------------ logging and evaluation
    def log(self, metrics: dict[str, float]) -> None:
        """Write scalar metrics to TensorBoard under ``train/`` at the current step (rank 0)."""
        if self.writer is None:
            return
        for key, value in metrics.items():
            self.writer.add_scalar(f"train/{key}", value, self.step)
        self.writer.flush()

    def evaluate_cached(self, step: int) -> dict[str, float] | None:
        """Evaluate on the held-out set (results cached in the run dir, so a resume reuses them)."""
        if self.eval_prompts is None:
            return None
        path = self.out_dir / "eval" / f"step_{step:06d}.json"
        result = _read_cached_eval(path)
        if result is None:
            # A forked RNG: evaluation never changes the training randomness, so a resumed run
            # (which reuses cached evaluations) stays identical to an uninterrupted one. The same
            # seed at every evaluation (common random numbers: before/after differ by the model,
            # not by the draw) and on every rank (FSDP2 needs every rank in every forward pass);
            # rank 0 writes the result.
            devices = [self.device] if self.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(self.config.train.seed + 1_000_003)
                result = evaluate(self.policy, self.eval_prompts, self.config.train.eval_samples,
                                  self.config.sampling.max_new_tokens, task=self.task,
                                  progress=self.progress and self.world.is_main).as_dict()
            if self.world.is_main:
                _write_cached_eval(path, result)
            dist_utils.barrier(self.world)
        if self.writer is not None:
            for key, value in result.items():
                self.writer.add_scalar(f"eval/{key}", value, step)
            self.writer.flush()
        return result

    # ------------------------------------------------------------------ checkpoints
    def state(self) -> dict[str, Any]:
        """Everything besides the policy weights needed to resume: step, log Z, optimiser, RNGs."""
        return {
            "step": self.step,
            "logz": None if self.logz is None else self.logz.state_dict(),
            "optimizer": self._portable_optimizer_state(),
            "rng": {
                "torch": torch.get_rng_state(),
                "torch_per_rank": dist_utils.all_gather_objects(torch.get_rng_state(), self.world),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                "python": random.getstate(),
                "numpy": checkpoint.portable_rng_state(np.random.get_state()),
                "prompts": self.prefetch.prompt_state if self.prefetch.pending else self.prompt_rng.get_state(),
            },
        }

    def _portable_optimizer_state(self) -> dict[str, Any]:
        """The optimiser's state keyed by parameter name, as full tensors (FSDP2 shards gathered),
        so that a run can resume with another number of processes."""
        names = {id(p): n for n, p in self.trainable.named_parameters()}
        per_param = {names[id(p)]: {k: full_tensor(v).cpu() if torch.is_tensor(v) else v for k, v in state.items()}
                     for p, state in self.optimizer.state.items()}
        groups = [{k: v for k, v in group.items() if k != "params"} for group in self.optimizer.param_groups]
        return {"state": per_param, "param_groups": groups}

    def _load_portable_optimizer_state(self, saved: dict[str, Any]) -> None:
        params = dict(self.trainable.named_parameters())
        for group, saved_group in zip(self.optimizer.param_groups, saved["param_groups"], strict=True):
            group.update(saved_group)
        for name, state in saved["state"].items():
            param = params[name]
            self.optimizer.state[param] = {k: place_like(v, param) for k, v in state.items()}

    def save(self) -> None:
        """Write an atomic checkpoint of the current step (rank 0; every rank takes part in gathering
        sharded tensors). A step already saved and unchanged since is not written again."""
        if self._saved_step == self.step:
            return
        policy_state, state = self.policy.trainable_state_dict(), self.state()
        if self.world.is_main:
            checkpoint.save_checkpoint(self.checkpoints_dir, self.step, policy_state, state, to_yaml(self.config),
                                       extra_files=self.policy.adapter_writer(policy_state))
        dist_utils.barrier(self.world)
        self._saved_step = self.step

    def resume_step(self) -> int:
        """The step of the checkpoint this run resumes from (0 for a new run)."""
        return 0 if self.resume_point is None else int(self.resume_point.state["step"])

    def resume(self) -> bool:
        """Load the checkpoint found at set-up (:meth:`_find_resume_point`); returns whether there
        was one. When it is not the one ``latest`` names, one line on stderr says why."""
        point, self.resume_point = self.resume_point, None
        if point is None:
            return False
        if point.note and self.world.is_main:
            # Repair latest, so the next save's pruning and messages start from a loadable checkpoint.
            checkpoint.point_latest_at(self.checkpoints_dir, point.path)
            print(f"gfnlm: {point.note}; latest now names it", file=sys.stderr, flush=True)
        policy_state, state = point.policy_state, point.state
        self.policy.load_trainable_state_dict(policy_state)
        if self.logz is not None and state["logz"] is not None:
            self.logz.load_state_dict(state["logz"])
        self._load_portable_optimizer_state(state["optimizer"])
        rng = state["rng"]
        per_rank = rng.get("torch_per_rank") or [rng["torch"]]
        if len(per_rank) == self.world.size:
            torch.set_rng_state(per_rank[self.world.rank])
        else:  # another world size: the sampling streams cannot continue, start fresh ones
            torch.manual_seed(self.config.train.seed + 7919 * self.world.rank + 104729 * int(state["step"]))
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        random.setstate(rng["python"])
        numpy_state = rng["numpy"]
        np.random.set_state(checkpoint.numpy_rng_state(numpy_state) if isinstance(numpy_state, dict) else numpy_state)
        self.prompt_rng.set_state(rng["prompts"])
        self.step = self._saved_step = int(state["step"])
        return True


def _write_cached_eval(path: Path, result: dict[str, float]) -> None:
    """Cache an evaluation for resumes; a cache that cannot be written only costs a re-evaluation,
    so the run goes on with a one-line warning."""
    try:
        checkpoint.write_text_atomic(path, json.dumps(result, indent=2))
    except OSError as error:
        print(f"gfnlm: cannot cache the evaluation in {str(path)!r} ({(error.strerror or str(error)).lower()}); "
              "a resume evaluates that step again", file=sys.stderr, flush=True)


def _read_cached_eval(path: Path) -> dict[str, float] | None:
    """A cached evaluation, or ``None`` when there is none or it cannot be read (then it is redone)."""
    try:
        result = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        print(f"gfnlm: {path} is unreadable; evaluating again", file=sys.stderr, flush=True)
        return None
    return result if isinstance(result, dict) else None


def _rollout_metrics(rollouts: Rollouts, scores: TargetScores) -> dict[str, float]:
    lengths = rollouts.lengths.float()
    return {
        "length/mean": float(lengths.mean()),
        "length/min": float(lengths.min()),
        "length/max": float(lengths.max()),
        "truncated_frac": float((~rollouts.ended_with_eos).float().mean()),
        "target/log_reward_mean": float(scores.log_reward.mean()),
        **scores.metrics,
    }


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _truncate(prompts: PromptSet, count: int) -> PromptSet:
    keep = slice(0, count)
    return attrs.evolve(prompts, questions=prompts.questions[keep], answers=prompts.answers[keep],
                        texts=prompts.texts[keep], token_ids=prompts.token_ids[keep])
