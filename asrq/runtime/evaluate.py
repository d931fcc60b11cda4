"""Score an exported model directory on a cuts manifest: the WER of the deployable files.

:func:`evaluate_export` decodes every cut's stored fbank through the export's own runtime
(onnxruntime or ExecuTorch, the head's ``asrq transcribe`` transcriber: full context, or chunk by
chunk through the streaming encoder) and returns the same
:class:`~asrq.decode.evaluate.EvalResult` as eager decoding, so a quantized export and its eager
(fake-quant) reference can be compared utterance by utterance
(:func:`asrq.decode.bootstrap.paired_wer_diff`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from asrq.decode.evaluate import EvalResult, cut_text, load_eval_cuts
from asrq.decode.wer import compute_wer, score_utterance
from asrq.runtime.heads import runtime_head
from asrq.runtime.model_dir import ModelDir, read_model_dir


def evaluate_export(
    model_dir: str | Path | ModelDir,
    cuts: Any,
    backend: str = "onnx",
    streaming: bool = False,
    method: str = "greedy",
    threads: int = 1,
    beam: int = 4,
    max_utts: int | None = None,
    progress: bool = False,
) -> EvalResult:
    """Decode ``cuts`` (CutSet or manifest path; features attached) with the exported programs
    of ``model_dir`` on ``backend`` and score them against the supervision texts (upper-cased,
    as :func:`asrq.decode.evaluate.evaluate_model`). Results are in manifest order."""
    from tqdm import tqdm

    md = read_model_dir(model_dir)
    head = runtime_head(md)
    head.check_method(method)
    sp = md.tokenizer()
    decode = head.transcriber(md, backend, streaming, method, threads, beam)
    cut_list = load_eval_cuts(cuts, max_utts)
    results = []
    audio = 0.0
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    try:
        for c in tqdm(cut_list, desc=f"decode {backend}", unit="utt", disable=not progress):
            feats = torch.from_numpy(c.load_features()).float()  # (T, F)
            hyp = sp.decode(decode(feats)).upper()
            results.append(score_utterance(c.id, cut_text(c), hyp))
            audio += c.duration
    finally:
        torch.set_num_threads(old_threads)
    seconds = time.perf_counter() - t0
    st = compute_wer(results)
    return EvalResult(
        st.wer, st.num_words, st.ins, st.dels, st.subs, st.num_utts, seconds, audio, results
    )
