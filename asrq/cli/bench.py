"""``asrq bench``: streaming latency / RTF / memory of an exported model per backend and thread
count (thin over :mod:`asrq.bench.runner`)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from asrq.bench.runtimes import EXTRA_RUNTIMES
from asrq.runtime.backends import BACKENDS
from asrq.utils.io import AsrqError


def _int_list(ctx: click.Context, param: click.Parameter, value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        out = [int(v) for v in value.replace(" ", "").split(",") if v]
    except ValueError:
        raise click.BadParameter(
            f"expected comma-separated integers, e.g. 1,2,4 (got {value!r})"
        ) from None
    if not out or any(v < 1 for v in out):
        raise click.BadParameter(f"thread counts must be >= 1 (got {value!r})")
    return out


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option(
    "--backend",
    "backends",
    type=click.Choice([*BACKENDS, *EXTRA_RUNTIMES]),
    multiple=True,
    help="Runtime to measure; repeat for several. sherpa-onnx needs an export made with "
    "--sherpa; native runs the C++ runner of export/runner (asrq-runner, built with CMake on "
    "first use, or $ASRQ_RUNNER) on the .pte programs, in its own process. [default: every "
    "backend in the export, and sherpa-onnx when it has the layout; native only when named]",
)
@click.option(
    "--threads",
    callback=_int_list,
    default=None,
    help="Comma-separated thread counts, e.g. 1,2,4. [default: the export config's bench.threads]",
)
@click.option(
    "--chunk-ms",
    type=click.IntRange(min=1),
    default=None,
    help="Chunk size in ms; must equal the exported chunk (chunk_frames x 40 ms). "
    "[default: the export's]",
)
@click.option(
    "--audio",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Audio file to stream; repeat for several.",
)
@click.option(
    "--cuts",
    type=click.Path(path_type=Path),
    default=None,
    help="A lhotse CutSet manifest to stream instead.",
)
@click.option(
    "--max-files",
    type=click.IntRange(min=1),
    default=None,
    help="Use at most this many files / cuts. [default: the export config's bench.max_files]",
)
@click.option(
    "--seconds",
    type=click.FloatRange(min=0.5),
    default=8.0,
    show_default=True,
    help="Length of the synthetic audio used when neither --audio nor --cuts is given.",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="JSON report path (a PNG chart goes beside it when several runs). "
    "[default: MODEL_DIR/bench.json]",
)
@click.option(
    "--plot/--no-plot", default=True, show_default=True, help="Write the PNG chart (several runs)."
)
@click.option(
    "--isolate/--in-process",
    default=True,
    show_default=True,
    help="Run each (backend, threads) in a fresh subprocess so peak RSS is its own.",
)
@click.option(
    "--layer-table",
    is_flag=True,
    help="MODEL_DIR is a supernet checkpoint (model.pt): time the parts (subsampling, one "
    "encoder layer, joiner + predictor) of every subnet of its search space on this machine and "
    "write the per-device latency table that `asrq search --latency-table` predicts from. "
    "[--out default: beside the checkpoint]",
)
@click.option(
    "--repeats",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="Timings per latency-table entry, median (--layer-table only).",
)
@click.option(
    "--runtime",
    type=click.Choice(["eager", *BACKENDS]),
    default="eager",
    show_default=True,
    help="--layer-table: time the parts in eager PyTorch, or export each part as its own small "
    "program and time it in that deployment runtime (onnxruntime; ExecuTorch + XNNPACK).",
)
@click.option(
    "--symbols-per-frame",
    type=click.FloatRange(0.0, 1.0),
    default=1.0,
    show_default=True,
    help="--layer-table --runtime onnx|executorch: greedy symbols emitted per encoder frame "
    "assumed for the predictor calls (1.0: the upper bound).",
)
@click.option(
    "--cache-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="--layer-table --runtime onnx|executorch: where exported part programs are cached. "
    "[default: beside --out, <out>.parts/]",
)
@click.option(
    "--memory-from",
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="With --layer-table: `asrq bench` reports (bench.json) of exports measured on the same "
    "device; their model_peak_bytes per backend, fitted linear in the weight bytes, go into "
    "the table so `asrq search --max-mb` budgets measured memory. Repeat (two or more sizes "
    "give a fixed + per-byte fit).",
)
def bench(
    model_dir: Path,
    backends: tuple[str, ...],
    threads: list[int] | None,
    chunk_ms: int | None,
    audio: tuple[Path, ...],
    cuts: Path | None,
    max_files: int | None,
    seconds: float,
    out: Path | None,
    plot: bool,
    isolate: bool,
    layer_table: bool,
    repeats: int,
    memory_from: tuple[Path, ...],
    runtime: str,
    symbols_per_frame: float,
    cache_dir: Path | None,
) -> None:
    """Benchmark streaming recognition with the model exported to MODEL_DIR.

    Simulates a device receiving audio in chunks: per chunk, the exported streaming encoder plus
    greedy search. Reports per-chunk latency (p50/p90/p99 ms), real-time factor, load time, peak
    RSS (each run in its own process) and file sizes, as a table, a JSON report (device,
    backend, threads, model and subnet, each metric) and a bar chart when comparing runs.
    Without --audio/--cuts it streams a few seconds of synthetic audio.

    \b
      asrq bench exp/mini/export --threads 1,2
      asrq bench exp/mini/export --backend executorch --threads 1,2,4 --chunk-ms 320 --audio a.wav
      asrq bench exp/mini/export --max-files 20 \\
          --cuts data/mini/fbank/librispeech_cuts_test-clean.jsonl.gz
      asrq bench exp/mini_supernet/model.pt --layer-table --threads 1 --out tables/host-1t.json
      asrq bench exp/mini_supernet/model.pt --layer-table --runtime executorch --out et-1t.json
    """
    if layer_table:
        _layer_table(
            model_dir,
            out,
            (threads or [1])[0],
            repeats,
            list(memory_from),
            runtime,
            symbols_per_frame,
            cache_dir,
        )
        return
    from asrq.bench.report import format_table
    from asrq.bench.runner import run_bench
    from asrq.runtime.model_dir import read_model_dir

    try:
        md = read_model_dir(model_dir)  # read once, passed down
        bench_cfg = md.meta.get("config", {}).get("bench", {})
        report = run_bench(
            md,
            backends or None,
            threads or bench_cfg.get("threads", [1, 2]),
            chunk_ms,
            list(audio),
            cuts,
            out,
            max_files or bench_cfg.get("max_files", 10),
            seconds,
            isolate=isolate,
            plot=plot,
            log_fn=click.echo,
        )
    except AsrqError as e:  # the root group does the same; this keeps ``bench`` alone consistent
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    click.echo(format_table(report))
    click.echo(f"wrote {report['json']}" + (f" and {report['chart']}" if "chart" in report else ""))


def _layer_table(
    checkpoint: Path,
    out: Path | None,
    threads: int,
    repeats: int,
    memory_from: list[Path],
    runtime: str = "eager",
    symbols_per_frame: float = 1.0,
    cache_dir: Path | None = None,
) -> None:
    from asrq.supernet.latency_table import build_latency_table

    out = out or checkpoint.parent / "latency_table.json"
    try:
        timer = None
        if runtime != "eager":
            from asrq.export.latency import RuntimePartTimer

            timer = RuntimePartTimer(
                runtime,
                threads,
                cache_dir or out.with_name(out.name + ".parts"),
                repeats,
                symbols_per_frame,
                click.echo,
            )
        table = build_latency_table(
            checkpoint,
            out,
            threads=threads,
            repeats=repeats,
            log_fn=click.echo,
            memory_from=memory_from,
            timer=timer,
        )
    except AsrqError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    click.echo(
        f"{len(table.entries)} entries ({table.runtime}, {threads} thread(s), chunk "
        f"{table.chunk_frames} frames)"
        f" -> {out}"
    )


if __name__ == "__main__":
    bench()
