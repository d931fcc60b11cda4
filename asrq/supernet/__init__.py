"""TODM supernets ("Train Once, Deploy Many", Shangguan et al., arXiv 2309.01947): one
weight-sharing RNN-T supernet trained with the sandwich rule and in-place distillation
(:mod:`asrq.supernet.train`); subnets are named by a :class:`SubnetSpec` from a
:class:`SearchSpace` (:mod:`asrq.supernet.spec`), run inside the supernet or cut out as plain
models (:mod:`asrq.supernet.elastic`)."""

from asrq.supernet.elastic import Supernet, slice_model
from asrq.supernet.spec import (
    SearchSpace,
    SubnetSpec,
    check_sliceable,
    full_spec,
    load_spec,
    subnet_model_config,
)

__all__ = [
    "SearchSpace",
    "SubnetSpec",
    "Supernet",
    "check_sliceable",
    "full_spec",
    "load_spec",
    "slice_model",
    "subnet_model_config",
]
