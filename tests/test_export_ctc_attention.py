"""Export of the hybrid CTC / attention head: program specs (fast), then a tiny random
ctc_attention checkpoint exported once per session to ONNX and ExecuTorch with parity checks
(max abs err <= 1e-4), metadata, decoding through the exported programs matching eager decoding,
``asrq transcribe`` and ``asrq bench`` on the export (slow: ExecuTorch lowering takes minutes on
2 cores)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from asrq.decode.ctc_attention import (
    TorchCtcAttention,
    attention_rescoring,
    ctc_prefix_beam_search,
    decode_batch,
)
from asrq.export.ctc_attention import MAX_DECODER_HYPS, program_specs
from asrq.export.rewrites import xnnpack_friendly
from asrq.runtime.ctc_attention import PROGRAMS
from asrq.testing.models import make_tiny_ctc_attention_checkpoint
from asrq.train.checkpoint import load_model

REAL = Path("/work/shared/data/real")
CHUNK, LEFT = 4, 16


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_ctc_attention_checkpoint(tmp_path_factory.mktemp("ca_ckpt") / "tiny.pt")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny ctc_attention checkpoint exported (ONNX + ExecuTorch) once per session."""
    from asrq.export.pipeline import export_model

    base = tmp_path_factory.getbasetemp() / "asrq_tiny_ctc_attention_export"
    out = base / "model"
    if not (out / "metadata.json").is_file():
        export_model(make_tiny_ctc_attention_checkpoint(base / "tiny.pt"), out)
    return out


# --------------------------------------------------------------------------------------------
# fast: specs
# --------------------------------------------------------------------------------------------
def test_program_specs_shapes(tiny_ckpt: Path):
    model = load_model(tiny_ckpt).model
    v = model.vocab_size
    for target in ("onnx", "executorch"):
        specs = program_specs(model, CHUNK, LEFT, target)
        assert tuple(specs) == PROGRAMS
        with torch.no_grad():
            enc, lens, lp = specs["encoder"].module(*specs["encoder"].example_inputs)
            assert enc.shape[:2] == lp.shape[:2] and lp.shape[-1] == v
            torch.testing.assert_close(lp.exp().sum(-1), torch.ones(lp.shape[:2]))
            s = specs["encoder_streaming"]
            out = s.module(*s.example_inputs)
            assert out[0].shape[1] == CHUNK and out[2].shape[1:] == (CHUNK, v)
            states = model.encoder.state_specs(s.example_inputs[0].shape[0], LEFT)
            assert s.input_names[2:] == [st.name for st in states]
            assert [o.shape for o in out[3:]] == [torch.Size(st.shape) for st in states]
            d = specs["decoder"]
            assert d.module(*d.example_inputs).shape == (*d.example_inputs[2].shape, v)


def test_xnnpack_friendly_decoder_keeps_outputs(tiny_ckpt: Path):
    model = load_model(tiny_ckpt).model
    spec = program_specs(model, CHUNK, LEFT, "executorch")["decoder"]
    with torch.no_grad():
        torch.testing.assert_close(
            xnnpack_friendly(spec.module)(*spec.example_inputs),
            spec.module(*spec.example_inputs),
            atol=1e-5,
            rtol=1e-5,
        )


# --------------------------------------------------------------------------------------------
# slow: the exported tiny model
# --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_export_writes_every_program_and_passes_parity(exported: Path):
    meta = json.loads((exported / "metadata.json").read_text())
    assert meta["head"] == "ctc_attention" and meta["model_type"] == "conformer_ctc_attention"
    m = meta["model"]
    assert (
        m["vocab_size"],
        m["blank_id"],
        m["sos_id"],
        m["eos_id"],
        m["chunk_frames"],
        m["left_frames"],
    ) == (48, 0, 1, 1, 4, 16)
    assert [s["name"] for s in m["states"]] == ["attn_cache", "conv_cache", "processed"]
    assert meta["config"]["model"]["head"] == "ctc_attention"
    for backend, suffix in (("onnx", "onnx"), ("executorch", "pte")):
        for name in PROGRAMS:
            assert (exported / f"{name}.{suffix}").stat().st_size == meta["programs"][backend][
                name
            ]["bytes"]
    assert (exported / "bpe.model").is_file() and (exported / "tokens.txt").is_file()
    parity = meta["parity"]
    assert parity["ok"] and parity["tol"] == 1e-4
    for backend in ("onnx", "executorch"):
        checks = [c for c in parity["checks"] if c["backend"] == backend]
        assert {c["program"] for c in checks} == set(PROGRAMS)
        assert all(c["max_abs_err"] <= 1e-4 for c in checks)
        assert sum(1 for c in checks if c["program"] == "encoder_streaming") == 3
        assert sum(1 for c in checks if c["program"] == "decoder") == 3
    assert meta["programs"]["executorch"]["encoder"]["max_fbank_frames"] == 4 * 750 + 3


@pytest.mark.slow
def test_metadata_travels_in_the_files(exported: Path):
    from asrq.export.onnx_export import read_onnx_metadata
    from asrq.runtime.backends import executorch_extension

    for name in PROGRAMS:
        props = read_onnx_metadata(exported / f"{name}.onnx")
        assert props["program"] == name and props["head"] == "ctc_attention"
        assert (props["vocab_size"], props["sos_id"], props["blank_id"]) == ("48", "1", "0")
        assert json.loads(props["config"])["model"]["ctc_attention"]["decoder"]["num_layers"] == 2
    ext = executorch_extension()
    prog = ext._load_program(
        str(exported / "decoder.pte"),
        enable_etdump=False,
        debug_buffer_size=0,
        program_verification=ext.Verification.InternalConsistency,
        data_path=None,
    )
    names = {prog.get_method_name(i) for i in range(prog.num_methods())}
    assert {"forward", "vocab_size", "sos_id", "eos_id", "blank_id", "chunk_frames"} <= names
    assert prog.load_method("sos_id")([])[0] == 1


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["onnx", "executorch"])
def test_exported_decoding_matches_eager(exported: Path, backend: str):
    """CTC greedy, prefix beam and attention rescoring through the exported programs equal eager
    decoding on a real recording (full context at a length not of the form 4k + 3, and
    streaming)."""
    from asrq.runtime.audio import load_features
    from asrq.runtime.ctc_attention import ExportedCtcAttention
    from asrq.runtime.heads import load_exported

    torch.set_num_threads(1)
    eager = TorchCtcAttention(load_model(exported.parent / "tiny.pt").model, CHUNK, LEFT)
    comp = load_exported(exported, backend)
    assert isinstance(comp, ExportedCtcAttention)
    feats = load_features(REAL / "extra" / "LJ002-0020.wav")[:301]
    lens = torch.tensor([feats.shape[0]])
    enc_e, lens_e, lp_e = eager.encode(feats[None], lens)
    enc_x, lens_x, lp_x = comp.encode(feats[None], lens)
    assert torch.equal(lens_e, lens_x)
    n = int(lens_x[0])
    torch.testing.assert_close(enc_x[:, :n], enc_e, atol=1e-4, rtol=0)
    torch.testing.assert_close(lp_x[:, :n], lp_e, atol=1e-4, rtol=0)
    for method in ("ctc_greedy", "ctc_prefix_beam", "attention_rescoring"):
        for streaming in (False, True):
            got = decode_batch(comp, feats[None], lens, method, streaming, beam=4)  # type: ignore[arg-type]
            assert got == decode_batch(eager, feats[None], lens, method, streaming, beam=4), (
                method,
                streaming,
            )  # type: ignore[arg-type]
    # more hypotheses than the ExecuTorch decoder's plan holds: run in pieces, same scores
    nbest = ctc_prefix_beam_search(lp_e, lens_e, beam=MAX_DECODER_HYPS + 3)
    assert len(nbest[0]) > MAX_DECODER_HYPS
    assert attention_rescoring(comp, enc_x[:, :n], lens_x, nbest) == attention_rescoring(
        eager, enc_e, lens_e, nbest
    )
    hyps = torch.tensor(
        [[1] + [h[0] if h else 2 for h, _ in nbest[0][:4]]] * (MAX_DECODER_HYPS + 3)
    )
    hl = torch.full((hyps.shape[0],), hyps.shape[1])
    e = enc_e.expand(hyps.shape[0], -1, -1)
    el = lens_e.expand(hyps.shape[0])
    torch.testing.assert_close(
        comp.decoder_log_probs(e, el, hyps, hl),
        eager.decoder_log_probs(e, el, hyps, hl),
        atol=1e-4,
        rtol=0,
    )


@pytest.mark.slow
def test_transcribe_cli_on_a_ctc_attention_export(exported: Path):
    from asrq.cli.transcribe import transcribe

    wav = str(REAL / "extra" / "LJ002-0020.wav")
    runner = CliRunner()
    texts = {}
    for args in (
        ["--method", "attention_rescoring"],
        ["--backend", "executorch", "--method", "attention_rescoring"],
        ["--streaming", "--method", "ctc_prefix_beam"],
        ["--backend", "executorch", "--streaming"],
    ):
        r = runner.invoke(transcribe, [str(exported), wav, *args])
        assert r.exit_code == 0, r.output
        line = r.output.strip().splitlines()[-1]
        assert line.startswith(wav + "\t")
        texts[" ".join(args)] = line.split("\t", 1)[1]
    # the same search on both runtimes gives the same text
    assert (
        texts["--method attention_rescoring"]
        == texts["--backend executorch --method attention_rescoring"]
    )
    r = runner.invoke(transcribe, [str(exported), wav, "--method", "modified_beam_search"])
    assert r.exit_code == 2 and "not for a ctc_attention model" in r.output


@pytest.mark.slow
def test_bench_streams_ctc_greedy(exported: Path, tmp_path: Path):
    from asrq.bench.runner import run_bench

    report = run_bench(
        exported,
        ["onnx", "executorch"],
        [1],
        synthetic_seconds=1.5,
        out=tmp_path / "b.json",
        isolate=False,
        plot=False,
    )
    assert report["settings"]["search"] == "ctc_greedy"
    assert report["model"]["model_type"] == "conformer_ctc_attention"
    for run in report["runs"]:
        assert run["num_chunks"] > 0 and run["rtf"] > 0
        assert run["streaming_file_bytes"] == run["file_bytes"]["encoder_streaming"]
