"""One-off experiments: retrained predictor variants and their benchmark runs (not shipped)."""
