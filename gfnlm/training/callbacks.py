"""Callbacks: code of your own that the trainer calls at each step, evaluation and checkpoint.

Subclass :class:`Callback`, override the methods you need (the others do nothing) and pass
instances to the trainer::

    class StopOnLongResponses(Callback):
        def on_step(self, trainer, step, metrics):
            if metrics["length/mean"] > 200:
                raise RuntimeError(f"step {step}: responses grew past 200 tokens")

    Trainer(config, callbacks=[StopOnLongResponses()]).train()

The protocol:

* Callbacks run **on rank 0 only** (the process that writes logs and checkpoints); the metrics they
  get are already combined over every rank. In a one-process run that is the only process.
* They run in the order given, after the trainer has recorded the event: ``on_step`` after the
  step's metrics are in :attr:`Trainer.history <gfnlm.training.trainer.Trainer.history>`,
  TensorBoard and ``metrics.jsonl``; ``on_eval`` after the evaluation is logged; ``on_save`` after
  the checkpoint is complete on disk.
* An exception raised by a callback is not caught: training stops there and the exception reaches
  the caller of ``train()``. Checkpoints already written stay intact, and a resumed run continues
  from the last one (the steps logged after it are dropped from the logs, as after a crash).
* ``metrics`` and ``results`` are the trainer's own dicts: read them, do not change them.
"""

from pathlib import Path
from typing import Any


class Callback:
    """Base class of trainer callbacks; every method is a no-op, override those you need."""

    def on_step(self, trainer: Any, step: int, metrics: dict[str, float]) -> None:
        """After training step ``step`` (1-based: the number of steps done), with its scalar
        metrics (the keys TensorBoard shows under ``train/``)."""

    def on_eval(self, trainer: Any, step: int, results: dict[str, float]) -> None:
        """After a held-out evaluation of the policy at ``step`` (0 = before training), with its
        results (the keys TensorBoard shows under ``eval/``). A resumed run reports the cached
        evaluations it reuses again."""

    def on_save(self, trainer: Any, step: int, path: Path) -> None:
        """After the checkpoint of ``step`` was written to the folder ``path`` (a step already
        saved and unchanged since is not saved, nor reported, again)."""


def notify(callbacks: list[Callback], event: str, *args: Any) -> None:
    """Call method ``event`` of every callback, in order, with ``args``."""
    for callback in callbacks:
        getattr(callback, event)(*args)
