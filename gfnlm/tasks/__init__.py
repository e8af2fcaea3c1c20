"""Tasks: how a record becomes a prompt, how a response is graded, which rewards and metrics a
task offers. Prompt files (:mod:`gfnlm.tasks.prompt_files`) and the factual answer checker
(:mod:`gfnlm.tasks.factual_answers`) are re-exported here under their earlier names."""

from gfnlm.tasks.factual_answers import (
    first_sentence,
    first_sentence_complete,
    is_correct,
    normalize_answer,
)
from gfnlm.tasks.prompt_files import (
    DATA_DIR,
    FACTUAL_EVAL,
    FACTUAL_TRAIN,
    PROMPT_TEMPLATE,
    TEMPLATES,
    PromptFileError,
    format_prompt,
    load_prompt_file,
)

__all__ = [
    "DATA_DIR", "FACTUAL_EVAL", "FACTUAL_TRAIN", "PROMPT_TEMPLATE", "TEMPLATES", "PromptFileError",
    "first_sentence", "first_sentence_complete", "format_prompt", "is_correct", "load_prompt_file",
    "normalize_answer",
]
