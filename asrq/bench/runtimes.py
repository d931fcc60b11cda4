"""The runtimes ``asrq bench`` measures beside the program runners of
:data:`asrq.runtime.backends.BACKENDS`: :data:`EXTRA_RUNTIMES`, keyed by the name ``--backend``
takes. Each runs in its own child module (``python -m <child> SETTINGS.json RESULT.json``;
``run_child(settings: dict) -> dict`` for ``--in-process``) that returns the same raw figures as
the backends' children: ``import_s``, ``load_s``, ``chunk_s`` / ``enc_s`` (lists of seconds),
``programs``, ``file_bytes`` and :meth:`asrq.bench.memory.MemoryProbe.finish`'s figures.

``native`` is the C++ runner of ``export/runner`` (:mod:`asrq.bench.native`): its child builds (or
finds) the host binary, runs it on the inputs' audio and converts its JSON to those raw figures.
It is measured only when asked for (``--backend native``: it needs a CMake build).

Imports nothing heavy (the CLI reads it for its ``--backend`` choices).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ExtraRuntime:
    """A runtime outside the program-runner table."""

    name: str
    #: ``python -m <child>`` SETTINGS.json RESULT.json
    child: str
    #: what the child process holds (reported as ``child``)
    holds: str
    #: what an export's ``metadata.json`` must have for this runtime: a key, or a dotted path
    #: (``programs.executorch``)
    meta_key: str
    #: how to produce it
    export_hint: str
    #: measured by a plain ``asrq bench`` (no ``--backend``) when the export supports it
    default: bool = True

    def supports(self, meta: dict) -> bool:
        """Whether an export's metadata has what this runtime needs (:attr:`meta_key`)."""
        node: object = meta
        for part in self.meta_key.split("."):
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
        return True


EXTRA_RUNTIMES: dict[str, ExtraRuntime] = {
    "sherpa-onnx": ExtraRuntime(
        "sherpa-onnx",
        "asrq.bench.sherpa",
        "numpy+sherpa-onnx",
        "sherpa",
        "re-export with `asrq export ... --sherpa`",
    ),
    "native": ExtraRuntime(
        "native",
        "asrq.bench.native",
        "asrq-runner (C++, ExecuTorch)",
        "programs.executorch",
        "export with ExecuTorch programs (`asrq export ... --executorch`)",
        default=False,
    ),
}
