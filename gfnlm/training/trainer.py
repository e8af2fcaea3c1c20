"""The training loop: sample → score target → minibatch updates → log → checkpoint.

Each step draws ``prompts_per_step`` prompts, ``samples_per_prompt`` responses each, scores them
with ONE base forward pass, then makes ``updates_per_batch`` passes over the batch in minibatches
(one policy forward + backward + optimiser step each; the objective's importance weights cover the
policy having moved since sampling). Everything that touches files or devices lives here.

What a run records, in ``train.out_dir``: TensorBoard events under ``tb/``, the same step metrics
and evaluations in ``metrics.jsonl`` (:mod:`gfnlm.training.metrics_log`), checkpoints, and the
evaluation cache. In Python, :attr:`Trainer.history` holds every step's metrics and
:class:`~gfnlm.training.callbacks.Callback` objects are called at each step, evaluation and save.
"""

import gc
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from gfnlm.contracts.errors import ConfigError, RunError
from gfnlm.contracts.paths import check_writable_folder, write_text_atomic
from gfnlm.contracts.types import Rollouts, TargetScores
from gfnlm.evaluation.held_out import (
    evaluate_with_fixed_seed,
    read_cached_evaluation,
    write_cached_evaluation,
)
from gfnlm.models.loading import loading_bars, resolve_device, resolve_model_path
from gfnlm.training import checkpoint, resume
from gfnlm.training import distributed as dist_utils
from gfnlm.training.callbacks import Callback, notify
from gfnlm.training.compose import (
    build_task,
    compose,
    load_prompts,
    make_optimizer,
    read_model_config,
)
from gfnlm.training.config import RunConfig, to_yaml
from gfnlm.training.kl_estimates import draws_from_policy, kl_metrics, learned_log_z_kind
from gfnlm.training.metrics_log import MetricsLog
from gfnlm.training.policy import CausalLMPolicy, TrainableModule
from gfnlm.training.prefetch import RolloutSource, rollout_metrics


class TrainingError(RunError):
    """Training cannot go on (e.g. a non-finite loss); the last checkpoint is left intact."""


class Trainer:
    """Owns the policy, the optimiser, the loop, logging and checkpoints of one run.

    ``callbacks`` (:class:`~gfnlm.training.callbacks.Callback` instances) are called, on rank 0, at
    each step, evaluation and save. :attr:`history` is the list of every step's metrics so far,
    ``{"step": N, <metric>: value, ...}`` in step order (a resumed run reads the steps before its
    checkpoint back from ``metrics.jsonl``).
    """

    def __init__(
        self, config: RunConfig, progress: bool = True, callbacks: list[Callback] | None = None
    ) -> None:
        self.config = config
        self.progress = progress
        self.callbacks = check_callbacks(callbacks)
        self.history: list[dict[str, float]] = []
        self.out_dir = Path(config.train.out_dir)
        self.checkpoints_dir = self.out_dir / "checkpoints"
        # Everything cheap and checkable comes first, so bad input fails before the model loads.
        self.world = dist_utils.world_from_env()
        self.device = resolve_device(config.train.device, self.world.local_rank)
        if config.train.prompts_per_step % self.world.size:
            raise ConfigError(
                f"train.prompts_per_step={config.train.prompts_per_step}: must be a multiple of "
                f"the number of processes ({self.world.size})"
            )
        self.model_dir = resolve_model_path(config.model.path)
        model_config = read_model_config(self.model_dir)
        self.task = build_task(config)
        self.train_prompts, self.eval_prompts = load_prompts(config, self.model_dir, self.task)
        self.components = compose(
            config, int(model_config["hidden_size"]), len(self.train_prompts), self.task
        )
        self.run_lock: checkpoint.RunLock | None = None
        if self.world.is_main:
            check_writable_folder(str(self.out_dir), "train.out_dir")
            # Held until close() or exit: two trainers in one folder would interleave checkpoints.
            self.run_lock = checkpoint.RunLock(self.out_dir).acquire()
        try:
            self._set_up(config)
        except BaseException:
            if self.run_lock is not None:
                # a Trainer that failed to build neither holds nor leaves the folder
                self.run_lock.abandon()
            raise
        for note in (self.components.auto_note, self.components.departure):
            if self.world.is_main and note:
                # After every check: a note followed by an error would read as two problems.
                print(f"gfnlm: {note}", file=sys.stderr, flush=True)

    def _set_up(self, config: RunConfig) -> None:
        """Everything after the run directory is held: resume point, model, sampler, optimiser."""
        self.resume_point = resume.find_resume_point(config, self.out_dir)
        if config.train.threads:
            torch.set_num_threads(config.train.threads)
        dist_utils.init_process_group(self.world, self.device)
        resume.seed_everything(config.train.seed)  # the same initial adapter / log Z on every rank
        features = self.components.policy_features
        with loading_bars(self.progress):  # transformers' weight-loading bars follow `progress`
            self.policy = CausalLMPolicy.from_config(
                config.model, self.model_dir, self.device, **features
            )
        logz = self.components.logz
        self.logz = logz.to(self.device) if logz is not None else None
        if self.logz is not None and config.model.dtype == "float64":
            self.logz = self.logz.double()  # a float32 log Z would round every float64 residual
        self.trainable = TrainableModule(self.policy, self.logz)
        self.train_module = dist_utils.parallelize(
            self.trainable, self.world, config.train.parallel, self.device
        )
        if self.world.distributed:  # each rank samples its own rollouts
            resume.seed_everything(config.train.seed + 7919 * self.world.rank)
        self.components.sampler.setup(self.policy)
        self.optimizer = make_optimizer(self.policy, self.logz, config.train)
        self.prompt_rng = torch.Generator().manual_seed(config.train.seed)
        sampler = self.components.sampler
        self.rollouts = RolloutSource(
            sampler, self.train_prompts, self.prompt_rng, self.world, config
        )
        # Replay draws from its own stream: the prompt stream must stay identical on every rank,
        # and each rank's buffer differs (a resumed run refills the buffer).
        seed = config.train.seed + 7919 * self.world.rank + 1
        self.replay_rng = torch.Generator().manual_seed(seed)
        self.step = 0
        self._saved_step: int | None = None  # the step saved on disk and unchanged since
        self.writer: SummaryWriter | None = None
        self.metrics_log = MetricsLog(self.out_dir)
        self._logged_evals: set[int] = set()  # steps whose evaluation metrics.jsonl holds
        self._on_policy = draws_from_policy(sampler, self.components.exploration)
        log_z_kind = learned_log_z_kind(self.components.objective)
        self._log_z_kind = log_z_kind if self.logz is not None else None

    def close(self) -> None:
        """Leave ``torch.distributed`` (a no-op in one process). The DDP wrapper goes first: its
        reducer holds the process group, and a group torn down when the reducer is freed at exit
        (the GIL held) can deadlock with a gloo worker thread that still frees a finished
        all-reduce's tensors (it needs the GIL): one rank then never exits."""
        self.train_module = self.trainable
        gc.collect()
        dist_utils.destroy(self.world)
        self.metrics_log.close()  # train() stopped before its loop (e.g. in the first evaluation)
        if self.run_lock is not None:
            self.run_lock.release()

    # ------------------------------------------------------------------ the loop
    def train(self) -> dict[str, Any]:
        """Run (or resume) the configured number of steps. Returns ``{"before": ..., "after":
        ...}``, the held-out evaluations before and after training (``None`` without
        ``data.eval``), and ``"history"``, every step's metrics (:attr:`history`)."""
        cfg = self.config.train
        main = self.world.is_main
        # The steps a crashed run logged after its last checkpoint are dropped from every log.
        logged_up_to = self.resume_step() if self.resume_point is not None else self.step
        if main:
            if not self.run_lock.held:  # train() called again after it released the folder
                self.run_lock.acquire()
            self.out_dir.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.out_dir / "config.yaml", to_yaml(self.config))
            tb = str(self.out_dir / "tb")
            self.writer = SummaryWriter(log_dir=tb, purge_step=logged_up_to + 1)
        self._restore_history(logged_up_to)
        sampler = self.components.sampler
        if self.resume():  # a server must serve the resumed weights
            sampler.sync(self.policy, self.step, force=True)
        results: dict[str, Any] = {"before": self.evaluate_cached(0), "history": self.history}
        shown = self.progress and main
        bar = tqdm(total=cfg.steps, initial=self.step, desc="train", unit="step", disable=not shown)
        try:
            while self.step < cfg.steps:
                metrics = dist_utils.reduce_metrics(self.train_step(), self.world, self.device)
                self.step += 1
                if not self.config.sampling.async_rollouts:  # async: train_step syncs
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
            self.rollouts.close()
            sampler.close()
            if self.writer is not None:
                self.writer.close()
            self.metrics_log.close()
            if self.run_lock is not None:
                # the run is over: eval/resume/another train may use the folder
                self.run_lock.release()
        return results

    def train_step(self) -> dict[str, float]:
        """One step: sample, score, update. Returns scalar metrics."""
        cfg = self.config
        started = time.perf_counter()
        timing: dict[str, float] = {}
        fresh = self.rollouts.draw(self.policy, self.step, cfg.train.steps, timing)
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
        row_log_z = None
        if self._on_policy and self._log_z_kind is not None:
            size = (rollouts.batch_size,)
            row_log_z = torch.full(size, math.nan, dtype=torch.float64, device=self.device)
        metrics = self.update(rollouts, scores, row_log_z)
        updated = time.perf_counter()
        metrics |= rollout_metrics(rollouts, scores) | replay.metrics()
        if self._on_policy:
            rows = fresh.batch_size
            metrics |= kl_metrics(rollouts, scores, rows, row_log_z, self._log_z_kind)
        metrics["sampler/staleness"] = float(self.step - rollouts.weight_version)
        sample_s = sampled - started - timing.get("time/sync", 0.0)
        metrics |= {
            "time/sample": sample_s,
            "time/score": scored - sampled,
            "time/update": updated - scored,
            "time/step": updated - started,
        } | timing
        return metrics

    def update(
        self, rollouts: Rollouts, scores: TargetScores, row_log_z: torch.Tensor | None = None
    ) -> dict[str, float]:
        """``updates_per_batch`` passes of minibatch optimiser steps over the rollouts;
        ``row_log_z`` (one entry per rollout), when given, receives the log Z the loss used for
        each rollout on the first pass."""
        cfg = self.config.train
        size = rollouts.batch_size
        minibatch = cfg.minibatch_size or size
        need_hidden = self.logz is not None and "prompt_hidden" in self.logz.requires
        totals: dict[str, list[float]] = {}
        if self.step == 0 and cfg.logz_warm_start and self.logz is not None:
            self._warm_start_logz(rollouts, scores, need_hidden)
        for pass_index in range(cfg.updates_per_batch):
            order = torch.randperm(size, generator=self.prompt_rng)
            for start in range(0, size, minibatch):
                idx = order[start : start + minibatch].to(self.device)
                sub = rollouts.select(idx)
                evaluation, log_z = self.train_module(sub, need_hidden)
                if row_log_z is not None and log_z is not None and pass_index == 0:
                    # copied now: a scalar log Z is a view that the optimiser step changes
                    row_log_z[idx] = log_z.detach().to(row_log_z.dtype)
                out = self.components.objective.loss(sub, evaluation, scores.select(idx), log_z)
                if not torch.isfinite(out.loss):
                    raise TrainingError(self._non_finite_message(float(out.loss.detach())))
                self.optimizer.zero_grad(set_to_none=True)
                out.loss.backward()
                if self.world.distributed and cfg.parallel == "fsdp2" and self.logz is not None:
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
        self.logz.shift_(
            dist_utils.all_gather_cat(rollouts.prompt_index, self.world),
            -dist_utils.all_gather_cat(out.residual, self.world),
        )

    def _clip_gradients(self) -> float:
        groups = self.optimizer.param_groups
        params = [p for group in groups for p in group["params"] if p.grad is not None]
        return dist_utils.clip_grad_norm(params, self.config.train.grad_clip or math.inf)

    def _non_finite_message(self, value: float) -> str:
        return (
            f"non-finite loss ({value}) at step {self.step + 1}: training stopped before the "
            f"optimiser step; {checkpoint.what_is_kept(self.checkpoints_dir)}. Lower train.lr or "
            "check the target's log-rewards"
        )

    # ------------------------------------------------------------------ logging and evaluation
    def log(self, metrics: dict[str, float]) -> None:
        """Record the current step's scalar metrics: :attr:`history` (every rank), then on rank 0
        TensorBoard (under ``train/``) and ``metrics.jsonl``, then the callbacks' ``on_step``."""
        record = {"step": self.step, **metrics}
        self.history.append(record)
        if self.writer is None:
            return
        for key, value in metrics.items():
            self.writer.add_scalar(f"train/{key}", value, self.step)
        self.writer.flush()
        self.metrics_log.append(record)
        notify(self.callbacks, "on_step", self, self.step, metrics)

    def _restore_history(self, up_to_step: int) -> None:
        """:attr:`history` and the logged evaluations from ``metrics.jsonl``, up to
        ``up_to_step``; rank 0 rewrites the file without later records and opens it to append.
        (Other ranks read it where they see the same folder; elsewhere their history starts
        empty.)"""
        records = self.metrics_log.restore(up_to_step, writable=self.world.is_main)
        self.history = [record for record in records if "eval" not in record]
        self._logged_evals = {record["step"] for record in records if "eval" in record}

    def evaluate_cached(self, step: int) -> dict[str, float] | None:
        """Evaluate on the held-out set (cached in the run dir, so a resume reuses it); rank 0
        writes the cache and the TensorBoard scalars."""
        if self.eval_prompts is None:
            return None
        path = self.out_dir / "eval" / f"step_{step:06d}.json"
        result = read_cached_evaluation(path)
        if result is None:
            main, shown = self.world.is_main, self.progress and self.world.is_main
            result = evaluate_with_fixed_seed(
                self.policy, self.eval_prompts, self.config, self.task, shown
            )
            if main:
                write_cached_evaluation(path, result)
            dist_utils.barrier(self.world)
        if self.writer is not None:
            for key, value in result.items():
                self.writer.add_scalar(f"eval/{key}", value, step)
            self.writer.flush()
            if step not in self._logged_evals:  # a resumed run reuses logged evaluations
                self.metrics_log.append({"step": step, "eval": result})
                self._logged_evals.add(step)
            notify(self.callbacks, "on_eval", self, step, result)
        return result

    # ------------------------------------------------------------------ checkpoints
    def state(self) -> dict[str, Any]:
        """Everything besides the policy weights needed to resume: step, log Z, optimiser, RNGs."""
        return {
            "step": self.step,
            "logz": None if self.logz is None else self.logz.state_dict(),
            "optimizer": resume.portable_optimizer_state(self.optimizer, self.trainable),
            "rng": resume.rng_state(self.world, self.rollouts.prompt_state),
        }

    def save(self) -> None:
        """Write an atomic checkpoint of the current step (rank 0; every rank takes part in
        gathering sharded tensors). A step already saved and unchanged since is not written
        again."""
        if self._saved_step == self.step:
            return
        policy_state, state = self.policy.trainable_state_dict(), self.state()
        path = None
        if self.world.is_main:
            written = (self.checkpoints_dir, self.step, policy_state, state, to_yaml(self.config))
            adapter = self.policy.adapter_writer(policy_state)
            path = checkpoint.save_checkpoint(*written, extra_files=adapter)
        dist_utils.barrier(self.world)
        self._saved_step = self.step
        if path is not None:
            notify(self.callbacks, "on_save", self, self.step, path)

    def resume_step(self) -> int:
        """The step of the checkpoint this run resumes from (0 for a new run)."""
        return 0 if self.resume_point is None else int(self.resume_point.state["step"])

    def resume(self) -> bool:
        """Load the checkpoint found at set-up (:func:`~gfnlm.training.resume.find_resume_point`);
        returns whether there was one. When it is not the one ``latest`` names, one line on stderr
        says why, and ``latest`` is pointed at it."""
        point, self.resume_point = self.resume_point, None
        if point is None:
            return False
        if point.note and self.world.is_main:
            # Repair latest: the next save's pruning and messages start from a loadable one.
            checkpoint.point_latest_at(self.checkpoints_dir, point.path)
            print(f"gfnlm: {point.note}; latest now names it", file=sys.stderr, flush=True)
        state = point.state
        self.policy.load_trainable_state_dict(point.policy_state)
        if self.logz is not None and state["logz"] is not None:
            self.logz.load_state_dict(state["logz"])
        resume.load_portable_optimizer_state(self.optimizer, self.trainable, state["optimizer"])
        fresh_seed = self.config.train.seed + 104729 * int(state["step"])
        resume.restore_rng_state(state["rng"], self.world, self.prompt_rng, fresh_seed)
        self.step = self._saved_step = int(state["step"])
        return True


def check_callbacks(callbacks: Any) -> list[Callback]:
    """``callbacks`` as a list, each checked to be a :class:`~gfnlm.training.callbacks.Callback`."""
    if callbacks is None:
        return []
    if isinstance(callbacks, Callback) or not isinstance(callbacks, list | tuple):
        raise ConfigError(f"callbacks={callbacks!r}: must be a list of Callback instances")
    for i, callback in enumerate(callbacks):
        if not isinstance(callback, Callback):
            raise ConfigError(
                f"callbacks[{i}]={callback!r}: must be an instance of a subclass of "
                "gfnlm.training.callbacks.Callback"
            )
    return list(callbacks)
