"""Fake kernels of fastrnn's test-only operators (declared in csrc/fastrnn.cpp, implemented in
csrc/cpu/testing_ops.cpp). Every fastrnn:: op has one, so torch.compile can trace it without running it.
Imported by the tests that use these ops; not part of the public API."""
import torch

from . import _C  # noqa: F401  registers the fastrnn:: operators


@torch.library.register_fake("fastrnn::_parallel_threads_used")
def _parallel_threads_used_fake(rows):
    # The number of threads is a property of the run, not of the input: unbacked under tracing.
    return torch.library.get_ctx().new_dynamic_size()
