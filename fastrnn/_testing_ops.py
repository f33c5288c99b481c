"""Fake kernels of fastrnn's test-only operators (declared in csrc/fastrnn.cpp, implemented in
csrc/cpu/testing_ops.cpp). Every fastrnn:: op has one, so torch.compile can trace it without running it.
Imported by the tests that use these ops; not part of the public API."""
import torch

from . import _C  # noqa: F401  registers the fastrnn:: operators


@torch.library.register_fake("fastrnn::_parallel_threads_used")
def _parallel_threads_used_fake(rows):
    # The number of threads is a property of the run, not of the input: unbacked under tracing.
    return torch.library.get_ctx().new_dynamic_size()


@torch.library.register_fake("fastrnn::_cpu_activation")
def _cpu_activation_fake(x, fn):
    torch._check(x.dtype == torch.float32, lambda: f"x must be float32, got {x.dtype}")
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


@torch.library.register_fake("fastrnn::_cpu_brgemm_enabled")
def _cpu_brgemm_enabled_fake(dtype):
    # A property of the processor and the environment at run time, not of any input.
    return True


@torch.library.register_fake("fastrnn::_cpu_seq_gemm")
def _cpu_seq_gemm_fake(a, b, c, add):
    torch._check(a.dim() == 2 and b.dim() == 2 and c.shape == (a.shape[0], b.shape[1]), lambda: "shapes")
    return torch.empty_like(c, memory_format=torch.contiguous_format), True


@torch.library.register_fake("fastrnn::_cpu_small_mm")
def _cpu_small_mm_fake(a, b, c, add):
    return _cpu_seq_gemm_fake(a, b, c, add)


@torch.library.register_fake("fastrnn::_cpu_mm_wt")
def _cpu_mm_wt_fake(a, w):
    torch._check(a.dim() == 2 and w.dim() == 2 and a.shape[1] == w.shape[1], lambda: "shapes")
    return a.new_empty((a.shape[0], w.shape[0])), True


@torch.library.register_fake("fastrnn::_cpu_transpose")
def _cpu_transpose_fake(x, pad):
    torch._check(x.dtype == torch.float32 and x.dim() == 2, lambda: "x must be a 2-D float32 matrix")
    return x.new_empty((x.shape[1], x.shape[0] + pad))


@torch.library.register_fake("fastrnn::_cpu_scratch_probe")
def _cpu_scratch_probe_fake(bytes):
    return True, True
