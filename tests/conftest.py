"""Session-wide fixtures shared by the test files."""

from __future__ import annotations

import pytest

from asrq.testing.data import TinyData, make_tiny_corpus


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> TinyData:
    """The tiny synthetic corpus + manifests + fbank + BPE model (see asrq.testing.data)."""
    return make_tiny_corpus(tmp_path_factory.mktemp("tiny_data"))
