"""Shared fixtures: a rollouts builder and a two-response example with explicit small numbers.

The example (``two``): response A ends with EOS after two ordinary tokens (``|y| = 3``, ``n = 2``);
response B is truncated at ``T = 4`` (``|y| = 4``, ``n = 4``, termination forced). Padding and the
entries past the last visited state hold deliberately large "garbage" values: anything that reads
them shows up in the losses.
"""

import contextlib
import json
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from gfnlm.contracts import registry
from gfnlm.contracts.types import PolicyEval, Rollouts, SequenceLogProbs, TargetScores
from gfnlm.models.loading import ensure_smollm2, save_random_llama

registry.names("objective")  # import the built-ins now, before any test registers a test component

DTYPE = torch.float64
EOS_ID = 2


def build_rollouts(
    lengths: Sequence[int],
    ended_with_eos: Sequence[bool],
    num_positions: int,
    behaviour_logp: Sequence[Sequence[float]] | None = None,
    response_text: tuple[str, ...] | None = None,
    prompt_index: Sequence[int] | None = None,
) -> Rollouts:
    """Right-padded rollouts with the given lengths (|y| counts EOS) and 3-token prompts."""
    batch = len(lengths)
    positions = torch.arange(num_positions)
    lengths_t = torch.tensor(list(lengths), dtype=torch.long)
    eos_t = torch.tensor(list(ended_with_eos), dtype=torch.bool)
    mask = positions[None, :] < lengths_t[:, None]
    ids = torch.where(
        mask, torch.full((batch, num_positions), 7), torch.zeros(batch, num_positions)
    )
    last = positions[None, :] == (lengths_t - 1)[:, None]
    ids = torch.where(last & eos_t[:, None], torch.full_like(ids, EOS_ID), ids).long()
    if behaviour_logp is None:
        behaviour = torch.full((batch, num_positions), -1.0, dtype=DTYPE)
    else:
        behaviour = torch.tensor(behaviour_logp, dtype=DTYPE)
    return Rollouts(
        prompt_ids=torch.ones(batch, 3, dtype=torch.long),
        prompt_mask=torch.ones(batch, 3, dtype=torch.bool),
        response_ids=ids,
        response_mask=mask,
        lengths=lengths_t,
        ended_with_eos=eos_t,
        group=torch.zeros(batch, dtype=torch.long),
        prompt_index=torch.tensor(list(prompt_index or range(batch)), dtype=torch.long),
        behaviour_logp=behaviour,
        response_text=response_text,
    )


@dataclass
class TwoResponses:
    """Plain-Python numbers of the two-response example (see the module docstring)."""

    lengths: list[int] = field(default_factory=lambda: [3, 4])
    ended_with_eos: list[bool] = field(default_factory=lambda: [True, False])
    steps: list[int] = field(default_factory=lambda: [2, 4])  # n = |y| - ended_with_eos
    num_positions: int = 4
    # Policy: token_logp[b][t] = log pi(y_{t+1}|s_t); A's entry 2 is its EOS (equal to
    # eos_logp[A][2]).
    policy_tok: list[list[float]] = field(
        default_factory=lambda: [[-0.5, -1.2, -0.3, -9.0], [-0.7, -0.4, -1.1, -0.9]]
    )
    policy_eos: list[list[float]] = field(
        default_factory=lambda: [[-2.0, -1.5, -0.3, -8.0, -8.5], [-2.5, -1.8, -2.2, -1.6, -1.3]]
    )
    # Base model, same layout.
    base_tok: list[list[float]] = field(
        default_factory=lambda: [[-0.6, -1.0, -0.2, -5.0], [-0.8, -0.5, -1.0, -0.6]]
    )
    base_eos: list[list[float]] = field(
        default_factory=lambda: [[-1.9, -1.4, -0.2, -6.0, -6.5], [-2.4, -1.7, -2.0, -1.5, -1.2]]
    )
    # Explicit target scores for the objective tests (independent of any target implementation):
    # prefix rewards past the visited states are garbage; B's entry at n=4 equals its log R.
    log_reward: list[float] = field(default_factory=lambda: [-3.6, -5.8])
    prefix_log_reward: list[list[float]] = field(
        default_factory=lambda: [[-3.8, -4.0, -3.6, 50.0, 60.0], [-4.8, -5.0, -6.6, -7.6, -5.8]]
    )
    log_z: list[float] = field(default_factory=lambda: [0.3, -0.2])

    def rollouts(self, behaviour_logp=None, response_text=None) -> Rollouts:
        return build_rollouts(
            self.lengths, self.ended_with_eos, self.num_positions, behaviour_logp, response_text
        )

    def policy(self, tok=None, eos=None) -> PolicyEval:
        tok = torch.tensor(self.policy_tok, dtype=DTYPE) if tok is None else tok
        eos = torch.tensor(self.policy_eos, dtype=DTYPE) if eos is None else eos
        return PolicyEval(token_logp=tok, eos_logp=eos, entropy=torch.zeros_like(tok))

    def base(self, with_eos: bool = True) -> SequenceLogProbs:
        return SequenceLogProbs(
            token_logp=torch.tensor(self.base_tok, dtype=DTYPE),
            eos_logp=torch.tensor(self.base_eos, dtype=DTYPE) if with_eos else None,
        )

    def scores(self) -> TargetScores:
        return TargetScores(
            log_reward=torch.tensor(self.log_reward, dtype=DTYPE),
            prefix_log_reward=torch.tensor(self.prefix_log_reward, dtype=DTYPE),
        )

    def log_z_tensor(self) -> torch.Tensor:
        return torch.tensor(self.log_z, dtype=DTYPE)


@pytest.fixture
def two() -> TwoResponses:
    return TwoResponses()


@pytest.fixture
def make_rollouts() -> Callable[..., Rollouts]:
    """The rollouts builder (``lengths``, ``ended_with_eos``, ``num_positions``, ...)."""
    return build_rollouts


@contextlib.contextmanager
def temporarily_registered(kind: str, name: str, cls: type) -> Iterator[object]:
    """Register ``cls``, yield a default-built instance, and always unregister it afterwards."""
    registry.register(kind, name)(cls)
    try:
        yield registry.build(kind, name)
    finally:
        registry.unregister(kind, name)
    assert name not in registry.names(kind)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, hidden-64 Llama with random weights and the real SmolLM2 tokenizer."""
    return save_random_llama(tmp_path_factory.mktemp("tiny-llama"), ensure_smollm2())


@pytest.fixture
def prompt_files(tmp_path: Path) -> tuple[Path, Path]:
    train = tmp_path / "train.jsonl"
    train.write_text(
        "".join(
            json.dumps({"question": q}) + "\n"
            for q in [
                "What is the capital of France?",
                "How many legs does a spider have?",
                "What colour is grass?",
                "Who wrote Hamlet?",
            ]
        )
    )
    evaluation = tmp_path / "eval.jsonl"
    evaluation.write_text(
        json.dumps({"question": "What is the capital of Italy?", "answers": ["Rome"]}) + "\n"
    )
    return train, evaluation


@contextlib.contextmanager
def mounted_tmpfs(mount_point: Path, options: str) -> Iterator[Path]:
    """A real tmpfs mounted at ``mount_point`` with ``options`` (``ro``, ``size=2m``), unmounted
    afterwards. Needs root, as CI has: a read-only or full file system cannot be had otherwise."""
    mount_point.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount_point)],
        check=False,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        pytest.fail(
            f"cannot mount a tmpfs ({options}) at {mount_point} (run as root): "
            f"{result.stderr.strip()}"
        )
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)
