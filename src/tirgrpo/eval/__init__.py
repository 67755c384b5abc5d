"""Evaluation: decision metrics against baselines, verifier-gated answer selection, plots
and the HTML run report."""
