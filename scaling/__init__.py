"""Scaling laws from sweeps of runs: compute accounting, fits, learning rates, sweeps, figures.

Modules: `compute` (MACs, FLOPs, core hours, MFU), `runs` (the runs table), `fit_power_law`
(loss vs compute on the frontier), `fit_chinchilla` (the parametric law L(N, D)),
`fit_allocation` (compute-optimal size and epochs), `learning_rate`, `sweep`, `plots`,
`analysis` (all fits together) and `cli` (`python -m scaling ...`).
"""
