"""CPU kernel plumbing: the per-instruction-set objects and the packed-weight GEMM (the ISA variants' numbers
are tested in test_cpu_capability.py)."""
import glob
import os
import shutil
import subprocess

import pytest
import torch

import fastrnn
import fastrnn._testing_ops  # noqa: F401  fakes of the test-only ops

from common import CPU_CAPABILITIES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _isa_objects():
    return sorted(glob.glob(os.path.join(ROOT, "build", "temp*", "csrc", "cpu", "pointwise_avx*.o")))


@pytest.mark.skipif(shutil.which("nm") is None, reason="nm (binutils) is not installed")
def test_isa_objects_export_no_shared_inline_code():
    """The AVX2/AVX-512 files are compiled with `#pragma GCC target`. A weak (COMDAT) symbol they emitted
    outside their own namespaces could be picked by the linker for baseline callers and execute AVX-512 code
    on a processor without it: there must be none."""
    objects = _isa_objects()
    assert objects, "build the extension in place first (python setup.py build_ext --inplace)"
    allowed = ("fastrnn::cpu::isa_avx2::", "fastrnn::cpu::isa_avx512::", "at::vec::AVX2::", "at::vec::AVX512::")
    for obj in objects:
        listing = subprocess.run(["nm", "-C", "--defined-only", obj], check=True, capture_output=True,
                                 text=True).stdout
        weak = [line.split(" ", 2)[2] for line in listing.splitlines() if line.split(" ")[1:2] in (["W"], ["V"], ["u"])]
        leaked = [sym for sym in weak if not any(a in sym for a in allowed)]
        assert weak, f"{obj}: expected the kernel tables as weak symbols, found none"
        assert not leaked, f"{obj} emits shared inline code compiled for its wider ISA: {leaked[:5]}"


def _lstm_case(packed: bool):
    torch.manual_seed(0)
    m = fastrnn.LSTM(7, 21, num_layers=2, bidirectional=True)
    x = torch.randn(9, 5, 7, requires_grad=True)
    if packed:
        x_in = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor([9, 3, 7, 1, 9]), enforce_sorted=False)
    else:
        x_in = x
    y, (h, c) = m(x_in)
    y = y.data if packed else y
    loss = (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum() + h.sum() + c.sum()
    grads = torch.autograd.grad(loss, [x] + list(m.parameters()))
    return [y, h, c, *grads]


@pytest.mark.parametrize("packed", [False, True])
def test_packed_weight_gemm_matches_plain_gemm(monkeypatch, packed):
    """The MKL packed-weight path and the at::mm fallback agree (packed sequences exercise both: their
    shorter steps fall back)."""
    a = _lstm_case(packed)
    monkeypatch.setenv("FASTRNN_CPU_PACKED_GEMM", "0")
    b = _lstm_case(packed)
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("batch", [1, 3])
def test_small_gemm_loop_matches_blas(monkeypatch, mode, batch):
    """Steps of fewer than 4 rows over a small float32 weight run fastrnn's own GEMM loop; it must agree with
    the BLAS path (FASTRNN_CPU_SMALL_GEMM_MAX=0), forward and backward, with column tails (4H = 52 is not a
    multiple of the vector width) and a bidirectional second layer (k = 2H). On the per-step path (the fused
    brgemm path has its own GEMM), with the forward's transposed weight in the loop whatever the sequence
    length (by default a forward of fewer than 8 steps leaves it to the in-place GEMV,
    FASTRNN_CPU_SMALL_GEMM_MIN_STEPS), and that GEMV off in the reference run (FASTRNN_CPU_WT_GEMV=0: without
    it, SMALL_GEMM_MAX=0 would hand the transposed weight to the GEMV, not to BLAS)."""
    monkeypatch.setenv("FASTRNN_CPU_BRGEMM", "0")
    monkeypatch.setenv("FASTRNN_CPU_SMALL_GEMM_MIN_STEPS", "0")

    def run():
        torch.manual_seed(0)
        m = getattr(fastrnn, mode)(5, 13, num_layers=2, bidirectional=True)
        x = torch.randn(6, batch, 5, requires_grad=True)
        y, h = m(x)
        h = h[0] if isinstance(h, tuple) else h
        loss = (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum() + h.sum()
        return [y, h, *torch.autograd.grad(loss, [x] + list(m.parameters()))]

    ours = run()
    monkeypatch.setenv("FASTRNN_CPU_SMALL_GEMM_MAX", "0")
    monkeypatch.setenv("FASTRNN_CPU_WT_GEMV", "0")
    blas = run()
    for u, v in zip(ours, blas):
        torch.testing.assert_close(u, v, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("capability", CPU_CAPABILITIES)
def test_weight_transpose_kernel(monkeypatch, capability):
    """The transpose that packs the brgemm weights (register blocks of 8 x 8 under AVX2, 16 x 16 under
    AVX-512, element by element at the ragged edges) against x.t(), bit for bit: sizes around the block widths,
    a strided source (a narrowed view) and destination rows longer than the result (the pad, which must stay
    untouched)."""
    monkeypatch.setenv("FASTRNN_CPU_CAPABILITY", capability)
    g = torch.Generator().manual_seed(0)
    for m, n in [(1, 1), (8, 8), (7, 9), (8, 512), (16, 16), (17, 33), (24, 40), (3, 100), (100, 3), (31, 65)]:
        for pad in (0, 5):
            wide = torch.randn(m, n + 3, generator=g)
            x = wide[:, 1:n + 1]  # row stride n + 3
            got = torch.ops.fastrnn._cpu_transpose(x, pad)
            assert torch.equal(got[:, :m], x.t()), f"{capability}: {m} x {n}, pad {pad}"
            assert bool((got[:, m:] == -1).all()), f"{capability}: {m} x {n}: wrote into the pad"


def test_scratch_pool(monkeypatch):
    """The per-thread pool that the packed weights come from (csrc/cpu/scratch.h): a buffer in use is never
    handed out twice, and a released one is reused by the next request of its size on that thread (no fresh
    memory to fault in on every call). Outside the pooled sizes both come from at::empty; a bad switch raises."""
    probe = torch.ops.fastrnn._cpu_scratch_probe
    for size in (256 << 10, 3 << 20, 32 << 20):
        assert probe(size) == (True, True), size
    for size in (1 << 10, 48 << 20):  # not pooled: distinct, and reuse is up to malloc
        assert probe(size)[0], size
    monkeypatch.setenv("FASTRNN_CPU_SCRATCH", "0")
    assert probe(3 << 20)[0]
    monkeypatch.setenv("FASTRNN_CPU_SCRATCH", "yes")
    with pytest.raises(ValueError, match="FASTRNN_CPU_SCRATCH must be 0 or 1"):
        probe(3 << 20)


def test_weight_gradients_from_the_scratch_pool_are_never_shared():
    """The backward ops' weight gradients come from the scratch pool (scratch_result): a result the caller
    keeps is never handed out again (its values stay), and one it dropped is reused (a single-step training
    loop does not fault fresh memory each step). W_ih of 256 x 512 floats: 512 KB, a pooled size."""
    import threading
    got = {}

    def run():  # on a thread of its own: an empty pool
        g = torch.Generator().manual_seed(0)
        B, I, H = 8, 512, 256
        x = torch.randn(1, B, I, generator=g)
        hx = torch.randn(B, H, generator=g)
        w_ih, w_hh = torch.randn(H, I, generator=g) / 20, torch.randn(H, H, generator=g) / 20
        out, _ = torch.ops.fastrnn.rnn_forward(x, None, hx, w_ih, w_hh, None, None, False, False)

        def backward(scale):
            return torch.ops.fastrnn.rnn_backward(torch.full_like(out, scale), torch.zeros_like(hx), x, None, hx,
                                                  w_ih, w_hh, out, False, False, False)[2]
        kept = backward(1.0)
        kept_values = kept.clone()
        second = backward(2.0)
        got["distinct"] = second.data_ptr() != kept.data_ptr()
        got["kept_unchanged"] = torch.equal(kept, kept_values)
        got["values"] = torch.allclose(second, 2 * kept_values, rtol=1e-5, atol=1e-6)
        ptr = second.data_ptr()
        del second
        got["reused"] = backward(3.0).data_ptr() == ptr
        got["plain"] = not kept._is_view() and kept.is_contiguous() and kept.shape == (H, I)

    with torch.no_grad():
        t = threading.Thread(target=run)
        t.start()
        t.join()
    assert got == {"distinct": True, "kept_unchanged": True, "values": True, "reused": True, "plain": True}


@pytest.mark.parametrize("I,H", [(3, 5), (5, 3)])
def test_op_results_are_not_views_of_internal_buffers(I, H):
    """The ops' inner ATen calls run below ADInplaceOrView (sequence.h, NoAutocast), as ATen's own kernels do:
    no differentiable-view metadata is made for their internal views (a microsecond or two each), and no result
    is a view whose _base is one of the op's internal buffers (grad_input was a view of its [N, I] buffer when
    I < H)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, I, generator=g)
    hx = torch.randn(3, H, generator=g)
    w_ih, w_hh = torch.randn(H, I, generator=g), torch.randn(H, H, generator=g)
    out, hy = torch.ops.fastrnn.rnn_forward(x, None, hx, w_ih, w_hh, None, None, False, False)
    grads = torch.ops.fastrnn.rnn_backward(torch.randn(out.shape, generator=g), torch.randn(hy.shape, generator=g),
                                           x, None, hx, w_ih, w_hh, out, False, False, False)
    for i, t in enumerate((out, hy) + tuple(grads)):
        assert not t._is_view(), i
    assert grads[0].shape == x.shape
