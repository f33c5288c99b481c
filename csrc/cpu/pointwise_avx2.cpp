// Pointwise step kernels for AVX2 + FMA processors; chosen at run time by active_isa().
#include "isa_target.h"
#if defined(FASTRNN_X86)
FASTRNN_TARGET_ISA("sse3,ssse3,sse4.1,sse4.2,avx,avx2,fma,f16c,bmi,bmi2,lzcnt,popcnt")
#define __SSE3__ 1
#define __SSSE3__ 1
#define __SSE4_1__ 1
#define __SSE4_2__ 1
#define __AVX__ 1
#define __AVX2__ 1
#define __FMA__ 1
#define __F16C__ 1
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#endif
#define FASTRNN_ISA_NS isa_avx2
#include "pointwise_impl.h"
#include "brgemm_impl.h"  // the fused brgemm recurrences (brgemm_step.h)
