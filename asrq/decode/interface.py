"""The one interface every RNN-T backend offers to the search algorithms.

Search (greedy, modified beam search) and streaming decoding are written once against
:class:`RnntComponents`; backends implement it: the eager PyTorch model
(:class:`asrq.decode.torch_backend.TorchRnnt`), onnxruntime and the ExecuTorch runtime
(:mod:`asrq.runtime`). Tensors crossing this interface are torch CPU tensors.

Shapes: N batch, T fbank frames, F fbank bins, T' encoder frames, C chunk (encoder frames),
J joiner width (encoder/predictor outputs are already projected to J), V vocab.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor


@runtime_checkable
class RnntComponents(Protocol):
    vocab_size: int
    blank_id: int
    context_size: int
    #: encoder frames per streaming chunk (C); a chunk consumes 4C + 3 fbank frames, advancing 4C.
    chunk_frames: int

    def encode(self, x: Tensor, x_lens: Tensor) -> tuple[Tensor, Tensor]:
        """Full-context encoder: x (N, T, F), x_lens (N,) -> (N, T', J) projected, (N,)."""
        ...

    def init_states(self, batch_size: int) -> list[Tensor]:
        """Initial streaming encoder states."""
        ...

    def encode_chunk(
        self, x: Tensor, x_lens: Tensor, states: list[Tensor]
    ) -> tuple[Tensor, Tensor, list[Tensor]]:
        """Streaming encoder step: x (N, 4C + 3, F), x_lens (N,) valid fbank frames in the window
        -> (N, C, J) projected, valid frames (N,), new states."""
        ...

    def predict(self, context: Tensor) -> Tensor:
        """Predictor on the last ``context_size`` tokens: (N, context_size) int64 -> (N, J)
        projected."""
        ...

    def join(self, enc: Tensor, pred: Tensor) -> Tensor:
        """Joiner on projected inputs: (N, J), (N, J) -> logits (N, V)."""
        ...
