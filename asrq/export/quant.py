"""Quantized exports (``asrq export --quant``): the quantization schemes, one table keyed by
scheme name (:data:`QUANT_SCHEMES`), used by the one export driver
(:func:`asrq.export.pipeline.export_loaded`).

A scheme's ``prepare`` turns a loaded checkpoint into a :class:`QuantPlan`: the model whose
programs are exported (and the eager reference their parity is measured against), where the
quantization comes from (``qat``: the learned step sizes of a QAT checkpoint; ``ptq``: computed
now from an fp32 checkpoint) and the metadata the export records. Its ``exporters`` write one
program per backend, in place of :data:`asrq.export.backends.EXPORTERS`' fp32 writers, with the
same signature. The head tables do not change: the programs, specs and parity cases are the
fp32 export's, the files keep their names, so ``asrq transcribe`` / ``asrq bench`` run a
quantized model directory unchanged.

- ``int8``, source qat: static int8 with the learned step sizes (PT2E,
  :func:`asrq.quant.pt2e.convert_learned`) in both runtimes (ONNX QDQ); parity reference: the
  fake-quant model, every quantizer of it in both programs. With ``onnx_float_outputs``
  (``asrq export --onnx-float-outputs``) the ONNX programs keep every input and weight
  quantizer, but the linear layers' output quantizers only on the joiner's output ``Gemm``
  (:attr:`QuantPlan.drop_outputs`, :func:`without_output_quant`): onnxruntime's
  ``MatMulIntegerToFloat`` writes float and the output Q/DQ pairs cost time there (measured:
  README, "int8 speed"), but the program is then not the trained model (its reference is the
  fake-quant model without the dropped quantizers; README: the WER this costs).
- ``int8``, source ptq: the same after :func:`asrq.quant.quantize_` (7-bit weights, MSE step
  init) calibrated on dev cuts (:func:`asrq.quant.ptq.calibrate_on_cuts`); reference: the
  calibrated fake-quant model.
- ``int8-dynamic`` (ptq): ExecuTorch XNNPACKQuantizer dynamic int8 on ``nn.Linear``; ONNX
  ``quantize_dynamic`` (MatMul, 7-bit weights); reference: the float model.
- ``w4a8``, source qat: XNNPACK 8da4w with the learned int4 group step sizes injected; ONNX
  ``MatMulNBits`` int4 with the same learned block scales; reference: the float model with the
  learned int4 weights. Source ptq: torchao's scales, onnxruntime's ``MatMulNBitsQuantizer``;
  reference: the float model. Unaligned layers (``in_features % 32``, e.g. d=144) are int4
  too: the ``.pte`` pads their input to a whole group.
"""

from __future__ import annotations

import copy
import functools
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from asrq.export.backends import Exporter, FileMetadata
from asrq.export.onnx_export import export_onnx
from asrq.export.rewrites import xnnpack_friendly
from asrq.export.spec import ProgramSpec
from asrq.utils.io import AsrqError

#: onnxruntime's x86 u8s8 kernels without VNNI lose accuracy with full-range 8-bit weights
#: (notes/quantization.md: 17 dB vs 36 dB at 7 bits); int8 ONNX exports need qmax <= this
ONNX_MAX_WEIGHT_QMAX = 63
#: weight levels of the int8 PTQ scheme (7-bit: both runtimes keep their accuracy)
PTQ_INT8_QMAX = 63
#: XNNPACK 8da4w group size of the w4a8 PTQ scheme
PTQ_GROUP_SIZE = 32


@dataclass
class QuantPlan:
    """One quantized export: the scheme, the model whose programs are exported and its
    metadata."""

    scheme: str
    source: str  # qat | ptq
    #: the model the program specs are built from: what is exported and the parity reference
    model: nn.Module
    #: SQNR (dB) every float output must reach against ``model`` in its runtime
    min_sqnr: float
    #: ``metadata.json``'s ``quantization`` entry
    metadata: dict[str, Any]
    #: w4a8 from QAT: learned weight step sizes (int4 groups; 8-bit linear layers per channel)
    #: by ``id(layer)`` of ``model``'s layers
    group_scales: dict[int, Any] = field(default_factory=dict)
    group_size: int = PTQ_GROUP_SIZE
    max_weight_qmax: int = 0
    #: backends whose programs are exported from ``model`` without its linear layers' output
    #: quantizers (and measured against that model): static int8 ONNX on request
    #: (:meth:`float_linear_outputs`), where the output Q/DQ pairs cost time (onnxruntime fuses
    #: the linears into ``MatMulIntegerToFloat``, float out)
    drop_outputs: tuple[str, ...] = ()
    #: fbank utterances ``(T, F)`` the encoders' parity runs on (empty: random frames)
    speech: list[Any] = field(default_factory=list)
    speech_source: str = ""
    _by_target: dict[str, nn.Module] = field(default_factory=dict, repr=False)

    def model_for(self, backend: str) -> nn.Module:
        """The model ``backend``'s programs are built from and checked against."""
        if backend not in self.drop_outputs:
            return self.model
        if backend not in self._by_target:
            self._by_target[backend] = without_output_quant(self.model)
        return self._by_target[backend]

    def float_linear_outputs(self, backend: str) -> None:
        """Export ``backend``'s programs without the linear layers' output quantizers (see
        :func:`without_output_quant`), measured against the model without them."""
        if self.scheme != "int8":
            raise AsrqError(f"float linear outputs: an option of --quant int8, not {self.scheme}")
        self.drop_outputs = tuple(sorted({*self.drop_outputs, backend}))
        self._by_target.pop(backend, None)
        by = self.metadata["activations"]["outputs_by_backend"]
        by[backend] = "convolutions and joiner.output_linear only (other linears write float)"
        self.metadata["reference"] = (
            f"fake-quant eager model ({', '.join(self.drop_outputs)}: without the linear "
            "layers' output quantizers)"
        )

    def set_parity_speech(self, cuts: str | Path | None, n: int = 2) -> None:
        """Feed the encoders' parity checks the last ``n`` utterances of manifest ``cuts`` (the
        dev cuts; PTQ calibrates on the first ones) when it exists; else they stay random."""
        from asrq.decode.evaluate import load_eval_cuts

        if cuts is None or not Path(cuts).is_file():
            return
        chosen = load_eval_cuts(cuts)[-n:]
        self.speech = [torch.from_numpy(c.load_features()) for c in chosen]
        self.speech_source = f"{cuts} ({', '.join(c.id for c in chosen)})"

    def exporter(self, backend: str) -> Exporter:
        """The program writer of this plan for ``backend``."""
        writers = QUANT_SCHEMES[self.scheme].exporters
        if backend not in writers:
            raise AsrqError(
                f"--quant {self.scheme}: no quantized {backend} export; have {list(writers)}"
            )
        return functools.partial(writers[backend], plan=self)


# --------------------------------------------------------------------------------------------
# prepare: a loaded checkpoint -> a plan
# --------------------------------------------------------------------------------------------
def _layer_summary(model: nn.Module, scheme: str, source: str, **extra: Any) -> dict[str, Any]:
    from asrq.quant.modules import float_layers, quantized_layers

    q = quantized_layers(model)
    return {
        "scheme": scheme,
        "source": source,
        "quantized_layers": sorted(q),
        "float_layers": float_layers(model),
        **extra,
    }


def _int8_meta(model: nn.Module, cfg: Any, source: str, **extra: Any) -> dict[str, Any]:
    from asrq.quant.modules import quantized_layers

    qmaxes = sorted({m.weight_fq.qmax for m in quantized_layers(model).values()})
    return _layer_summary(
        model,
        "int8",
        source,
        weights={
            "dtype": "int8",
            "bits": 8,
            "qmax": qmaxes,
            "granularity": "per-channel",
            "symmetric": True,
        },
        activations={
            "dtype": "int8",
            "granularity": "per-tensor",
            "symmetric": False,
            "static": True,
            "outputs": bool(cfg.outputs),
        },
        estimator=cfg.estimator if source == "qat" else None,
        **extra,
    )


def prepare_int8(loaded: Any, calib_cuts: Path | None, calib_utts: int) -> QuantPlan:
    """Static int8: the learned step sizes of a QAT checkpoint, or (fp32 checkpoint)
    :func:`asrq.quant.quantize_` with 7-bit weights calibrated on ``calib_cuts``."""
    from asrq.quant.config import QuantConfig
    from asrq.quant.modules import quantize_, quantized_layers
    from asrq.quant.ptq import calibrate_on_cuts

    model = loaded.model
    layers = quantized_layers(model)
    if layers:
        grouped = sorted(n for n, m in layers.items() if m.weight_fq.group_size)
        if grouped:
            raise AsrqError(
                f"--quant int8: this QAT checkpoint has int4 (grouped) layers ({grouped[0]}, ...); "
                "export it with --quant w4a8"
            )
        cfg = loaded.config.qat.quant
        meta = _int8_meta(model, cfg, "qat")
        source = "qat"
    else:
        if calib_cuts is None:
            raise AsrqError(
                "--quant int8 from an fp32 checkpoint calibrates on dev cuts: pass --calib-cuts "
                "(default: <data.fbank_dir>/librispeech_cuts_<data.dev_split>.jsonl.gz)"
            )
        cfg = QuantConfig(weight_qmax=PTQ_INT8_QMAX, estimator="ste")
        model = quantize_(copy.deepcopy(model), cfg)
        n = calibrate_on_cuts(model, loaded.sp, calib_cuts, calib_utts)
        meta = _int8_meta(model, cfg, "ptq", calibration={"cuts": str(calib_cuts), "utterances": n})
        source = "ptq"
    qmax = max(m.weight_fq.qmax for m in quantized_layers(model).values())
    outputs = meta["activations"]["outputs"]
    meta["activations"]["outputs_by_backend"] = {"executorch": outputs, "onnx": outputs}
    meta["reference"] = "fake-quant eager model"
    return QuantPlan("int8", source, model.eval(), 30.0, meta, max_weight_qmax=qmax)


def without_output_quant(
    model: nn.Module, keep: tuple[str, ...] = ("joiner.output_linear",)
) -> nn.Module:
    """A copy of a fake-quantized ``model`` whose linear layers keep their input and weight
    quantizers but no output quantizer, except those named in ``keep``. The linears on 3-D
    inputs (encoder, projections) run as ``MatMul`` -> ``MatMulIntegerToFloat`` (float out);
    the joiner's output layer is a 2-D ``Gemm``, and the convolutions, that onnxruntime fuse
    into integer kernels (``QGemm``, ``QLinearConv``: faster than the float depthwise conv
    here) only with a quantized output."""
    from asrq.quant.modules import QuantLinear, quantized_layers

    m = copy.deepcopy(model).eval()
    for name, layer in quantized_layers(m).items():
        if isinstance(layer, QuantLinear) and name not in keep:
            layer.output_fq = None
    return m


def float_model(model: nn.Module) -> nn.Module:
    """``model`` without fake quantizers (a QAT checkpoint's weights as float), else itself."""
    from asrq.quant.modules import quantized_layers, strip_fake_quant

    if not quantized_layers(model):
        return model
    return strip_fake_quant(copy.deepcopy(model))[0]


def prepare_int8_dynamic(loaded: Any, calib_cuts: Path | None, calib_utts: int) -> QuantPlan:
    """Dynamic int8 of the float weights (a QAT checkpoint's weights are taken as float)."""
    model = float_model(loaded.model).eval()
    meta = {
        "scheme": "int8-dynamic",
        "source": "ptq",
        "weights": {"dtype": "int8", "bits": 8, "granularity": "per-channel", "symmetric": True},
        "activations": {"dtype": "int8", "granularity": "per-tensor", "static": False},
        "quantized_ops": {"onnx": "MatMul (7-bit weights)", "executorch": "nn.Linear"},
        "estimator": None,
        "reference": "float eager model",
    }
    return QuantPlan("int8-dynamic", "ptq", model, 20.0, meta)


@torch.no_grad()
def prepare_w4a8(loaded: Any, calib_cuts: Path | None, calib_utts: int) -> QuantPlan:
    """int4 grouped weights, dynamic int8 activations (XNNPACK 8da4w): the learned group step
    sizes of an int4 QAT checkpoint (its weights replaced by their fake-quantized values in the
    reference model), or torchao's (fp32 checkpoint)."""
    from asrq.quant.modules import quantized_layers, strip_fake_quant

    model = loaded.model
    layers = quantized_layers(model)
    if not layers:
        linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
        padded = sorted(n for n, m in linears.items() if m.in_features % PTQ_GROUP_SIZE)
        meta = {
            "scheme": "w4a8",
            "source": "ptq",
            "weights": {"dtype": "int4", "bits": 4, "granularity": f"group {PTQ_GROUP_SIZE}"},
            "activations": {"dtype": "int8", "granularity": "per-token", "static": False},
            "quantized_layers": sorted(linears),
            "padded_inputs": padded,
            "estimator": None,
            "reference": "float eager model",
        }
        return QuantPlan("w4a8", "ptq", model.eval(), 10.0, meta)
    grouped = {n: m for n, m in layers.items() if m.weight_fq.group_size}
    if not grouped:
        raise AsrqError(
            "--quant w4a8: this QAT checkpoint has no int4 layers (qat.quant.weight_dtype: int8); "
            "export it with --quant int8, or export the fp32 checkpoint with --quant w4a8 (PTQ)"
        )
    sizes = {m.weight_fq.group_size for m in grouped.values()}
    if len(sizes) != 1:
        raise AsrqError(f"--quant w4a8: int4 layers with different group sizes {sorted(sizes)}")
    ref = copy.deepcopy(model).eval()
    fq = {n: m.weight_fq(m.weight).detach().clone() for n, m in quantized_layers(ref).items()}
    ref, table = strip_fake_quant(ref)
    # int4 layers, and 8-bit linear layers (8da8w in the .pte), hold their learned weights
    eight = sorted(
        n for n in table if n not in grouped and isinstance(ref.get_submodule(n), nn.Linear)
    )
    scales = {}
    for name in [*grouped, *eight]:
        layer = ref.get_submodule(name)
        layer.weight.copy_(fq[name])
        scales[id(layer)] = table[name]
    meta = {
        "scheme": "w4a8",
        "source": "qat",
        "weights": {"dtype": "int4", "bits": 4, "granularity": f"group {sizes.pop()}"},
        "activations": {"dtype": "int8", "granularity": "per-token", "static": False},
        "quantized_layers": sorted(grouped),
        "int8_layers": {
            "layers": eight,
            "executorch": "dynamic int8 activations x learned per-channel int8 weights (8da8w)",
            "onnx": "float MatMul / Gemm of the learned int8 weights",
        },
        "float_layers": sorted(n for n in table if n not in grouped and n not in eight),
        "estimator": loaded.config.qat.quant.estimator,
        "onnx": "MatMulNBits int4 with the learned block scales",
        "padded_inputs": "linear layers whose in_features is not a multiple of the group size "
        "get their input zero-padded to a whole group in the .pte (MatMulNBits pads itself)",
        "reference": "float eager model with the learned int4 / int8 weights",
    }
    g = next(iter(grouped.values())).weight_fq.group_size
    return QuantPlan("w4a8", "qat", ref, 15.0, meta, group_scales=scales, group_size=g)


# --------------------------------------------------------------------------------------------
# exporters: one program, same signature as asrq.export.backends.EXPORTERS (+ the plan)
# --------------------------------------------------------------------------------------------
def _pte_entry(art: Any, seconds: float, dtype: str) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "bytes": art.bytes,
        "export_seconds": round(seconds, 2),
        "delegate": "xnnpack",
        "dtype": dtype,
        "quantization": art.scheme,
        "delegate_nodes": art.delegate_nodes,
        "portable_ops": art.portable_ops,
    }
    if art.max_fbank_frames is not None:
        entry["max_fbank_frames"] = art.max_fbank_frames
    return entry


def _onnx_entry(art: Any, seconds: float, opset: int) -> dict[str, Any]:
    return {
        "bytes": art.bytes,
        "export_seconds": round(seconds, 2),
        "opset": opset,
        "quantization": art.scheme,
        "ort_ops": art.ort_ops,
    }


def _props(files: FileMetadata, spec: ProgramSpec, plan: QuantPlan) -> dict[str, Any]:
    return {**files.props, "program": spec.name, "quantization": plan.metadata}


def _onnx_int8(
    spec: ProgramSpec, path: Path, files: FileMetadata, opset: int, *, plan: QuantPlan
) -> dict[str, Any]:
    from asrq.quant.export import export_onnx_int8

    if plan.max_weight_qmax > ONNX_MAX_WEIGHT_QMAX:
        raise AsrqError(
            f"--quant int8: the QAT weights use {plan.max_weight_qmax} levels a side; "
            "onnxruntime's x86 int8 kernels lose accuracy above 63 (notes/quantization.md). "
            "Fine-tune with qat.quant.weight_qmax=63, or export with --no-onnx"
        )
    t0 = time.perf_counter()
    art, _ = export_onnx_int8(
        spec.module,
        spec.example_inputs,
        spec.dynamic_shapes,
        spec.input_names,
        spec.output_names,
        path,
        _props(files, spec, plan),
    )
    return _onnx_entry(art, time.perf_counter() - t0, 18)


def _pte_int8(
    spec: ProgramSpec, path: Path, files: FileMetadata, opset: int, *, plan: QuantPlan
) -> dict[str, Any]:
    from asrq.quant.export import export_executorch_int8

    t0 = time.perf_counter()
    art, _ = export_executorch_int8(
        xnnpack_friendly(spec.module),
        spec.example_inputs,
        spec.dynamic_shapes,
        path,
        files.constants,
    )
    return _pte_entry(art, time.perf_counter() - t0, "int8")


def _via_fp32_onnx(
    quantize: Callable[[Path, Path], Any],
) -> Callable[..., dict[str, Any]]:
    """An ONNX writer that exports the fp32 program, then quantizes the file with ``quantize``
    (onnxruntime's quantization tools work on ONNX files)."""

    def write(
        spec: ProgramSpec, path: Path, files: FileMetadata, opset: int, *, plan: QuantPlan
    ) -> dict[str, Any]:
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(dir=path.parent) as d:
            fp32 = Path(d) / path.name
            export_onnx(spec, fp32, _props(files, spec, plan), opset)
            art = quantize(fp32, path, plan)
        return _onnx_entry(art, time.perf_counter() - t0, opset)

    return write


def _ort_dynamic(fp32: Path, path: Path, plan: QuantPlan) -> Any:
    from asrq.quant.export import ptq_onnx_dynamic

    return ptq_onnx_dynamic(fp32, path)


def _ort_int4(fp32: Path, path: Path, plan: QuantPlan) -> Any:
    from asrq.quant.int4 import onnx_int4_learned, ptq_onnx_int4

    if plan.source != "qat":
        return ptq_onnx_int4(fp32, path, block_size=plan.group_size)
    layers = [
        (m.weight, q.weight_scale, q.weight_qmax)
        for m in plan.model.modules()
        if (q := plan.group_scales.get(id(m))) is not None and q.group_size
    ]
    return onnx_int4_learned(fp32, path, layers, block_size=plan.group_size)


def _pte_dynamic(
    spec: ProgramSpec, path: Path, files: FileMetadata, opset: int, *, plan: QuantPlan
) -> dict[str, Any]:
    from asrq.quant.export import lower_to_pte, ptq_pt2e_dynamic

    t0 = time.perf_counter()
    gm = ptq_pt2e_dynamic(xnnpack_friendly(spec.module), spec.example_inputs, spec.dynamic_shapes)
    art = lower_to_pte(
        gm, spec.example_inputs, spec.dynamic_shapes, path, "int8-dynamic", files.constants
    )
    return _pte_entry(art, time.perf_counter() - t0, "int8-dynamic")


def _pte_w4a8(
    spec: ProgramSpec, path: Path, files: FileMetadata, opset: int, *, plan: QuantPlan
) -> dict[str, Any]:
    from asrq.quant.export import lower_to_pte
    from asrq.quant.int4 import _apply_8da4w, learned_w4a8_, pad_unaligned_linears

    t0 = time.perf_counter()
    # the learned scales by the layers' names inside this program's module
    table = {
        n: plan.group_scales[id(m)]
        for n, m in spec.module.named_modules()
        if id(m) in plan.group_scales
    }
    m = xnnpack_friendly(spec.module).eval()  # a deep copy: same layer names
    if plan.source == "qat":
        if table:
            learned_w4a8_(m, table, plan.group_size)
        scheme = "w4a8-learned"
    else:
        pad_unaligned_linears(m, plan.group_size)
        _apply_8da4w(m, plan.group_size)
        scheme = "w4a8-ptq"
    art = lower_to_pte(m, spec.example_inputs, spec.dynamic_shapes, path, scheme, files.constants)
    return _pte_entry(art, time.perf_counter() - t0, "w4a8")


# --------------------------------------------------------------------------------------------
# the table
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class QuantScheme:
    """One ``--quant`` choice: how a checkpoint becomes a plan, and each backend's writer."""

    name: str
    help: str
    prepare: Callable[[Any, Path | None, int], QuantPlan]
    exporters: dict[str, Callable[..., dict[str, Any]]]


QUANT_SCHEMES: dict[str, QuantScheme] = {
    "int8": QuantScheme(
        "int8",
        "static int8: QAT's learned step sizes, or PTQ calibrated on dev cuts",
        prepare_int8,
        {"onnx": _onnx_int8, "executorch": _pte_int8},
    ),
    "int8-dynamic": QuantScheme(
        "int8-dynamic",
        "dynamic int8 PTQ (onnxruntime MatMul, ExecuTorch linear layers)",
        prepare_int8_dynamic,
        {"onnx": _via_fp32_onnx(_ort_dynamic), "executorch": _pte_dynamic},
    ),
    "w4a8": QuantScheme(
        "w4a8",
        "int4 grouped weights + dynamic int8 activations (XNNPACK 8da4w; ONNX MatMulNBits)",
        prepare_w4a8,
        {"onnx": _via_fp32_onnx(_ort_int4), "executorch": _pte_w4a8},
    ),
}


def quant_plan(
    scheme: str,
    loaded: Any,
    calib_cuts: str | Path | None = None,
    calib_utts: int = 32,
    onnx_float_outputs: bool = False,
) -> QuantPlan:
    """The :class:`QuantPlan` of ``scheme`` for a loaded checkpoint (a QAT checkpoint loaded
    with :func:`asrq.quant.train.load_qat_model`, fake-quantized; else fp32).
    ``onnx_float_outputs`` (int8 only): see :meth:`QuantPlan.float_linear_outputs`."""
    if scheme not in QUANT_SCHEMES:
        raise AsrqError(f"unknown --quant {scheme!r}; choose one of {list(QUANT_SCHEMES)}")
    if onnx_float_outputs and scheme != "int8":
        raise AsrqError(f"--onnx-float-outputs is an option of --quant int8, not {scheme}")
    cuts = Path(calib_cuts) if calib_cuts is not None else None
    plan = QUANT_SCHEMES[scheme].prepare(loaded, cuts, calib_utts)
    if onnx_float_outputs:
        plan.float_linear_outputs("onnx")
    return plan
