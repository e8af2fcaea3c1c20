"""Prompt sets: a JSONL file (or a bundled set's name) → chat-formatted, tokenised prompts."""

from importlib import resources
from pathlib import Path

import attrs
import torch
from transformers import PreTrainedTokenizerBase

from gfnlm.config import ConfigError
from gfnlm.tasks import format_prompt, load_prompt_file
from gfnlm.types import PromptBatch


def bundled_sets() -> list[str]:
    """Names of the prompt sets shipped inside the package (``gfnlm/data/*.jsonl``)."""
    return sorted(p.name.removesuffix(".jsonl") for p in resources.files("gfnlm.data").iterdir()
                  if p.name.endswith(".jsonl"))


def resolve_prompt_file(spec: str, field: str) -> Path:
    """A bundled set name or a path to a JSONL file; one-line error naming ``field`` otherwise."""
    if spec in bundled_sets():
        return Path(str(resources.files("gfnlm.data") / f"{spec}.jsonl"))
    path = Path(spec)
    if path.is_dir():
        raise ConfigError(f"{field}={spec!r}: is a directory; give a JSONL prompt file or one of the bundled sets "
                          f"({', '.join(bundled_sets())})")
    if not path.is_file():
        raise ConfigError(
            f"{field}={spec!r}: no such file; use a JSONL prompt file or one of the bundled sets "
            f"({', '.join(bundled_sets())})"
        )
    return path


@attrs.frozen
class PromptSet:
    """Questions (with optional answers), formatted with the model's chat template and tokenised."""

    questions: tuple[str, ...]
    answers: tuple[tuple[str, ...] | None, ...]
    texts: tuple[str, ...]
    token_ids: tuple[tuple[int, ...], ...]
    pad_token_id: int

    @classmethod
    def load(cls, spec: str, field: str, tokenizer: PreTrainedTokenizerBase, max_tokens: int,
             require_answers: bool = False) -> "PromptSet":
        """Load a JSONL file or bundled set (``spec``), chat-format and tokenise every question.

        ``field`` names the config field in error messages; prompts longer than ``max_tokens``
        tokens and, with ``require_answers``, lines without ``answers`` are one-line errors.
        """
        path = resolve_prompt_file(spec, field)
        records = load_prompt_file(path)
        questions = tuple(str(r.get("question", r.get("prompt"))) for r in records)
        answers = tuple(tuple(r["answers"]) if r.get("answers") else None for r in records)
        if require_answers and any(a is None for a in answers):
            line = next(i for i, a in enumerate(answers) if a is None) + 1
            raise ConfigError(f"{field}={spec!r}: line {line} has no 'answers' (needed for evaluation)")
        texts = tuple(format_prompt(tokenizer, q, r.get("template", "short_answer"))
                      for q, r in zip(questions, records, strict=True))
        token_ids = tuple(tuple(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
        for i, ids in enumerate(token_ids):
            if len(ids) > max_tokens:
                raise ConfigError(
                    f"{field}={spec!r}: prompt on line {i + 1} has {len(ids)} tokens, more than "
                    f"data.max_prompt_tokens={max_tokens}"
                )
        return cls(questions, answers, texts, token_ids, int(tokenizer.pad_token_id))

    def __len__(self) -> int:
        return len(self.questions)

    def batch(self, indices: list[int]) -> PromptBatch:
        """The prompts at ``indices``, left-padded to a common length."""
        width = max(len(self.token_ids[i]) for i in indices)
        ids = torch.full((len(indices), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(indices), width), dtype=torch.bool)
        for row, i in enumerate(indices):
            tokens = self.token_ids[i]
            ids[row, width - len(tokens):] = torch.tensor(tokens, dtype=torch.long)
            mask[row, width - len(tokens):] = True
        return PromptBatch(prompt_ids=ids, prompt_mask=mask, prompt_index=torch.tensor(indices),
                           prompt_text=tuple(self.questions[i] for i in indices))
