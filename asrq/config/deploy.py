"""Decode, export and benchmark configs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class DecodeConfig:
    method: Literal[
        "greedy", "modified_beam_search", "ctc_greedy", "ctc_prefix_beam", "attention_rescoring"
    ] = "greedy"
    beam: int = 4
    max_sym_per_frame: int = 1
    ctc_weight: float = 0.5  # attention_rescoring: total = ctc_weight * ctc + attention


@dataclass
class ExportConfig:
    opset: int = 18
    onnx: bool = True
    executorch: bool = True


@dataclass
class BenchConfig:
    threads: list[int] = field(default_factory=lambda: [1, 2])
    chunk_ms: int = 320
    max_files: int = 10
