"""The compression table driver (asrq.experiments.quant) and what it is built on: scoring an
exported directory through its runtime (asrq.runtime.evaluate) and int4 QAT of layers whose
inputs XNNPACK's 8da4w cannot group (``int4_unaligned``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from asrq.config import ExperimentConfig
from asrq.quant.config import QuantConfig
from asrq.quant.modules import quantize_, quantized_layers
from asrq.testing.data import TinyData, tiny_train_config
from asrq.testing.models import tiny_config
from asrq.train.loop import Trainer
from asrq.utils.io import AsrqError


def test_int4_unaligned_layers_error_or_fall_back_to_int8() -> None:
    def net() -> nn.Module:
        return nn.Sequential(nn.Linear(48, 32), nn.ReLU(), nn.Linear(32, 8))

    with pytest.raises(AsrqError, match="'0' has in_features 48"):
        quantize_(net(), QuantConfig(weight_dtype="int4", overrides=[]))
    m = quantize_(net(), QuantConfig(weight_dtype="int4", int4_unaligned="int8", overrides=[]))
    layers = quantized_layers(m)
    assert (layers["0"].weight_fq.group_size, layers["0"].weight_fq.qmax) == (0, 127)
    assert (layers["2"].weight_fq.group_size, layers["2"].weight_fq.qmax) == (32, 7)


@pytest.fixture(scope="module")
def trained(tiny_data: TinyData, tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    exp = tmp_path_factory.mktemp("quant_table_fp32")
    cfg = tiny_train_config(tiny_config(vocab_size=0), tiny_data, exp, max_steps=6)
    Trainer(cfg, progress=False).run()
    return exp / "model.pt"


def _dev_cuts(tiny: TinyData) -> Path:
    return tiny.fbank_dir / f"librispeech_cuts_{ExperimentConfig().data.dev_split}.jsonl.gz"


def test_evaluate_export_scores_what_eager_decoding_scores(
    trained: Path, tiny_data: TinyData, tmp_path: Path
) -> None:
    import onnx

    from asrq.decode.evaluate import evaluate
    from asrq.export.pipeline import export_model
    from asrq.runtime.evaluate import evaluate_export
    from asrq.train.checkpoint import load_model

    out = tmp_path / "export"
    export_model(trained, out, executorch=False)
    # deployable files carry no per-node debug metadata (stack traces, fx node names)
    enc = onnx.load(str(out / "encoder_streaming.onnx"))
    assert enc.graph.node and not any(n.metadata_props for n in enc.graph.node)
    assert {p.key for p in enc.metadata_props} >= {"head", "config"}
    cuts = _dev_cuts(tiny_data)
    for streaming in (False, True):
        got = evaluate_export(out, cuts, "onnx", streaming=streaming)
        ref = evaluate(load_model(trained), cuts, streaming=streaming, progress=False)
        assert got.num_utts == ref.num_utts > 0
        assert [r.cut_id for r in got.results] == [r.cut_id for r in ref.results]
        # fp32 ONNX == eager to ~1e-6: the same hypotheses, utterance by utterance
        assert [r.hyp for r in got.results] == [r.hyp for r in ref.results]
        assert got.wer == pytest.approx(ref.wer)


@pytest.mark.slow
def test_compression_table_rows_files_and_pairing(trained: Path, tmp_path: Path) -> None:
    from asrq.experiments.quant import Base, compression_table

    torch.set_num_threads(1)
    res = compression_table(
        [Base("tiny", trained)],
        tmp_path,
        steps=2,
        lr=0.002,
        estimators=("ste",),
        stages=("qat", "export", "score"),
        only=("fp32-ft", "qat-int8-ste", "ptq-int4"),
        echo=lambda s: None,
        progress=False,
    )
    rows = {r["variant"]: r for r in res["rows"]}
    assert list(rows) == ["fp32", "fp32-ft", "qat-int8-ste", "ptq-int4"]
    on_disk = json.loads((tmp_path / "quant.json").read_text())
    assert [r["variant"] for r in on_disk["rows"]] == list(rows)
    fp32, q8 = rows["fp32"], rows["qat-int8-ste"]
    # int8 programs are smaller than fp32 in both runtimes (the tiny model: embeddings and
    # float parts weigh more than in a real one)
    for key in ("onnx", "executorch"):
        assert 0 < q8["bytes"][key] < 0.8 * fp32["bytes"][key]
    assert q8["quantization"]["source"] == "qat" and q8["quantization"]["estimator"] == "ste"
    assert rows["ptq-int4"]["quantization"]["scheme"] == "w4a8"
    # every quantized row: WER with interval, paired difference against fp32 on the same utts
    for r in (q8, rows["ptq-int4"]):
        for split in ("dev", "test_clean"):
            w = r[f"wer_{split}"]
            assert w["lo"] <= w["wer"] <= w["hi"]
            d = r[f"diff_{split}"]
            assert d["diff"] == pytest.approx(w["wer"] - fp32[f"wer_{split}"]["wer"], abs=1e-2)
    # the QAT row also scored its eager fake-quant model: the parity in WER points
    assert "wer_test_clean_eager" in q8 and "export_minus_eager_test_clean" in q8
    assert {"diff", "lo", "hi"} <= set(q8["export_minus_eager_test_clean_paired"])
    assert {"diff", "lo", "hi"} <= set(q8["executorch_minus_eager_test_clean_paired"])
    assert q8["wer_test_clean_executorch"]["num_utts"] == q8["wer_test_clean"]["num_utts"]
    assert q8["qat"]["train"]["steps"] == 2
    # fp32-ft: the same 2 fine-tuning steps without quantizers, the QAT rows' fair baseline
    ft = rows["fp32-ft"]
    assert ft["qat"]["train"]["steps"] == 2 and ft.get("quantization") is None
    assert "diff_test_clean" not in fp32 and "diff_test_clean" in ft
    d = q8["diff_ft_test_clean"]
    assert d["diff"] == pytest.approx(
        q8["wer_test_clean"]["wer"] - ft["wer_test_clean"]["wer"], abs=1e-2
    )
    md = (tmp_path / "quant.md").read_text()
    assert md.count("\n| tiny |") == 4
    assert (tmp_path / "quant_size_wer.png").stat().st_size > 1000
    # on the same rows: the noise floor (fp32 control + the QAT int8 row) and the float-outputs
    # ONNX variant (exported, scored against the same eager model; not benched here)
    from asrq.experiments.onnx_outputs import onnx_outputs_table
    from asrq.experiments.quant_floor import floor_table

    fl = floor_table([Base("tiny", trained)], tmp_path, seeds=(0,), log=lambda s: None)
    assert [r["variant"] for r in fl["rows"]] == ["fp32", "qat-int8-ste"]
    control = fl["rows"][0]["test_clean"]
    assert control["max_abs_diff"] == 0.0  # a float model does not move under 1e-6
    assert control["other_threads"]["minus_reference"]["diff"] == 0.0  # nor with 2 threads
    assert fl["rows"][1]["test_clean"]["reference_wer"] == pytest.approx(
        q8["wer_test_clean_eager"]["wer"]
    )
    oo = onnx_outputs_table([Base("tiny", trained)], tmp_path, bench=False, log=lambda s: None)
    (o,) = oo["rows"]
    assert o["all_quantizers"]["wer"] == pytest.approx(q8["wer_test_clean"]["wer"])
    assert o["float_outputs"]["minus_eager"]["diff"] == pytest.approx(
        o["float_outputs"]["wer"] - o["eager_wer"], abs=1e-2
    )
    assert (tmp_path / "quant_floor.md").is_file()
    assert (tmp_path / "quant_onnx_outputs.md").is_file()
    # and the exports' parity over every test utterance, both runtimes, kept per row
    from asrq.experiments.quant_parity import parity_table

    pt = parity_table([Base("tiny", trained)], tmp_path, log=lambda s: None)
    (p,) = pt["rows"]
    for backend in ("onnx", "executorch", "floor"):
        r = p[backend]
        assert r["utterances"] == q8["wer_test_clean"]["num_utts"]
        assert 0 <= r["chunks_before_first_tie"] <= r["chunks"]
        assert 0.0 <= r["share_chunks_ge_30db"] <= 1.0
    cache = tmp_path / "quant" / "tiny" / "qat-int8-ste" / "parity_test.json"
    assert json.loads(cache.read_text())["onnx"] == p["onnx"]
    assert p["floor"]["rel"] == 1e-6 and p["floor"]["backend"] == "floor"
    assert (tmp_path / "quant_parity.md").read_text().count("\n| tiny |") == 1


@pytest.mark.slow
def test_int8_speed_profiles_and_benches_both_exports(trained: Path, tmp_path: Path) -> None:
    from asrq.experiments.int8_speed import int8_speed

    torch.set_num_threads(1)
    res = int8_speed(
        trained, tmp_path, widths=(64,), threads=(1,), max_files=2, echo=lambda s: None
    )
    (w,) = res["widths"]
    for kind in ("fp32", "int8", "qat-int8"):
        assert set(w[kind]) == {"onnx@1", "executorch@1"}
        assert all(v["encoder_p50_ms"] > 0 for v in w[kind].values())
    # the QAT graph: every quantizer kept (more Q / DQ than PTQ's float outputs), integer kernels
    meta = json.loads((tmp_path / "int8_speed" / "d64" / "qat-int8" / "metadata.json").read_text())
    assert meta["quantization"]["source"] == "qat"
    pq = w["profile"]["qat-int8"]
    assert pq["qdq_share"] > 0 and any(
        "Integer" in op or op.startswith("QLinear") for op in pq["ops"]
    )
    assert (
        pq["ops"]["QuantizeLinear"]["count"]
        > w["profile"]["int8"]["ops"]["QuantizeLinear"]["count"]
    )
    # int8 programs are smaller; the int8 ONNX encoder runs integer kernels between Q/DQ nodes
    assert w["int8"]["onnx@1"]["streaming_file_bytes"] < w["fp32"]["onnx@1"]["streaming_file_bytes"]
    p8, p32 = w["profile"]["int8"], w["profile"]["fp32"]
    assert p32["qdq_share"] == 0 and p8["qdq_share"] > 0
    assert any("Integer" in op or op.startswith("QLinear") for op in p8["ops"]), list(p8["ops"])
    assert "MatMul" in p32["ops"] or "FusedMatMul" in p32["ops"] or "Gemm" in p32["ops"]
    assert json.loads((tmp_path / "int8_speed.json").read_text())["widths"][0]["d_model"] == 64
    assert "| 64 |" in (tmp_path / "int8_speed.md").read_text()
    assert "QAT int8 / fp32 (chunk p90)" in (tmp_path / "int8_speed.md").read_text()


def test_min_sqnr_overrides_the_schemes_bound(tmp_path: Path) -> None:
    from asrq.export.parity import ParityError
    from asrq.export.pipeline import export_model
    from asrq.testing.models import make_tiny_checkpoint

    ckpt = make_tiny_checkpoint(tmp_path / "tiny.pt")
    kw = {"quant": "w4a8", "executorch": False, "programs": ["encoder_streaming"]}
    with pytest.raises(ParityError, match="min SQNR 500.0 dB"):
        export_model(ckpt, tmp_path / "strict", min_sqnr=500.0, **kw)
    assert not (tmp_path / "strict").exists()  # nothing half-written
    res = export_model(ckpt, tmp_path / "ok", **kw)
    assert res.metadata["parity"]["min_sqnr_db"] == 10.0  # w4a8 PTQ: the scheme's own bound
    # onnxruntime dynamic int8 of the joiner alone (its value_info once broke quantize_dynamic)
    res = export_model(
        ckpt, tmp_path / "dyn", quant="int8-dynamic", executorch=False, programs=["joiner"]
    )
    assert res.metadata["parity"]["min_sqnr_db"] == 20.0
