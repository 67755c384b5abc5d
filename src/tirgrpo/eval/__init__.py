"""Evaluation: decision metrics against baselines (K samples + greedy per example, bootstrap
intervals by question), training metrics split by label, verifier-gated answer selection,
plots and the HTML run report."""
