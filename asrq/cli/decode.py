"""``asrq decode``: decode a CutSet with a checkpoint and write its WER (thin over
:mod:`asrq.decode.evaluate`)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import click

from asrq.utils.io import AsrqError

_CUTS_NAME = re.compile(r"^librispeech_cuts_(?P<split>.+)\.jsonl(\.gz)?$")


def result_name(split: str, method: str, streaming: bool) -> str:
    """``<split>-<method>[-streaming]``, the stem shared by the WER JSON and the errors file."""
    return f"{split}-{method}" + ("-streaming" if streaming else "")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option(
    "--cuts",
    "cuts_path",
    type=click.Path(path_type=Path),
    default=None,
    help="CutSet manifest with fbank features. "
    "[default: <data.fbank_dir>/librispeech_cuts_<split>.jsonl.gz from the checkpoint's config]",
)
@click.option(
    "--split",
    default=None,
    help="Split name, used for the default --cuts and in output names. "
    "[default: the checkpoint's data.test_split (test-clean), or taken from the --cuts file name]",
)
@click.option(
    "--method",
    type=click.Choice(
        ["greedy", "modified_beam_search", "ctc_greedy", "ctc_prefix_beam", "attention_rescoring"]
    ),
    default="greedy",
    show_default=True,
    help="RNN-T: greedy, modified_beam_search, ctc_greedy (CTC head). "
    "ctc_attention: greedy (= ctc_greedy), ctc_prefix_beam, attention_rescoring "
    "(CTC prefix beam n-best rescored by the attention decoder).",
)
@click.option(
    "--beam",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="Beam size (modified_beam_search, ctc_prefix_beam, attention_rescoring).",
)
@click.option(
    "--ctc-weight",
    type=click.FloatRange(min=0.0),
    default=0.5,
    show_default=True,
    help="attention_rescoring: score = ctc_weight * CTC + attention.",
)
@click.option(
    "--max-sym-per-frame",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Most symbols greedy search emits per encoder frame.",
)
@click.option(
    "--streaming/--full-context",
    default=False,
    show_default=True,
    help="Chunk-by-chunk streaming encoder "
    "(the checkpoint's model.streaming chunk_frames/left_frames) or the full-context encoder.",
)
@click.option(
    "--chunk-frames",
    type=click.IntRange(min=1),
    default=None,
    help="Override the streaming chunk (encoder frames, 40 ms each).",
)
@click.option(
    "--left-frames",
    type=click.IntRange(min=0),
    default=None,
    help="Override the streaming left context (encoder frames).",
)
@click.option(
    "--max-utts", type=click.IntRange(min=1), default=None, help="Decode only the first N cuts."
)
@click.option(
    "--max-duration",
    type=float,
    default=200.0,
    show_default=True,
    help="Seconds of audio per batch.",
)
@click.option(
    "--out-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Where wer-*.json and errs-*.txt go. [default: the checkpoint's folder]",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="torch intra-op threads while decoding (1 is often fastest on a busy CPU) "
    "[default: torch's].",
)
@click.option(
    "--progress/--no-progress", default=True, show_default=True, help="Show a progress bar."
)
def decode(
    checkpoint: Path,
    cuts_path: Path | None,
    split: str | None,
    method: str,
    beam: int,
    ctc_weight: float,
    max_sym_per_frame: int,
    streaming: bool,
    chunk_frames: int | None,
    left_frames: int | None,
    max_utts: int | None,
    max_duration: float,
    out_dir: Path | None,
    threads: int | None,
    progress: bool,
) -> None:
    """Decode a CutSet with CHECKPOINT and report its word error rate.

    Writes OUT_DIR/wer-<split>-<method>[-streaming].json (WER with its 95% bootstrap interval
    over utterances `lo`/`hi`, words, ins/del/sub, RTF, the settings used, and per utterance
    [cut_id, errors, words] for paired comparisons) and
    OUT_DIR/errs-<split>-<method>[-streaming].txt (per-utterance reference, hypothesis and
    alignment).

    \b
      asrq decode exp/mini/model.pt
      asrq decode exp/mini/model.pt --split dev-clean --method modified_beam_search --beam 4
      asrq decode exp/mini/model.pt --streaming --max-utts 100
      asrq decode exp/hybrid/model.pt --method attention_rescoring --beam 10
    """
    try:
        _decode(
            checkpoint,
            cuts_path,
            split,
            method,
            beam,
            max_sym_per_frame,
            streaming,
            chunk_frames,
            left_frames,
            max_utts,
            max_duration,
            out_dir,
            threads,
            progress,
            ctc_weight,
        )
    except AsrqError as e:  # the root group does the same; this keeps ``decode`` alone consistent
        click.echo(f"error: {e}", err=True)
        sys.exit(2)


def _decode(
    checkpoint: Path,
    cuts_path: Path | None,
    split: str | None,
    method: str,
    beam: int,
    max_sym_per_frame: int,
    streaming: bool,
    chunk_frames: int | None,
    left_frames: int | None,
    max_utts: int | None,
    max_duration: float,
    out_dir: Path | None,
    threads: int | None,
    progress: bool,
    ctc_weight: float = 0.5,
) -> None:
    import torch

    from asrq.decode.evaluate import evaluate_model
    from asrq.decode.wer import write_errors
    from asrq.train.checkpoint import load_model
    from asrq.utils.io import atomic_write_json

    if max_duration <= 0:
        raise AsrqError("--max-duration must be > 0")
    loaded = load_model(checkpoint)
    cfg = loaded.config
    if cuts_path is None:
        split = split or cfg.data.test_split
        cuts_path = Path(cfg.data.fbank_dir) / f"librispeech_cuts_{split}.jsonl.gz"
        if not cuts_path.is_file():
            raise AsrqError(
                f"{cuts_path}: cuts manifest not found (from the checkpoint's data.fbank_dir); "
                "pass --cuts or prepare the data with `asrq data prepare librispeech`"
            )
    elif split is None:
        m = _CUTS_NAME.match(cuts_path.name)
        split = m.group("split") if m else cuts_path.name.split(".")[0]
    chunk = chunk_frames or cfg.model.streaming.chunk_frames
    left = cfg.model.streaming.left_frames if left_frames is None else left_frames
    res = evaluate_model(
        loaded.model,
        loaded.sp,
        cuts_path,
        method=method,
        streaming=streaming,
        chunk_frames=chunk,
        left_frames=left,
        max_utts=max_utts,
        beam=beam,
        max_sym_per_frame=max_sym_per_frame,
        max_duration=max_duration,
        progress=progress,
        threads=threads,
        ctc_weight=ctc_weight,
    )
    out_dir = out_dir or checkpoint.parent
    name = result_name(split, method, streaming)
    settings = {
        "checkpoint": str(checkpoint),
        "cuts": str(cuts_path),
        "split": split,
        "method": method,
        "beam": beam
        if method in ("modified_beam_search", "ctc_prefix_beam", "attention_rescoring")
        else None,
        "ctc_weight": ctc_weight if method == "attention_rescoring" else None,
        "head": cfg.model.head,
        "max_sym_per_frame": max_sym_per_frame if method == "greedy" else None,
        "streaming": streaming,
        "chunk_frames": chunk if streaming else None,
        "left_frames": left if streaming else None,
        "max_utts": max_utts,
        "max_duration": max_duration,
        "threads": threads or torch.get_num_threads(),
        "step": loaded.meta.get("step"),
    }
    wer_path = out_dir / f"wer-{name}.json"
    errs_path = out_dir / f"errs-{name}.txt"
    summary = res.summary(per_utterance=True)
    atomic_write_json(wer_path, {**summary, "config": settings})
    write_errors(errs_path, res.results, title=f"{checkpoint} {name}")
    click.echo(
        f"%WER {res.wer:.2f} [{res.errors} / {res.num_words}, {res.ins} ins, {res.dels} del, "
        f"{res.subs} sub] [95% CI {summary['lo']}, {summary['hi']}] "
        f"{name}: {res.num_utts} utts, RTF {res.rtf:.4f} ({res.seconds:.1f} s for "
        f"{res.audio_seconds:.1f} s of audio)"
    )
    click.echo(f"wrote {wer_path} and {errs_path}")
