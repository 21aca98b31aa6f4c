"""Mechanism analysis (paper Sec. 6, following Lee et al. 2024): a linear toxicity probe, the toxicity
of the toxic layer's value vectors, the shift of that layer's activations, and a localisation study.

Modules: ``probe`` (data, features, logistic probe), ``toxicity`` (parameter toxicity), ``activation``
(activation shift), ``localisation`` (per-layer distance curves), ``analyze`` (runs in, tables and plots out).
See ``docs/analysis.md``.
"""
