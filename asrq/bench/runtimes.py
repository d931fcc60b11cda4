"""The runtimes ``asrq bench`` measures beside the program runners of
:data:`asrq.runtime.backends.BACKENDS`: :data:`EXTRA_RUNTIMES`, keyed by the name ``--backend``
takes. Each runs in its own child module (``python -m <child> SETTINGS.json RESULT.json``;
``run_child(settings: dict) -> dict`` for ``--in-process``) that returns the same raw figures as
the backends' children: ``import_s``, ``load_s``, ``chunk_s`` / ``enc_s`` (lists of seconds),
``programs``, ``file_bytes`` and :meth:`asrq.bench.memory.MemoryProbe.finish`'s figures.

The native runner (``export/runner``, issue 13) plugs in here: an entry whose child module runs
the runner binary on the inputs' audio and converts its JSON to those raw figures.

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
    #: the ``metadata.json`` key an export must have for this runtime
    meta_key: str
    #: how to produce it
    export_hint: str


EXTRA_RUNTIMES: dict[str, ExtraRuntime] = {
    "sherpa-onnx": ExtraRuntime(
        "sherpa-onnx",
        "asrq.bench.sherpa",
        "numpy+sherpa-onnx",
        "sherpa",
        "re-export with `asrq export ... --sherpa`",
    ),
}
