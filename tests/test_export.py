"""Export: the program wrappers and rewrites (fast), then a tiny random checkpoint exported once
per session to ONNX and ExecuTorch with parity checks, metadata, and decoding through the
exported programs matching eager decoding token for token (slow: ExecuTorch lowering takes a
minute or two on 2 cores)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from asrq.cli.export import export as export_cmd
from asrq.config import to_dict
from asrq.export.rewrites import DecomposedLayerNorm, xnnpack_friendly
from asrq.export.rnnt import program_specs
from asrq.runtime.heads import load_exported
from asrq.runtime.model_dir import encoder_input_frames
from asrq.runtime.rnnt import PROGRAMS, ExportedRnnt
from asrq.testing.models import make_tiny_checkpoint
from asrq.train.checkpoint import load_model
from tests.shared import shared_tiny_export

REAL = Path("/work/shared/data/real")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_tiny_export(tmp_path_factory)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


# --------------------------------------------------------------------------------------------
# fast: pieces
# --------------------------------------------------------------------------------------------
def test_decomposed_layer_norm_matches_layer_norm():
    torch.manual_seed(0)
    ln = torch.nn.LayerNorm(24)
    with torch.no_grad():
        ln.weight.normal_()
        ln.bias.normal_()
    x = torch.randn(3, 7, 24) * 4 + 2
    torch.testing.assert_close(DecomposedLayerNorm(ln)(x), ln(x), atol=1e-5, rtol=1e-5)


def test_xnnpack_friendly_replaces_every_layer_norm_and_keeps_outputs(tiny_ckpt: Path):
    model = load_model(tiny_ckpt).model
    spec = program_specs(model, 4, 16, "executorch")["encoder_streaming"]
    rewritten = xnnpack_friendly(spec.module)
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in rewritten.modules())
    assert any(
        isinstance(m, torch.nn.LayerNorm) for m in spec.module.modules()
    )  # original untouched
    with torch.no_grad():
        for a, b in zip(
            rewritten(*spec.example_inputs), spec.module(*spec.example_inputs), strict=True
        ):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_encoder_input_frames_is_4k_plus_3_and_covers_the_input():
    for t in range(1, 200):
        p = encoder_input_frames(t)
        assert p >= max(t, 11) and (p - 3) % 4 == 0 and p - 4 < max(t, 11)


def test_program_specs_shapes(tiny_ckpt: Path):
    model = load_model(tiny_ckpt).model
    for target in ("onnx", "executorch"):
        specs = program_specs(model, 4, 16, target)
        assert tuple(specs) == PROGRAMS
        enc, _ = specs["encoder"].module(*specs["encoder"].example_inputs)
        assert enc.shape[-1] == model.joiner.encoder_proj.out_features
        out = specs["encoder_streaming"].module(*specs["encoder_streaming"].example_inputs)
        assert (
            out[0].shape[1] == 4
            and out[2].shape == specs["encoder_streaming"].example_inputs[2].shape
        )
        assert specs["joiner"].module(*specs["joiner"].example_inputs).shape[-1] == model.vocab_size


def test_export_help():
    res = CliRunner().invoke(export_cmd, ["--help"])
    assert res.exit_code == 0
    assert (
        "--chunk-frames" in res.output
        and "--no-executorch" in res.output
        and "parity" in res.output
    )


def test_export_missing_checkpoint_is_a_clear_error(tmp_path: Path):
    res = CliRunner().invoke(
        export_cmd, [str(tmp_path / "nope.pt"), "--out", str(tmp_path / "out")]
    )
    assert res.exit_code == 2
    assert "nope.pt: checkpoint not found" in res.output
    assert not (tmp_path / "out").exists()


def test_export_refuses_a_foreign_out_dir(tiny_ckpt: Path, tmp_path: Path):
    (tmp_path / "mine.txt").write_text("keep me")
    res = CliRunner().invoke(export_cmd, [str(tiny_ckpt), "--out", str(tmp_path)])
    assert res.exit_code == 2 and "not an asrq model directory" in res.output
    assert (tmp_path / "mine.txt").read_text() == "keep me"


# --------------------------------------------------------------------------------------------
# slow: the exported tiny model
# --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_export_writes_every_program_and_passes_parity(exported: Path):
    meta = json.loads((exported / "metadata.json").read_text())
    for name in PROGRAMS:
        assert (exported / f"{name}.onnx").stat().st_size == meta["programs"]["onnx"][name]["bytes"]
        assert (exported / f"{name}.pte").stat().st_size == meta["programs"]["executorch"][name][
            "bytes"
        ]
    assert (exported / "bpe.model").is_file()
    assert (exported / "tokens.txt").read_text().splitlines()[0] == "<blk> 0"
    assert not [p for p in exported.parent.iterdir() if p.name.startswith(".")]  # no staging left
    parity = meta["parity"]
    assert parity["ok"] and parity["tol"] == 1e-4
    checks = parity["checks"]
    for backend in ("onnx", "executorch"):
        got = {c["program"] for c in checks if c["backend"] == backend}
        assert got == set(PROGRAMS)
        assert all(c["max_abs_err"] <= 1e-4 for c in checks if c["backend"] == backend)
        # the full encoder is checked at lengths other than the traced one
        enc_cases = [
            c["case"] for c in checks if c["backend"] == backend and c["program"] == "encoder"
        ]
        assert len({case.split(" ")[1] for case in enc_cases}) >= 3
        # 3 streaming chunks with carried state
        assert (
            sum(
                1 for c in checks if c["backend"] == backend and c["program"] == "encoder_streaming"
            )
            == 3
        )
    assert meta["programs"]["executorch"]["encoder"]["max_fbank_frames"] == 4 * 750 + 3


@pytest.mark.slow
def test_metadata_holds_the_resolved_config(exported: Path):
    from asrq.export.onnx_export import read_onnx_metadata

    ckpt_cfg = to_dict(load_model(exported.parent / "tiny.pt").config)
    meta = json.loads((exported / "metadata.json").read_text())
    assert meta["head"] == "rnnt" and meta["model_type"] == "conformer_rnnt"
    assert meta["config"] == json.loads(json.dumps(ckpt_cfg))
    m = meta["model"]
    assert (
        m["vocab_size"],
        m["blank_id"],
        m["context_size"],
        m["chunk_frames"],
        m["left_frames"],
    ) == (48, 0, 2, 4, 16)
    assert meta["feature"]["num_mel_bins"] == 80 and meta["feature"]["sampling_rate"] == 16000
    assert meta["sizes"]["onnx"]["total"] > 0 and meta["versions"]["torch"]
    for name in PROGRAMS:
        props = read_onnx_metadata(exported / f"{name}.onnx")
        assert props["program"] == name and props["head"] == "rnnt"
        assert json.loads(props["config"]) == meta["config"]
        assert (
            props["vocab_size"] == "48"
            and props["blank_id"] == "0"
            and props["context_size"] == "2"
        )
        assert (
            props["subsampling_factor"] == "4"
            and props["chunk_frames"] == "4"
            and props["left_frames"] == "16"
        )
        assert props["checkpoint_step"] == "0" and props["asrq_version"]
        assert json.loads(props["feature"])["num_mel_bins"] == 80


@pytest.mark.slow
def test_pte_carries_constant_methods(exported: Path):
    from asrq.runtime.backends import executorch_extension

    ext = executorch_extension()
    prog = ext._load_program(
        str(exported / "joiner.pte"),
        enable_etdump=False,
        debug_buffer_size=0,
        program_verification=ext.Verification.InternalConsistency,
        data_path=None,
    )
    names = {prog.get_method_name(i) for i in range(prog.num_methods())}
    assert {"forward", "vocab_size", "blank_id", "context_size", "chunk_frames"} <= names
    assert prog.load_method("vocab_size")([])[0] == 48


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["onnx", "executorch"])
def test_exported_decoding_matches_eager(exported: Path, backend: str):
    """Greedy tokens through the exported programs equal eager decoding on a real recording
    (full context, any length: the runtime pads to the encoder's 4k+3 contract; and streaming)."""
    from asrq.decode import TorchRnnt, greedy_search, stream_decode
    from asrq.runtime.audio import load_features

    torch.manual_seed(0)
    eager = TorchRnnt(load_model(exported.parent / "tiny.pt").model, 4, 16)
    comp = load_exported(exported, backend)
    assert isinstance(comp, ExportedRnnt)
    feats = load_features(REAL / "extra" / "LJ002-0020.wav")[
        :301
    ]  # 301 frames: not of the form 4k + 3
    lens = torch.tensor([feats.shape[0]])
    enc_e, lens_e = eager.encode(feats[None], lens)
    enc_x, lens_x = comp.encode(feats[None], lens)
    assert torch.equal(lens_e, lens_x)
    torch.testing.assert_close(enc_x[:, : int(lens_x[0])], enc_e, atol=1e-4, rtol=0)
    assert greedy_search(comp, enc_x, lens_x) == greedy_search(eager, enc_e, lens_e)
    assert stream_decode(comp, feats) == stream_decode(eager, feats)
    # the predictor / joiner take more rows than an ExecuTorch plan holds (split into pieces)
    ctx = torch.randint(0, 48, (40, 2))
    torch.testing.assert_close(comp.predict(ctx), eager.predict(ctx), atol=1e-4, rtol=0)


@pytest.mark.slow
def test_parity_failure_fails_the_export_and_writes_nothing(tiny_ckpt: Path, tmp_path: Path):
    """tol 0: float rounding alone fails it; the command exits 1 naming the failures."""
    out = tmp_path / "model"
    res = CliRunner().invoke(
        export_cmd, [str(tiny_ckpt), "--out", str(out), "--no-executorch", "--tol", "0"]
    )
    assert res.exit_code == 1, res.output
    assert "parity failed" in res.output and "onnx/encoder" in res.output
    assert isinstance(res.exception, SystemExit)
    assert not out.exists() and not list(tmp_path.iterdir())  # nothing half-written


# --------------------------------------------------------------------------------------------
# any encoder: the streaming states come from the encoder's state_specs
# --------------------------------------------------------------------------------------------
def test_runtime_reads_the_states_from_metadata_with_a_conformer_fallback():
    from asrq.runtime.model_dir import streaming_states

    states = [
        {"name": "ssm_state", "shape": [2, 1, 4, 16, 2], "dtype": "float32", "batch_axis": 1},
        {"name": "processed", "shape": [1], "dtype": "int64", "batch_axis": 0},
    ]
    got = streaming_states({"model": {"states": states}})
    assert [(s.name, s.shape, s.dtype, s.batch_axis) for s in got] == [
        ("ssm_state", (2, 1, 4, 16, 2), torch.float32, 1),
        ("processed", (1,), torch.int64, 0),
    ]
    # exports written before the metadata named its states: the Conformer's three
    old = {"attn_cache": [2, 1, 16, 128], "conv_cache": [2, 1, 64, 6], "processed": [1]}
    got = streaming_states({"model": {"state_shapes": old}})
    assert [(s.name, s.batch_axis, s.dtype) for s in got] == [
        ("attn_cache", 1, torch.float32),
        ("conv_cache", 1, torch.float32),
        ("processed", 0, torch.int64),
    ]


def test_program_specs_follow_the_encoder_state_specs(tmp_path: Path):
    model = load_model(
        make_tiny_checkpoint(tmp_path / "sf.pt", encoder={"type": "stateformer", "num_layers": 1})
    ).model
    for target in ("onnx", "executorch"):
        spec = program_specs(model, 4, 16, target)["encoder_streaming"]
        assert spec.input_names == ["x", "x_lens", "ssm_state", "conv_cache", "processed"]
        assert spec.output_names[2:] == ["new_ssm_state", "new_conv_cache", "new_processed"]
        out = spec.module(*spec.example_inputs)
        assert [tuple(o.shape) for o in out[2:]] == [s.shape for s in spec.states]


@pytest.mark.slow
def test_stateformer_export_parity_and_exported_streaming(tmp_path: Path):
    """A tiny stateformer (MH-SSM, no attention): full and streaming encoders exported to ONNX and
    ExecuTorch pass parity; the runtimes stream a batch of 2 through them (ExecuTorch: row by
    row, slicing the states on their declared batch axes) as the eager model does."""
    from asrq.decode import TorchRnnt
    from asrq.export.pipeline import export_loaded

    loaded = load_model(
        make_tiny_checkpoint(tmp_path / "sf.pt", encoder={"type": "stateformer", "num_layers": 1})
    )
    out = tmp_path / "model"
    res = export_loaded(loaded, out, programs=("encoder", "encoder_streaming"))
    assert res.parity.ok, res.parity.table()
    for backend in ("onnx", "executorch"):
        got = {c.program for c in res.parity.checks if c.backend == backend}
        assert got == {"encoder", "encoder_streaming"}
    meta = json.loads((out / "metadata.json").read_text())
    assert [s["name"] for s in meta["model"]["states"]] == ["ssm_state", "conv_cache", "processed"]
    assert meta["model"]["states"][0]["shape"] == [
        1,
        1,
        4,
        16,
        2,
    ]  # (layers, N, heads, S, re/im); 1 layer: ET lowering is slow
    eager = TorchRnnt(loaded.model.eval(), 4, 16)
    g = torch.Generator().manual_seed(1)
    chunks = [torch.randn(2, 19, 80, generator=g) for _ in range(3)]
    for backend in ("onnx", "executorch"):
        comp = load_exported(out, backend)
        s_x, s_e = comp.init_states(2), eager.init_states(2)
        assert [t.shape for t in s_x] == [t.shape for t in s_e]
        for k, x in enumerate(chunks):
            lens = torch.tensor([19, 19 if k < 2 else 12])
            e_x, l_x, s_x = comp.encode_chunk(x, lens, s_x)
            e_e, l_e, s_e = eager.encode_chunk(x, lens, s_e)
            assert torch.equal(l_x, l_e)
            torch.testing.assert_close(e_x, e_e, atol=1e-4, rtol=0)
            for a, b in zip(s_x, s_e, strict=True):
                torch.testing.assert_close(a.to(b.dtype), b, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_an_export_without_head_in_its_metadata_loads_as_rnnt(exported: Path, tmp_path: Path):
    """Exports written before metadata.json named its head are RNN-T: a copy of the RNN-T
    export with ``head`` removed loads, transcribes and benchmarks as one (same text)."""
    import shutil

    from asrq.bench.steps import RnntGreedyStep, streaming_step
    from asrq.runtime.heads import RUNTIME_HEADS, runtime_head
    from asrq.runtime.model_dir import read_model_dir
    from asrq.runtime.transcribe import transcribe

    old = tmp_path / "old"
    shutil.copytree(exported, old)
    meta = json.loads((old / "metadata.json").read_text())
    del meta["head"]
    (old / "metadata.json").write_text(json.dumps(meta))
    md = read_model_dir(old)
    assert md.head is None and runtime_head(md) is RUNTIME_HEADS["rnnt"]
    assert isinstance(streaming_step(md), RnntGreedyStep)
    comp = load_exported(old, "onnx")
    assert type(comp) is ExportedRnnt and comp.context_size == 2
    wav = REAL / "extra" / "LJ002-0020.wav"
    assert transcribe(old, [wav]) == [(str(wav), transcribe(exported, [wav])[0][1])]


def test_runtime_refuses_a_head_it_does_not_know(tmp_path: Path):
    from asrq.runtime.transcribe import transcribe
    from asrq.utils.io import AsrqError

    (tmp_path / "metadata.json").write_text(json.dumps({"format": "asrq-export-v1", "head": "x"}))
    (tmp_path / "a.wav").write_bytes(b"")
    with pytest.raises(AsrqError, match="head 'x' is unknown"):
        transcribe(tmp_path, [tmp_path / "a.wav"])


def _two_equal_constants_model() -> Any:
    """x (2, 32) -> (x @ A) + (x @ B) @ C with A == B byte for byte (1 KB+ each, 32 x 32 f32)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    a = rng.standard_normal((32, 32)).astype(np.float32)
    c = rng.standard_normal((32, 32)).astype(np.float32)
    inits = [
        numpy_helper.from_array(a, "A"),
        numpy_helper.from_array(a.copy(), "B"),
        numpy_helper.from_array(c, "C"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "A"], ["xa"]),
        helper.make_node("MatMul", ["x", "B"], ["xb"]),
        helper.make_node("MatMul", ["xb", "C"], ["xbc"]),
        helper.make_node("Add", ["xa", "xbc"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 32])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def test_dedupe_initializers_merges_equal_constants_and_keeps_the_outputs(tmp_path: Path):
    import numpy as np
    import onnx
    import onnxruntime as ort

    from asrq.export.onnx_export import compact_onnx_file

    path = tmp_path / "m.onnx"
    onnx.save(_two_equal_constants_model(), str(path))
    x = np.random.default_rng(1).standard_normal((2, 32)).astype(np.float32)

    def run() -> Any:
        return ort.InferenceSession(str(path)).run(None, {"x": x})[0]

    before_out = run()
    before, after, removed = compact_onnx_file(path)
    assert removed == 1 and after < before - 4000  # one 4 KB copy gone
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    assert sorted(i.name for i in model.graph.initializer) == ["A", "C"]
    assert [n.input[1] for n in model.graph.node[:2]] == ["A", "A"]
    assert np.array_equal(run(), before_out)  # bit for bit
    assert compact_onnx_file(path)[2] == 0  # nothing left to merge
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def _repeated_constant_bytes(path: Path) -> int:
    import onnx
    from onnx import numpy_helper

    seen: set[bytes] = set()
    repeated = 0
    for init in onnx.load(str(path)).graph.initializer:
        data = numpy_helper.to_array(init)
        key = f"{init.data_type}{list(init.dims)}".encode() + data.tobytes()
        if data.nbytes >= 1024 and key in seen:
            repeated += data.nbytes
        seen.add(key)
    return repeated


def test_streaming_encoder_onnx_holds_each_rotary_table_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Each layer's rotary cos / sin and ALiBi bias are folded into constants of their own (over
    1 KB from head dim 24 and chunk 16 on); the export keeps one copy and computes the same."""
    import numpy as np
    import onnxruntime as ort

    import asrq.export.onnx_export as onnx_export
    from asrq.export.rnnt import program_specs
    from asrq.models import build_model
    from asrq.testing.models import tiny_config

    torch.manual_seed(0)
    cfg = tiny_config(encoder={"num_layers": 2, "d_model": 96, "num_heads": 4}, chunk=16)
    spec = program_specs(build_model(cfg.model).eval(), 16, 16, "onnx")["encoder_streaming"]
    merged = onnx_export.export_onnx(spec, tmp_path / "merged.onnx", {}).path
    with monkeypatch.context() as m:
        m.setattr(onnx_export, "dedupe_initializers", lambda model, min_bytes=1024: 0)
        apart = onnx_export.export_onnx(spec, tmp_path / "apart.onnx", {}).path
    assert _repeated_constant_bytes(apart) >= 2 * 32 * 24 * 4  # cos, sin: (L + C, head dim)
    assert _repeated_constant_bytes(merged) == 0
    assert merged.stat().st_size < apart.stat().st_size
    feed = {n: x.numpy() for n, x in zip(spec.input_names, spec.example_inputs, strict=True)}
    outs = [ort.InferenceSession(str(p)).run(None, feed) for p in (merged, apart)]
    for a, b in zip(*outs, strict=True):
        assert np.array_equal(a, b)  # bit for bit
