"""Reports rebuilt from a study alone: trial frames, the Pareto front, ablation tables beside the papers, plots,
and the line that says how far a front's mIoU can be trusted (:mod:`.trust`)."""

from archsearch.report import trust
from archsearch.report.ablation import PAPER_INPUT, ablation_table, table_text
from archsearch.report.frames import (
    FINISHED_STATES,
    data_description,
    knob_labels,
    objectives,
    protocol,
    summary,
    top_rung,
    trials_frame,
    trials_frame_of,
)
from archsearch.report.pareto import best_trials, export_pareto, front_table, non_dominated, pareto_front
from archsearch.util.formatting import markdown_table, text_table

__all__ = [
    "FINISHED_STATES",
    "PAPER_INPUT",
    "ablation_table",
    "best_trials",
    "data_description",
    "export_pareto",
    "front_table",
    "knob_labels",
    "markdown_table",
    "non_dominated",
    "objectives",
    "pareto_front",
    "protocol",
    "summary",
    "table_text",
    "text_table",
    "top_rung",
    "trials_frame",
    "trials_frame_of",
    "trust",
]
