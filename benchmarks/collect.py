"""Assemble benchmarks/RESULTS.md from the per-benchmark files under benchmarks/results/.

python benchmarks/collect.py
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
ORDER = ("trial_phases", "fast_inference", "keep_rates", "stage_pooling")
HEADER = """# Benchmark results

Each section below is written by its script (`python benchmarks/<name>.py`, results in `benchmarks/results/`)
and gathered here by `python benchmarks/collect.py`. Latencies are medians of repeats measured side by side in
one run; compare ratios within a section. {devices}
"""
CPU_ONLY = (
    "No GPU was lent to the sessions that measured these, so every number\n"
    "is from the CPU; the GPU paths (CUDA-event latency, mixed-precision training) have not been timed yet."
)
WITH_GPU = (
    "The GPU check sections (`benchmarks/gpu_check.py`)\n"
    "were measured on the GPU each names; every other number is from the CPU."
)


def main() -> None:
    results = HERE / "results"
    names = [n for n in ORDER if (results / f"{n}.md").is_file()]
    names += sorted(p.stem for p in results.glob("*.md") if p.stem not in ORDER)
    sections = []
    for name in names:
        text = (results / f"{name}.md").read_text().strip()
        lines = text.splitlines()
        if lines and lines[0].startswith("# "):  # demote a script's title to a section
            lines[0] = "#" + lines[0]
        sections.append("\n".join(lines))
    header = HEADER.format(devices=WITH_GPU if any(n.startswith("gpu_") for n in names) else CPU_ONLY)
    (HERE / "RESULTS.md").write_text(header + "\n" + "\n\n".join(sections) + "\n")
    print(f"wrote {HERE / 'RESULTS.md'} ({len(sections)} sections: {', '.join(names)})")


if __name__ == "__main__":
    main()
