"""Streaming encoder states as data: every streaming encoder declares its states with
:meth:`state_specs`, so the export wrappers, the parity checks and the runtimes handle any
encoder without knowing its state names.

An encoder with streaming support offers::

    state_specs(batch_size, left_frames) -> list[StateSpec]     # names, shapes, dtypes, batch axes
    init_states(batch_size, left_frames, device=None) -> list[Tensor]   # zeros, in that order
    streaming_forward(x, x_lens, states) -> (out, out_lens, new_states)   # same order

The exported metadata stores the specs (batch 1) as JSON (:meth:`StateSpec.to_json`), so a
runtime reads the names, shapes, dtypes and batch axes from there.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

_DTYPES = {"float32": torch.float32, "int64": torch.int64}


class StateSpec(NamedTuple):
    """One streaming state tensor: ``name``, ``shape`` (with the batch size filled in), ``dtype``
    and ``batch_axis`` (the axis that holds the batch: runtimes slice and concatenate on it)."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    batch_axis: int

    def zeros(self, device: torch.device | str | None = None) -> Tensor:
        return torch.zeros(self.shape, dtype=self.dtype, device=device)

    def with_batch(self, batch_size: int) -> StateSpec:
        shape = list(self.shape)
        shape[self.batch_axis] = batch_size
        return self._replace(shape=tuple(shape))

    def to_json(self) -> dict[str, Any]:
        dtype = next(k for k, v in _DTYPES.items() if v == self.dtype)
        return {
            "name": self.name,
            "shape": list(self.shape),
            "dtype": dtype,
            "batch_axis": self.batch_axis,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> StateSpec:
        return cls(
            d["name"], tuple(int(s) for s in d["shape"]), _DTYPES[d["dtype"]], int(d["batch_axis"])
        )


def zero_states(specs: list[StateSpec], device: torch.device | str | None = None) -> list[Tensor]:
    return [s.zeros(device) for s in specs]
