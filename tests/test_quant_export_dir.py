"""``asrq export --quant``: quantized model directories in the fp32 layout, written by the one
export driver, that ``asrq transcribe`` runs unchanged (issue 12 part 2)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from asrq.quant.config import QatConfig, QuantConfig
from asrq.testing.data import TinyData, tiny_train_config
from asrq.testing.models import tiny_config
from asrq.utils.io import AsrqError


@pytest.fixture(scope="module")
def checkpoints(tiny_data: TinyData, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny fp32 model (6 steps) and its QAT fine-tune (3 steps, 7-bit weights)."""
    from asrq.quant.train import qat_train
    from asrq.train.loop import Trainer

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("qexp")
    cfg = tiny_train_config(tiny_config(vocab_size=0), tiny_data, root / "fp32", max_steps=6)
    Trainer(cfg, progress=False).run()
    cfg = tiny_train_config(tiny_config(vocab_size=0), tiny_data, root / "qat", max_steps=3)
    cfg = dataclasses.replace(
        cfg,
        qat=QatConfig(
            init=str(root / "fp32" / "model.pt"),
            calib_batches=2,
            quant=QuantConfig(weight_qmax=63),
        ),
    )
    qat_train(cfg, progress=False)
    return {"fp32": root / "fp32" / "model.pt", "qat": root / "qat" / "model.pt"}


def _run(args: list[str]) -> str:
    from asrq.cli.main import cli

    res = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res.output


@pytest.mark.slow
def test_qat_int8_export_transcribes_like_the_fake_quant_model(
    checkpoints: dict[str, Path], tiny_data: TinyData, tmp_path: Path
) -> None:
    from collections import Counter

    import onnx

    from asrq.decode.evaluate import evaluate_model
    from asrq.quant.train import load_qat_model

    out = tmp_path / "int8"
    _run(
        ["export", str(checkpoints["qat"]), "--quant", "int8", "--no-executorch", "--out", str(out)]
    )
    meta = json.loads((out / "metadata.json").read_text())
    q = meta["quantization"]
    assert q["scheme"] == "int8" and q["source"] == "qat" and q["estimator"] == "ste"
    assert (
        q["weights"]["granularity"] == "per-channel" and "encoder.embed.conv.0" in q["float_layers"]
    )
    assert float(meta["parity"]["sqnr_db"]["onnx"]["encoder"]) >= 30.0  # "inf": exact
    assert meta["parity"]["encoder_inputs"].startswith("speech: ")
    assert len(meta["parity"]["floor"]["encoder_streaming_sqnr_db"]) == 3  # the model's own floor
    assert meta["programs"]["onnx"]["encoder"]["ort_ops"].get("MatMulIntegerToFloat", 0) >= 10
    # the ONNX encoder is the trained model: every linear layer's output is quantized (after
    # its bias Add); with --onnx-float-outputs (below) none is
    graph = onnx.load(str(out / "encoder.onnx")).graph
    nodes = graph.node
    linear_outs = _linear_outputs(graph)
    quantized = {n.input[0] for n in nodes if n.op_type == "QuantizeLinear"}
    assert len(linear_outs) >= 10 and linear_outs <= quantized, linear_outs - quantized
    assert meta["quantization"]["activations"]["outputs_by_backend"]["onnx"] is True
    # every dequantized activation has one consumer (onnxruntime fuses DQ -> MatMul only then)
    dq_out = {n.output[0] for n in nodes if n.op_type == "DequantizeLinear"}
    uses = Counter(i for n in nodes for i in n.input if i in dq_out)
    assert max(uses.values()) == 1
    assert (out / "bpe.model").is_file() and (out / "encoder.onnx").is_file()
    # greedy transcripts of the test set: the exported int8 programs vs the fake-quant model
    cuts = tiny_data.test_cuts
    loaded = load_qat_model(checkpoints["qat"])
    eager = evaluate_model(loaded.model, loaded.sp, cuts, "greedy", progress=False)
    flacs = sorted((Path(tiny_data.corpus_dir) / "test-clean").rglob("*.flac"))
    text = _run(["transcribe", str(out), *map(str, flacs)])
    exported = {Path(p).stem: t for p, t in (line.split("\t") for line in text.splitlines())}
    # cut ids are <recording id>-<index>
    hyps = {r.cut_id.rsplit("-", 1)[0]: r.hyp for r in eager.results}
    assert set(hyps) == set(exported), (exported, hyps)
    same = sum(exported[k] == v for k, v in hyps.items())
    assert same >= len(hyps) - 1, (exported, hyps)
    # --onnx-float-outputs: the linear layers write float; measured against that model
    from asrq.export.pipeline import export_model

    fast = export_model(
        checkpoints["qat"],
        tmp_path / "fast",
        quant="int8",
        executorch=False,
        programs=["encoder"],
        onnx_float_outputs=True,
    )
    graph = onnx.load(str(tmp_path / "fast" / "encoder.onnx")).graph
    quantized = {n.input[0] for n in graph.node if n.op_type == "QuantizeLinear"}
    assert len(_linear_outputs(graph)) >= 10 and not _linear_outputs(graph) & quantized
    assert fast.metadata["quantization"]["reference"].endswith("output quantizers)")
    assert fast.parity.min_sqnr_db("onnx", "encoder") >= 30.0


@pytest.mark.slow
def test_ptq_schemes_from_an_fp32_checkpoint(
    checkpoints: dict[str, Path], tiny_data: TinyData, tmp_path: Path
) -> None:
    from asrq.export.pipeline import export_model

    # static int8 calibrated on the dev cuts (the config's by default), ONNX, the encoder
    r = export_model(
        checkpoints["fp32"], tmp_path / "s", quant="int8", executorch=False, programs=["encoder"]
    )
    q = r.metadata["quantization"]
    assert q["source"] == "ptq" and q["calibration"]["utterances"] >= 1
    assert r.parity.min_sqnr_db("onnx", "encoder") >= 30.0
    # dynamic int8 and w4a8 in ExecuTorch (the runtime's quantized kernels load as needed)
    for scheme, node in (("int8-dynamic", "qdint8 x qcint8"), ("w4a8", "qdint8 x qbint4")):
        r = export_model(
            checkpoints["fp32"],
            tmp_path / scheme,
            quant=scheme,
            onnx=False,
            programs=["joiner"],
        )
        nodes = r.metadata["programs"]["executorch"]["joiner"]["delegate_nodes"]
        assert any(node in k for k in nodes), nodes
        assert r.metadata["quantization"]["scheme"] == scheme


def test_quant_refusals(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    from asrq.export.pipeline import export_model

    with pytest.raises(AsrqError, match="no int4 layers"):
        export_model(checkpoints["qat"], tmp_path / "a", quant="w4a8", programs=["joiner"])
    with pytest.raises(AsrqError, match="calibration cuts not found"):
        export_model(
            checkpoints["fp32"], tmp_path / "b", quant="int8", calib_cuts=tmp_path / "none.jsonl.gz"
        )
    with pytest.raises(AsrqError, match="unknown --quant"):
        export_model(checkpoints["fp32"], tmp_path / "c", quant="int3")
    with pytest.raises(AsrqError, match="--onnx-float-outputs is an option of --quant int8"):
        export_model(checkpoints["qat"], tmp_path / "d", quant="w4a8", onnx_float_outputs=True)
    with pytest.raises(AsrqError, match="--onnx-float-outputs needs --quant int8"):
        export_model(checkpoints["fp32"], tmp_path / "e", onnx_float_outputs=True)


@pytest.mark.slow
def test_w4a8_from_an_int4_qat_model_injects_learned_group_scales(tmp_path: Path) -> None:
    """An int4 fake-quant model whose layers' in_features (48) do not divide by 32
    (``int4_unaligned: pad``: a last group of the remaining columns) -> 8da4w ``.pte`` (input
    padded to a whole group) and ``MatMulNBits`` ONNX programs whose int4 layers carry the
    learned scales: parity against the float model with the learned int4 weights."""
    import onnx
    from onnx import numpy_helper

    from asrq.export.pipeline import export_loaded
    from asrq.export.quant import quant_plan
    from asrq.models import build_model
    from asrq.quant.modules import calibrating, quantize_, quantized_layers
    from asrq.testing.models import tiny_bpe_bytes
    from asrq.train.checkpoint import LoadedModel, sentencepiece_from_bytes

    torch.manual_seed(0)
    cfg = tiny_config(vocab_size=32, encoder={"d_model": 48})  # 48-wide inputs: 32 + 16
    model = build_model(cfg.model)
    qc = QuantConfig(weight_dtype="int4", int4_unaligned="pad")
    quantize_(model, qc)
    proj = model.encoder.layers[0].ff1.w1
    assert proj.in_features == 48 and proj.weight_fq.scale.shape[1] == 2
    cfg.train.loss.rnnt_type = "full"
    feats, lens = torch.randn(2, 83, 80), torch.tensor([83, 71])
    ys, ylens = torch.tensor([[3, 5, 7, 9], [4, 6, 8, -1]]), torch.tensor([4, 3])
    with calibrating(model):
        model(feats, lens, ys, ylens, cfg.train.loss, -1, -1)
    cfg = dataclasses.replace(cfg, qat=QatConfig(quant=qc))
    bpe = tiny_bpe_bytes(32)
    loaded = LoadedModel(model.eval(), cfg, sentencepiece_from_bytes(bpe), bpe, {"step": 1})
    plan = quant_plan("w4a8", loaded)
    assert plan.source == "qat" and plan.group_scales
    # the predictor program holds no int4 layer (its conv keeps 8-bit weights: float here)
    progs = ("encoder", "predictor", "joiner")
    res = export_loaded(loaded, tmp_path / "w4", programs=progs, quant=plan)
    nodes = res.metadata["programs"]["executorch"]["encoder"]["delegate_nodes"]
    n_int4 = sum(
        1
        for n, m in quantized_layers(model).items()
        if m.weight_fq.group_size and n.startswith("encoder.")
    )
    # every int4 layer of the encoder is an int4 GEMM in the delegate (a layer may run twice)
    assert nodes.get("XNNFullyConnected qdint8 x qbint4 -> fp32", 0) >= n_int4, nodes
    assert nodes.get("XNNStaticConstantPad fp32 -> fp32", 0) >= 1, nodes  # padded inputs
    assert res.parity.min_sqnr_db("executorch", "encoder") >= 30.0
    assert res.parity.min_sqnr_db("onnx", "encoder") >= 30.0
    # the joiner's 8-bit output layer: dynamic int8 x learned per-channel int8 (8da8w)
    joiner = res.metadata["programs"]["executorch"]["joiner"]["delegate_nodes"]
    assert joiner.get("XNNFullyConnected qdint8 x qcint8 -> fp32", 0) == 1, joiner
    assert res.metadata["quantization"]["int8_layers"]["layers"] == ["joiner.output_linear"]
    ort_ops = res.metadata["programs"]["onnx"]["encoder"]["ort_ops"]
    assert ort_ops.get("MatMulNBits", 0) >= n_int4, ort_ops
    # a 48-wide layer's learned scales (2 per row, the second over 16 columns)
    onnx_model = onnx.load(str(tmp_path / "w4" / "encoder.onnx"))
    scales = [
        numpy_helper.to_array(i) for i in onnx_model.graph.initializer if i.name.endswith("_scales")
    ]
    learned = proj.weight_fq.effective_scale().numpy()
    assert any(a.shape == learned.shape and (a == learned).all() for a in scales)
    with pytest.raises(AsrqError, match="int4"):
        quant_plan("int8", loaded)


def _linear_outputs(graph: Any) -> set[str]:
    """The ONNX tensors the linear layers write: the output of a ``MatMul`` / ``Gemm`` whose
    weight is a (dequantized, transposed) initializer, or of the ``Add`` of its bias."""
    nodes, consts = graph.node, {t.name for t in graph.initializer}
    made_by = {o: n for n in nodes for o in n.output}

    def constant(name: str) -> bool:  # an initializer, maybe dequantized and / or transposed
        n = made_by.get(name)
        while n is not None and n.op_type in ("Transpose", "DequantizeLinear"):
            name, n = n.input[0], made_by.get(n.input[0])
        return name in consts or (n is not None and n.op_type == "Constant")

    outs = {n.output[0] for n in nodes if n.op_type in ("MatMul", "Gemm") and constant(n.input[1])}
    bias = {n.input[0]: n.output[0] for n in nodes if n.op_type == "Add" and n.input[0] in outs}
    return {bias.get(o, o) for o in outs}
