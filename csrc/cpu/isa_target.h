// Compiles the rest of a translation unit for a wider instruction set than the build's baseline.
//
// The extension is one setuptools build with one set of compiler flags, so the per-ISA kernel files raise
// their own target with `#pragma GCC target` and then define the feature macros (__AVX2__, ...) that the
// pragma enables but, unlike -m flags, does not predefine; at::vec and sleef.h select their vector code
// from those macros and from CPU_CAPABILITY_*, exactly as in PyTorch's own per-ISA kernel files.
// Wider-ISA code must not leak into functions the baseline objects call: everything these files define
// lives in their own namespace (fastrnn::cpu::isa_*, at::vec::AVX2/AVX512), and tests/test_cpu_isa.py
// checks with nm that their objects export no weak symbol outside those namespaces.
// Must be included before any other header.
#pragma once
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__AVX2__)
#define FASTRNN_X86 1
#define FASTRNN_PRAGMA(x) _Pragma(#x)
#define FASTRNN_TARGET_ISA(isa) FASTRNN_PRAGMA(GCC target(isa))
// GCC notes the changed vector-argument ABI of functions that only these files call; not ours to fix.
#pragma GCC diagnostic ignored "-Wpsabi"
#endif
