"""``asrq transcribe``: audio files -> text with an exported model (thin over
:mod:`asrq.runtime.transcribe`)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from asrq.runtime.backends import BACKENDS
from asrq.utils.io import AsrqError


class _MethodChoice(click.Choice):
    """``click.Choice`` over every head's transcribe methods, read from the runtime head table
    on first use (it imports torch; ``asrq --help`` should not)."""

    def __init__(self) -> None:
        self.case_sensitive = True

    @property
    def choices(self) -> list[str]:  # type: ignore[override]
        from asrq.runtime.heads import transcribe_methods

        return transcribe_methods()


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.argument("audio", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--backend",
    type=click.Choice(list(BACKENDS)),
    default="onnx",
    show_default=True,
    help="Runtime: onnxruntime or the ExecuTorch runtime (XNNPACK).",
)
@click.option(
    "--streaming/--full-context",
    default=False,
    show_default=True,
    help="Decode chunk by chunk with the streaming encoder, or the whole file at once "
    "(RNN-T exports: files over 30 s are cut at pauses into segments of at most 20 s, each "
    "decoded alone: bounded memory for hour-long files).",
)
@click.option(
    "--method",
    type=_MethodChoice(),
    default="greedy",
    show_default=True,
    help="RNN-T: greedy, modified_beam_search. CTC / attention exports: greedy (= ctc_greedy), "
    "ctc_prefix_beam, attention_rescoring (weight: the export config's decode.ctc_weight).",
)
@click.option(
    "--beam",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="Beam size (modified_beam_search, ctc_prefix_beam, attention_rescoring).",
)
@click.option(
    "--threads", type=click.IntRange(min=1), default=1, show_default=True, help="Runtime threads."
)
def transcribe(
    model_dir: Path,
    audio: tuple[Path, ...],
    backend: str,
    streaming: bool,
    method: str,
    beam: int,
    threads: int,
) -> None:
    """Transcribe AUDIO files (wav, flac, mp3, ogg; any rate, mixed to 16 kHz mono) with the
    model exported to MODEL_DIR by `asrq export`.

    \b
    Output: one line per file, in the order given,
      <path><TAB><text>
    Errors (missing or unreadable file, bad model directory) print `error: ...` and exit 2.

    \b
      asrq transcribe exp/mini/export a.wav b.flac
      asrq transcribe exp/mini/export --backend executorch --streaming --threads 2 c.mp3
    """
    from asrq.runtime.transcribe import iter_transcripts

    try:
        for path, text in iter_transcripts(
            model_dir, list(audio), backend, streaming, method, threads, beam
        ):  # type: ignore[arg-type]
            click.echo(f"{path}\t{text}")
    except (
        AsrqError
    ) as e:  # the root group does the same; this keeps ``transcribe`` alone consistent
        click.echo(f"error: {e}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    transcribe()
