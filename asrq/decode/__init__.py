"""Decoding: RNN-T search (greedy, modified beam search), CTC greedy, streaming, WER.

Search runs against the :class:`~asrq.decode.interface.RnntComponents` interface, so the eager
model (:class:`TorchRnnt`) and the exported runtimes share it.
"""

from asrq.decode.ctc import ctc_greedy
from asrq.decode.evaluate import EvalResult, evaluate, evaluate_model
from asrq.decode.interface import RnntComponents
from asrq.decode.search import (
    BeamState,
    GreedyState,
    Hypothesis,
    beam_advance,
    greedy_advance,
    greedy_search,
    modified_beam_search,
)
from asrq.decode.streaming import (
    Streamer,
    stream_ctc_greedy_batch,
    stream_decode,
    stream_decode_batch,
)
from asrq.decode.torch_backend import TorchRnnt
from asrq.decode.wer import UttResult, WerStats, compute_wer, score_utterance, write_errors

__all__ = [
    "BeamState",
    "EvalResult",
    "GreedyState",
    "Hypothesis",
    "RnntComponents",
    "Streamer",
    "TorchRnnt",
    "UttResult",
    "WerStats",
    "beam_advance",
    "compute_wer",
    "ctc_greedy",
    "evaluate",
    "evaluate_model",
    "greedy_advance",
    "greedy_search",
    "modified_beam_search",
    "score_utterance",
    "stream_ctc_greedy_batch",
    "stream_decode",
    "stream_decode_batch",
    "write_errors",
]
