"""The core: losses, the stochastic-TCE state, metrics, objectives, statistics and the
registry that names them. No Ray and no I/O: what a plain PyTorch loop imports.

Modules: ``losses`` (MCCE, focal, tilted CE), ``baseline_losses`` (weighted/balanced CE,
Lovász, Dice), ``loss_catalog`` (the built-in losses as registry entries, torch-free),
``registry`` (losses, settings, data sets, search parameters), ``tilt`` (``TiltState``),
``metrics`` (confusion matrix, per-class IoU, the paper's criteria), ``objectives``,
``stats`` (Welch's test, bootstrap), ``front_guard``, ``gather`` (all-gather with gradients).
"""
