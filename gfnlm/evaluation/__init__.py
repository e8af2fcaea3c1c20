"""Evaluating a policy: held-out accuracy (avg@k, pass@k, majority@k, greedy) and the creative
metrics on sampled responses (:mod:`gfnlm.evaluation.held_out`), and the exact check of a trained
sampler against its target on an enumerable model (:mod:`gfnlm.evaluation.exact`)."""
