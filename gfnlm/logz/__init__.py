"""log Z providers: a module mapping a batch's prompts to ``log Z(q)`` ``[B]``.

* ``scalar``: one learnable number shared by all prompts.
* ``table``: one learnable number per prompt of the training set (indexed by ``prompt_index``).
* ``mlp``: a head on the mean of the policy's last hidden states over the prompt tokens (the
  FlowRL parameterisation: two Linear-GELU-LayerNorm-Dropout blocks, then Linear→1). The hidden
  states are detached, so log Z never reshapes the policy's representation.

For TB-style objectives this is ``log Z(q)``; for LA-TB it is the per-token ``log Z'(q)``. The
trainer gives log Z its own learning rate.
"""

from typing import ClassVar

import attrs
import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from gfnlm.contracts.registry import option, register, run_fact


class LogZ(nn.Module):
    """Base class: ``forward(prompt_index [B], prompt_hidden [B, H] | None) -> [B]``."""

    provides: ClassVar[frozenset[str]] = frozenset({"log_z"})
    requires: ClassVar[frozenset[str]] = frozenset()

    def __attrs_post_init__(self) -> None:
        nn.Module.__init__(self)
        self.build()

    def build(self) -> None:
        """Create parameters (called once, after the config fields are set)."""
        raise NotImplementedError

    def forward(
        self, prompt_index: Int[Tensor, " B"], prompt_hidden: Float[Tensor, "B H"] | None = None
    ) -> Float[Tensor, " B"]:
        """``log Z`` for each prompt of the batch; subclasses implement this."""
        raise NotImplementedError

    @torch.no_grad()
    def shift_(self, prompt_index: Int[Tensor, " B"], delta: Float[Tensor, " B"]) -> None:
        """Add ``delta`` to ``log Z`` (averaged over what one parameter covers); used to warm-start
        log Z at the value that zeroes the mean residual of the first batch."""
        raise NotImplementedError


def _attrs_module(cls: type) -> type:
    # attrs must not generate __eq__/__hash__ (nn.Module needs identity hashing) nor slots, nor a
    # __setattr__ (it would for a field with a converter or validator): that would replace
    # nn.Module.__setattr__, and the parameters made in build() would not be registered (no
    # .parameters(), no optimiser step, no .to()).
    return attrs.define(cls, slots=False, eq=False, init=True, on_setattr=attrs.setters.NO_OP)


@register("logz", "scalar")
@_attrs_module
class ScalarLogZ(LogZ):
    """One learnable scalar for every prompt."""

    init: float = option(
        0.0, "initial value of log Z (warm start usually replaces it after the first batch)"
    )

    def build(self) -> None:
        self.value = nn.Parameter(torch.tensor(float(self.init)))

    def forward(
        self, prompt_index: Int[Tensor, " B"], prompt_hidden: Float[Tensor, "B H"] | None = None
    ) -> Float[Tensor, " B"]:
        return self.value.expand(prompt_index.shape[0])

    @torch.no_grad()
    def shift_(self, prompt_index: Int[Tensor, " B"], delta: Float[Tensor, " B"]) -> None:
        self.value += delta.mean().to(self.value)


@register("logz", "table")
@_attrs_module
class TableLogZ(LogZ):
    """One learnable value per training prompt."""

    num_prompts: int = run_fact(
        "num_train_prompts",
        default=1,
        converter=int,
        metadata={
            "help": "rows of the table: the number of training prompts (filled in by the run)"
        },
    )
    init: float = option(
        0.0, "initial value of log Z (warm start usually replaces it after the first batch)"
    )

    def build(self) -> None:
        if self.num_prompts < 1:
            raise ValueError(f"num_prompts={self.num_prompts}: must be >= 1")
        self.values = nn.Parameter(torch.full((self.num_prompts,), float(self.init)))

    def forward(
        self, prompt_index: Int[Tensor, " B"], prompt_hidden: Float[Tensor, "B H"] | None = None
    ) -> Float[Tensor, " B"]:
        if prompt_index.numel() and int(prompt_index.max()) >= self.num_prompts:
            raise IndexError(
                f"prompt_index={int(prompt_index.max())} out of range for a log Z table of "
                f"num_prompts={self.num_prompts}"
            )
        return self.values[prompt_index]

    @torch.no_grad()
    def shift_(self, prompt_index: Int[Tensor, " B"], delta: Float[Tensor, " B"]) -> None:
        total = torch.zeros_like(self.values).index_add_(0, prompt_index, delta.to(self.values))
        count = torch.zeros_like(self.values).index_add_(
            0, prompt_index, torch.ones_like(delta).to(self.values)
        )
        self.values += total / count.clamp_min(1.0)


@register("logz", "mlp")
@_attrs_module
class MLPLogZ(LogZ):
    """FlowRL-style head on the mean prompt hidden state."""

    requires = frozenset({"prompt_hidden"})
    hidden_size: int = run_fact(
        "hidden_size",
        default=0,
        converter=int,
        metadata={"help": "input width: the policy's hidden size (filled in by the run)"},
    )
    width: int = option(256, "width of the two hidden layers")
    dropout: float = option(0.0, "dropout after each hidden layer")
    init: float = option(
        0.0, "initial value of log Z (warm start usually replaces it after the first batch)"
    )

    def build(self) -> None:
        if self.hidden_size < 1:
            raise ValueError(
                f"hidden_size={self.hidden_size}: must be >= 1 (the policy's hidden size)"
            )

        def block(n_in: int) -> list[nn.Module]:
            return [
                nn.Linear(n_in, self.width),
                nn.GELU(),
                nn.LayerNorm(self.width),
                nn.Dropout(self.dropout),
            ]

        self.net = nn.Sequential(
            *block(self.hidden_size), *block(self.width), nn.Linear(self.width, 1)
        )
        nn.init.zeros_(self.net[-1].weight)
        nn.init.constant_(self.net[-1].bias, float(self.init))

    def forward(
        self, prompt_index: Int[Tensor, " B"], prompt_hidden: Float[Tensor, "B H"] | None = None
    ) -> Float[Tensor, " B"]:
        if prompt_hidden is None:
            raise ValueError(
                "logz 'mlp' needs prompt_hidden (the policy's mean prompt hidden state)"
            )
        head_dtype = self.net[0].weight.dtype
        return self.net(prompt_hidden.detach().to(head_dtype)).squeeze(-1)

    @torch.no_grad()
    def shift_(self, prompt_index: Int[Tensor, " B"], delta: Float[Tensor, " B"]) -> None:
        self.net[-1].bias += delta.mean().to(self.net[-1].bias)


__all__ = ["LogZ", "MLPLogZ", "ScalarLogZ", "TableLogZ"]
