"""Tasks: how a record becomes a prompt, how a response is graded, which rewards and metrics a
task offers, and how a model is evaluated on it.

* :mod:`gfnlm.tasks.base` and :mod:`gfnlm.tasks.builtin`: the ``task`` component and the registered
  tasks (factual, math, creative, chain_sum);
* :mod:`gfnlm.tasks.records` and :mod:`gfnlm.tasks.prompt_files`: reading data sets (JSONL, parquet,
  JSON, CSV, ``datasets`` folders) and the bundled prompt files;
* :mod:`gfnlm.tasks.prompts`: records → task-formatted, tokenised prompt batches;
* :mod:`gfnlm.tasks.math_answers` and :mod:`gfnlm.tasks.factual_answers`: answer checkers;
* :mod:`gfnlm.tasks.rewards`, :mod:`gfnlm.tasks.metrics`, :mod:`gfnlm.evaluation.held_out`: rewards,
  creative metrics, pass@k / majority-vote evaluation;
* :mod:`gfnlm.tasks.synthetic_reasoning` and :mod:`gfnlm.tasks.synthetic_forks`: the synthetic
  chain-sum tasks of the replication benchmark (the second one separates sequence-level from
  per-token sharpening by construction)."""
