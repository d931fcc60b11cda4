"""Peak memory and time of the full (torchaudio / asrq) vs pruned RNN-T loss on this CPU.

    python recipes/mini/bench_rnnt_loss.py                     # B=8 T=250 S=60 C=500
    python recipes/mini/bench_rnnt_loss.py --reps 5 --threads 1

Writes exp/bench/rnnt_loss_memory.json and prints a table; see asrq/experiments/rnnt_loss.py for how
memory is measured.
"""

from __future__ import annotations

import argparse

from asrq.experiments.rnnt_loss import VARIANTS, run


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", default="exp/bench/rnnt_loss_memory.json")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--frames", type=int, default=250, help="encoder frames (250 = 10 s at 40 ms)")
    p.add_argument("--symbols", type=int, default=60)
    p.add_argument("--vocab", type=int, default=500)
    p.add_argument("--joiner-dim", type=int, default=256)
    p.add_argument("--prune-range", type=int, default=5)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--variants", default=",".join(VARIANTS))
    a = p.parse_args()
    run(
        out_path=a.out,
        batch=a.batch,
        frames=a.frames,
        symbols=a.symbols,
        vocab=a.vocab,
        joiner_dim=a.joiner_dim,
        prune_range=a.prune_range,
        reps=a.reps,
        threads=a.threads,
        variants=tuple(v for v in a.variants.split(",") if v),
    )


if __name__ == "__main__":
    main()
