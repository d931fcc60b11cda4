"""sherpa-onnx's streaming transducer layout (``asrq export --sherpa`` -> ``<out>/sherpa/``).

sherpa-onnx 2.0.1's ``OnlineRecognizer.from_transducer`` picks its encoder implementation by the
encoder's ``model_type`` metadata; its ``conformer`` contract (``../shared/notes/sherpa-onnx.md``,
``sherpa-onnx/csrc/online-conformer-transducer-model.cc``) fits asrq's streaming Conformer:

- ``encoder.onnx``: ``x (N, T, 80)`` with ``T = 4C + 3`` (metadata ``T``; sherpa then advances by
  ``decode_chunk_len = 4C`` frames, so 3 frames overlap the next call exactly as asrq's windows
  do), ``cached_attn (layers, left_context, N, encoder_dim)``, ``cached_conv (layers, K - 1, N,
  encoder_dim)``, ``processed_frames (N,)`` int64 (fbank frames sherpa has consumed) ->
  ``encoder_out (N, C, J)``, ``new_attn``, ``new_conv``. The graph wraps asrq's
  ``encoder_streaming`` program: it repacks the caches (asrq's ``attn_cache (L, N, f * left,
  2D / f)`` of keys|values holds ``L * 2 left * D`` numbers, sherpa's is ``(L, 2 left, N, D)``:
  ``left_context = 2 * left``; ``conv_cache (L, N, D, K - 1)`` is transposed), divides
  ``processed_frames`` by the subsampling (asrq counts encoder frames) and feeds ``x_lens = T``
  (sherpa only calls with full windows). The global CMVN is inside the graph (the subsampling's
  first op); sherpa computes kaldi-native-fbank features that match lhotse's.
- ``decoder.onnx`` / ``joiner.onnx``: asrq's ``predictor.onnx`` (``y (N, context_size)`` ->
  ``(N, J)``, metadata ``vocab_size`` / ``context_size``) and ``joiner.onnx``, unchanged.
- ``tokens.txt``: ``<piece> <id>``; blank is id 0. sherpa treats a piece named ``<unk>`` as blank,
  asrq emits it like any token (SentencePiece renders it ``⁇``): it is written as ``⁇`` so both
  decode the same ids.

Only the Conformer RNN-T has this layout (sherpa's ``conformer`` states are attention + conv
caches); other encoders raise a clear error.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from asrq.export.onnx_export import export_onnx
from asrq.export.rnnt import StreamingEncoderProgram
from asrq.export.spec import MAX_BATCH, ProgramSpec
from asrq.runtime.model_dir import SUBSAMPLING
from asrq.utils.io import AsrqError, atomic_write_text

#: the sub-directory ``asrq export --sherpa`` writes
SHERPA_DIR = "sherpa"
#: sherpa-onnx's ``model_type`` for this layout
MODEL_TYPE = "conformer"
#: what sherpa's Python examples append to a stream before ``input_finished`` (seconds)
TAIL_PADDING_S = 0.66
FILES = ("encoder.onnx", "decoder.onnx", "joiner.onnx", "tokens.txt")


class SherpaConformerEncoder(nn.Module):
    """asrq's streaming encoder behind sherpa-onnx's ``conformer`` signature (module doc)."""

    def __init__(self, model: nn.Module, left_frames: int) -> None:
        super().__init__()
        cfg = model.encoder.cfg
        self.inner = StreamingEncoderProgram(model)
        self.layers, self.d, self.fold = cfg.num_layers, cfg.d_model, cfg.fold
        self.left = left_frames

    def forward(
        self, x: Tensor, cached_attn: Tensor, cached_conv: Tensor, processed_frames: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        n = x.shape[0]
        layers, d, f, left = self.layers, self.d, self.fold, self.left
        # (L, 2 left, N, D) -> (L, N, f * left, 2D / f)
        attn = cached_attn.permute(0, 2, 1, 3).reshape(layers, n, f * left, 2 * d // f)
        conv = cached_conv.permute(0, 2, 3, 1)  # (L, K-1, N, D) -> (L, N, D, K-1)
        processed = torch.div(processed_frames, SUBSAMPLING, rounding_mode="floor")
        x_lens = torch.full((n,), x.shape[1], dtype=torch.int64)
        enc, _, new_attn, new_conv, _ = self.inner(x, x_lens, attn, conv, processed)
        new_attn = new_attn.reshape(layers, n, 2 * left, d).permute(0, 2, 1, 3)
        return enc, new_attn, new_conv.permute(0, 3, 1, 2)


def encoder_metadata(model: nn.Module, chunk_frames: int, left_frames: int) -> dict[str, Any]:
    """The encoder's ``metadata_props`` sherpa-onnx reads."""
    cfg = model.encoder.cfg
    t = SUBSAMPLING * chunk_frames + 3
    return {
        "model_type": MODEL_TYPE,
        "num_encoder_layers": cfg.num_layers,
        "T": t,
        "decode_chunk_len": SUBSAMPLING * chunk_frames,
        "left_context": 2 * left_frames,
        "encoder_dim": cfg.d_model,
        "pad_length": t - SUBSAMPLING * chunk_frames,
        "cnn_module_kernel": cfg.conv_kernel,
        "vocab_size": int(model.vocab_size),
        "context_size": int(model.predictor.context_size),
        "comment": "asrq streaming Conformer RNN-T in sherpa-onnx's conformer layout",
    }


def check_supported(model: nn.Module) -> None:
    """A clear error unless ``model`` is a Conformer transducer (a predictor and a joiner; the
    Conformer's states) with blank 0."""
    enc = model.encoder
    names = [s.name for s in enc.state_specs(1, 1)]
    transducer = hasattr(model, "predictor") and hasattr(model, "joiner")
    if not transducer or names != ["attn_cache", "conv_cache", "processed"]:
        raise AsrqError(
            "--sherpa: sherpa-onnx's streaming layout fits the Conformer RNN-T only "
            f"(this model: head {getattr(model, 'head', None)!r}, encoder {enc.cfg.type!r})"
        )
    if int(model.blank_id) != 0:
        raise AsrqError(
            f"--sherpa: sherpa-onnx hard-codes blank id 0 (the model's is {model.blank_id})"
        )


def encoder_spec(model: nn.Module, chunk_frames: int, left_frames: int) -> ProgramSpec:
    cfg = model.encoder.cfg
    t = SUBSAMPLING * chunk_frames + 3
    n = 2
    gen = torch.Generator().manual_seed(0)
    batch = torch.export.Dim("N", min=1, max=MAX_BATCH)
    example = (
        torch.randn(n, t, cfg.feature_dim, generator=gen),
        torch.zeros(cfg.num_layers, 2 * left_frames, n, cfg.d_model),
        torch.zeros(cfg.num_layers, cfg.conv_kernel - 1, n, cfg.d_model),
        torch.zeros(n, dtype=torch.int64),
    )
    return ProgramSpec(
        "encoder",
        SherpaConformerEncoder(model, left_frames).eval(),
        example,
        ["x", "cached_attn", "cached_conv", "processed_frames"],
        ["encoder_out", "new_attn", "new_conv"],
        {
            "x": {0: batch},
            "cached_attn": {2: batch},
            "cached_conv": {2: batch},
            "processed_frames": {0: batch},
        },
    )


def _with_metadata(src: Path, dst: Path, props: dict[str, Any]) -> None:
    import onnx

    m = onnx.load(str(src))
    have = {p.key: p for p in m.metadata_props}
    for k, v in props.items():
        if k in have:
            have[k].value = str(v)
        else:
            m.metadata_props.add(key=k, value=str(v))
    tmp = dst.with_suffix(".tmp.onnx")
    onnx.save(m, str(tmp))
    tmp.replace(dst)


def write_tokens(sp: Any, path: Path) -> None:
    """``<piece> <id>`` per line, ``<unk>`` spelled ``⁇`` (module doc)."""
    lines = []
    for i in range(sp.get_piece_size()):
        piece = sp.id_to_piece(i)
        lines.append(f"{'⁇' if sp.is_unknown(i) else piece} {i}\n")
    atomic_write_text(path, "".join(lines))


def export_sherpa(
    model: nn.Module,
    sp: Any,
    model_dir: Path,
    chunk_frames: int,
    left_frames: int,
    opset: int = 18,
) -> dict[str, Any]:
    """Write ``<model_dir>/sherpa/`` from the model and the ONNX predictor / joiner already in
    ``model_dir``; returns its ``metadata.json`` entry (files, bytes, the encoder metadata)."""
    check_supported(model)
    for name in ("predictor.onnx", "joiner.onnx"):
        if not (model_dir / name).is_file():
            raise AsrqError(f"{model_dir / name}: --sherpa needs the ONNX programs (--onnx)")
    out = model_dir / SHERPA_DIR
    out.mkdir(parents=True, exist_ok=True)
    meta = encoder_metadata(model, chunk_frames, left_frames)
    export_onnx(encoder_spec(model, chunk_frames, left_frames), out / "encoder.onnx", meta, opset)
    _with_metadata(
        model_dir / "predictor.onnx",
        out / "decoder.onnx",
        {"vocab_size": meta["vocab_size"], "context_size": meta["context_size"]},
    )
    shutil.copyfile(model_dir / "joiner.onnx", out / "joiner.onnx")
    write_tokens(sp, out / "tokens.txt")
    return {
        "dir": SHERPA_DIR,
        "model_type": MODEL_TYPE,
        "files": {f: (out / f).stat().st_size for f in FILES},
        "encoder_metadata": meta,
        "runtime": "sherpa-onnx OnlineRecognizer.from_transducer (greedy_search)",
    }
