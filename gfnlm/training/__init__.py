"""The training machinery that composes registered components into a run.

* :mod:`gfnlm.training.config`: the declarative run configuration (YAML + ``key=value``);
* :mod:`gfnlm.training.trainer`: the loop (sampler → rollouts → target scores → loss → optimiser);
* :mod:`gfnlm.training.policy`: the trainable causal LM and its frozen base (one forward each);
* :mod:`gfnlm.training.chunked_logps`: token log-probs through the output layer in chunks of
  positions, never holding ``[B, T, V]`` logits;
* :mod:`gfnlm.training.models`: loading models and tokenizers (the embedded SmolLM2 default);
* :mod:`gfnlm.training.checkpoint`: atomic checkpoints and resume;
* :mod:`gfnlm.training.distributed`: DDP/FSDP2 set-up;
* :mod:`gfnlm.training.exact`: the exact check on an enumerable (tabular) model;
* :mod:`gfnlm.training.collapse`: a mode-collapsed model by self-distillation (for α < 1 studies).
"""
