"""Where each step's rollouts come from: the step's prompts (drawn from one prompt stream that is
the same on every rank) and the sampler's responses to them, drawn now or, with
``sampling.async_rollouts``, during the previous step.

Asynchronous rollouts: a server sampler draws step k+1's rollouts in a background thread while the
trainer scores and updates on step k's.

The trainer keeps the staleness at exactly one update: at step k it waits for the batch submitted
at step k-1 (drawn by the weights after update k-2), pushes the weights of update k-1 while the
server is idle, submits step k+1's batch, then scores and updates on step k's batch. Only samplers
that hold their own copy of the weights (:attr:`Sampler.overlaps_training
<gfnlm.samplers.base.Sampler.overlaps_training>`) may do this, and only for objectives valid on
another policy's samples (checked when the run is composed).
"""

import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

from gfnlm.contracts.types import PromptBatch, Rollouts, TargetScores


class RolloutPrefetch:
    """At most one ``sampler.sample`` call in flight in a background thread."""

    def __init__(self, sampler: Any) -> None:
        self.sampler = sampler
        self._pool: ThreadPoolExecutor | None = None
        self._pending: Future | None = None
        # The prompt stream's state before the batch in flight was drawn: a checkpoint taken while
        # it is in flight resumes with its prompts (a resumed run samples them again).
        self.prompt_state: Any = None

    @property
    def pending(self) -> bool:
        """Whether a batch is in flight (submitted and not yet taken)."""
        return self._pending is not None

    def submit(self, prompts: PromptBatch, n: int, prompt_state: Any) -> None:
        """Start drawing ``n`` responses per prompt; :meth:`take` returns them."""
        assert self._pending is None, "one batch in flight at a time"
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gfnlm-rollouts")
        self.prompt_state = prompt_state
        self._pending = self._pool.submit(self.sampler.sample, prompts, n)

    def take(self) -> Rollouts | None:
        """The batch in flight once drawn (its errors are raised here), or None when there is
        none."""
        pending, self._pending = self._pending, None
        return None if pending is None else pending.result()

    def close(self) -> None:
        """Wait for the batch in flight and drop it (its errors too: nothing will train on it)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.exception()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


class RolloutSource:
    """Each step's rollouts: ``train.prompts_per_step`` prompts from ``prompts`` (this rank's share,
    drawn with ``prompt_rng``), ``sampling.samples_per_prompt`` responses each from ``sampler``
    (``config`` is the run's); with ``sampling.async_rollouts``, drawn during the previous step by
    the weights before its update."""

    def __init__(
        self, sampler: Any, prompts: Any, prompt_rng: torch.Generator, world: Any, config: Any
    ) -> None:
        self.sampler, self.prompts, self.prompt_rng, self.world = (
            sampler,
            prompts,
            prompt_rng,
            world,
        )
        self.prompts_per_step = config.train.prompts_per_step
        self.samples_per_prompt = config.sampling.samples_per_prompt
        self.asynchronous = config.sampling.async_rollouts
        self.prefetch = RolloutPrefetch(sampler)

    @property
    def prompt_state(self) -> torch.Tensor:
        """The prompt stream's state a checkpoint resumes from (before a batch in flight)."""
        pending = self.prefetch.pending
        return self.prefetch.prompt_state if pending else self.prompt_rng.get_state()

    def next_prompt_indices(self) -> list[int]:
        """This rank's slice of the step's prompts (every rank draws the same global order)."""
        count, n = self.prompts_per_step, len(self.prompts)
        if count <= n:
            indices = torch.randperm(n, generator=self.prompt_rng)[:count].tolist()
        else:
            indices = torch.randint(n, (count,), generator=self.prompt_rng).tolist()
        share = count // self.world.size
        return indices[self.world.rank * share : (self.world.rank + 1) * share]

    def draw(self, policy: Any, step: int, steps: int, timing: dict[str, float]) -> Rollouts:
        """Step ``step``'s rollouts (of ``steps``). Asynchronous: the batch drawn during the
        previous step (the first step of a run draws it now), then the last update's weights go to
        the idle server, which starts on the next step's batch; ``timing`` gets the push's
        seconds."""
        if not self.asynchronous:
            return self._sample_now()
        fresh = self.prefetch.take()
        if fresh is None:  # the server already serves the current weights (set-up or resume)
            fresh = self._sample_now()
        else:
            synced = time.perf_counter()
            self.sampler.sync(policy, step)
            timing["time/sync"] = time.perf_counter() - synced
        if step + 1 < steps:  # no batch for a step that will not run
            state = self.prompt_rng.get_state()
            batch = self.prompts.batch(self.next_prompt_indices())
            self.prefetch.submit(batch, self.samples_per_prompt, state)
        return fresh

    def _sample_now(self) -> Rollouts:
        batch = self.prompts.batch(self.next_prompt_indices())
        return self.sampler.sample(batch, self.samples_per_prompt)

    def close(self) -> None:
        """Wait for a batch in flight and drop it."""
        self.prefetch.close()


def rollout_metrics(rollouts: Rollouts, scores: TargetScores) -> dict[str, float]:
    """The batch's length, truncation and log-reward statistics, as logged per step."""
    lengths = rollouts.lengths.float()
    return {
        "length/mean": float(lengths.mean()),
        "length/min": float(lengths.min()),
        "length/max": float(lengths.max()),
        "truncated_frac": float((~rollouts.ended_with_eos).float().mean()),
        "target/log_reward_mean": float(scores.log_reward.mean()),
        **scores.metrics,
    }
