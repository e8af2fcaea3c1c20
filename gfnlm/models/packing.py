"""A batch of responses to shared prompts, packed into padding-free rows for ONE forward pass.

Each row holds one or more *blocks*; a block is a prompt's real tokens followed by some of its
samples' responses, ``[q, y_1, y_2, …]``. Position ids restart at the prompt's end for every
response, so each response sees exactly the positions it had when it was sampled, and one
attention mask, built once and read by every layer, lets a response token see its prompt and its
own prefix only (a "tree" of causal segments sharing a trunk). A prompt is computed once per
block instead of once per sample, no position holds padding but the tail of a row, and no layer
builds a mask or copies keys and values of its own.

Rows are at least :data:`PACK_WIDTH` positions wide (or the longest prompt + response, if wider)
and filled first-fit with the longest responses first. A row's attention is dense over its width
(the mask marks what is not seen, the products are still computed), so the width bounds the work
spent on positions a query does not see: at 1,024 it is a few percent of a layer's matrix products
for a model of hidden size ≥ 576, while a prompt shared by eight short responses is computed once.
A response as long as the row gets a row (and its prompt) of its own: the prompt, a few dozen
tokens, is then repeated, the attention is not.
"""

from dataclasses import dataclass

import torch
from torch import Tensor

# The least width of a packed row, in positions (see the module docstring).
PACK_WIDTH = 1024


@dataclass(frozen=True)
class PackedBatch:
    """The packed rows of a batch of ``B`` rollouts (``R`` rows of ``W`` positions) and where each
    rollout's positions went.

    ``predicting[b, k]`` is the flat index (into ``R·W``) of the position whose output predicts
    response token ``k + 1`` of rollout ``b`` (``k = |y|``: the EOS after its last token); entries
    past ``|y|`` point at position 0 and are masked by every consumer. ``prompt_positions[b, j]``
    is the flat index of left-padded prompt column ``j`` (padding: 0, masked by the prompt mask).
    """

    input_ids: Tensor  # [R, W]
    position_ids: Tensor  # [R, W]
    attention_mask: Tensor  # [R, 1, W, W], additive: 0 where a query sees a key, else dtype min
    predicting: Tensor  # [B, T+1]
    prompt_positions: Tensor  # [B, P]

    @property
    def num_tokens(self) -> int:
        """Positions in the packed rows, the tail padding included."""
        return self.input_ids.numel()


@dataclass
class _Segment:
    """A run of consecutive tokens of one row: a block's prompt or one response."""

    row: int
    start: int  # position in the row
    source: int  # flat index into the concatenated [prompt_ids.flatten(), response_ids.flatten()]
    length: int
    first_position: int  # its first position id
    block: int  # a batch-unique block number
    is_prompt: bool


def pack(
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    response_ids: Tensor,
    lengths: Tensor,
    mask_dtype: torch.dtype,
    min_width: int | None = None,
) -> PackedBatch:
    """Pack left-padded prompts ``[B, P]`` and right-padded responses ``[B, T]`` of ``lengths``
    real tokens (rows with equal prompt ids share their prompt) into padding-free rows; the
    attention mask is additive, in ``mask_dtype`` (the dtype of the attention's queries). Rows are
    at least ``min_width`` positions wide (default :data:`PACK_WIDTH`)."""
    batch = prompt_ids.shape[0]
    groups = torch.unique(prompt_ids, dim=0, return_inverse=True)[1].tolist()
    prompt_lengths = prompt_mask.sum(1).tolist()
    response_lengths = lengths.tolist()
    width = max(
        PACK_WIDTH if min_width is None else min_width,
        max(p + n for p, n in zip(prompt_lengths, response_lengths, strict=True)),
    )
    layout = _Layout(prompt_ids, response_ids.shape[1], width)
    for b in sorted(range(batch), key=lambda b: (-response_lengths[b], b)):
        layout.place(b, groups[b], prompt_lengths[b], response_lengths[b])
    rows, used = len(layout.used), max(layout.used)
    tokens = _expand(layout.segments, used, prompt_ids.device)
    sources = torch.cat([prompt_ids.reshape(-1), response_ids.reshape(-1)])
    real = tokens["source"] >= 0
    input_ids = torch.where(real, sources[tokens["source"].clamp_min(0)], 0)
    return PackedBatch(
        input_ids=input_ids.view(rows, used),
        position_ids=tokens["position"].view(rows, used),
        attention_mask=_tree_mask(tokens, rows, used, mask_dtype),
        predicting=_predicting(layout.placed, response_ids.shape[1], used, prompt_ids.device),
        prompt_positions=_prompt_positions(
            layout.placed, prompt_ids.shape[1], used, prompt_ids.device
        ),
    )


class _Layout:
    """First-fit, longest responses first: a response joins its prompt's block at the end of a row
    where it fits, else opens a block (its prompt again) in the first row with room, else a new
    row. Sources are flat indices into ``[prompt_ids.flatten(), response_ids.flatten()]``."""

    def __init__(self, prompt_ids: Tensor, response_width: int, width: int) -> None:
        self.prompt_width = prompt_ids.shape[1]
        self.response_base = prompt_ids.numel()
        self.response_width, self.width = response_width, width
        self.used: list[int] = []  # positions filled, per row
        self.open: list[
            tuple[int, _Segment]
        ] = []  # per row: (prompt group, prompt) of its last block
        self.segments: list[_Segment] = []
        self.placed: dict[int, tuple[_Segment, _Segment]] = {}  # rollout → (prompt, response)

    def place(self, b: int, group: int, prompt: int, length: int) -> None:
        """Place rollout ``b``: ``prompt`` real (left-padded) tokens of prompt ``group``, then
        ``length`` response tokens."""
        rows = range(len(self.used))
        row = next(
            (r for r in rows if self.open[r][0] == group and self.used[r] + length <= self.width),
            None,
        )
        if row is None:
            row = next((r for r in rows if self.used[r] + prompt + length <= self.width), None)
            if row is None:
                row, _ = len(self.used), self.used.append(0)
                self.open.append((-1, None))  # type: ignore[arg-type]
            source = (b + 1) * self.prompt_width - prompt
            block = len(self.segments)
            self.open[row] = (group, self._add(row, source, prompt, 0, block, is_prompt=True))
        head = self.open[row][1]
        source = self.response_base + b * self.response_width
        self.placed[b] = (head, self._add(row, source, length, prompt, head.block, False))

    def _add(
        self, row: int, source: int, length: int, first: int, block: int, is_prompt: bool
    ) -> _Segment:
        segment = _Segment(row, self.used[row], source, length, first, block, is_prompt)
        self.segments.append(segment)
        self.used[row] += length
        return segment


def _expand(segments: list[_Segment], width: int, device: torch.device) -> dict[str, Tensor]:
    """Per position of the ``rows × width`` grid (flattened): its ``source`` token (-1: tail
    padding), ``position`` id, ``block`` (-1: padding), ``segment`` (a batch-unique number) and
    whether it is a prompt token."""
    rows = 1 + max(s.row for s in segments)
    columns = {
        name: torch.tensor([getattr(s, name) for s in segments], dtype=torch.long)
        for name in ("row", "start", "source", "length", "first_position", "block")
    }
    is_prompt = torch.tensor([s.is_prompt for s in segments])
    lengths = columns["length"]
    owner = torch.repeat_interleave(torch.arange(len(segments)), lengths)
    offset = torch.arange(int(lengths.sum())) - (lengths.cumsum(0) - lengths)[owner]
    where = columns["row"][owner] * width + columns["start"][owner] + offset
    grid = {
        "source": torch.full((rows * width,), -1),
        "position": torch.zeros(rows * width, dtype=torch.long),
        "block": torch.full((rows * width,), -1),
        "segment": torch.full((rows * width,), -1),
        "prompt": torch.zeros(rows * width, dtype=torch.bool),
    }
    grid["source"][where] = columns["source"][owner] + offset
    grid["position"][where] = columns["first_position"][owner] + offset
    grid["block"][where] = columns["block"][owner]
    grid["segment"][where] = owner
    grid["prompt"][where] = is_prompt[owner]
    return {name: value.to(device) for name, value in grid.items()}


def _tree_mask(tokens: dict[str, Tensor], rows: int, width: int, dtype: torch.dtype) -> Tensor:
    """``[R, 1, W, W]`` additive mask: a query sees an earlier key of its own block that is a
    prompt token or in its own segment; padding sees itself only (no row of the softmax is empty,
    so nothing becomes NaN)."""
    block, segment, prompt = (tokens[k].view(rows, width) for k in ("block", "segment", "prompt"))
    causal = torch.ones(width, width, dtype=torch.bool, device=block.device).tril_()
    same_block = block[:, :, None] == block[:, None, :]
    visible = same_block & (prompt[:, None, :] | (segment[:, :, None] == segment[:, None, :]))
    visible &= causal
    visible |= torch.eye(width, dtype=torch.bool, device=block.device)
    mask = torch.zeros(rows, 1, width, width, dtype=dtype, device=block.device)
    return mask.masked_fill_(~visible[:, None], torch.finfo(dtype).min)


def _predicting(
    placed: dict[int, tuple[_Segment, _Segment]], response_width: int, width: int, device
) -> Tensor:
    """``[B, T+1]`` flat indices of the positions predicting each response token and the EOS after
    the last: the prompt's last token, then the response's own tokens; 0 past the response."""
    heads, responses = zip(*(placed[b] for b in range(len(placed))), strict=True)
    start = torch.tensor([r.row * width + r.start for r in responses])
    length = torch.tensor([r.length for r in responses])
    last_prompt = torch.tensor([h.row * width + h.start + h.length - 1 for h in heads])
    k = torch.arange(response_width + 1)
    index = start[:, None] + k - 1
    index[:, 0] = last_prompt
    return index.where(k <= length[:, None], 0).to(device)


def _prompt_positions(
    placed: dict[int, tuple[_Segment, _Segment]], prompt_width: int, width: int, device
) -> Tensor:
    """``[B, P]`` flat indices of each left-padded prompt column's token; 0 at padding."""
    heads = [placed[b][0] for b in range(len(placed))]
    first = torch.tensor([h.row * width + h.start for h in heads])
    pad = torch.tensor([prompt_width - h.length for h in heads])
    column = torch.arange(prompt_width)
    return (first[:, None] + column - pad[:, None]).where(column >= pad[:, None], 0).to(device)
