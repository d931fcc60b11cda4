"""Predicted (per-part latency table) vs measured (end-to-end streaming benchmark) chunk latency of
5 subnets of a supernet, through one deployment runtime (issue 13, part 4).

    python recipes/mini/latency_pred.py exp/mini_supernet/model.pt --out exp/latency_pred
    python recipes/mini/latency_pred.py --untrained recipes/mini/supernet.yaml --runtime onnx

``--untrained CONFIG`` times a randomly initialised supernet of that experiment YAML (latency
does not depend on the weights; no data or training needed). Writes
OUT/latency_pred_vs_measured.json and .md; see asrq/experiments/latency.py for what is measured.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from asrq.experiments.latency import predicted_vs_measured, untrained_supernet


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("checkpoint", nargs="?", default=None, help="supernet checkpoint (model.pt)")
    p.add_argument("--untrained", default=None, help="experiment YAML: time an untrained supernet")
    p.add_argument("--out", default="exp/latency_pred")
    p.add_argument("--runtime", choices=["executorch", "onnx"], default="executorch")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--num-subnets", type=int, default=5)
    p.add_argument("--repeats", type=int, default=30, help="timings per table part (median)")
    p.add_argument("--bench-repeats", type=int, default=3, help="benchmark runs per subnet")
    p.add_argument("--seconds", type=float, default=8.0, help="synthetic audio per benchmark run")
    p.add_argument("--symbols-per-frame", type=float, default=1.0)
    p.add_argument("--table", default=None, help="predict from this runtime table (no rebuild)")
    a = p.parse_args()
    out = Path(a.out)
    ckpt = a.checkpoint
    if a.untrained:
        ckpt = out / "supernet.pt"
        if not ckpt.is_file():
            untrained_supernet(a.untrained, ckpt)
    if ckpt is None:
        p.error("give a supernet checkpoint or --untrained CONFIG")
    r = predicted_vs_measured(
        ckpt,
        out,
        runtime=a.runtime,
        threads=a.threads,
        num_subnets=a.num_subnets,
        repeats=a.repeats,
        bench_repeats=a.bench_repeats,
        seconds=a.seconds,
        symbols_per_frame=a.symbols_per_frame,
        table=a.table,
        log_fn=print,
    )
    print((out / "latency_pred_vs_measured.md").read_text())
    print(
        f"max |error| {r['max_abs_error_pct']}%, "
        f"within 15%: {r['within_15pct']}/{len(r['subnets'])}"
    )


if __name__ == "__main__":
    main()
