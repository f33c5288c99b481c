"""Self-tests of the CUDA emulation harness (tests/cuda_emu): kernels run on the CPU with g++, in three builds
(plain, ASan+UBSan, TSan); inputs come from Python, outputs are checked here against numpy / torch.

Also proves the harness catches the bugs it exists for: a missing __syncthreads (TSan data race), out-of-bounds
shared/global accesses (ASan / UBSan), and divergent barriers (the emulator's deadlock detector).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

_BUILD_PY = Path(__file__).resolve().parent / "cuda_emu" / "build.py"
_spec = importlib.util.spec_from_file_location("cuda_emu_build", _BUILD_PY)
emu = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("cuda_emu_build", emu)
_spec.loader.exec_module(emu)

SRC = emu.EMU_DIR / "selftest_driver.cpp"
# One binary per variant serves both the clean self-tests and the bug demos (the demo kernels exist only under
# these macros; they run only when their case is asked for). Saves two compiles.
DEFINES = ("EMU_RACE_DEMO", "EMU_OOB_DEMO")
VARIANTS = ("plain", "asan", "tsan")
DTYPES = (np.float32, np.float64)


@pytest.fixture(scope="module")
def binaries():
    support = {v: emu.sanitizer_support(v) for v in VARIANTS}
    usable = [v for v in VARIANTS if support[v][0]]
    exes = dict(zip(usable, emu.compile_many([(SRC, v, DEFINES) for v in usable])))
    return exes, support


def _need(binaries, variant):
    exes, support = binaries
    if variant not in exes:
        pytest.skip(f"{variant} unavailable: {support[variant][1]}")
    return exes[variant]


@pytest.fixture(params=VARIANTS)
def variant(request, binaries):
    _need(binaries, request.param)
    return request.param


def run(variant, case, inputs):
    return emu.run_driver(SRC, case, inputs, variant, DEFINES)


def _tol(dtype):
    return dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------------------ emu_io
def test_emu_io_roundtrip(tmp_path):
    arrays = {
        "f": np.arange(6, dtype=np.float32).reshape(2, 3),
        "d": np.linspace(0, 1, 5),
        "i": np.array([[1, -2], [3, 4]], dtype=np.int64),
        "j": np.array([7], dtype=np.int32),
        "scalar": 5,
        "empty": np.zeros((0, 4), dtype=np.float64),
        "flag": np.array([True, False]),
    }
    emu.write_arrays(tmp_path / "a.bin", arrays)
    back = emu.read_arrays(tmp_path / "a.bin")
    assert set(back) == set(arrays)
    for k, v in arrays.items():
        v = np.asarray(v)
        assert back[k].shape == v.shape
        np.testing.assert_array_equal(back[k], v)
    assert back["f"].dtype == np.float32 and back["d"].dtype == np.float64
    assert back["scalar"].dtype == np.int64 and back["j"].dtype == np.int32 and back["flag"].dtype == np.int32


# ------------------------------------------------------------------------------------------------ kernels
@pytest.mark.parametrize("dtype", DTYPES)
def test_block_reduce(variant, dtype):
    block, blocks, n = 128, 3, 3000
    x = np.random.default_rng(1).standard_normal(n).astype(dtype)
    out = run(variant, "block_reduce", {"x": x, "blocks": blocks})
    owner = (np.arange(n) // block) % blocks  # grid-stride: element i is summed by block (i // 128) % blocks
    want = np.array([x[owner == b].astype(np.float64).sum() for b in range(blocks)])
    np.testing.assert_allclose(out["partial"], want, **_tol(dtype))
    np.testing.assert_array_equal(out["positives"], [(x[owner == b] > 0).sum() for b in range(blocks)])
    chunks = np.pad(x.astype(np.float64), (0, -n % block)).reshape(-1, block).sum(1)
    np.testing.assert_allclose(out["block_sums"], chunks, **_tol(dtype))
    assert out["partial"].dtype == dtype


def test_sync_votes(variant):
    block = 96  # three warps
    pred = np.zeros((4, block), dtype=np.int32)
    pred[0] = 1
    pred[2] = np.random.default_rng(2).integers(0, 2, block)
    pred[3, 95] = 1
    out = run(variant, "sync_votes", {"pred": pred.ravel(), "block": block})["votes"]
    want = np.stack([pred.sum(1), pred.all(1), pred.any(1)], 1)
    np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize("dtype", DTYPES)
def test_warp_shuffles(variant, dtype):
    n, block = 256, 128
    x = np.random.default_rng(3).standard_normal(n).astype(dtype)
    x[:32] = np.abs(x[:32]) + 0.5  # warp 0: ballot all set
    x[32:64] = -np.abs(x[32:64]) - 0.5  # warp 1: ballot empty
    x[100] = 1000.0  # warp 3: any(x > 100)
    out = run(variant, "warp_ops", {"x": x, "block": block})
    w = x.astype(np.float64).reshape(-1, 32)
    tol = _tol(dtype)
    np.testing.assert_allclose(out["down"], w.sum(1), **tol)
    np.testing.assert_allclose(out["xsum"], np.repeat(w.sum(1), 32), **tol)
    np.testing.assert_allclose(out["scan"], np.cumsum(w, 1).ravel(), **tol)
    np.testing.assert_array_equal(out["bcast"], np.repeat(x.reshape(-1, 32)[:, 3], 32))
    np.testing.assert_allclose(out["seg"], np.repeat(w.reshape(-1, 8).sum(1), 8), **tol)
    bits = (x.reshape(-1, 32) > 0).astype(np.int64) << np.arange(32)
    np.testing.assert_array_equal(out["ballot"], bits.sum(1))
    assert out["ballot"][0] == 0xFFFFFFFF and out["ballot"][1] == 0
    np.testing.assert_array_equal(out["anyall"][:, 0], (x.reshape(-1, 32) > 100).any(1))
    np.testing.assert_array_equal(out["anyall"][:, 1], np.ones(n // 32))
    np.testing.assert_array_equal(out["iscan"], np.cumsum((np.arange(n) % 7).reshape(-1, 32), 1).ravel())


@pytest.mark.parametrize("dtype", DTYPES)
def test_dynamic_shared_memory(variant, dtype):
    block, blocks = 96, 3  # then a 64-thread launch in the same process: fewer threads than the pool holds
    x = np.random.default_rng(4).standard_normal(block * blocks).astype(dtype)
    out = run(variant, "dyn_smem", {"x": x, "scale": np.array([2.5], dtype=dtype), "block": block})
    np.testing.assert_allclose(out["y"], x.reshape(blocks, block)[:, ::-1].ravel() * dtype(2.5), **_tol(dtype))
    np.testing.assert_array_equal(out["counts"], [block] * blocks)
    # never-written dynamic shared memory reads as the 0xFF poison: NaN
    assert out["probe"].dtype == dtype and np.isnan(out["probe"]).all()


def test_thread_and_block_indexing(variant):
    grid, block = (2, 3, 2), (8, 4, 2)
    out = run(variant, "indexing", {"grid": np.array(grid), "block": np.array(block)})["coords"]
    bz, by, bx, tz, ty, tx = np.meshgrid(*[np.arange(d) for d in (*grid[::-1], *block[::-1])], indexing="ij")
    want = np.stack([tx, ty, tz, bx, by, bz], -1).reshape(-1, 6)
    np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize("dtype", DTYPES)
def test_atomics(variant, dtype):
    n, bins = 300, 7
    x = (np.random.default_rng(5).random(n) * 50 - 25).astype(dtype)
    out = run(variant, "atomics", {"x": x, "bins": bins})
    b = np.abs(x).astype(np.int64) % bins
    np.testing.assert_array_equal(out["hist"], np.bincount(b, minlength=bins))
    np.testing.assert_allclose(out["total"][0], x.astype(np.float64).sum(), rtol=1e-4 if dtype == np.float32 else 1e-12)
    assert out["maxbin"][0] == b.max()


@pytest.mark.parametrize("dtype", DTYPES)
def test_cell_math_in_a_kernel(variant, dtype):
    """csrc/cell_math.h compiled as device code, checked against torch's LSTM cell math."""
    torch = pytest.importorskip("torch")
    n = 100
    rng = np.random.default_rng(6)
    gates = (rng.standard_normal((n, 4)) * 3).astype(dtype)
    c_prev = rng.standard_normal(n).astype(dtype)
    out = run(variant, "lstm_pointwise", {"gates": gates, "c_prev": c_prev})
    g = torch.from_numpy(gates)
    i, f, gg, o = torch.sigmoid(g[:, 0]), torch.sigmoid(g[:, 1]), torch.tanh(g[:, 2]), torch.sigmoid(g[:, 3])
    c = f * torch.from_numpy(c_prev) + i * gg
    h = o * torch.tanh(c)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(out["c"], c.numpy(), **tol)
    np.testing.assert_allclose(out["h"], h.numpy(), **tol)


def test_launch_limits(variant):
    out = run(variant, "limits", {})
    # 1025 threads, 2048 threads, z = 65, grid.y = 65536, 227 KiB + 1 of dynamic smem, empty grid: all rejected
    np.testing.assert_array_equal(out["rejected"], [1, 1, 1, 1, 1, 1])
    assert np.isnan(out["probe_at_limit"]).all()  # 1024 threads with 227 KiB ran


# ------------------------------------------------------------------------------------------------ bug detection
@pytest.mark.parametrize(
    "case, where",
    [
        ("deadlock_early_return", "returned from the kernel"),
        ("deadlock_mixed_barriers", "__shfl_xor_sync"),
    ],
)
def test_divergent_barrier_is_reported(binaries, case, where):
    exe = _need(binaries, "plain")
    proc, outputs = emu.run_raw(exe, case, {}, "plain", env={"CUDA_EMU_BARRIER_TIMEOUT_S": "30"}, timeout=60)
    assert proc.returncode != 0 and outputs is None
    assert "cuda_emu: FATAL: DEADLOCK" in proc.stderr, proc.stderr
    assert where in proc.stderr and "in __syncthreads" in proc.stderr, proc.stderr


def test_barrier_timeout_is_reported(binaries):
    exe = _need(binaries, "plain")
    proc, outputs = emu.run_raw(exe, "spin_forever", {}, "plain", env={"CUDA_EMU_BARRIER_TIMEOUT_S": "1"}, timeout=60)
    assert proc.returncode != 0 and outputs is None
    assert "barrier timeout after 1" in proc.stderr and "linear threads 0..0: running" in proc.stderr, proc.stderr
    assert "linear threads 1..31: in __syncthreads" in proc.stderr, proc.stderr


def test_shuffle_from_missing_lane_is_poison(variant):
    """Full-mask shuffles in a partial warp read lanes that do not exist (undefined in CUDA): the result is NaN."""
    x = np.ones(160, dtype=np.float32)
    sums = run(variant, "partial_warp_sum", {"x": x})["sums"]
    assert sums.shape == (2,) and np.isnan(sums).all()


@pytest.mark.parametrize(
    "case, kernel",
    [
        ("race_missing_sync", "block_reduce_missing_sync_kernel"),
        ("race_warp_synchronous", "warp_synchronous_reduce_kernel"),  # lockstep assumed without __syncwarp
        ("race_cross_warp", "block_sum_shfl_missing_sync_kernel"),  # shuffles order only their own warp
    ],
)
def test_missing_barrier_is_a_tsan_race(binaries, case, kernel):
    exe = _need(binaries, "tsan")
    x = np.random.default_rng(7).standard_normal(128).astype(np.float32)
    proc, _ = emu.run_raw(exe, case, {"x": x}, "tsan")
    assert proc.returncode == 66, proc.stderr[-4000:]
    assert "WARNING: ThreadSanitizer: data race" in proc.stderr
    assert kernel in proc.stderr  # the report points at the kernel


def test_run_driver_raises_on_a_sanitizer_report(binaries):
    _need(binaries, "tsan")
    x = np.ones(128, dtype=np.float32)
    with pytest.raises(emu.EmuRunError, match="ThreadSanitizer: data race"):
        run("tsan", "race_missing_sync", {"x": x})
    # the same buggy kernel "works" without TSan: the plain build alone would not have caught it
    assert run("plain", "race_missing_sync", {"x": x})["partial"].shape == (2,)


@pytest.mark.parametrize(
    "case, report",
    [
        ("oob_static_shared", "runtime error: index 64 out of bounds"),  # UBSan bounds check on the static array
        ("oob_dynamic_shared", "ERROR: AddressSanitizer: heap-buffer-overflow"),
        ("oob_global", "ERROR: AddressSanitizer: heap-buffer-overflow"),
    ],
)
def test_out_of_bounds_is_an_asan_report(binaries, case, report):
    exe = _need(binaries, "asan")
    proc, _ = emu.run_raw(exe, case, {"x": np.ones(128, dtype=np.float32)}, "asan")
    assert proc.returncode != 0, proc.stderr[-4000:]
    assert report in proc.stderr, proc.stderr[-4000:]
    assert "oob_" in proc.stderr  # the stack names the kernel
    assert emu.sanitizer_report(proc.stderr)


def test_clean_run_has_no_report_but_racy_run_would(binaries):
    """The report scanner used by run_driver() matches real sanitizer output and not ordinary stderr."""
    assert emu.sanitizer_report("WARNING: ThreadSanitizer: data race (pid=1)\n")
    assert emu.sanitizer_report("x.cpp:3:5: runtime error: index 64 out of bounds for type 'float [64]'")
    assert emu.sanitizer_report("==1==ERROR: AddressSanitizer: heap-buffer-overflow on address")
    assert not emu.sanitizer_report("case failed: emu_io: no array named 'x'\n")


# ================================================================================================ for the persistent,
# tensor-core kernels (selftest_v2_kernels.cuh): __half/__nv_bfloat16, mma.sync, the concurrent grid, cp.async.
from fractions import Fraction  # noqa: E402
import functools  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402

HALF, BF16 = (5, 10), (8, 7)  # (exponent bits, mantissa bits)


def _torch():
    return pytest.importorskip("torch")


@functools.lru_cache(maxsize=None)
def _conversion_sample() -> np.ndarray:
    """float32 values that exercise float -> half/bfloat16 rounding: every half and bfloat16 value, the midpoints
    between consecutive ones (exact ties, in float32) and the floats just either side of each midpoint, the
    overflow thresholds, float subnormals, +-0, +-inf, NaNs, and random bit patterns over the whole float range."""
    torch = _torch()
    parts = []
    for dt, top in ((torch.float16, 0x7C00), (torch.bfloat16, 0x7F80)):
        v = torch.arange(0, top + 1, dtype=torch.int32).to(torch.int16).view(dt).double().numpy()  # +0 .. +inf
        mid = ((v[:-1] + v[1:]) / 2).astype(np.float32)
        assert np.all(mid.astype(np.float64) == (v[:-1] + v[1:]) / 2)  # exact ties
        mid = mid[np.isfinite(mid)]
        parts += [v[np.isfinite(v)].astype(np.float32), mid, np.nextafter(mid, np.float32(np.inf)),
                  np.nextafter(mid, np.float32(-np.inf))]
    rng = np.random.default_rng(11)
    parts.append(rng.integers(0, 2**32, 100_000, dtype=np.uint64).astype(np.uint32).view(np.float32))
    parts.append(np.array([0.0, np.inf, np.nan, 65504, 65519.996, 65520, 65536, 1e38, 3.4028235e38, 2.0**-24, 2.0**-25,
                           2.0**-26, 1e-45, 1.1754942e-38, 3.3961776e38, 3.3895314e38], dtype=np.float32))
    x = np.concatenate(parts).astype(np.float32)
    x = np.concatenate([x, -x])
    x = np.concatenate([x, np.array([0x7FC00001, 0x7F800001, 0xFFFFFFFF, 0x7FBFFFFF], dtype=np.uint32).view(np.float32)])
    return x


def _bits16(x: np.ndarray, dt) -> np.ndarray:
    """torch's CPU float -> 16-bit conversion (round to nearest even), with NaN mapped to CUDA's canonical 0x7fff."""
    torch = _torch()
    b = torch.from_numpy(x).to(dt).view(torch.int16).numpy().astype(np.int64) & 0xFFFF
    return np.where(np.isnan(x), 0x7FFF, b)


def test_half_bfloat16_conversions_are_bit_exact(variant):
    torch = _torch()
    x = _conversion_sample()
    out = run(variant, "half_convert", {"x": x})
    for kind, dt in (("h", torch.float16), ("b", torch.bfloat16)):
        want = _bits16(x, dt)
        for form in ("rn", "plain"):
            got = out[f"{kind}_{form}"].astype(np.int64) & 0xFFFF
            bad = np.nonzero(got != want)[0]
            assert bad.size == 0, (kind, form, [(hex(x[i:i + 1].view(np.uint32)[0]), hex(got[i]), hex(want[i]))
                                                for i in bad[:8]])
        vec = out[f"{kind}_vec"].astype(np.int64) & 0xFFFFFFFF
        np.testing.assert_array_equal(vec & 0xFFFF, want)
        np.testing.assert_array_equal(vec >> 16, _bits16(-x, dt))
    # the sample really holds ties, overflow and subnormal results
    hw = _bits16(x, torch.float16)
    assert (hw == 0x7C00).sum() > 10 and ((hw > 0) & (hw < 0x400)).sum() > 1000
    # every 16-bit pattern back to float: exact; half NaNs become the canonical float NaN (cuda_fp16.hpp)
    pat = torch.arange(65536, dtype=torch.int32).to(torch.int16)
    h2f = pat.view(torch.float16).float()
    want = h2f.view(torch.int32).numpy().astype(np.int64)
    want = np.where(h2f.isnan().numpy(), 0x7FFFFFFF, want)
    np.testing.assert_array_equal(out["h2f"].astype(np.int64), want)
    b2f = pat.view(torch.bfloat16).float().view(torch.int32).numpy()
    np.testing.assert_array_equal(out["b2f"], b2f)  # payload kept: the bit shift
    np.testing.assert_array_equal(out["b2f"].astype(np.int64) & 0xFFFFFFFF, np.arange(65536, dtype=np.int64) << 16)


def _decode16(bits: int, fmt):
    e_bits, m_bits = fmt
    bias = (1 << (e_bits - 1)) - 1
    sign = -1 if bits >> 15 else 1
    e, m = (bits >> m_bits) & ((1 << e_bits) - 1), bits & ((1 << m_bits) - 1)
    if e == (1 << e_bits) - 1:
        return math.nan if m else sign * math.inf
    if e == 0:
        return sign * Fraction(m) * Fraction(2) ** (1 - bias - m_bits)
    return sign * Fraction(m + (1 << m_bits)) * Fraction(2) ** (e - bias - m_bits)


def _round16(v: Fraction, fmt) -> int:
    """Nearest-even rounding of an exact non-zero rational to the 16-bit format."""
    e_bits, m_bits = fmt
    bias = (1 << (e_bits - 1)) - 1
    sign = 0x8000 if v < 0 else 0
    a = abs(v)
    e = a.numerator.bit_length() - a.denominator.bit_length()
    if Fraction(2) ** e > a:
        e -= 1
    q = max(e, 1 - bias) - m_bits
    scaled = a / Fraction(2) ** q
    n = math.floor(scaled)
    rem = scaled - n
    if rem > Fraction(1, 2) or (rem == Fraction(1, 2) and n % 2 == 1):
        n += 1
    if n == 0:
        return sign
    if n >= 1 << (m_bits + 1):
        n //= 2
        q += 1
    if n < 1 << m_bits:
        return sign | n
    field = q + m_bits + bias
    if field >= (1 << e_bits) - 1:
        return sign | (((1 << e_bits) - 1) << m_bits)
    return sign | (field << m_bits) | (n - (1 << m_bits))


def _op16(op: str, a: int, b: int, c: int, fmt) -> int:
    """IEEE result of a 16-bit op, from exact rational arithmetic; NaN results canonical 0x7fff."""
    fa, fb, fc = (_decode16(v, fmt) for v in (a, b, c))
    da, db, dc = (float(v) if isinstance(v, Fraction) else v for v in (fa, fb, fc))
    # signed zeros of the inputs (Fraction has no -0)
    da, db, dc = (math.copysign(d, -1.0) if d == 0 and bits >> 15 else d for d, bits in ((da, a), (db, b), (dc, c)))
    r = {"add": lambda: da + db, "sub": lambda: da - db, "mul": lambda: da * db, "fma": lambda: da * db + dc}[op]()
    e_bits, m_bits = fmt
    inf = ((1 << e_bits) - 1) << m_bits
    if math.isnan(r):
        return 0x7FFF
    if math.isinf(r):
        return (0x8000 if r < 0 else 0) | inf
    exact = {"add": lambda: fa + fb, "sub": lambda: fa - fb, "mul": lambda: fa * fb, "fma": lambda: fa * fb + fc}[op]()
    if exact == 0:
        return 0x8000 if math.copysign(1.0, r) < 0 else 0  # r is the exact zero with IEEE's sign
    return _round16(exact, fmt)


@functools.lru_cache(maxsize=None)
def _arith_case(fmt):
    rng = np.random.default_rng(12 if fmt == HALF else 13)
    e_bits, m_bits = fmt
    n = 1500
    a = rng.integers(0, 1 << 16, n)
    # b near a's exponent (sums/differences with exact ties), then random patterns; c from tiny to large
    near = (a & ~((1 << m_bits) - 1) & 0x7FFF) + rng.integers(-3, 4, n) * (1 << m_bits) + rng.integers(0, 1 << m_bits, n)
    near = np.clip(near, 0, ((1 << e_bits) - 1) << m_bits) | (rng.integers(0, 2, n) << 15)
    b = np.where(np.arange(n) < 2 * n // 3, near, rng.integers(0, 1 << 16, n))
    c = rng.integers(0, 1 << 16, n)
    # fma with a*b an exact tie of the format and c = 0 or a tiny value of either sign (the residual decides)
    k = n // 5
    one_half = 0x3E00 if fmt == HALF else 0x3FC0  # 1.5
    a[:k] = one_half | (rng.integers(0, 2, k) << 15)
    b[:k] = (rng.integers(0x3C00 if fmt == HALF else 0x3F80, 0x4000 if fmt == HALF else 0x4000, k)) | 1
    c[:k] = np.where(rng.integers(0, 3, k) == 0, 0, 0x0001 | (rng.integers(0, 2, k) << 15))
    a, b, c = (v.astype(np.int32) for v in (a, b, c))
    want = np.array([[_op16(op, int(x), int(y), int(z), fmt) for op in ("add", "sub", "mul", "fma")]
                     for x, y, z in zip(a, b, c)], dtype=np.int64)
    want_swapped_sub = np.array([_op16("sub", int(y), int(x), 0, fmt) for x, y in zip(a, b)], dtype=np.int64)
    return a, b, c, want, want_swapped_sub


@pytest.mark.parametrize("fmt", [HALF, BF16], ids=["half", "bfloat16"])
def test_half_bfloat16_arithmetic_is_correctly_rounded(variant, fmt):
    a, b, c, want, want_swapped_sub = _arith_case(fmt)
    out = run(variant, "half_arith", {"a": a, "b": b, "c": c, "bf16": int(fmt == BF16)})
    got = out["out"].astype(np.int64) & 0xFFFF
    bad = np.argwhere(got != want)
    assert bad.size == 0, [(("add", "sub", "mul", "fma")[j], hex(a[i]), hex(b[i]), hex(c[i]), hex(got[i, j]),
                            hex(want[i, j])) for i, j in bad[:8]]
    vec = out["vec"].astype(np.int64) & 0xFFFFFFFF
    np.testing.assert_array_equal(vec & 0xFFFF, want)  # the 2-vector forms, low lane (a, b, c)
    hi = vec >> 16  # high lane (b, a, c)
    np.testing.assert_array_equal(hi[:, [0, 2, 3]], want[:, [0, 2, 3]])
    np.testing.assert_array_equal(hi[:, 1], want_swapped_sub)
    # the fma ties were decided by the sign of c, not by ties-to-even (else the two-sum was not used)
    assert len({int(v) for v in want[: len(a) // 5, 3]}) > 10


# ------------------------------------------------------------------------------------------------ mma.sync
# Fragment layouts written out from the PTX ISA tables ("Matrix Fragments for mma.m16n8k16 with floating point
# type", "Matrix Fragments for mma.m16n8k8" with .tf32), independently of the C++ emulation.
def _a_pos_k16(lane, i):
    g, t = lane >> 2, lane % 4
    row = g if (i < 2 or 4 <= i < 6) else g + 8
    col = t * 2 + (i & 1) if i < 4 else t * 2 + (i & 1) + 8
    return row, col


def _b_pos_k16(lane, i):
    g, t = lane >> 2, lane % 4
    row = t * 2 + (i & 1) if i < 2 else t * 2 + (i & 1) + 8
    return row, g


def _a_pos_tf32(lane, i):
    g, t = lane >> 2, lane % 4
    return (g if i in (0, 2) else g + 8), (t if i in (0, 1) else t + 4)


def _b_pos_tf32(lane, i):
    g, t = lane >> 2, lane % 4
    return (t if i == 0 else t + 4), g


def _c_pos(lane, i):
    g, t = lane >> 2, lane % 4
    return (g if i < 2 else g + 8), t * 2 + (i & 1)


def _tf32_rna_bits(x: np.ndarray) -> np.ndarray:
    u = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    finite = np.isfinite(x)
    u = np.where(finite, u + 0x1000, u) & 0xFFFFE000
    return u.astype(np.uint32)


def _tf32_trunc(x):
    return (x.astype(np.float32).view(np.uint32) & np.uint32(0xFFFFE000)).view(np.float32)


def _mma_case(kind, tiles, rng, tf32_prerounded=False):
    """Random tiles, their register fragments, and the float64 reference of the rounded operands."""
    torch = _torch()
    k = 8 if kind == 2 else 16
    A = rng.standard_normal((tiles, 16, k)).astype(np.float32)
    B = rng.standard_normal((tiles, k, 8)).astype(np.float32)
    C = rng.standard_normal((tiles, 16, 8)).astype(np.float32)
    if kind in (0, 1):
        dt = torch.bfloat16 if kind == 0 else torch.float16
        a16 = torch.from_numpy(A).to(dt)
        b16 = torch.from_numpy(B).to(dt)
        Av, Bv = a16.double().numpy(), b16.double().numpy()
        Abits = a16.view(torch.int16).numpy().astype(np.int64) & 0xFFFF
        Bbits = b16.view(torch.int16).numpy().astype(np.int64) & 0xFFFF
        a_pos, b_pos, na, nb, per = _a_pos_k16, _b_pos_k16, 8, 4, 2
    else:
        if tf32_prerounded:
            Abits, Bbits = _tf32_rna_bits(A).astype(np.int64), _tf32_rna_bits(B).astype(np.int64)
        else:
            Abits, Bbits = A.view(np.uint32).astype(np.int64), B.view(np.uint32).astype(np.int64)
        Av = _tf32_trunc(Abits.astype(np.uint32).view(np.float32)).astype(np.float64)
        Bv = _tf32_trunc(Bbits.astype(np.uint32).view(np.float32)).astype(np.float64)
        a_pos, b_pos, na, nb, per = _a_pos_tf32, _b_pos_tf32, 4, 2, 1
    a_regs = np.zeros((tiles, 32, 4), np.int64)
    b_regs = np.zeros((tiles, 32, 2), np.int64)
    c_frag = np.zeros((tiles, 32, 4), np.float32)
    for lane in range(32):
        for i in range(na):
            r, c = a_pos(lane, i)
            a_regs[:, lane, i // per] |= Abits[:, r, c] << (16 * (i % per))
        for i in range(nb):
            r, c = b_pos(lane, i)
            b_regs[:, lane, i // per] |= Bbits[:, r, c] << (16 * (i % per))
        for i in range(4):
            r, c = _c_pos(lane, i)
            c_frag[:, lane, i] = C[:, r, c]
    ref = Av @ Bv + C.astype(np.float64)
    bound = np.abs(Av) @ np.abs(Bv) + np.abs(C.astype(np.float64))
    return dict(a=a_regs, b=b_regs, c=c_frag, kind=kind), ref, bound, (A, B, C)


def _unfrag(d):
    out = np.zeros((d.shape[0], 16, 8), np.float64)
    for lane in range(32):
        for i in range(4):
            r, c = _c_pos(lane, i)
            out[:, r, c] = d[:, lane, i]
    return out


@pytest.mark.parametrize("kind", [0, 1, 2], ids=["bf16_m16n8k16", "f16_m16n8k16", "tf32_m16n8k8"])
def test_mma_sync_fragments_match_a_float64_reference(variant, kind):
    rng = np.random.default_rng(20 + kind)
    inputs, ref, bound, _ = _mma_case(kind, 4, rng)
    D = _unfrag(run(variant, "mma", inputs)["d"])
    err = np.abs(D - ref)
    # one fp32 rounding of an (almost) exact sum: within half an ulp of |D| plus the double sum's error; the bound
    # any fp32 accumulation order meets is 16 * 2^-24 * sum |a||b| + |c| (a layout error is O(1))
    assert np.all(err <= 2.0**-24 * np.abs(ref) + 2.0**-50 * bound), err.max()
    assert np.all(err <= 16 * 2.0**-24 * bound)


def test_mma_sync_tf32_truncates_unrounded_operands_and_cvt_rna_rounds(variant):
    rng = np.random.default_rng(30)
    raw, ref_trunc, bound, (A, B, C) = _mma_case(2, 2, np.random.default_rng(31))
    D = _unfrag(run(variant, "mma", raw)["d"])
    tol = 2.0**-24 * np.abs(ref_trunc) + 2.0**-50 * bound
    assert np.all(np.abs(D - ref_trunc) <= tol)
    Ar = _tf32_rna_bits(A).view(np.float32).astype(np.float64)
    Br = _tf32_rna_bits(B).view(np.float32).astype(np.float64)
    ref_rna = Ar @ Br + C.astype(np.float64)
    assert np.mean(np.abs(D - ref_rna) > tol) > 0.5  # truncation, not rounding, of the raw fp32 operands
    pre, ref_pre, bound_pre, _ = _mma_case(2, 2, np.random.default_rng(31), tf32_prerounded=True)
    np.testing.assert_allclose(ref_pre, ref_rna)
    D = _unfrag(run(variant, "mma", pre)["d"])
    assert np.all(np.abs(D - ref_rna) <= 2.0**-24 * np.abs(ref_rna) + 2.0**-50 * bound_pre)
    # cvt.rna.tf32.f32 bit for bit: ties away from zero, overflow to inf, inf/NaN only masked
    x = np.concatenate([rng.standard_normal(4000).astype(np.float32),
                        (np.arange(4096, dtype=np.uint32) * 0x1000 + 0x3F800000).view(np.float32),  # ties
                        np.array([0x7F7FF000, 0xFF7FF000, 0x7F800000, 0x7FC00000, 0x7F800001, 0x00001000, 0x80001000,
                                  0x00000FFF, 0], dtype=np.uint32).view(np.float32)])
    bits = run(variant, "tf32_convert", {"x": x})["bits"].astype(np.int64) & 0xFFFFFFFF
    np.testing.assert_array_equal(bits, _tf32_rna_bits(x).astype(np.int64))
    assert bits[-9] == 0x7F800000 and bits[-5] == 0x7F800000  # overflow to inf; a low-payload NaN masks to inf


def test_mma_sync_propagates_inf_and_nan(variant):
    inputs, ref, _, _ = _mma_case(0, 1, np.random.default_rng(40))
    # a0 of lane 0 is A[0][0]: +inf (bf16 0x7f80) -> row 0 of D is +-inf (or NaN where B[0][n] is 0)
    inputs["a"][0, 0, 0] = (inputs["a"][0, 0, 0] & ~0xFFFF) | 0x7F80
    D = _unfrag(run(variant, "mma", inputs)["d"])
    assert np.all(np.isinf(D[0, 0]) | np.isnan(D[0, 0])) and np.all(np.isfinite(D[0, 1:]))


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"skip_lane": 5}, "returned from the kernel"),
        ({"diverge_lane": 5}, "divergent warp collectives: lane"),
        ({"block": 48}, "that warp has only 16 lanes"),
    ],
    ids=["lane_skips_mma", "lane_in_other_collective", "partial_warp"],
)
def test_mma_sync_misuse_is_reported(binaries, extra, message):
    exe = _need(binaries, "plain")
    inputs, _, _, _ = _mma_case(0, 2, np.random.default_rng(41))
    proc, outputs = emu.run_raw(exe, "mma", {**inputs, **extra}, "plain", env={"CUDA_EMU_BARRIER_TIMEOUT_S": "30"},
                                timeout=60)
    assert proc.returncode != 0 and outputs is None
    assert "cuda_emu: FATAL" in proc.stderr and message in proc.stderr, proc.stderr[-3000:]
    assert "mma.sync.m16n8k16.f32.bf16.bf16.f32" in proc.stderr, proc.stderr[-3000:]


# ------------------------------------------------------------------------------------------------ concurrent grid
def _recurrence_case(H=96, T=6, seed=50):
    rng = np.random.default_rng(seed)
    W = (rng.standard_normal((H, H)) / np.sqrt(H)).astype(np.float32)
    u = rng.standard_normal((T, H)).astype(np.float32)
    h0 = rng.standard_normal(H).astype(np.float32)
    hs = [h0.astype(np.float64)]
    for t in range(T):
        hs.append(np.tanh(W.astype(np.float64) @ hs[-1] + u[t]))
    return {"W": W, "u": u, "h0": h0, "block": 32}, np.stack(hs)


def test_grid_sync_multi_phase_recurrence(variant):
    inputs, want = _recurrence_case()
    hs = run(variant, "grid_recurrence", {**inputs, "use_sync": 1})["hs"]
    np.testing.assert_allclose(hs, want, rtol=1e-5, atol=1e-5)


def test_grid_recurrence_without_grid_sync_is_a_tsan_race(binaries):
    exe = _need(binaries, "tsan")
    inputs, _ = _recurrence_case()
    proc, _ = emu.run_raw(exe, "grid_recurrence", {**inputs, "use_sync": 0}, "tsan")
    assert proc.returncode == 66, proc.stderr[-4000:]
    assert "WARNING: ThreadSanitizer: data race" in proc.stderr and "grid_recurrence_kernel" in proc.stderr


def test_acquire_release_flag_chain(variant):
    blocks, n = 4, 50
    data = run(variant, "flag_chain", {"blocks": blocks, "n": n, "use_acquire": 1})["data"]
    b, k = np.arange(blocks)[:, None], np.arange(n)[None, :]
    np.testing.assert_array_equal(data, b * (b + 1) / 2 + (b + 1) * k)


def test_relaxed_flag_chain_is_a_tsan_race(binaries):
    exe = _need(binaries, "tsan")
    proc, _ = emu.run_raw(exe, "flag_chain", {"blocks": 4, "n": 50, "use_acquire": 0}, "tsan")
    assert proc.returncode == 66, proc.stderr[-4000:]
    assert "WARNING: ThreadSanitizer: data race" in proc.stderr and "flag_chain_kernel" in proc.stderr


def test_cooperative_launch_co_residency_limit(binaries):
    exe = _need(binaries, "plain")
    # 2 emulated SMs; 100 KiB of dynamic smem per block -> 2 blocks per SM (228 KiB / (100 + 1 KiB reserved))
    occ = [(1024, 0, 2), (256, 0, 8), (64, 0, 32), (32, 0, 32), (128, 48 * 1024, 4), (96, 227 * 1024, 1)]
    proc, out = emu.run_raw(exe, "coop_limits", {
        "num_sms": 2, "block": 64, "smem": 100 * 1024, "grids": np.array([1, 4, 5, 8]),
        "occ_threads": np.array([o[0] for o in occ]), "occ_smem": np.array([o[1] for o in occ])}, "plain", timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    np.testing.assert_array_equal(out["codes"], [0, 0, 720, 720])  # cudaErrorCooperativeLaunchTooLarge
    assert "grid 5: cudaErrorCooperativeLaunchTooLarge: too many blocks in cooperative launch" in proc.stdout
    assert "grid 4: cudaSuccess: no error" in proc.stdout
    np.testing.assert_array_equal(out["occupancy"], [o[2] for o in occ])


@pytest.mark.parametrize(
    "mode, messages",
    [
        (0, ["a block returned (or skipped a grid sync)", "returned from the kernel", "in grid sync (its #1)"]),
        (1, ["grid sync timeout after 1", "linear threads 0..31: running", "in grid sync (its #1)"]),
        (2, ["some threads of the block wait in the grid sync", "in __syncthreads"]),
        (3, ["in a launch that is not cooperative"]),
        (4, ["watchdog: no barrier completed", "linear threads 0..31: running"]),
    ],
    ids=["block_skips_grid_sync", "block_never_arrives", "mixed_block_and_grid_barrier", "not_cooperative",
         "all_spinning"],
)
def test_grid_sync_misuse_is_reported_not_hung(binaries, mode, messages):
    exe = _need(binaries, "plain")
    proc, outputs = emu.run_raw(exe, "grid_misuse", {"mode": mode}, "plain", env={"CUDA_EMU_BARRIER_TIMEOUT_S": "1"},
                                timeout=60)
    assert proc.returncode != 0 and outputs is None
    assert "cuda_emu: FATAL" in proc.stderr, proc.stderr[-3000:]
    for m in messages:
        assert m in proc.stderr, (m, proc.stderr[-3000:])


# ------------------------------------------------------------------------------------------------ cp.async
def _cp_async_want(x, block):
    tile = 4 * block
    xp = np.pad(x.astype(np.float64), (0, -len(x) % tile)).reshape(-1, tile)  # zero fill of the last tile
    idx = tile - 4 - 4 * np.arange(block)[:, None] + np.arange(4)[None, :]
    return xp[:, idx].sum(axis=(0, 2))


def test_cp_async_double_buffer(variant):
    block = 64
    x = np.random.default_rng(60).standard_normal(4 * block * 3 + 37).astype(np.float32)
    out = run(variant, "cp_async_sum", {"x": x, "block": block, "mode": 0})["out"]
    np.testing.assert_allclose(out, _cp_async_want(x, block), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", [1, 2], ids=["read_before_wait", "wait_group_too_weak"])
def test_cp_async_read_before_wait_reads_poison(variant, mode):
    block = 64
    x = np.random.default_rng(61).standard_normal(4 * block * 3 + 37).astype(np.float32)
    out = run(variant, "cp_async_sum", {"x": x, "block": block, "mode": mode})["out"]
    assert np.isnan(out).all()


# ------------------------------------------------------------------------------------------------ nvcc
def _nvcc():
    for c in (shutil.which("nvcc"), os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc")):
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    pytest.skip("nvcc not found")


def _cuobjdump():
    cands = [shutil.which("cuobjdump"), os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "cuobjdump")]
    try:
        import triton

        cands.append(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump"))
    except ImportError:
        pass
    return next((c for c in cands if c and os.path.isfile(c) and os.access(c, os.X_OK)), None)


def test_device_compat_wrappers_compile_with_nvcc(tmp_path):
    """The real-CUDA branches of the wrappers in csrc/cuda/device_compat.h (no fastrnn kernel uses them yet) build
    for sm_80 and sm_90 with the extension's flags and -Werror, and are the intended instructions."""
    nvcc = _nvcc()
    torch = _torch()
    from torch.utils.cpp_extension import COMMON_NVCC_FLAGS

    obj = tmp_path / "check.o"
    cmd = [nvcc, "-std=c++20", "-O3", f"-I{emu.CSRC}", *COMMON_NVCC_FLAGS, "-Werror=all-warnings",
           "-Xcompiler=-Wall,-Werror", "-gencode", "arch=compute_80,code=sm_80", "-gencode",
           "arch=compute_90,code=sm_90", "-c", str(emu.EMU_DIR / "device_compat_check.cu"), "-o", str(obj)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-6000:]
    del torch
    dump = _cuobjdump()
    if dump is None:
        pytest.skip("cuobjdump not found: compiled, SASS not inspected")
    sass = subprocess.run([dump, "-sass", str(obj)], capture_output=True, text=True, check=True).stdout
    for arch in ("sm_80", "sm_90"):
        assert f"arch = {arch}" in sass
    for insn in ("HMMA.16816.F32.BF16", "HMMA.16816.F32", "HMMA.1688.F32.TF32", "LDGSTS.E.BYPASS.128.ZFILL",
                 "LDGSTS.E.64", "LDGDEPBAR", "DEPBAR.LE", "LDG.E.STRONG.GPU", "STG.E.STRONG.GPU"):
        assert insn in sass, insn
