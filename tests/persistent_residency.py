"""Residency of the persistent forward kernels (csrc/cuda/fwd_persistent_kernel.cuh) on an A100 and an H100: a
transcription of the kernels' shared-memory formulas (FwdPersistentTraits / FwdPersistentMmaTraits ::smem_bytes),
of choose_units (csrc/cuda/persistent_plan.h) and of the CUDA occupancy rules for registers, threads and shared
memory. tests/test_cuda_emu_persistent.py checks the transcription against the C++ (the driver's `plan` case);
tests/test_cuda_build.py combines it with the registers cuobjdump reports and checks that the benchmark shapes get a
co-resident grid. A model of the occupancy calculator, not a measurement.
"""
from __future__ import annotations

from dataclasses import dataclass

GATES = {"lstm": 4, "gru": 3, "rnn": 1}
THREADS = 256  # kPersistentThreads


@dataclass(frozen=True)
class Device:
    name: str
    num_sms: int
    smem_per_sm: int  # bytes usable by blocks (the per-SM shared-memory carve-out at its maximum)
    smem_per_block_optin: int  # cudaDevAttrMaxSharedMemoryPerBlockOptin
    smem_reserved_per_block: int = 1024  # the driver's per-block reservation (sm_80+)
    regs_per_sm: int = 65536
    max_threads_per_sm: int = 2048
    max_blocks_per_sm: int = 32
    reg_alloc_unit: int = 256  # registers are allocated per warp in units of 256


# Datasheet limits (CUDA C Programming Guide, compute capability 8.0 and 9.0).
A100 = Device("A100 (sm_80)", 108, 164 * 1024, 163 * 1024)
H100 = Device("H100 SXM (sm_90)", 132, 228 * 1024, 227 * 1024)


def mma_kernel(dtype: str, tf32: bool) -> bool:
    """The tensor-core kernel serves bf16/fp16 always and float32 with TF32 allowed; float64 and exact float32 the
    FMA kernel (persistent_launcher.cuh)."""
    return dtype in ("float16", "bfloat16") or (dtype == "float32" and tf32)


MMA_H_STRIDE_WORDS = 256 // 4 + 4  # FwdPersistentMmaTraits::kHStrideWords: 256 bytes of each h row, + 4 words


def mma_g_stride(cell: str, units: int) -> int:
    """FwdPersistentMmaTraits::g_stride: floats per column of the partial-tile buffer Gs."""
    return -(-GATES[cell] * units // 32) * 32 + 4


def smem_bytes(cell: str, dtype: str, tf32: bool, units: int, K: int) -> int:
    G = GATES[cell]
    if mma_kernel(dtype, tf32):  # FwdPersistentMmaTraits
        elem = 4 if dtype == "float32" else 2
        kk = 8 if elem == 4 else 16
        m_tiles = -(-G * units // 16)
        k_steps = -(-K // kk)
        return m_tiles * k_steps * 32 * 16 + 64 * MMA_H_STRIDE_WORDS * 4 + 64 * mma_g_stride(cell, units) * 4
    acc = 8 if dtype == "float64" else 4  # FwdPersistentTraits: the accumulation type
    chunk_rows = THREADS // units * 4
    return (K * (G * units + 1) + chunk_rows * 33) * acc


def blocks_per_sm(dev: Device, regs: int, smem: int, threads: int = THREADS) -> dict:
    """Resident blocks per SM limited by threads, registers and shared memory, and the minimum."""
    warps = -(-threads // 32)
    by_threads = min(dev.max_blocks_per_sm, dev.max_threads_per_sm // threads)
    per_warp = -(-regs * 32 // dev.reg_alloc_unit) * dev.reg_alloc_unit
    by_regs = (dev.regs_per_sm // per_warp) // warps if regs > 0 else by_threads
    by_smem = 0 if smem > dev.smem_per_block_optin else dev.smem_per_sm // (smem + dev.smem_reserved_per_block)
    return {"threads": by_threads, "regs": by_regs, "smem": by_smem, "blocks": min(by_threads, by_regs, by_smem)}


def choose_units(H: int, num_sms: int, per_sm) -> int:
    """persistent_plan.h choose_units: per_sm(units) is the kernel's blocks per SM with that unit count."""
    if H <= 0 or num_sms <= 0:
        return 0
    for u in (1, 2, 4, 8, 16, 32):
        if -(-H // u) <= num_sms and per_sm(u) >= 1:
            return u
    for u in (1, 2, 4, 8, 16, 32):
        if -(-H // u) <= num_sms * per_sm(u):
            return u
    return 0


def plan(dev: Device, cell: str, dtype: str, tf32: bool, H: int, regs: int) -> dict:
    """The launch the host would choose on `dev` for hidden size H (K = H), with `regs` registers per thread."""
    units = choose_units(H, dev.num_sms, lambda u: blocks_per_sm(dev, regs, smem_bytes(cell, dtype, tf32, u, H))["blocks"])
    if units == 0:
        return {"units": 0, "grid": 0, "smem": 0, "blocks_per_sm": 0}
    smem = smem_bytes(cell, dtype, tf32, units, H)
    occ = blocks_per_sm(dev, regs, smem)
    return {"units": units, "grid": -(-H // units), "smem": smem, "blocks_per_sm": occ["blocks"], **{
        f"by_{k}": v for k, v in occ.items() if k != "blocks"}}
