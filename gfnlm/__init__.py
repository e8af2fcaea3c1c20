"""gfnlm: fine-tune language models as GFlowNet samplers of a chosen target distribution.

The package is laid out in layers; every import points down them (``tests/test_layout.py``). A
component author needs only layers 0 and 2.

=====  ==========================  ==============================================================
layer  package                     what it holds
=====  ==========================  ==============================================================
0      ``gfnlm.contracts``         data classes with tensor shapes, the registry, errors,
                                   validators, path checks
1      ``gfnlm.models``            model and tokenizer loading, log-prob kernels, decoding, weights
1      ``gfnlm.serving``           SGLang and vLLM server plumbing
2      ``gfnlm.targets``,          the registered components: what to sample (target), how to
       ``gfnlm.objectives``,       learn it (objective), how log Z is parameterised, how rollouts
       ``gfnlm.logz``,             are generated (sampler), how the behaviour policy explores and
       ``gfnlm.samplers``,         which trajectories are replayed, and tasks (prompts, answer
       ``gfnlm.exploration``,      checking, rewards, metrics)
       ``gfnlm.tasks``
3      ``gfnlm.training``          configuration, composition, the trainer, policy, checkpoints,
                                   resume, distributed, export
3      ``gfnlm.evaluation``        held-out evaluation and the exact check
4      ``gfnlm.cli``               the ``gfnlm`` command
=====  ==========================  ==============================================================
"""
