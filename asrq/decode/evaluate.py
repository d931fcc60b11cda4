"""Decode a CutSet with a model and score it: WER, per-utterance errors, speed.

Used by ``asrq decode`` and by the training loop's periodic dev WER (keep it lean: features
are read with ``cut.load_features()``, utterances sorted by duration and packed into batches
of up to ``max_duration`` seconds, no DataLoader workers).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from asrq.decode.bootstrap import LEVEL, N_BOOT, wer_ci
from asrq.decode.heads import DECODERS, SearchOptions
from asrq.decode.streaming import LOG_EPSILON
from asrq.decode.wer import UttResult, compute_wer, score_utterance
from asrq.utils.io import AsrqError

Method = Literal[
    "greedy", "modified_beam_search", "ctc_greedy", "ctc_prefix_beam", "attention_rescoring"
]
METHODS: tuple[str, ...] = (
    "greedy",
    "modified_beam_search",
    "ctc_greedy",
    "ctc_prefix_beam",
    "attention_rescoring",
)


@dataclass
class EvalResult:
    """Scores of one decoding run. ``wer`` in percent; ``seconds`` is the wall time of the
    decode loop (feature loading + model + search), ``rtf = seconds / audio_seconds``."""

    wer: float
    num_words: int
    ins: int
    dels: int
    subs: int
    num_utts: int
    seconds: float
    audio_seconds: float
    results: list[UttResult] = field(default_factory=list, repr=False)

    @property
    def errors(self) -> int:
        return self.ins + self.dels + self.subs

    @property
    def rtf(self) -> float:
        return self.seconds / self.audio_seconds if self.audio_seconds > 0 else 0.0

    @property
    def utts_per_second(self) -> float:
        return self.num_utts / self.seconds if self.seconds > 0 else 0.0

    def interval(self, n_boot: int = N_BOOT, seed: int = 0) -> dict[str, Any]:
        """95% bootstrap interval of the WER over utterances (:func:`asrq.decode.bootstrap.wer_ci`):
        ``{"wer", "lo", "hi", "num_utts", "num_words", "errors", "n_boot", "level", "seed"}``."""
        return wer_ci(self.results, n_boot=n_boot, seed=seed)

    def per_utterance(self) -> list[list[Any]]:
        """``[cut_id, errors, ref_words]`` per utterance (manifest order): what a later paired
        comparison (:func:`asrq.decode.bootstrap.paired_wer_diff`) needs."""
        return [[r.cut_id, r.errors, r.num_words] for r in self.results]

    def summary(self, per_utterance: bool = False) -> dict[str, Any]:
        """JSON-ready totals with the WER's 95% bootstrap interval (``lo``, ``hi``, percent;
        ``None`` without per-utterance results); ``wer`` None if not finite.
        ``per_utterance``: also ``utterances``, :meth:`per_utterance`."""
        wer = self.wer if self.wer == self.wer and abs(self.wer) != float("inf") else None
        ci = self.interval() if self.results and self.num_words > 0 else None
        out = {
            "wer": None if wer is None else round(wer, 4),
            "lo": None if ci is None else round(ci["lo"], 4),
            "hi": None if ci is None else round(ci["hi"], 4),
            "level": LEVEL,
            "n_boot": N_BOOT,
            "num_words": self.num_words,
            "errors": self.errors,
            "ins": self.ins,
            "del": self.dels,
            "sub": self.subs,
            "num_utts": self.num_utts,
            "seconds": round(self.seconds, 3),
            "audio_seconds": round(self.audio_seconds, 3),
            "rtf": round(self.rtf, 5),
            "utts_per_second": round(self.utts_per_second, 3),
        }
        if per_utterance:
            out["utterances"] = self.per_utterance()
        return out


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------
def load_eval_cuts(cuts: Any, max_utts: int | None = None) -> list[Any]:
    """A CutSet (or its manifest path) -> list of its first ``max_utts`` cuts (manifest order)."""
    from lhotse import CutSet

    if isinstance(cuts, str | Path):
        path = Path(cuts)
        if not path.is_file():
            raise AsrqError(
                f"{path}: cuts manifest not found; make it with `asrq data prepare librispeech` or "
                "pass --cuts"
            )
        try:
            cuts = CutSet.from_file(path)
        except Exception as e:  # lhotse raises plain exceptions for unknown content
            raise AsrqError(
                f"{path}: not a readable lhotse CutSet manifest ({type(e).__name__}: {e})"
            ) from e
        if not isinstance(cuts, CutSet):
            raise AsrqError(f"{path}: expected a CutSet manifest, got {type(cuts).__name__}")
    out = []
    for c in cuts:
        if max_utts is not None and len(out) >= max_utts:
            break
        out.append(c)
    for c in out:
        if not c.has_features:
            raise AsrqError(
                f"cut {c.id}: no features attached; compute fbank with `asrq data prepare`"
            )
    return out


def make_batches(cuts: Sequence[Any], max_duration: float) -> list[list[Any]]:
    """Sort by duration (longest first) and pack into batches of at most ``max_duration``
    seconds (a longer single cut gets its own batch)."""
    batches: list[list[Any]] = []
    cur: list[Any] = []
    total = 0.0
    for c in sorted(cuts, key=lambda c: c.duration, reverse=True):
        if cur and total + c.duration > max_duration:
            batches.append(cur)
            cur, total = [], 0.0
        cur.append(c)
        total += c.duration
    if cur:
        batches.append(cur)
    return batches


def collate_features(cuts: Sequence[Any]) -> tuple[Tensor, Tensor]:
    """Load and pad features: -> (N, T, F) float32 padded with LOG_EPSILON, lengths (N,)."""
    feats = [torch.from_numpy(c.load_features()).float() for c in cuts]
    lens = torch.tensor([f.shape[0] for f in feats], dtype=torch.int64)
    out = torch.full(
        (len(feats), int(lens.max()), feats[0].shape[1]), LOG_EPSILON, dtype=torch.float32
    )
    for i, f in enumerate(feats):
        out[i, : f.shape[0]] = f
    return out, lens


def cut_text(cut: Any) -> str:
    return " ".join(s.text for s in cut.supervisions if s.text).upper()


# --------------------------------------------------------------------------------------------
# decoding
# --------------------------------------------------------------------------------------------
def evaluate_model(
    model: torch.nn.Module,
    sp: Any,
    cuts: Any,
    method: Method = "greedy",
    streaming: bool = False,
    chunk_frames: int = 8,
    left_frames: int = 64,
    max_utts: int | None = None,
    beam: int = 4,
    max_sym_per_frame: int = 1,
    max_duration: float = 200.0,
    progress: bool = True,
    threads: int | None = None,
    ctc_weight: float = 0.5,
) -> EvalResult:
    """Decode ``cuts`` (CutSet or manifest path) with ``model`` and score against the
    supervision texts (upper-cased; WER over whitespace-split words of ``sp.decode(tokens)``).

    ``method`` must suit the model's head (:data:`asrq.config.HEAD_METHODS`); ``ctc_weight`` weighs
    the CTC
    score in ``attention_rescoring``.

    The model runs in eval mode on its own device and its train/eval mode is restored after.
    ``threads``: torch intra-op threads while decoding (restored after). The search runs many
    tiny ops, so on CPU 1 thread is often fastest and a busy machine makes more threads much
    slower (measured: 6x).
    """
    from tqdm import tqdm

    if method not in METHODS:
        raise AsrqError(f"unknown decoding method {method!r}; choose one of {', '.join(METHODS)}")
    head = DECODERS[model.head]
    if method not in head.methods:
        raise AsrqError(
            f"method {method}: not for a {model.head} model; choose one of "
            f"{', '.join(head.methods)}"
        )
    if method == "ctc_greedy" and model.ctc is None:
        raise AsrqError(
            "method ctc_greedy: this model has no CTC head (model.rnnt.ctc_head: false)"
        )
    cut_list = load_eval_cuts(cuts, max_utts)
    comp = head.components(model, chunk_frames, left_frames)
    opts = SearchOptions(beam, max_sym_per_frame, ctc_weight)
    was_training = model.training
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    model.eval()
    results: dict[int, UttResult] = {}  # keyed by id(cut): cut ids need not be unique
    audio = 0.0
    t0 = time.perf_counter()
    try:
        with (
            torch.inference_mode(),
            tqdm(total=len(cut_list), desc="decode", unit="utt", disable=not progress) as bar,
        ):
            for batch in make_batches(cut_list, max_duration):
                feats, lens = collate_features(batch)
                hyps = head.decode_batch(comp, feats, lens, method, streaming, opts)
                for c, toks in zip(batch, hyps, strict=True):
                    results[id(c)] = score_utterance(
                        c.id, cut_text(c), sp.decode([int(t) for t in toks]).upper()
                    )
                    audio += c.duration
                bar.update(len(batch))
    finally:
        model.train(was_training)
        torch.set_num_threads(old_threads)
    seconds = time.perf_counter() - t0
    ordered = [results[id(c)] for c in cut_list]  # manifest order
    st = compute_wer(ordered)
    return EvalResult(
        st.wer, st.num_words, st.ins, st.dels, st.subs, st.num_utts, seconds, audio, ordered
    )


def evaluate(
    loaded: Any,
    cuts_path: Any,
    method: Method = "greedy",
    streaming: bool = False,
    max_utts: int | None = None,
    beam: int = 4,
    max_duration: float = 200.0,
    progress: bool = True,
    max_sym_per_frame: int = 1,
    threads: int | None = None,
    ctc_weight: float = 0.5,
) -> EvalResult:
    """:func:`evaluate_model` for a :class:`~asrq.train.checkpoint.LoadedModel`; streaming uses
    the checkpoint's ``model.streaming.chunk_frames`` / ``left_frames``."""
    s = loaded.config.model.streaming
    return evaluate_model(
        loaded.model,
        loaded.sp,
        cuts_path,
        method=method,
        streaming=streaming,
        chunk_frames=s.chunk_frames,
        left_frames=s.left_frames,
        max_utts=max_utts,
        beam=beam,
        max_sym_per_frame=max_sym_per_frame,
        max_duration=max_duration,
        progress=progress,
        threads=threads,
        ctc_weight=ctc_weight,
    )
