"""The benchmark's results as files: ``bench.json`` and markdown tables."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PROG = "python -m benchmarks.bench"


def _fmt_rate(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}"


def _options_text(options: dict[str, Any] | None) -> str:
    if not options:
        return " (its defaults)"
    return " with " + ", ".join(f"`{k}={v}`" for k, v in options.items())


def _row(r: dict[str, Any]) -> str:
    """One model's line of the timing table."""
    book, course = r["textbook"], r["course"]
    epoch = ["—", "—", "—"]
    if "speedup_epoch" in r:
        epoch = [
            f"{book['epoch_s_median']:.1f} s",
            f"{course['epoch_s_median']:.1f} s",
            f"**{r['speedup_epoch']:.2f}×**",
        ]
    frac = r["fraction_of_peak"]
    return (
        f"| {r['model']} | {r['input_px']} px | {r['batch_size']} | {r['timed']} "
        f"| {_fmt_rate(book['train_img_s'])} | {_fmt_rate(course['train_img_s'])} "
        f"| **{r['speedup_train']:.2f}×** | {' | '.join(epoch)} "
        f"| {r['train_flops_per_image'] / 1e9:.3g} "
        f"| {100 * frac['textbook']:.0f} % → {100 * frac['course']:.0f} % |"
    )


def to_markdown(report: dict[str, Any]) -> str:
    """The timing report as a markdown table with a heading naming the machine and command."""
    peaks = ", ".join(f"{k} {v:,.0f} GFLOP/s" for k, v in report["peak_gflops"].items())
    lines = [
        f"Measured on **{report['device_name']}** ({report['device']}), torch {report['torch']}, "
        f"with `{report['command'] or PROG}`; "
        f"matrix-multiply peak measured in the same run: {peaks}.",
        "",
        "| model | input | batch | timed | textbook img/s | course img/s | speed-up "
        "| textbook epoch | course epoch | epoch speed-up | GFLOP/img (train) "
        "| % of matmul peak (textbook → course) |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        *(_row(r) for r in report["results"]),
        "",
        f"img/s: training images per second of wall-clock time, data loading included (median "
        f"of {report['repeats']} runs per path, the paths taking turns). Epoch: training plus "
        "test evaluation. Textbook: torchvision `FashionMNIST` + `Resize`/`ToTensor`, "
        f"`DataLoader(num_workers={report['textbook_workers']})`, the book's per-batch "
        "synchronising loop. Course: `d2l_utils.load_data` + `d2l_utils.train_ch6`"
        f"{_options_text(report.get('course_options'))}. "
        f"% of matmul peak: img/s × training FLOPs per image / peak; {report['flops_convention']}.",
    ]
    return "\n".join(lines) + "\n"


def accuracy_markdown(report: dict[str, Any]) -> str:
    """The accuracy comparison as a markdown table, one row per seed and a mean ± sd row."""
    lines = [
        f"{report['model']} trained with the book's settings ({report['epochs']} epochs, "
        f"lr {report['lr']}, batch {report['batch_size']}, {report['input_px']} px, "
        f"{report['data']} data) on **{report['device_name']}**, with "
        f"`{report['command'] or PROG + ' --accuracy'}`. For each seed both "
        "paths start from the same weights.",
        "",
        "| seed | textbook test acc | course test acc | course − textbook |",
        "| ---: | ---: | ---: | ---: |",
    ]
    for r in report["runs"]:
        a, b = r["textbook"]["test_acc"][-1], r["course"]["test_acc"][-1]
        lines.append(f"| {r['seed']} | {a:.4f} | {b:.4f} | {b - a:+.4f} |")
    m, sd = report["mean"], report["stdev"]
    lines.append(
        f"| mean ± sd | {m['textbook']:.4f} ± {sd['textbook']:.4f} "
        f"| {m['course']:.4f} ± {sd['course']:.4f} | {m['course'] - m['textbook']:+.4f} |"
    )
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out_dir: Path, stem: str = "bench") -> tuple[Path, Path]:
    """Write ``<stem>.json`` and ``<stem>.md`` to ``out_dir``; return their paths.

    The markdown is the timing table, or the accuracy table for a report with ``runs``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    md_path.write_text(accuracy_markdown(report) if "runs" in report else to_markdown(report))
    return json_path, md_path
