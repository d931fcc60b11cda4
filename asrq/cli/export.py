"""``asrq export``: a checkpoint -> ONNX + ExecuTorch programs with parity checks (thin over
:mod:`asrq.export.pipeline`)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from asrq.utils.io import AsrqError


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    required=True,
    help="Model directory to write (replaced if it holds a previous export).",
)
@click.option(
    "--onnx/--no-onnx",
    default=None,
    help="Write ONNX programs. [default: the checkpoint's export.onnx]",
)
@click.option(
    "--executorch/--no-executorch",
    default=None,
    help="Write ExecuTorch .pte programs (XNNPACK, fp32). "
    "[default: the checkpoint's export.executorch]",
)
@click.option(
    "--chunk-frames",
    type=click.IntRange(min=1),
    default=None,
    help="Streaming chunk C in encoder frames (40 ms each). "
    "[default: model.streaming.chunk_frames]",
)
@click.option(
    "--left-frames",
    type=click.IntRange(min=0),
    default=None,
    help="Streaming left context in encoder frames. [default: model.streaming.left_frames]",
)
@click.option(
    "--max-seconds",
    type=click.FloatRange(min=0.1),
    default=30.0,
    show_default=True,
    help="Longest input of the ExecuTorch full-context encoder (memory is planned for it).",
)
@click.option(
    "--opset", type=click.IntRange(min=13), default=None, help="ONNX opset. [default: export.opset]"
)
@click.option(
    "--name",
    default=None,
    help="Model name recorded in the metadata. [default: checkpoint file stem]",
)
@click.option(
    "--tol",
    type=float,
    default=1e-4,
    show_default=True,
    help="Parity tolerance (max abs error vs eager).",
)
@click.option(
    "--sherpa",
    is_flag=True,
    help="Also write MODEL_DIR/sherpa/ (encoder.onnx, decoder.onnx, joiner.onnx, tokens.txt) in "
    "the layout sherpa-onnx's streaming transducer loads (model_type conformer; Conformer RNN-T "
    "only; needs --onnx). `asrq bench --backend sherpa-onnx` measures it.",
)
@click.option(
    "--quant",
    type=click.Choice(["int8", "int8-dynamic", "w4a8"]),
    default=None,
    help="Quantize: int8 (static; a QAT checkpoint's learned scales, or PTQ calibrated on dev "
    "cuts), int8-dynamic (PTQ), w4a8 (int4 weights; QAT int4 or PTQ). Parity is then an SQNR "
    "bound against the eager (fake-quant) model. [default: fp32]",
)
@click.option(
    "--calib-cuts",
    type=click.Path(path_type=Path),
    default=None,
    help="Cuts manifest for --quant int8 from an fp32 checkpoint. [default: the config's dev cuts]",
)
@click.option(
    "--min-sqnr",
    type=float,
    default=None,
    help="SQNR bound (dB) of a --quant export against its eager reference. [default: the "
    "scheme's: 30 for int8, 20 for int8-dynamic, 10 / 15 for w4a8 PTQ / QAT]",
)
@click.option(
    "--onnx-float-outputs",
    is_flag=True,
    help="--quant int8: the ONNX linear layers write float (their output Q/DQ pairs dropped; "
    "faster in onnxruntime). The program is then not the trained model: parity is measured "
    "against the fake-quant model without those quantizers. [default: every quantizer kept]",
)
@click.option(
    "--calib-utts",
    type=click.IntRange(min=1),
    default=32,
    show_default=True,
    help="Utterances of --calib-cuts to calibrate on.",
)
def export(
    checkpoint: Path,
    out_dir: Path,
    onnx: bool | None,
    executorch: bool | None,
    chunk_frames: int | None,
    left_frames: int | None,
    max_seconds: float,
    opset: int | None,
    name: str | None,
    tol: float,
    sherpa: bool,
    quant: str | None,
    calib_cuts: Path | None,
    min_sqnr: float | None,
    calib_utts: int,
    onnx_float_outputs: bool,
) -> None:
    """Export CHECKPOINT to a deployable model directory.

    \b
    Programs (each as <name>.onnx and/or <name>.pte):
      encoder            fbank (N, T, 80), lengths -> encoder frames (N, T/4, J)
      encoder_streaming  one chunk of 4C+3 fbank frames + states -> (N, C, J) + states
      predictor          last context_size tokens -> (N, J)
      joiner             encoder frame, predictor output -> logits (N, V)
    plus metadata.json (resolved config, shapes, parity, sizes, versions), bpe.model and
    tokens.txt. Every program is checked against the eager model in its runtime
    (onnxruntime, ExecuTorch); the export fails if any output differs by more than --tol.

    \b
      asrq export exp/mini/model.pt --out exp/mini/export
      asrq export exp/mini/model.pt --out exp/mini/export-onnx --no-executorch --chunk-frames 16
      asrq export exp/mini/model.pt --out exp/mini/export --sherpa   # + sherpa-onnx streaming
      asrq export exp/mini_qat/model.pt --quant int8 --out exp/mini_qat/export-int8
    """
    from asrq.export.parity import ParityError
    from asrq.export.pipeline import export_model

    t0 = time.perf_counter()
    try:
        res = export_model(
            checkpoint,
            out_dir,
            onnx=onnx,
            executorch=executorch,
            chunk_frames=chunk_frames,
            left_frames=left_frames,
            max_seconds=max_seconds,
            opset=opset,
            name=name,
            tol=tol,
            sherpa=sherpa,
            log_fn=click.echo,
            quant=quant,
            calib_cuts=calib_cuts,
            calib_utts=calib_utts,
            onnx_float_outputs=onnx_float_outputs,
            min_sqnr=min_sqnr,
        )
    except AsrqError as e:  # the root group does the same; this keeps ``export`` alone consistent
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except ParityError as e:
        click.echo(e.report.table(), err=True)
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    sizes = res.metadata["sizes"]
    total = ", ".join(f"{b} {s['total'] / 1e6:.2f} MB" for b, s in sizes.items())
    click.echo(
        f"wrote {res.out_dir} ({total}; parity max abs err {res.parity.max_abs_err():.2e}) "
        f"in {time.perf_counter() - t0:.0f} s"
    )


if __name__ == "__main__":
    export()
