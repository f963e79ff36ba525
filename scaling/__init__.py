"""Scaling laws from sweeps of runs: compute accounting, fits, learning rates, sweeps, figures.

Modules: `compute` (MACs, FLOPs, core hours, MFU), `runs` (the runs table), `fit_power_law`
(loss vs compute on the frontier), `fit_chinchilla` (the parametric law L(N, D)),
`isoflop` (compute-optimal allocation from IsoFLOP slices), `fit_allocation` (the frontier
envelope's size and epochs), `synthetic` and `synthetic_finetune` (sweeps from a known law),
`learning_rate`, `sweep`, `plots` with `bands` (bootstrap bands of fitted lines),
`reference_points` (published points of Figure 1), `analysis` (all fits together) and `cli`
(`python -m scaling ...`).
"""
