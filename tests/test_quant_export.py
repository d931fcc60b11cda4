"""Quantized export (asrq.quant.export): the learned scales reach the converted graph, the
XNNPACK delegate and the ONNX initializers; the programs match the fake-quant eager module
(SQNR >= 30 dB); post-training baselines run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from asrq.export.rewrites import xnnpack_friendly
from asrq.quant import QuantConfig, quantize_
from asrq.quant.export import (
    export_executorch_int8,
    export_onnx_int8,
    lower_to_pte,
    onnx_from_graph,
    onnx_initializer_scales,
    ptq_onnx_dynamic,
    ptq_pt2e_static,
    sqnr_db,
)
from asrq.quant.int4 import export_executorch_8da4w, ptq_onnx_int4
from asrq.quant.modules import calibrating
from asrq.quant.pt2e import convert_learned, graph_qparams


class ToyEncoder(nn.Module):
    """A Conformer-like block: LN -> FFN (SiLU) -> residual -> causal depthwise conv -> linear."""

    def __init__(self, d: int = 64, ffn: int = 128) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, ffn), nn.SiLU(), nn.Linear(ffn, d))
        self.dw = nn.Conv1d(d, d, 7, groups=d)
        self.out = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, T, D) -> (N, T, D)
        y = x + self.ff(self.norm(x))
        c = self.dw(nn.functional.pad(y.transpose(1, 2), (6, 0))).transpose(1, 2)
        return self.out(y + c)


T_DIM = torch.export.Dim("T", min=8, max=400)
DYN = {"x": {1: T_DIM}}


def _learned_toy(seed: int = 0, **quant) -> nn.Module:
    """A fake-quantized toy whose step sizes were moved off their calibrated values (as QAT
    would), so that a fresh calibration could not reproduce them."""
    torch.manual_seed(seed)
    m = ToyEncoder()
    quantize_(m, QuantConfig(overrides=[], **quant))
    with calibrating(m):
        m(torch.randn(2, 60, 64))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("_fq.scale"):
                p.mul_(0.9 + 0.2 * torch.rand(p.shape, generator=g))
    return m.eval()


def test_converted_graph_carries_learned_scales_exactly() -> None:
    m = _learned_toy(weight_qmax=63)
    x = torch.randn(1, 50, 64)
    gm, table = convert_learned(m, (x,), DYN)
    found = graph_qparams(gm)
    assert set(found) == {"ff.0", "ff.2", "dw", "out"}
    for path, entries in found.items():
        layer = m.get_submodule(path)
        act = [e for e in entries if e["kind"] == "act"]
        (w,) = [e for e in entries if e["kind"] == "weight"]
        assert act[0]["scale"] == pytest.approx(float(layer.input_fq.effective_scale()), rel=1e-7)
        assert act[0]["zero_point"] == int(layer.input_fq.zero_point)
        torch.testing.assert_close(
            w["scale"], layer.weight_fq.effective_scale()[:, 0], rtol=0, atol=0
        )
        assert (w["quant_min"], w["quant_max"]) == (-63, 63)
        torch.testing.assert_close(table[path].weight_scale, layer.weight_fq.effective_scale())
    for t in (50, 13):
        xx = torch.randn(1, t, 64)
        torch.testing.assert_close(gm(xx), m(xx), rtol=0, atol=1e-5)


def test_converted_weights_are_the_eager_integers_at_half_step_ties() -> None:
    """Weights on a half step ``(k + 1/2) * s``: the fake quantizer rounds ``w / s``, PT2E's
    ``quantize_per_channel`` ``w * (1 / s)``, and the two land on different levels for some of
    them. The exported integers are the eager model's (the export quantizes the fake-quantized
    weights), so the graph computes what the eager model computes."""
    torch.manual_seed(0)
    m = quantize_(nn.Sequential(nn.Linear(64, 256)), QuantConfig(weight_qmax=63, overrides=[]))
    with calibrating(m):
        m(torch.randn(2, 40, 64))
    layer = m[0]
    s = layer.weight_fq.effective_scale()  # (256, 1)
    k = torch.randint(-60, 60, layer.weight.shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        layer.weight.copy_((k + 0.5) * s)
    eager_int = torch.clamp(torch.round(layer.weight / s), -63, 63)
    assert (eager_int != torch.round(layer.weight * (1.0 / s))).any()  # the ties exist
    m.eval()
    x = torch.randn(1, 40, 64)
    gm, _ = convert_learned(m, (x,), ({1: T_DIM},))
    (w,) = [e for e in graph_qparams(gm)["0"] if e["kind"] == "weight"]
    torch.testing.assert_close(w["int"].to(torch.float32), eager_int, rtol=0, atol=0)
    torch.testing.assert_close(gm(x), m(x), rtol=0, atol=1e-5)


def test_two_layers_reading_one_tensor_keep_their_own_learned_input_scales() -> None:
    """A Conformer's ``attn.q`` and ``attn.kv`` both read the LayerNorm output; PT2E's implicit
    sharing used to give both one quantizer (the other's scale lost): each keeps its own, and
    the converted graph equals the fake-quant model."""

    class TwoReaders(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = nn.LayerNorm(64)
            self.q = nn.Linear(64, 64)
            self.kv = nn.Linear(64, 128)

        def forward(self, x: Tensor) -> Tensor:  # (N, T, 64) -> (N, T, 64)
            h = self.norm(x)
            k, v = self.kv(h).chunk(2, dim=-1)
            return self.q(h) * k + v

    torch.manual_seed(0)
    m = quantize_(TwoReaders(), QuantConfig(weight_qmax=63, overrides=[]))
    with calibrating(m):
        m(torch.randn(2, 40, 64))
    with torch.no_grad():
        m.q.input_fq.scale.mul_(1.3)  # the two readers' learned scales differ
    m.eval()
    x = torch.randn(1, 40, 64)
    gm, _ = convert_learned(m, (x,), DYN)
    found = graph_qparams(gm)
    for path in ("q", "kv"):
        (act,) = [e for e in found[path] if e["kind"] == "act"]
        want = float(m.get_submodule(path).input_fq.effective_scale())
        assert act["scale"] == pytest.approx(want, rel=1e-7), path
    torch.testing.assert_close(gm(x), m(x), rtol=0, atol=1e-5)


def test_pte_int8_learned_scales_delegated_and_sqnr(tmp_path: Path) -> None:
    from executorch.runtime import Runtime

    m = _learned_toy()
    x = torch.randn(1, 50, 64)
    art, table = export_executorch_int8(xnnpack_friendly(m).eval(), (x,), DYN, tmp_path / "toy.pte")
    # datatypes inside the delegate: all three linears and the depthwise conv run int8 x qcint8
    assert art.delegate_nodes["XNNFullyConnected qint8 x qcint8 -> qint8"] == 3
    assert art.delegate_nodes["XNNDepthwiseConv2d qint8 x qcint8 -> qint8"] == 1
    assert not any("quantize" in op for op in art.portable_ops), art.portable_ops
    # the delegate's quantization parameters are the learned ones
    learned_w = [table[k].weight_scale[:, 0] for k in ("ff.0", "ff.2", "dw", "out")]
    got_w = [torch.tensor(s) for s in art.qparams["per_channel"]]
    for w in learned_w:
        assert any(g.shape == w.shape and torch.equal(g, w) for g in got_w)
    got_t = art.qparams["per_tensor"]  # flatc prints these with 6 decimals

    def held(scale: float, zp: int) -> bool:
        return any(z == zp and s == pytest.approx(scale, rel=0, abs=6e-7) for s, z in got_t)

    for q in table.values():
        assert held(q.act_scale, q.act_zero_point) and held(q.out_scale, q.out_zero_point)
    method = Runtime.get().load_program(str(art.path)).load_method("forward")
    for t in (50, 17, 123):
        xx = torch.randn(1, t, 64)
        assert sqnr_db(m(xx), method.execute([xx])[0]) >= 30.0


def test_onnx_int8_learned_scales_and_fused_integer_kernels(tmp_path: Path) -> None:
    import onnxruntime as ort

    m = _learned_toy(weight_qmax=63)  # with output quantizers, as for the .pte
    x = torch.randn(1, 50, 64)
    art, table = export_onnx_int8(m, (x,), DYN, ["x"], ["y"], tmp_path / "toy.onnx")
    assert art.ort_ops.get("MatMulIntegerToFloat", 0) == 3, art.ort_ops
    assert art.ort_ops.get("QLinearConv", 0) == 1, (
        art.ort_ops
    )  # needs the output Q (see QuantConfig.outputs)
    scales = [np.asarray(a) for v in onnx_initializer_scales(art.path).values() for a in v]
    for q in table.values():
        assert any(a.size == 1 and float(a.reshape(())) == np.float32(q.act_scale) for a in scales)
        w = q.weight_scale[:, 0].numpy()
        assert any(a.shape == w.shape and np.array_equal(a, w) for a in scales)
    sess = ort.InferenceSession(str(art.path), providers=["CPUExecutionProvider"])
    for t in (50, 9, 200):
        xx = torch.randn(1, t, 64)
        y = torch.from_numpy(sess.run(None, {"x": xx.numpy()})[0])
        assert sqnr_db(m(xx), y) >= 30.0


def test_ptq_baselines(tmp_path: Path) -> None:
    import onnxruntime as ort
    from executorch.runtime import Runtime

    torch.manual_seed(0)
    fp = ToyEncoder().eval()
    x = torch.randn(1, 50, 64)
    fp32 = onnx_from_graph(fp, (x,), DYN, ["x"], ["y"], tmp_path / "fp32.onnx", "fp32")
    dyn = ptq_onnx_dynamic(fp32.path, tmp_path / "dyn.onnx")
    assert (
        dyn.ort_ops.get("MatMulIntegerToFloat", 0) + dyn.ort_ops.get("DynamicQuantizeMatMul", 0)
        == 3
    )
    assert "ConvInteger" not in dyn.ort_ops  # MatMul only
    nbits = ptq_onnx_int4(fp32.path, tmp_path / "int4.onnx")
    assert nbits.ort_ops.get("MatMulNBits", 0) == 3
    assert dyn.bytes < fp32.bytes and nbits.bytes < fp32.bytes
    xx = torch.randn(1, 40, 64)
    for art in (dyn, nbits):
        y = ort.InferenceSession(str(art.path), providers=["CPUExecutionProvider"]).run(
            None, {"x": xx.numpy()}
        )[0]
        assert sqnr_db(fp(xx), torch.from_numpy(y)) >= 20.0, art.scheme
    calib = [(torch.randn(1, 60, 64),) for _ in range(3)]
    static = ptq_pt2e_static(xnnpack_friendly(fp), (x,), DYN, calib)
    pte = lower_to_pte(static, (x,), DYN, tmp_path / "static.pte", "int8-ptq-static")
    assert pte.delegate_nodes.get("XNNFullyConnected qint8 x qcint8 -> qint8", 0) >= 3
    w4 = export_executorch_8da4w(fp, (x,), DYN, tmp_path / "w4.pte", learned=False)
    assert w4.delegate_nodes.get("XNNFullyConnected qdint8 x qbint4 -> fp32", 0) == 3, (
        w4.delegate_nodes
    )
    for art in (pte, w4):
        y = Runtime.get().load_program(str(art.path)).load_method("forward").execute([xx])[0]
        assert sqnr_db(fp(xx), y) >= 20.0, art.scheme


def test_pte_8da4w_with_learned_group_scales(tmp_path: Path) -> None:
    from executorch.runtime import Runtime

    m = _learned_toy(weight_dtype="int4", activations=False)
    assert m.ff[0].weight_fq.scale.shape == (128, 2)
    x = torch.randn(1, 50, 64)
    art = export_executorch_8da4w(m, (x,), DYN, tmp_path / "w4.pte", learned=True)
    assert art.delegate_nodes.get("XNNFullyConnected qdint8 x qbint4 -> fp32", 0) == 3, (
        art.delegate_nodes
    )
    # the delegate holds the learned group scales (XNNPACK keeps them in bf16)
    stored = [torch.tensor(q["scale"]) for q in art.qparams["per_group"]]
    for layer in (m.ff[0], m.ff[2], m.out):
        want = layer.weight_fq.effective_scale().reshape(-1).to(torch.bfloat16).float()
        assert any(t.shape == want.shape and torch.equal(t, want) for t in stored)
    method = Runtime.get().load_program(str(art.path)).load_method("forward")
    xx = torch.randn(1, 40, 64)
    # eager: float activations x learned int4 weights; the .pte adds dynamic int8 activations
    assert sqnr_db(m(xx), method.execute([xx])[0]) >= 25.0


@pytest.mark.slow
def test_real_tiny_conformer_encoder_exports_match_fake_quant(tmp_path: Path) -> None:
    import onnxruntime as ort
    from executorch.runtime import Runtime

    from asrq.export.rnnt import program_specs
    from asrq.models import build_model
    from asrq.testing.models import tiny_config

    torch.manual_seed(0)
    cfg = tiny_config(vocab_size=32)
    model = build_model(cfg.model).eval()
    quantize_(model, QuantConfig(weight_qmax=63))
    spec = program_specs(model, 4, 16, "executorch")["encoder"]
    with calibrating(model):
        for _ in range(3):
            spec.module(torch.randn(1, 163, 80) * 3, torch.tensor([163]))
    art, table = export_executorch_int8(
        xnnpack_friendly(spec.module), spec.example_inputs, spec.dynamic_shapes, tmp_path / "e.pte"
    )
    n_q = len(table)
    fc = art.delegate_nodes.get("XNNFullyConnected qint8 x qcint8 -> qint8", 0)
    dw = art.delegate_nodes.get("XNNDepthwiseConv2d qint8 x qcint8 -> qint8", 0)
    assert fc + dw == n_q, art.delegate_nodes
    method = Runtime.get().load_program(str(art.path)).load_method("forward")
    for t in (163, 91):
        x, lens = torch.randn(1, t, 80) * 3, torch.tensor([t])
        assert sqnr_db(spec.module(x, lens)[0], method.execute([x, lens])[0]) >= 30.0
    so = program_specs(model, 4, 16, "onnx")["encoder"]
    art2, _ = export_onnx_int8(
        so.module,
        so.example_inputs,
        so.dynamic_shapes,
        so.input_names,
        so.output_names,
        tmp_path / "e.onnx",
    )
    assert art2.ort_ops.get("MatMulIntegerToFloat", 0) >= 10, art2.ort_ops
    sess = ort.InferenceSession(str(art2.path), providers=["CPUExecutionProvider"])
    x, lens = torch.randn(2, 131, 80) * 3, torch.tensor([131, 120])
    y = torch.from_numpy(sess.run(None, {"x": x.numpy(), "x_lens": lens.numpy()})[0])
    assert sqnr_db(so.module(x, lens)[0], y) >= 30.0


def test_rnnt_predictor_and_joiner_programs_int8_both_targets(tmp_path: Path) -> None:
    """``--quant int8`` through the one export driver on the tiny RNN-T's predictor (grouped
    conv + projection) and joiner: integer kernels in both runtimes, SQNR parity, the model
    directory's metadata records the quantization."""
    import dataclasses

    from asrq.export.onnx_export import read_onnx_metadata
    from asrq.export.pipeline import export_loaded
    from asrq.export.quant import quant_plan
    from asrq.models import build_model
    from asrq.quant.config import QatConfig
    from asrq.testing.models import tiny_bpe_bytes, tiny_config
    from asrq.train.checkpoint import LoadedModel, sentencepiece_from_bytes

    torch.manual_seed(0)
    cfg = tiny_config(vocab_size=32)
    model = build_model(cfg.model)
    qc = QuantConfig(weight_qmax=63)
    quantize_(model, qc)
    cfg.train.loss.rnnt_type = "full"
    feats, lens = torch.randn(2, 83, 80), torch.tensor([83, 71])
    ys, ylens = torch.tensor([[3, 5, 7, 9], [4, 6, 8, -1]]), torch.tensor([4, 3])
    with calibrating(model):
        model(feats, lens, ys, ylens, cfg.train.loss, -1, -1)
    model.eval()
    cfg = dataclasses.replace(cfg, qat=QatConfig(quant=qc))
    bpe = tiny_bpe_bytes(32)
    loaded = LoadedModel(model, cfg, sentencepiece_from_bytes(bpe), bpe, {"step": 1})
    plan = quant_plan("int8", loaded)
    res = export_loaded(loaded, tmp_path / "m", programs=("predictor", "joiner"), quant=plan)
    progs = res.metadata["programs"]
    assert progs["onnx"]["joiner"]["ort_ops"].get("QGemm") == 1
    assert progs["onnx"]["predictor"]["ort_ops"].get("QLinearConv") == 1
    ex = progs["executorch"]
    assert ex["joiner"]["delegate_nodes"]["XNNFullyConnected qint8 x qcint8 -> qint8"] == 1
    assert ex["predictor"]["delegate_nodes"]["XNNConv2d qint8 x qcint8 -> qint8"] == 1
    q = res.metadata["quantization"]
    assert q["scheme"] == "int8" and q["source"] == "qat" and q["weights"]["qmax"] == [63]
    assert "encoder.embed.conv.0" in q["float_layers"]
    meta = read_onnx_metadata(tmp_path / "m" / "joiner.onnx")
    assert json.loads(meta["quantization"])["scheme"] == "int8"
    assert meta["quant_scheme"] == "int8-learned" and meta["program"] == "joiner"
    for b in ("onnx", "executorch"):
        assert res.parity.min_sqnr_db(b, "joiner") >= 30.0
        assert res.parity.min_sqnr_db(b, "predictor") >= 30.0
