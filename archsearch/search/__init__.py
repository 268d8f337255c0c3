"""The search: the space as Optuna sees it, distinct sampling, the study's storage and workers, the per-trial
pipeline and the run loop."""
