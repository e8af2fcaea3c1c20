"""The run: composing registered components, the training loop, and what a run writes.

* :mod:`gfnlm.training.config`: the declarative run configuration (YAML + ``key=value``);
* :mod:`gfnlm.training.compose`: every component built from the config and checked against the
  others;
* :mod:`gfnlm.training.trainer`: the loop (sampler → rollouts → target scores → loss → optimiser);
* :mod:`gfnlm.training.policy`: the trainable causal LM and its frozen base (one forward each);
* :mod:`gfnlm.training.checkpoint`: atomic, hashed checkpoints, the run lock, opening a run;
* :mod:`gfnlm.training.resume`: the resume point, config differences, RNG and optimiser state;
* :mod:`gfnlm.training.distributed`: DDP/FSDP2 set-up;
* :mod:`gfnlm.training.prefetch`: rollouts of the next step drawn while the trainer updates;
* :mod:`gfnlm.training.export`: a checkpoint as a Hugging Face model folder or a PEFT adapter.
"""
