"""Reports rebuilt from a study alone: trial frames, the Pareto front, ablation tables beside the papers, plots."""
