"""The contracts every component is written against.

* :mod:`gfnlm.contracts.types`: the attrs data classes components exchange (prompt batches,
  rollouts, policy evaluations, target scores), with their tensor shapes;
* :mod:`gfnlm.contracts.shapes`: the jaxtyping/beartype checks of those shapes at the boundaries;
* :mod:`gfnlm.contracts.registry`: registration by name, component options, composition checks;
* :mod:`gfnlm.contracts.errors`: the one error hierarchy (bad input vs a failed run);
* :mod:`gfnlm.contracts.paths`: path lengths and output files checked before any work.

Nothing here imports a model, a trainer or a server.
"""
