"""Evaluation: metrics (PPL, Dist-n, Emp-F1, kappa, floors), evaluating a system, the human-evaluation kit,
plots, the report and the reading of results. Imports the foundation and emprl.models."""
