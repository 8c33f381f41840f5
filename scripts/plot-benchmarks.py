#!/usr/bin/env python3
r"""Draw benchmark results as SVG bar charts, for docs/benchmarks.md. Standard library only.

Usage:
    scripts/plot-benchmarks.py RESULTS.csv [--out-dir DIR] [--prefix NAME-] [--title TEXT]
    scripts/plot-benchmarks.py --generation GENERATION.csv --prefix generation- [--title TEXT]

Reads a CSV with a header row holding these columns (any order; other columns are
ignored; one row per system, input and concurrency of one run):

    input        what was sent, as a label: "8 tokens", "107 tokens", ...
    system       the server measured: "zerobatch", "zerobatch bf16", "TEI 1.9.3",
                 "FastAPI + sentence-transformers", ...
    concurrency  open connections of the load generator (an integer)
    req_per_s    successful requests per second over the run
    p50_ms       median latency, milliseconds
    p99_ms       99th percentile latency, milliseconds
    peak_rss_mb  the server's peak resident memory during the run, MB

A number left empty is drawn as a missing bar marked "n/a". The same system, input and
concurrency twice is an error.

Writes into DIR (default docs/img/, relative to the repository root), each with one panel
per input (each panel has its own scale, starting at zero), groups by concurrency, one bar
per system in the same colour in every chart:

    PREFIXthroughput.svg   req_per_s    (higher is better)
    PREFIXlatency-p50.svg  p50_ms       (lower is better)
    PREFIXlatency-p99.svg  p99_ms       (lower is better)
    PREFIXpeak-rss.svg     peak_rss_mb  (lower is better)

Inputs and systems keep the order of their first row in the CSV; concurrencies are sorted.
The output depends only on the CSV and the options, so redrawing the same data gives the
same files.
"""

import argparse
import csv
import math
import os
import sys
from xml.sax.saxutils import escape

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METRICS = [
    # (column, file name, title, unit, better)
    ("req_per_s", "throughput.svg", "Throughput", "requests/s", "higher is better"),
    ("p50_ms", "latency-p50.svg", "Median latency, p50", "ms", "lower is better"),
    ("p99_ms", "latency-p99.svg", "Tail latency, p99", "ms", "lower is better"),
    ("peak_rss_mb", "peak-rss.svg", "Peak memory, RSS", "MB", "lower is better"),
]
# With --generation (scripts/compare-generation.sh's CSV): per-token metrics instead.
GENERATION_METRICS = [
    ("tokens_per_s", "throughput.svg", "Generated tokens per second, all streams", "tokens/s", "higher is better"),
    ("ttft_p50_ms", "ttft-p50.svg", "Time to first token, p50", "ms", "lower is better"),
    ("itl_p50_ms", "itl-p50.svg", "Inter-token latency, p50", "ms", "lower is better"),
    ("itl_p99_ms", "itl-p99.svg", "Inter-token latency, p99", "ms", "lower is better"),
    ("peak_rss_mb", "peak-rss.svg", "Peak memory, RSS", "MB", "lower is better"),
]
# Colour-blind-safe (Okabe-Ito), in order of first appearance of each system.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]
FONT = "font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\""

WIDTH = 820
MARGIN_LEFT, MARGIN_RIGHT = 78, 20
PANEL_HEIGHT, PANEL_GAP = 230, 56
TOP = 86


def read_rows(path, metrics):
    columns = ["input", "system", "concurrency"] + [m[0] for m in metrics]
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            sys.exit(f"{path}: missing column(s) {', '.join(missing)}; the header is {reader.fieldnames}")
        rows, seen = [], {}
        for line, r in enumerate(reader, start=2):
            inp, system = r["input"].strip(), r["system"].strip()
            if not inp or not system:
                sys.exit(f"{path}:{line}: empty input or system")
            try:
                conc = int(r["concurrency"])
            except ValueError:
                sys.exit(f"{path}:{line}: concurrency {r['concurrency']!r} is not an integer")
            key = (inp, system, conc)
            if key in seen:
                sys.exit(f"{path}:{line}: {key} already on line {seen[key]}")
            seen[key] = line
            row = {"input": inp, "system": system, "concurrency": conc}
            for col, *_ in metrics:
                text = (r[col] or "").strip()
                if text == "":
                    row[col] = None
                    continue
                try:
                    v = float(text)
                except ValueError:
                    sys.exit(f"{path}:{line}: {col} {text!r} is not a number")
                if not math.isfinite(v) or v < 0:
                    sys.exit(f"{path}:{line}: {col} {text!r} must be a finite number >= 0")
                row[col] = v
            rows.append(row)
    if not rows:
        sys.exit(f"{path}: no rows")
    return rows


def first_seen(values):
    out = []
    for v in values:
        if v not in out:
            out.append(v)
    return out


def nice_ceiling(v):
    """Top of the axis and tick step: 1, 2, 2.5 or 5 times a power of ten, 4 to 6 ticks."""
    if v <= 0:
        return 1.0, 0.2
    raw = v / 5
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        step = m * mag
        if step * 5 >= v * 1.0001:
            break
    top = step * math.ceil(v * 1.0001 / step)
    return top, step


def fmt(v):
    if v is None:
        return "n/a"
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}".rstrip("0").rstrip(".")
    if v >= 1:
        return f"{v:.2f}".rstrip("0").rstrip(".")
    return f"{v:.3g}"


def text(x, y, s, size=12, anchor="middle", weight="normal", fill="#222", extra=""):
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" {FONT} font-size="{size}" text-anchor="{anchor}" '
        f'font-weight="{weight}" fill="{fill}"{extra}>{escape(str(s))}</text>'
    )


def chart(rows, col, title, unit, better, suptitle):
    inputs = first_seen(r["input"] for r in rows)
    systems = first_seen(r["system"] for r in rows)
    colour = {s: PALETTE[i % len(PALETTE)] for i, s in enumerate(systems)}
    value = {(r["input"], r["system"], r["concurrency"]): r[col] for r in rows}

    # Legend rows: as many systems per row as fit.
    legend, x, y = [], MARGIN_LEFT, 0
    for s in systems:
        w = 26 + 7.2 * len(s) + 22
        if x + w > WIDTH - MARGIN_RIGHT and x > MARGIN_LEFT:
            x, y = MARGIN_LEFT, y + 20
        legend.append((x, y, s))
        x += w
    legend_h = y + 20
    top = TOP + legend_h
    height = top + len(inputs) * (PANEL_HEIGHT + PANEL_GAP) + 8

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height:.0f}" '
        f'viewBox="0 0 {WIDTH} {height:.0f}">',
        f'<rect width="{WIDTH}" height="{height:.0f}" fill="white"/>',
        text(WIDTH / 2, 28, f"{title} ({unit}, {better})", size=17, weight="bold"),
    ]
    if suptitle:
        out.append(text(WIDTH / 2, 48, suptitle, size=12, fill="#555"))
    for lx, ly, s in legend:
        out.append(f'<rect x="{lx:.1f}" y="{62 + ly:.1f}" width="16" height="12" fill="{colour[s]}"/>')
        out.append(text(lx + 22, 73 + ly, s, size=12, anchor="start"))

    plot_w = WIDTH - MARGIN_LEFT - MARGIN_RIGHT
    for p, inp in enumerate(inputs):
        y0 = top + p * (PANEL_HEIGHT + PANEL_GAP)  # panel top
        base = y0 + PANEL_HEIGHT  # the zero line
        concs = sorted({r["concurrency"] for r in rows if r["input"] == inp})
        present = [v for (i, _, _), v in value.items() if i == inp and v is not None]
        axis_top, step = nice_ceiling(max(present) if present else 0)
        scale = (PANEL_HEIGHT - 24) / axis_top  # room above the tallest bar for its label
        out.append(text(MARGIN_LEFT, y0 - 10, f"input: {inp}", size=13, anchor="start", weight="bold"))
        # Grid and y labels.
        n_ticks = int(round(axis_top / step))
        for k in range(n_ticks + 1):
            v = k * step
            yy = base - v * scale
            out.append(
                f'<line x1="{MARGIN_LEFT}" y1="{yy:.1f}" x2="{WIDTH - MARGIN_RIGHT}" y2="{yy:.1f}" '
                f'stroke="{"#888" if k == 0 else "#e3e3e3"}" stroke-width="1"/>'
            )
            out.append(text(MARGIN_LEFT - 8, yy + 4, fmt(v), size=11, anchor="end", fill="#555"))
        out.append(
            text(
                18, y0 + PANEL_HEIGHT / 2, unit, size=11, fill="#555",
                extra=f' transform="rotate(-90 18 {y0 + PANEL_HEIGHT / 2:.1f})"',
            )
        )
        # Bars: one group per concurrency, one bar per system that has a row for this input.
        group_w = plot_w / len(concs)
        in_panel = [s for s in systems if any((inp, s, c) in value for c in concs)]
        bar_w = min(56.0, group_w * 0.8 / max(1, len(in_panel)))
        for g, c in enumerate(concs):
            gx = MARGIN_LEFT + g * group_w
            x0 = gx + (group_w - bar_w * len(in_panel)) / 2
            for b, s in enumerate(in_panel):
                bx = x0 + b * bar_w
                if (inp, s, c) not in value:
                    continue
                v = value[(inp, s, c)]
                label_size = 10 if bar_w >= 34 else 9
                if v is None:
                    out.append(text(bx + bar_w / 2, base - 4, "n/a", size=label_size, fill="#888"))
                    continue
                h = v * scale
                out.append(
                    f'<rect x="{bx + 1:.1f}" y="{base - h:.1f}" width="{bar_w - 2:.1f}" height="{h:.1f}" '
                    f'fill="{colour[s]}"><title>{escape(f"{s}, {inp}, c={c}: {fmt(v)} {unit}")}</title></rect>'
                )
                out.append(text(bx + bar_w / 2, base - h - 4, fmt(v), size=label_size))
            out.append(text(gx + group_w / 2, base + 18, f"concurrency {c}", size=12))
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("csv", help="results CSV (columns in this script's docstring)")
    ap.add_argument("--out-dir", default=os.path.join(REPO_ROOT, "docs", "img"))
    ap.add_argument("--prefix", default="", help="prepended to each file name, e.g. 'minilm-'")
    ap.add_argument("--title", default="", help="a line under each chart's title, e.g. the machine and date")
    ap.add_argument("--generation", action="store_true",
                    help="the CSV is scripts/compare-generation.sh's: draw tokens/s, time to first token, "
                         "inter-token latency and peak RSS")
    args = ap.parse_args()

    metrics = GENERATION_METRICS if args.generation else METRICS
    rows = read_rows(args.csv, metrics)
    os.makedirs(args.out_dir, exist_ok=True)
    for col, name, title, unit, better in metrics:
        if all(r[col] is None for r in rows):
            print(f"skipped {name}: no {col} values", file=sys.stderr)
            continue
        path = os.path.join(args.out_dir, args.prefix + name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(chart(rows, col, title, unit, better, args.title))
        print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
