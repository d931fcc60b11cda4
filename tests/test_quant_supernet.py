"""QAT inside the supernet (issue 12 part 3): step sizes sliced with their channels, a tiny QAT
supernet trained a few sandwich steps, a slice exported int8 and transcribed."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from asrq.quant.config import QatConfig, QuantConfig
from asrq.quant.modules import calibrating, quantize_, quantized_layers
from asrq.supernet.elastic import Supernet, group_index, slice_model, slicing_rules
from asrq.supernet.spec import SearchSpace
from asrq.testing.data import TinyData, tiny_train_config
from asrq.testing.models import tiny_supernet, tiny_supernet_config
from asrq.utils.io import AsrqError


def _quantized_supernet(quant: QuantConfig):
    model, cfg = tiny_supernet()
    quantize_(model, quant)
    feats, lens = torch.randn(2, 83, 80), torch.tensor([83, 71])
    ys, ylens = torch.tensor([[3, 5, 7, 9], [4, 6, 8, -1]]), torch.tensor([4, 3])
    cfg.train.loss.rnnt_type = "full"
    with calibrating(model):
        model(feats, lens, ys, ylens, cfg.train.loss, -1, -1)
    with torch.no_grad():  # distinct step sizes per row, so a wrong index cannot pass
        for m in quantized_layers(model).values():
            m.weight_fq.scale.mul_(1 + torch.rand_like(m.weight_fq.scale))
    return model.eval(), cfg


def test_slicing_keeps_step_sizes_with_their_channels() -> None:
    quant = QuantConfig(weight_qmax=63)
    model, cfg = _quantized_supernet(quant)
    space = SearchSpace(cfg.supernet.search_space, cfg.model)
    spec = space.smallest()
    plain, _ = slice_model(model, cfg.model, spec, quant=quant)
    sub = quantized_layers(plain)
    sup = quantized_layers(model)
    assert sub and set(sub) <= set(sup)
    rules = slicing_rules(plain, cfg.model)
    indexed = 0
    for name, layer in sub.items():
        big = sup[name].weight_fq.scale.detach()
        small = layer.weight_fq.scale.detach()
        rule = rules.get(f"{name}.weight_fq.scale")
        if rule is not None and rule[0] is not None:  # q / kv / pw1 rows: the weight's own index
            assert torch.equal(small, big.index_select(0, rule[0]))
            assert torch.equal(
                layer.weight.detach(),
                sup[name].weight.detach().index_select(0, rule[0])[:, : layer.weight.shape[1]],
            )
            indexed += 1
        else:  # the first rows
            assert torch.equal(small, big[: small.shape[0], : small.shape[1]])
        a, b = layer.input_fq, sup[name].input_fq
        if a is not None:
            assert torch.equal(a.scale, b.scale) and torch.equal(a.zero_point, b.zero_point)
    assert indexed > 0  # the test saw index-sliced step sizes (attention, conv pw1)
    # the slice computes what the supernet computes at that spec, fake quantization included
    sn = Supernet(model, cfg.model, quant=quant)
    x, lens = torch.randn(1, 83, 80), torch.tensor([83])
    with torch.no_grad(), sn.active(spec) as active:
        ref = active.encoder(x, lens)[0]
    assert torch.equal(plain.encoder(x, lens)[0], ref)


def test_group_scales_need_whole_groups() -> None:
    assert group_index(torch.arange(64, 128), 32, "l").tolist() == [2, 3]
    # a leading part of the last group (int4_unaligned: pad): 144 of 192 channels
    assert group_index(torch.arange(144), 32, "l").tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(AsrqError, match="splits groups"):
        group_index(torch.arange(8, 152), 32, "l")
    with pytest.raises(AsrqError, match="splits groups"):
        group_index(torch.cat([torch.arange(16), 32 + torch.arange(16)]), 32, "l")


@pytest.mark.slow
def test_qat_supernet_trains_slices_exports_int8_and_transcribes(
    tiny_data: TinyData, tmp_path: Path
) -> None:
    from asrq.export.pipeline import export_model
    from asrq.quant.train import load_qat_model, qat_train
    from asrq.runtime.transcribe import transcribe
    from asrq.supernet.checkpoint import slice_checkpoint
    from asrq.supernet.train import train_supernet

    base = tiny_train_config(
        tiny_supernet_config(vocab_size=0), tiny_data, tmp_path / "sn", max_steps=2
    )
    train_supernet(base, progress=False)
    cfg = tiny_train_config(
        tiny_supernet_config(vocab_size=0), tiny_data, tmp_path / "snq", max_steps=3
    )
    cfg = dataclasses.replace(
        cfg,
        qat=QatConfig(
            init=str(tmp_path / "sn" / "model.pt"),
            calib_batches=1,
            quant=QuantConfig(weight_qmax=63),
        ),
    )
    qat_train(cfg, progress=False)
    log = [json.loads(x) for x in (tmp_path / "snq" / "train_log.jsonl").read_text().splitlines()]
    steps = [r for r in log if r.get("event") == "train"]
    assert len(steps) == 3 and all("loss_smallest" in r for r in steps)
    res = slice_checkpoint(tmp_path / "snq" / "model.pt", "smallest", tmp_path / "slice")
    sliced = load_qat_model(res.path)
    assert quantized_layers(sliced.model)
    out = export_model(res.path, tmp_path / "export", quant="int8", executorch=False)
    q = out.metadata["quantization"]
    assert q["scheme"] == "int8" and q["source"] == "qat"
    assert out.parity.min_sqnr_db("onnx", "encoder") >= 30.0
    flac = sorted(Path(tiny_data.corpus_dir).rglob("*.flac"))[:2]
    texts = transcribe(tmp_path / "export", flac)
    assert [p for p, _ in texts] == [str(f) for f in flac]
