"""gfnlm: fine-tune language models as GFlowNet samplers of a chosen target distribution.

The package is laid out by layer; a component author needs only the first two rows.

==========================  ===================================================================
``gfnlm.contracts``         data classes with tensor shapes, the registry, errors
``gfnlm.targets``,          the registered components: what to sample (target), how to learn it
``gfnlm.objectives``,       (objective), how log Z is parameterised, how rollouts are generated
``gfnlm.logz``,             (sampler), how the behaviour policy explores and which trajectories
``gfnlm.samplers``,         are replayed
``gfnlm.exploration``
``gfnlm.tasks``             prompts, answer checking, rewards, metrics, evaluation
``gfnlm.training``          configuration, the trainer, policy, checkpoints, distributed, exact check
``gfnlm.serving``           SGLang server and client, export of adapters and merged models
``gfnlm.cli``               the ``gfnlm`` command
==========================  ===================================================================
"""
