"""Compile gate of the CUDA kernels, checked on the built extension (no GPU needed).

Runs `cuobjdump --dump-resource-usage` on fastrnn/_C*.so and asserts that cubins for every architecture built
(csrc/cuda/cuda_archs.txt: sm_80, sm_90, sm_100) and PTX for the newest virtual one are present
(`--list-elf`, `--list-ptx`), that every kernel listed in csrc/cuda/register_budget.txt is there for every
architecture (and every fastrnn kernel there is listed), and that each uses no stack or local memory (no register spills)
and at most its register budget. From `cuobjdump -sass`: the tensor-core persistent kernels (bf16, fp16, and the
float32 TF32 kernel) contain HMMA instructions in every architecture, and the FMA persistent kernels (float64, exact
float32) none. Residency (blocks per SM from the reported registers and the kernels' shared memory,
tests/persistent_residency.py, a model of the occupancy calculator): the step kernels keep 2 blocks per SM, and every
persistent kernel gets a co-resident grid at the benchmark shapes on an A100 and an H100; the table is printed and
written to build/cuda_residency.md. Skipped when the extension was built without CUDA.
"""
import glob
import os
import re
import shutil
import subprocess

import sys

import pytest
import torch

import fastrnn  # noqa: F401  (loads fastrnn._C and its op registrations)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import persistent_residency as residency  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUDGET_FILE = os.path.join(ROOT, "csrc", "cuda", "register_budget.txt")
ARCHS_FILE = os.path.join(ROOT, "csrc", "cuda", "cuda_archs.txt")


def built_archs():
    """(SASS architectures, PTX architectures, virtual architectures) of the build, as 'sm_NN' (cuobjdump's names):
    TORCH_CUDA_ARCH_LIST ("8.0;9.0+PTX") when set, as setup.py uses it, else csrc/cuda/cuda_archs.txt."""
    sass, ptx, virtual = [], [], []
    env = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if env:
        for a in re.split(r"[;\s]+", env.strip()):
            if a:
                n = "sm_" + a.split("+")[0].replace(".", "")
                sass.append(n)
                virtual.append(n)
                if a.endswith("+PTX"):
                    ptx.append(n)
    else:
        with open(ARCHS_FILE) as f:
            for line in f:
                m = re.match(r"\s*arch=compute_(\d+a?),code=(sm|compute)_(\d+a?)\s*$", line)
                if m:
                    virtual.append(f"sm_{m.group(1)}")
                    (sass if m.group(2) == "sm" else ptx).append(f"sm_{m.group(3)}")
    return tuple(dict.fromkeys(sass)), tuple(dict.fromkeys(ptx)), tuple(dict.fromkeys(virtual))


ARCHS, PTX_ARCHS, VIRTUAL_ARCHS = built_archs()

pytestmark = pytest.mark.skipif(
    not torch._C._dispatch_has_kernel_for_dispatch_key("fastrnn::lstm_forward", "CUDA"),
    reason="fastrnn was built without CUDA kernels",
)


def _cuobjdump():
    candidates = [shutil.which("cuobjdump")]
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if cuda_home:
        candidates.append(os.path.join(cuda_home, "bin", "cuobjdump"))
    try:
        import triton

        candidates.append(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump"))
    except ImportError:
        pass
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    pytest.skip("cuobjdump not found (PATH, $CUDA_HOME/bin or the triton package)")


def _library():
    import fastrnn._C as ext

    path = ext.__file__
    assert path and os.path.isfile(path), "cannot locate the built fastrnn._C library"
    return path


def _budgets():
    budgets = {}
    with open(BUDGET_FILE) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            name, regs = line.split()
            budgets[name] = int(regs)
    assert budgets, f"{BUDGET_FILE} lists no kernels"
    return budgets


def parse_resource_usage(text):
    """[(arch, mangled function name, {REG: .., STACK: .., LOCAL: .., ...})] from cuobjdump's report."""
    out, arch, func = [], None, None
    for line in text.splitlines():
        m = re.match(r"\s*arch\s*=\s*(sm_\d+a?)", line)
        if m:
            arch = m.group(1)
            continue
        m = re.match(r"\s*Function\s+(\S+?):\s*$", line)
        if m:
            func = m.group(1)
            continue
        if func is not None and "REG:" in line:
            fields = {k: int(v) for k, v in re.findall(r"([A-Z_]+(?:\[\d+\])?):(\d+)", line)}
            out.append((arch, func, fields))
            func = None
    return out


@pytest.fixture(scope="module")
def usage():
    res = subprocess.run([_cuobjdump(), "--dump-resource-usage", _library()], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    rows = parse_resource_usage(res.stdout)
    assert rows, "cuobjdump reported no kernels in " + _library()
    return rows


def test_parser_reads_cuobjdump_format():
    text = (
        "arch = sm_80\nResource usage:\n Function _ZN7fastrnn4cuda19rnn_fwd_step_kernelIfEEvNS0_13FwdStepParamsE:\n"
        "  REG:48 STACK:16 SHARED:0 LOCAL:12 CONSTANT[0]:464 TEXTURE:0 SURFACE:0 SAMPLER:0\n"
    )
    [(arch, name, f)] = parse_resource_usage(text)
    assert arch == "sm_80" and "rnn_fwd_step_kernel" in name
    assert f["REG"] == 48 and f["STACK"] == 16 and f["LOCAL"] == 12


def test_cubins_for_every_arch(usage):
    archs = {a for a, _, _ in usage}
    for a in ARCHS:
        assert a in archs, f"no {a} cubin in {_library()} (found {sorted(archs)})"


def _arch_number(arch):
    return int(re.sub(r"\D", "", arch))


def _listing(flag):
    res = subprocess.run([_cuobjdump(), flag, _library()], capture_output=True, text=True)
    return res.stdout + res.stderr


def test_archs_file_lists_sass_and_ptx():
    assert ARCHS and PTX_ARCHS, (ARCHS, PTX_ARCHS)
    assert max(map(_arch_number, PTX_ARCHS)) == max(map(_arch_number, VIRTUAL_ARCHS)), (
        "PTX must be embedded for the newest virtual architecture compiled, so newer GPUs can JIT it")


def test_elf_listing_every_arch_the_same_cubins():
    """`cuobjdump --list-elf`: cubins for exactly the architectures built, as many for each (one per CUDA source)."""
    elf = re.findall(r"ELF file\s+\d+:\s+\S+\.(sm_\d+a?)\.cubin", _listing("--list-elf"))
    counts = {a: elf.count(a) for a in dict.fromkeys(elf)}
    assert set(counts) == set(ARCHS), f"cubins for {sorted(counts)}, the build asks for {sorted(ARCHS)}"
    assert len(set(counts.values())) == 1, f"not the same number of cubins for every architecture: {counts}"


def test_ptx_for_the_newest_arch():
    """`cuobjdump --list-ptx`: PTX for the newest virtual architecture built, in every object that has cubins, so a
    GPU without SASS here (sm_110, sm_120 and newer architectures) JIT-compiles the kernels instead of
    failing with "no kernel image"."""
    ptx = re.findall(r"PTX file\s+\d+:\s+\S+\.(sm_\d+a?)\.ptx", _listing("--list-ptx"))
    elf = re.findall(r"ELF file\s+\d+:\s+\S+\.(sm_\d+a?)\.cubin", _listing("--list-elf"))
    assert set(ptx) == set(PTX_ARCHS), f"PTX for {sorted(set(ptx))}, the build asks for {sorted(PTX_ARCHS)}"
    per_arch = len(elf) // max(1, len(set(elf)))
    for a in PTX_ARCHS:
        assert ptx.count(a) == per_arch, f"{ptx.count(a)} PTX files for {a}, {per_arch} cubins per architecture"


def test_every_kernel_has_a_budget_and_every_budget_a_kernel(usage):
    budgets = _budgets()
    kernels = [(a, n) for a, n, _ in usage if "fastrnn" in n]
    assert kernels, "no fastrnn kernels in the cubins"
    for a, n in kernels:
        matches = [k for k in budgets if k in n]
        assert len(matches) == 1, f"{n} ({a}) matches budget entries {matches}; expected exactly one"
    for k in budgets:
        for a in ARCHS:
            assert any(k in n for arch, n in kernels if arch == a), f"budget entry {k} matches no {a} kernel"


def test_no_spills_and_registers_within_budget(usage):
    budgets = _budgets()
    bad = []
    for a, n, f in usage:
        if "fastrnn" not in n:
            continue
        budget = next(v for k, v in budgets.items() if k in n)
        if f.get("STACK", 0) != 0 or f.get("LOCAL", 0) != 0:
            bad.append(f"{a} {n}: STACK:{f.get('STACK')} LOCAL:{f.get('LOCAL')} (register spills)")
        if f["REG"] > budget:
            bad.append(f"{a} {n}: REG:{f['REG']} > budget {budget}")
    assert not bad, "\n".join(bad)


# ------------------------------------------------------------------------------------------ tensor cores (SASS)
MMA_KERNELS = tuple(f"{c}_{d}_persistent_mma_kernel" for d in ("fwd", "bwd") for c in ("lstm", "gru", "rnn"))
FMA_PERSISTENT = tuple(f"{c}_{d}_persistent_kernel" for d in ("fwd", "bwd") for c in ("lstm", "gru", "rnn"))
# Template arguments in the mangled names: float (TF32), __half, __nv_bfloat16 / float, double.
MMA_TYPES = {"f": "float32 (TF32)", "6__half": "float16", "13__nv_bfloat16": "bfloat16"}
FMA_TYPES = {"f": "float32 (exact)", "d": "float64"}


def parse_sass(text):
    """{(arch, mangled function name): [SASS opcodes]} from `cuobjdump -sass`."""
    out, arch, func = {}, None, None
    for line in text.splitlines():
        m = re.match(r"\s*arch\s*=\s*(sm_\d+a?)", line)
        if m:
            arch = m.group(1)
            continue
        m = re.match(r"\s*Function\s*:\s*(\S+)", line)
        if m:
            func = m.group(1)
            out[(arch, func)] = []
            continue
        m = re.match(r"\s*/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", line)
        if m and func is not None:
            out[(arch, func)].append(m.group(1))
    return out


@pytest.fixture(scope="module")
def sass():
    res = subprocess.run([_cuobjdump(), "-sass", _library()], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    parsed = parse_sass(res.stdout)
    assert parsed, "cuobjdump -sass listed no functions"
    return parsed


def test_sass_parser_reads_cuobjdump_format():
    text = (
        "\tcode for sm_90\n\t\tFunction : _ZN7fastrnn4cuda30lstm_fwd_persistent_mma_kernelI6__halfEEvNS0_12FwdSeqParamsE\n"
        "\t.headerflags\t@\"EF_CUDA_SM90\"\n"
        "        /*0000*/                   LDC R1, c[0x0][0x28] ;                         /* 0x00000a00ff017b82 */\n"
        "        /*0120*/                   HMMA.16816.F32 R4, R8, R12, R4 ;               /* 0x0000000c0804723c */\n"
        "        /*0130*/              @!P0 BRA 0x90 ;                                     /* 0x0000000000008947 */\n"
    ).replace("code for sm_90", "arch = sm_90")
    ops = parse_sass(text)
    [(key, opcodes)] = ops.items()
    assert key[0] == "sm_90" and "mma_kernel" in key[1]
    assert opcodes == ["LDC", "HMMA.16816.F32", "BRA"]


def _kernels_named(sass, names, types):
    found = {}
    for (arch, fn), ops in sass.items():
        for n in names:
            for mangled, label in types.items():
                if f"{n}I{mangled}E" in fn:
                    found[(arch, n, label)] = ops
    return found


def test_tensor_core_kernels_contain_hmma(sass):
    """bf16/fp16 (mma.sync m16n8k16) and the TF32 float32 kernels (m16n8k8), forward and backward, run on the tensor
    cores: HMMA in the SASS of every cell, dtype, direction and architecture."""
    found = _kernels_named(sass, MMA_KERNELS, MMA_TYPES)
    missing = [(a, n, t) for a in ARCHS for n in MMA_KERNELS for t in MMA_TYPES.values() if (a, n, t) not in found]
    assert not missing, f"tensor-core kernels not in the library: {missing}"
    no_hmma = [k for k, ops in found.items() if not any(op.startswith("HMMA") for op in ops)]
    assert not no_hmma, f"no HMMA instruction in {no_hmma}"


def test_fma_persistent_kernels_have_no_tensor_cores(sass):
    """The float64 and exact-float32 persistent kernels (allow_tf32 False), forward and backward, multiply with FMA
    only: no HMMA/DMMA."""
    found = _kernels_named(sass, FMA_PERSISTENT, FMA_TYPES)
    missing = [(a, n, t) for a in ARCHS for n in FMA_PERSISTENT for t in FMA_TYPES.values() if (a, n, t) not in found]
    assert not missing, f"FMA persistent kernels not in the library: {missing}"
    mma = [k for k, ops in found.items() if any(op.startswith(("HMMA", "DMMA")) for op in ops)]
    assert not mma, f"tensor-core instructions in the exact kernels {mma}"


# -------------------------------------------------------------------------------------------------- residency
# Shapes of fastrnn.bench's CUDA table (T=100, B=64, I=H=512) and a larger hidden size.
RESIDENCY_H = (512, 1024)
MODES = (("float32", True), ("float32", False), ("float64", False), ("float16", False), ("bfloat16", False))
DEVICES = {"sm_80": residency.A100, "sm_90": residency.H100}


def _regs(usage, arch, kernel, mangled):
    regs = [f["REG"] for a, n, f in usage if a == arch and f"{kernel}I{mangled}E" in n]
    assert len(regs) == 1, (arch, kernel, mangled, regs)
    return regs[0]


def residency_table(usage):
    rows = []
    for arch, dev in DEVICES.items():
        for cell in ("lstm", "gru", "rnn"):
            for dtype, tf32 in MODES:
                mma = residency.mma_kernel(dtype, tf32)
                kernel = f"{cell}_fwd_persistent{'_mma' if mma else ''}_kernel"
                mangled = {"float32": "f", "float64": "d", "float16": "6__half", "bfloat16": "13__nv_bfloat16"}[dtype]
                regs = _regs(usage, arch, kernel, mangled)
                for H in RESIDENCY_H:
                    p = residency.plan(dev, cell, dtype, tf32, H, regs)
                    rows.append({"arch": arch, "device": dev.name, "cell": cell,
                                 "mode": dtype + (" tf32" if tf32 else " exact" if dtype == "float32" else ""),
                                 "kernel": "mma" if mma else "fma", "H": H, "regs": regs, **p})
    return rows


def test_step_kernels_keep_two_blocks_per_sm(usage):
    """The step kernels are written for 2 resident blocks of 256 threads per SM (register_budget.txt)."""
    bad = []
    for a, n, f in usage:
        if "_step_kernel" in n:
            # by registers: 64K per SM on every architecture built (sm_100's limits are the H100's here)
            occ = residency.blocks_per_sm(DEVICES.get(a, residency.H100), f["REG"], 0)
            if occ["regs"] < 2:
                bad.append(f"{a} {n}: REG {f['REG']} -> {occ['regs']} blocks per SM by registers")
    assert not bad, "\n".join(bad)


# Where the persistent kernels must get a co-resident grid (elsewhere the step kernels run the call): every mode at
# H = 512 and 1024 on an H100, except float64 at 1024 (its W slice, K x (G*units + 1) doubles, fits no unit count);
# every mode but float64 at H = 512 on an A100 (108 SMs: 512 units need 8 per block, 128 blocks, and float64's slice
# then exceeds 163 KB); bf16/fp16 also at H = 1024 there.
def must_be_resident(row):
    if row["arch"] == "sm_90":
        return not (row["mode"] == "float64" and row["H"] == 1024)
    if row["H"] == 512:
        return row["mode"] != "float64"
    return row["mode"] in ("float16", "bfloat16")


def test_persistent_kernels_are_resident_at_benchmark_shapes(usage):
    """Residency of every persistent kernel (each cell, dtype and TF32 mode) at H = 512 and 1024 on an A100 and an H100
    (registers from cuobjdump, shared memory from the traits): wherever a unit count is chosen, blocks per SM >= 1 and
    grid <= SMs x blocks per SM; must_be_resident says where one must be. The table is recorded in
    build/cuda_residency.md (a model of the occupancy calculator, not a measurement)."""
    rows = residency_table(usage)
    cols = ["device", "cell", "mode", "kernel", "H", "regs", "units", "grid", "smem", "by_regs", "by_smem",
            "blocks_per_sm"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    table = "\n".join(lines)
    os.makedirs(os.path.join(ROOT, "build"), exist_ok=True)
    with open(os.path.join(ROOT, "build", "cuda_residency.md"), "w") as f:
        f.write("Residency of the persistent forward kernels (model of the occupancy calculator, not a measurement; "
                "units 0: the step kernels run it)\n\n")
        f.write(table + "\n")
    print("\n" + table)
    bad = [r for r in rows if r["units"] and (r["blocks_per_sm"] < 1 or r["grid"] > DEVICES[r["arch"]].num_sms
                                               * r["blocks_per_sm"])]
    bad += [r for r in rows if r["units"] == 0 and must_be_resident(r)]
    assert not bad, "not co-resident:\n" + "\n".join(map(str, bad))
