"""Experiment drivers over the library: they train, export and benchmark through library
calls and write result files. Nothing in the library imports from here.

- :mod:`asrq.experiments.compare`: several model variants, same step budget (``models.json``);
- :mod:`asrq.experiments.todm`: deploy-many, one supernet vs K models (``todm.json``);
- :mod:`asrq.experiments.rnnt_loss`: peak memory and time of the RNN-T losses.

The thin callers are ``recipes/mini/{compare_models,todm_experiment,bench_rnnt_loss}.py``.
"""
