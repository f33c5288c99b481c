// cuda_emu_half.h -- __half / __nv_bfloat16 (and their 2-vectors) for the CUDA emulation, plus the TF32 roundings.
// Included by cuda_emu.h after its vector types (uses float2); nothing here involves threads.
//
// Storage and conversions are bit-exact with CUDA:
//   * float -> half / bfloat16 (__float2half, __float2half_rn, __float2bfloat16, __float2bfloat16_rn, the 2-vector
//     forms): round to nearest, ties to even; subnormal results kept (no flush); |x| >= 65520 -> +-inf for half
//     (the RNE overflow threshold), bfloat16 overflows to inf by the same rule; NaN -> the canonical 0x7fff (sign
//     dropped), as cuda_fp16.hpp / cuda_bf16.hpp do (torch's CPU casts give 0x7e00 / 0x7fc0 | sign instead: the only
//     difference, NaN payloads).
//   * half -> float exact; a half NaN becomes the canonical float NaN 0x7fffffff (cuda_fp16.hpp "discard sign of a
//     NaN"). bfloat16 -> float is the bit shift (payload kept), as cuda_bf16.hpp does.
//   * Arithmetic (__hadd, __hsub, __hmul, __hfma, __hneg and the 2-vector __hadd2, __hsub2, __hmul2, __hfma2): one
//     IEEE rounding of the exact result to the 16-bit format (RNE), NaN results canonical 0x7fff. add/sub/mul are
//     computed in double (exact for two halves; for bfloat16 double has > 2p+2 bits, so rounding twice is
//     innocuous); fma uses an exact two-sum so the one rounding sees the exact sign of the residual.
// Spelled as torch builds CUDA code (-D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_HALF_OPERATORS__
// -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__): no implicit float conversions and no
// arithmetic operators, so device code that compiles here compiles under nvcc in the extension build.
//
// TF32 (namespace cuda_emu): tf32_rna(f) is cvt.rna.tf32.f32 exactly as its sm_80+ SASS does it (finite inputs get
// 0x1000 added to the bit pattern, then the low 13 bits are cleared: round to nearest, ties away from zero, overflow
// to inf; inf/NaN are only masked); tf32_truncate(f) clears the low 13 bits, which is what the tensor cores do with
// the low mantissa bits of a .tf32 mma operand that was not converted first.
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>

struct __half_raw {
  unsigned short x;
};
struct __half2_raw {
  unsigned short x, y;
};
struct __nv_bfloat16_raw {
  unsigned short x;
};
struct __nv_bfloat162_raw {
  unsigned short x, y;
};

struct alignas(2) __half {
  unsigned short __x;
  __half() = default;
  constexpr __half(const __half_raw& r) : __x(r.x) {}
  constexpr operator __half_raw() const { return {__x}; }
};
struct alignas(4) __half2 {
  __half x, y;
  __half2() = default;
  constexpr __half2(const __half& a, const __half& b) : x(a), y(b) {}
  constexpr __half2(const __half2_raw& r) : x(__half_raw{r.x}), y(__half_raw{r.y}) {}
  constexpr operator __half2_raw() const { return {x.__x, y.__x}; }
};
struct alignas(2) __nv_bfloat16 {
  unsigned short __x;
  __nv_bfloat16() = default;
  constexpr __nv_bfloat16(const __nv_bfloat16_raw& r) : __x(r.x) {}
  constexpr operator __nv_bfloat16_raw() const { return {__x}; }
};
struct alignas(4) __nv_bfloat162 {
  __nv_bfloat16 x, y;
  __nv_bfloat162() = default;
  constexpr __nv_bfloat162(const __nv_bfloat16& a, const __nv_bfloat16& b) : x(a), y(b) {}
  constexpr __nv_bfloat162(const __nv_bfloat162_raw& r) : x(__nv_bfloat16_raw{r.x}), y(__nv_bfloat16_raw{r.y}) {}
  constexpr operator __nv_bfloat162_raw() const { return {x.__x, y.__x}; }
};
typedef __half half;
typedef __half2 half2;
typedef __nv_bfloat16 nv_bfloat16;
typedef __nv_bfloat162 nv_bfloat162;
static_assert(sizeof(__half) == 2 && sizeof(__half2) == 4 && sizeof(__nv_bfloat16) == 2 && sizeof(__nv_bfloat162) == 4);

namespace cuda_emu {

// A 16-bit binary format: EBITS exponent bits, MBITS stored mantissa bits.
template <int EBITS, int MBITS>
struct Fmt16 {
  static constexpr int kBias = (1 << (EBITS - 1)) - 1;
  static constexpr unsigned kExpMask = (1u << EBITS) - 1;
  static constexpr std::uint16_t kInf = static_cast<std::uint16_t>(kExpMask << MBITS);
  static constexpr std::uint16_t kCanonicalNaN = 0x7fff;

  // Round |exact| to the format, nearest-even, where `x` is the exact value rounded to double and `residual` the
  // sign of (exact - x) (0 if x is exact). Overflow gives inf, underflow a subnormal or zero.
  static std::uint16_t from_double(double x, int residual = 0) {
    if (std::isnan(x)) return kCanonicalNaN;
    const std::uint64_t u = std::bit_cast<std::uint64_t>(x);
    const std::uint16_t sign = static_cast<std::uint16_t>((u >> 63) << 15);
    if (std::isinf(x)) return sign | kInf;
    const std::uint64_t a = u & ~(std::uint64_t{1} << 63);
    if (a == 0) return sign;  // exact zero (a residual never comes with a zero sum: two-sum of finite values)
    const int mag_dir = sign ? -residual : residual;  // direction of the residual in magnitude
    int e = static_cast<int>(a >> 52);
    std::uint64_t sig = a & ((std::uint64_t{1} << 52) - 1);
    if (e == 0) e = 1;  // double subnormal
    else sig |= std::uint64_t{1} << 52;
    const int e2 = e - 1023;                     // exponent of bit 52 of sig
    const int lead = e2 - 52 + (63 - std::countl_zero(sig));  // exponent of the leading bit
    const int emin = 1 - kBias;
    const int q = (lead > emin ? lead : emin) - MBITS;  // exponent of the format's last mantissa bit here
    const int shift = q - (e2 - 52);                    // bits of sig below the format's precision (> 0 here)
    std::uint64_t kept;
    bool up;
    if (shift >= 64) {
      kept = 0;
      up = false;  // far below half a quantum
    } else {
      kept = sig >> shift;
      const std::uint64_t rem = sig & ((std::uint64_t{1} << shift) - 1), halfq = std::uint64_t{1} << (shift - 1);
      up = rem > halfq || (rem == halfq && (mag_dir > 0 || (mag_dir == 0 && (kept & 1))));
    }
    kept += up ? 1 : 0;
    int qq = q;
    if (kept >> (MBITS + 1)) {  // carry out of the mantissa
      kept >>= 1;
      ++qq;
    }
    if (kept == 0) return sign;
    if (kept < (std::uint64_t{1} << MBITS)) return static_cast<std::uint16_t>(sign | kept);  // subnormal (qq == emin-M)
    const int field = qq + MBITS + kBias;
    if (field >= static_cast<int>(kExpMask)) return sign | kInf;
    return static_cast<std::uint16_t>(sign | (static_cast<unsigned>(field) << MBITS) |
                                      (kept & ((std::uint64_t{1} << MBITS) - 1)));
  }

  static double to_double(std::uint16_t h) {
    const bool neg = h >> 15;
    const unsigned e = (h >> MBITS) & kExpMask, m = h & ((1u << MBITS) - 1);
    double v;
    if (e == kExpMask) v = m ? std::numeric_limits<double>::quiet_NaN() : std::numeric_limits<double>::infinity();
    else if (e == 0) v = std::ldexp(static_cast<double>(m), 1 - kBias - MBITS);
    else v = std::ldexp(static_cast<double>(m | (1u << MBITS)), static_cast<int>(e) - kBias - MBITS);
    return neg ? -v : v;
  }
  static bool is_nan(std::uint16_t h) { return ((h >> MBITS) & kExpMask) == kExpMask && (h & ((1u << MBITS) - 1)); }

  // fma with one rounding: a*b is exact in double (<= 2*(MBITS+1) bits), the sum's error comes from a two-sum.
  static std::uint16_t fma(std::uint16_t a, std::uint16_t b, std::uint16_t c) {
    const double p = to_double(a) * to_double(b), z = to_double(c);
    const double s = p + z;
    if (!std::isfinite(s) || !std::isfinite(p) || !std::isfinite(z)) return from_double(s);
    const double bb = s - p;
    const double err = (p - (s - bb)) + (z - bb);  // Knuth two-sum: p + z == s + err exactly
    return from_double(s, err > 0 ? 1 : (err < 0 ? -1 : 0));
  }
};
using HalfFmt = Fmt16<5, 10>;
using Bf16Fmt = Fmt16<8, 7>;

inline float half_bits_to_float(std::uint16_t h) {
  if (HalfFmt::is_nan(h)) return std::bit_cast<float>(0x7fffffffu);
  return static_cast<float>(HalfFmt::to_double(h));
}
inline float bf16_bits_to_float(std::uint16_t h) { return std::bit_cast<float>(static_cast<std::uint32_t>(h) << 16); }

inline float tf32_rna(float f) {
  std::uint32_t u = std::bit_cast<std::uint32_t>(f);
  if (!(std::fabs(f) >= std::numeric_limits<float>::infinity() || std::isnan(f))) u += 0x1000u;
  return std::bit_cast<float>(u & 0xffffe000u);
}
inline float tf32_truncate(float f) { return std::bit_cast<float>(std::bit_cast<std::uint32_t>(f) & 0xffffe000u); }

}  // namespace cuda_emu

// ------------------------------------------------------------------------------------------- half
inline __half __ushort_as_half(unsigned short x) { return __half_raw{x}; }
inline unsigned short __half_as_ushort(__half h) { return h.__x; }
inline __half __float2half_rn(float f) { return __half_raw{::cuda_emu::HalfFmt::from_double(f)}; }
inline __half __float2half(float f) { return __float2half_rn(f); }
inline __half __double2half(double d) { return __half_raw{::cuda_emu::HalfFmt::from_double(d)}; }
inline float __half2float(__half h) { return ::cuda_emu::half_bits_to_float(h.__x); }
inline __half2 __floats2half2_rn(float a, float b) { return __half2(__float2half_rn(a), __float2half_rn(b)); }
inline __half2 __float2half2_rn(float a) { return __floats2half2_rn(a, a); }
inline __half2 __float22half2_rn(float2 v) { return __floats2half2_rn(v.x, v.y); }
inline float2 __half22float2(__half2 h) { return make_float2(__half2float(h.x), __half2float(h.y)); }
inline float __low2float(__half2 h) { return __half2float(h.x); }
inline float __high2float(__half2 h) { return __half2float(h.y); }
inline __half __low2half(__half2 h) { return h.x; }
inline __half __high2half(__half2 h) { return h.y; }
inline __half2 __halves2half2(__half a, __half b) { return __half2(a, b); }
inline __half2 __half2half2(__half a) { return __half2(a, a); }
inline bool __hisnan(__half h) { return ::cuda_emu::HalfFmt::is_nan(h.__x); }
inline int __hisinf(__half h) { return (h.__x & 0x7fff) == 0x7c00 ? ((h.__x >> 15) ? -1 : 1) : 0; }

inline __half __hadd(__half a, __half b) {
  using F = ::cuda_emu::HalfFmt;
  return __half_raw{F::from_double(F::to_double(a.__x) + F::to_double(b.__x))};
}
inline __half __hsub(__half a, __half b) {
  using F = ::cuda_emu::HalfFmt;
  return __half_raw{F::from_double(F::to_double(a.__x) - F::to_double(b.__x))};
}
inline __half __hmul(__half a, __half b) {
  using F = ::cuda_emu::HalfFmt;
  return __half_raw{F::from_double(F::to_double(a.__x) * F::to_double(b.__x))};
}
inline __half __hfma(__half a, __half b, __half c) { return __half_raw{::cuda_emu::HalfFmt::fma(a.__x, b.__x, c.__x)}; }
inline __half __hneg(__half a) { return __half_raw{static_cast<unsigned short>(a.__x ^ 0x8000u)}; }
inline __half2 __hadd2(__half2 a, __half2 b) { return __half2(__hadd(a.x, b.x), __hadd(a.y, b.y)); }
inline __half2 __hsub2(__half2 a, __half2 b) { return __half2(__hsub(a.x, b.x), __hsub(a.y, b.y)); }
inline __half2 __hmul2(__half2 a, __half2 b) { return __half2(__hmul(a.x, b.x), __hmul(a.y, b.y)); }
inline __half2 __hfma2(__half2 a, __half2 b, __half2 c) { return __half2(__hfma(a.x, b.x, c.x), __hfma(a.y, b.y, c.y)); }

// ------------------------------------------------------------------------------------------- bfloat16
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short x) { return __nv_bfloat16_raw{x}; }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.__x; }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16_raw{::cuda_emu::Bf16Fmt::from_double(f)}; }
inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }
inline __nv_bfloat16 __double2bfloat16(double d) { return __nv_bfloat16_raw{::cuda_emu::Bf16Fmt::from_double(d)}; }
inline float __bfloat162float(__nv_bfloat16 h) { return ::cuda_emu::bf16_bits_to_float(h.__x); }
inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) {
  return __nv_bfloat162(__float2bfloat16_rn(a), __float2bfloat16_rn(b));
}
inline __nv_bfloat162 __float2bfloat162_rn(float a) { return __floats2bfloat162_rn(a, a); }
inline __nv_bfloat162 __float22bfloat162_rn(float2 v) { return __floats2bfloat162_rn(v.x, v.y); }
inline float2 __bfloat1622float2(__nv_bfloat162 h) { return make_float2(__bfloat162float(h.x), __bfloat162float(h.y)); }
inline float __low2float(__nv_bfloat162 h) { return __bfloat162float(h.x); }
inline float __high2float(__nv_bfloat162 h) { return __bfloat162float(h.y); }
inline __nv_bfloat16 __low2bfloat16(__nv_bfloat162 h) { return h.x; }
inline __nv_bfloat16 __high2bfloat16(__nv_bfloat162 h) { return h.y; }
inline __nv_bfloat162 __halves2bfloat162(__nv_bfloat16 a, __nv_bfloat16 b) { return __nv_bfloat162(a, b); }
inline __nv_bfloat162 __bfloat162bfloat162(__nv_bfloat16 a) { return __nv_bfloat162(a, a); }
inline bool __hisnan(__nv_bfloat16 h) { return ::cuda_emu::Bf16Fmt::is_nan(h.__x); }
inline int __hisinf(__nv_bfloat16 h) { return (h.__x & 0x7fff) == 0x7f80 ? ((h.__x >> 15) ? -1 : 1) : 0; }

inline __nv_bfloat16 __hadd(__nv_bfloat16 a, __nv_bfloat16 b) {
  using F = ::cuda_emu::Bf16Fmt;
  return __nv_bfloat16_raw{F::from_double(F::to_double(a.__x) + F::to_double(b.__x))};
}
inline __nv_bfloat16 __hsub(__nv_bfloat16 a, __nv_bfloat16 b) {
  using F = ::cuda_emu::Bf16Fmt;
  return __nv_bfloat16_raw{F::from_double(F::to_double(a.__x) - F::to_double(b.__x))};
}
inline __nv_bfloat16 __hmul(__nv_bfloat16 a, __nv_bfloat16 b) {
  using F = ::cuda_emu::Bf16Fmt;
  return __nv_bfloat16_raw{F::from_double(F::to_double(a.__x) * F::to_double(b.__x))};
}
inline __nv_bfloat16 __hfma(__nv_bfloat16 a, __nv_bfloat16 b, __nv_bfloat16 c) {
  return __nv_bfloat16_raw{::cuda_emu::Bf16Fmt::fma(a.__x, b.__x, c.__x)};
}
inline __nv_bfloat16 __hneg(__nv_bfloat16 a) { return __nv_bfloat16_raw{static_cast<unsigned short>(a.__x ^ 0x8000u)}; }
inline __nv_bfloat162 __hadd2(__nv_bfloat162 a, __nv_bfloat162 b) { return {__hadd(a.x, b.x), __hadd(a.y, b.y)}; }
inline __nv_bfloat162 __hsub2(__nv_bfloat162 a, __nv_bfloat162 b) { return {__hsub(a.x, b.x), __hsub(a.y, b.y)}; }
inline __nv_bfloat162 __hmul2(__nv_bfloat162 a, __nv_bfloat162 b) { return {__hmul(a.x, b.x), __hmul(a.y, b.y)}; }
inline __nv_bfloat162 __hfma2(__nv_bfloat162 a, __nv_bfloat162 b, __nv_bfloat162 c) {
  return {__hfma(a.x, b.x, c.x), __hfma(a.y, b.y, c.y)};
}
