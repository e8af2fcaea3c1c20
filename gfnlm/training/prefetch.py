"""Asynchronous rollouts (``sampling.async_rollouts``): a server sampler draws step k+1's rollouts
in a background thread while the trainer scores and updates on step k's.

The trainer keeps the staleness at exactly one update: at step k it waits for the batch submitted
at step k-1 (drawn by the weights after update k-2), pushes the weights of update k-1 while the
server is idle, submits step k+1's batch, then scores and updates on step k's batch. Only samplers
that hold their own copy of the weights (:attr:`Sampler.overlaps_training
<gfnlm.samplers.base.Sampler.overlaps_training>`) may do this, and only for objectives valid on
another policy's samples (checked when the run is composed).
"""

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from gfnlm.contracts.types import PromptBatch, Rollouts


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
