"""A synthetic step-by-step reasoning task with noisy solutions, for the miniature replication of
the PowerFlow paper's reasoning results (``benchmarks/reasoning_replication.py``).

A question is a chain of ``n`` digits tagged by letters, ``"Q a 3 b 5 c 8"``; the answer is their
sum mod 10. A solution adds them one at a time, copying each digit after its letter::

    a 3 b 5 = 8 c 8 = 6 A 6 <eos>

A base model is pre-trained on *noisy* solutions drawn by :func:`noisy_solution`: each running sum
is wrong with probability ``error_rate`` (a uniformly drawn other digit, and the chain goes on from
it), and before each step the solution stops early with probability ``stop_rate`` (it writes ``A``
and the current sum). The most likely solution of that distribution is the correct one, whereas a
temperature-1 sample is right only with probability about ``((1−e)(1−s))^{n−1}``; and solutions
vary in length, with EOS able to come early. ``|y| = 4n + 1`` tokens for a complete solution.

The task's own scorer: :func:`extract_answer` reads the digit after the last ``A``; :func:`solve`
computes the right one from the question. The registered ``chain_sum`` task
(:mod:`gfnlm.tasks.builtin`) grades with them, so the baselines' rewards are the generic ones of
:mod:`gfnlm.tasks.rewards` (``verifier``, ``majority_vote``, ``answer_cluster_share``) with that
task.
"""

import random
from pathlib import Path

LETTERS = "abcdefgh"
DIGITS = "0123456789"
# Words of the default chat prompt ("Answer in a few words. Question: ...") so that it has no <unk>.
PROMPT_WORDS = ("Answer", "in", "a", "few", "words", ".", "Question", ":")
SPECIAL = ("<pad>", "<eos>", "<unk>", "<user>", "<assistant>")
CHAT_TEMPLATE = (
    "{% for m in messages %}<user> {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def vocabulary(extra_words: tuple[str, ...] = ()) -> list[str]:
    """Every token, specials first; ``extra_words`` (a variant task's own words) last."""
    words = [*SPECIAL, "Q", "A", "=", *DIGITS, *LETTERS, *PROMPT_WORDS, *extra_words]
    return list(dict.fromkeys(words))


def save_tokenizer(out_dir: Path, extra_words: tuple[str, ...] = ()) -> Path:
    """A word-level Hugging Face tokenizer of :func:`vocabulary` with ``extra_words`` (split at
    spaces and punctuation, a chat template, ``<eos>`` as EOS and ``<pad>`` as padding) saved into
    ``out_dir``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(vocabulary(extra_words))}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # tokens joined by spaces
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=["<user>", "<assistant>"],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(out_dir)
    return out_dir


def make_question(rng: random.Random, min_terms: int = 3, max_terms: int = 6) -> str:
    """A random chain of ``min_terms..max_terms`` tagged digits, e.g. ``"Q a 3 b 5 c 8"``."""
    if not 2 <= min_terms <= max_terms <= len(LETTERS):
        raise ValueError(
            f"min_terms={min_terms}, max_terms={max_terms}: need 2 <= min <= max <= {len(LETTERS)}"
        )
    n = rng.randint(min_terms, max_terms)
    return "Q " + " ".join(f"{LETTERS[i]} {rng.randrange(10)}" for i in range(n))


def terms(question: str) -> list[int]:
    """The digits of a question (the tokens after its letters)."""
    tokens = question.split()
    if not tokens or tokens[0] != "Q" or len(tokens) % 2 == 0:
        raise ValueError(f"question={question!r}: expected 'Q a d b d ...'")
    return [int(d) for d in tokens[2::2]]


def solve(question: str) -> str:
    """The right answer: the digits' sum mod 10."""
    return str(sum(terms(question)) % 10)


def noisy_solution(question: str, rng: random.Random, error_rate: float, stop_rate: float) -> str:
    """A solution from the base distribution (see the module docstring); with both rates 0, the
    correct solution."""
    digits = terms(question)
    total = digits[0]
    parts = [f"a {total}"]
    for i, digit in enumerate(digits[1:], start=1):
        if rng.random() < stop_rate:
            break
        total = (total + digit) % 10
        if rng.random() < error_rate:
            total = rng.choice([d for d in range(10) if d != total])
        parts.append(f"{LETTERS[i]} {digit} = {total}")
    parts.append(f"A {total}")
    return " ".join(parts)


def extract_answer(response: str) -> str | None:
    """The digit after the last ``A`` of a response; ``None`` without one."""
    tokens = response.split()
    for i in range(len(tokens) - 2, -1, -1):
        if tokens[i] == "A":
            return tokens[i + 1] if tokens[i + 1] in DIGITS else None
    return None


def is_correct(response: str, question: str) -> bool:
    """Whether the response's extracted answer is the question's right answer."""
    return extract_answer(response) == solve(question)


def answer_key(response: str) -> str:
    """What majority voting compares: the extracted answer (``""`` when there is none)."""
    return extract_answer(response) or ""
