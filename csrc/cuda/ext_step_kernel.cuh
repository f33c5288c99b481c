// Per-timestep pointwise kernels of the regularised cells (fastrnn::lstm_ext_* / gru_ext_*: layer_norm on
// W_hh h and on c, zoneout, recurrent dropout). The first CUDA step for these options: per time step the host
// runs the recurrent GEMM a = (h_{t-1} * mask) @ W_hh^T with cuBLAS, then ONE launch of the fused kernel here
// does the rest of the step for its rows. (The persistent kernels will absorb this later.)
//
// Launch contract (every kernel here; ExtTraits, the launcher in ext_launcher.cuh does exactly this):
//   grid   = dim3(bs, 1, 1)            -- one block per batch row of the step (blockIdx.x = b)
//   block  = dim3(kExtThreads, 1, 1)   -- 256 threads; hidden unit j is owned by thread j % 256 (strided loop)
//   dynamic shared memory = ExtTraits<A>::smem_bytes()   -- the block reductions' partials, 2 x 8 values
//   args   = one *Params struct of ext_params.h, by value. Not launched when bs == 0 or the width is 0.
//
// Why one block per row: LayerNorm normalises over a whole row (the G*H gates, or the H units of c), so a row's
// statistics need every unit of the row before any gate can be formed; a block can reduce with warp shuffles and
// shared memory, whereas a row split over blocks would need a grid-wide step. The statistics are two-pass (mean,
// then the centred variance) in the accumulation dtype, as the CPU kernels and fastrnn/reference.py do: the
// one-pass E[x^2] - E[x]^2 loses the variance to cancellation when |mean| >> sigma.
//
// Race freedom: within a row, every per-unit value (state, workspace, scratch, gradients) is written and read
// back by the thread that owns the unit, in every pass, so the only cross-thread communication is the block
// reduction, which brackets its shared-memory use with __syncthreads. Rows belong to one block each; the state
// buffers (h_state, c_state, hm, dh_state, dc_state) are updated in place, element by element, by their owner.
// The GEMM that reads hm for the next step is a later launch on the same stream.
#pragma once

#include <cstdint>
#include <type_traits>

#include "../cell_math.h"
#include "device_compat.h"
#include "ext_params.h"

#if defined(FASTRNN_EMU_DROP_EXT_SYNC) && !defined(FASTRNN_CUDA_EMU)
#error "FASTRNN_EMU_DROP_EXT_SYNC (drops a __syncthreads, see block_sum2) is for the CUDA-emulation tests only"
#endif

namespace fastrnn::cuda {

constexpr int kExtThreads = 256;
constexpr double kExtLnEps = 1e-5;  // fastrnn/reference.py LN_EPS

template <typename A>
struct ExtTraits {
  static constexpr int kThreads = kExtThreads;
  static constexpr int kWarps = kThreads / 32;
  // Two partial sums per warp: the reductions of the backward's LayerNorm sum two quantities at once.
  static constexpr int64_t smem_bytes() { return int64_t(2 * kWarps) * int64_t(sizeof(A)); }
  static constexpr int64_t grid_x(int64_t bs) { return bs; }
};

// The block-wide sums of (x, y), returned to every thread. Partials per warp with xor shuffles, then each
// thread adds the 8 warp partials in the same order (a deterministic result, identical in every thread).
// The first barrier publishes the partials, the second keeps the next call from overwriting them while a
// slow warp still reads. Every thread of the block must call it (it holds barriers).
template <typename A>
__device__ __forceinline__ void block_sum2(A& x, A& y, A* red) {
  constexpr int kWarps = ExtTraits<A>::kWarps;
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    x += __shfl_xor_sync(0xffffffffu, x, off);
    y += __shfl_xor_sync(0xffffffffu, y, off);
  }
  const int tid = static_cast<int>(threadIdx.x), lane = tid % 32, warp = tid / 32;
  if (lane == 0) {
    red[warp] = x;
    red[kWarps + warp] = y;
  }
  __syncthreads();
  A sx = A(0), sy = A(0);
#pragma unroll
  for (int w = 0; w < kWarps; ++w) {
    sx += red[w];
    sy += red[kWarps + w];
  }
  // The macro exists only for tests/test_cuda_emu_ext.py, which builds the kernels without this barrier under the
  // CUDA emulation and expects ThreadSanitizer to report the race; never define it for a real build.
#ifndef FASTRNN_EMU_DROP_EXT_SYNC
  __syncthreads();
#endif
  x = sx;
  y = sy;
}

// 1 / n and 1 / sqrt(var + eps) as correctly rounded reciprocals (Math<A>::recip: __frcp_rn / __drcp_rn on the
// GPU) rather than IEEE divisions, whose out-of-line slow path made ptxas spill the values live across its call
// (float64 LSTM backward, sm_80); the results differ from the CPU kernels' divisions by at most an ulp. sqrtf
// for float: an unqualified sqrt would take the double overload under the host compiler.
template <typename A>
__device__ __forceinline__ A inv_count(int64_t n) {
  return Math<A>::recip(static_cast<A>(n));
}
template <typename A>
__device__ __forceinline__ A ln_rstd(A var) {
  if constexpr (std::is_same_v<A, float>) {
    return Math<float>::recip(sqrtf(var + static_cast<float>(kExtLnEps)));
  } else {
    return Math<A>::recip(sqrt(var + static_cast<A>(kExtLnEps)));
  }
}

// LayerNorm statistics (mean, 1/sqrt(var + eps)) of the n values v[0..n) (A, global memory) of the block's row.
template <typename A>
__device__ __forceinline__ void row_stats(const A* __restrict__ v, int64_t n, A* red, A& mean, A& rstd) {
  const int64_t tid = threadIdx.x;
  A s = A(0), unused = A(0);
  for (int64_t i = tid; i < n; i += kExtThreads) s += v[i];
  block_sum2(s, unused, red);
  const A inv_n = inv_count<A>(n);
  mean = s * inv_n;
  A q = A(0);
  unused = A(0);
  for (int64_t i = tid; i < n; i += kExtThreads) {
    const A d = v[i] - mean;
    q += d * d;
  }
  block_sum2(q, unused, red);
  rstd = ln_rstd(q * inv_n);
}

// The zoneout weight of unit j of row b (zero without zoneout).
template <typename A>
__device__ __forceinline__ A zoneout_k(const ExtZoneout& z, int64_t b, int64_t D, int64_t j) {
  if (z.k == nullptr) return A(0);
  const A* k = static_cast<const A*>(z.k);
  return z.scalar ? k[0] : k[b * D + j];
}

// k * prev + (1 - k) * next; without zoneout `next` itself, as the CPU kernels and the reference
// (0 * prev would turn an inf/NaN previous state into NaN).
template <typename A>
__device__ __forceinline__ A zoneout_mix(const ExtZoneout& z, int64_t b, int64_t D, int64_t j, A prev, A next) {
  if (z.k == nullptr) return next;
  const A k = zoneout_k<A>(z, b, D, j);
  return k * prev + (A(1) - k) * next;
}

// ------------------------------------------------------------------------------------------ LSTM forward
template <typename S>
__device__ __forceinline__ void lstm_ext_fwd(const LstmExtFwdParams& p) {
  using A = acc_t<S>;
  FASTRNN_DYNAMIC_SMEM(A, red);
  const int64_t b = blockIdx.x, tid = threadIdx.x, H = p.H, G = 4 * H;
  const A* __restrict__ a = static_cast<const A*>(p.a) + b * G;
  const S* __restrict__ gx = static_cast<const S*>(p.gx) + b * G;
  const S* __restrict__ lnw = static_cast<const S*>(p.ln_hh_w);
  const S* __restrict__ lnb = static_cast<const S*>(p.ln_hh_b);
  const S* __restrict__ lcw = static_cast<const S*>(p.ln_c_w);
  const S* __restrict__ lcb = static_cast<const S*>(p.ln_c_b);
  A* __restrict__ c = static_cast<A*>(p.c_state) + b * H;
  A* __restrict__ ws = p.ws != nullptr ? static_cast<A*>(p.ws) + b * p.ws_width : nullptr;
  const bool ln = lnw != nullptr, lnc = lcw != nullptr;
  // Workspace columns (fastrnn.cpp): i f g o | c | tanh(.) | xhat_hh [4H], 1/sigma | xhat_c [H], 1/sigma
  const int64_t xc_col = 6 * H + (ln ? G + 1 : 0);

  A mean = A(0), rstd = A(1);
  if (ln) row_stats(a, G, red, mean, rstd);
  // The pre-activation of gate column i: gates_x + LN(a) (the LSTM's b_hh is folded into gates_x).
  auto pre = [&](int64_t i) {
    A v = a[i];
    if (ln) {
      const A xh = (v - mean) * rstd;
      if (ws != nullptr) ws[6 * H + i] = xh;
      v = xh * to_float(lnw[i]) + to_float(lnb[i]);
    }
    return to_float(gx[i]) + v;
  };
  if (ln && ws != nullptr && tid == 0) ws[6 * H + G] = rstd;

  A* __restrict__ scr = lnc ? static_cast<A*>(p.scratch) + b * 2 * H : nullptr;
  A csum = A(0);
  for (int64_t j = tid; j < H; j += kExtThreads) {
    const A gi = sigmoid(pre(j)), gf = sigmoid(pre(H + j)), gg = Math<A>::tanh(pre(2 * H + j)),
            go = sigmoid(pre(3 * H + j));
    const A cp = c[j];
    const A cn = gf * cp + gi * gg;  // c~
    const A cz = zoneout_mix(p.zc, b, H, j, cp, cn);
    c[j] = cz;
    if (ws != nullptr) {
      ws[j] = gi;
      ws[H + j] = gf;
      ws[2 * H + j] = gg;
      ws[3 * H + j] = go;
      ws[4 * H + j] = cz;
    }
    if (lnc) {  // the rest waits for LN_c's statistics: keep c~ and o (this thread reads them back)
      scr[j] = cn;
      scr[H + j] = go;
      csum += cn;
      continue;
    }
    const A tc = Math<A>::tanh(cn);
    if (ws != nullptr) ws[5 * H + j] = tc;
    const A r = go * tc;
    if (p.proj) {
      static_cast<A*>(p.r_out)[b * H + j] = r;
      continue;
    }
    S* hs = static_cast<S*>(p.h_state) + b * H + j;
    const S h = from_float<S>(zoneout_mix(p.zh, b, H, j, to_float(*hs), r));
    *hs = h;
    static_cast<S*>(p.out)[b * p.ld_out + j] = h;
    const A* m = static_cast<const A*>(p.mask);
    static_cast<A*>(p.hm)[b * H + j] = m != nullptr ? to_float(h) * m[b * H + j] : to_float(h);
  }
  if (!lnc) return;  // uniform over the block: no barrier follows for anyone

  // LN_c: two-pass statistics of c~ over the H units (the sum of pass one is already in csum).
  A unused = A(0);
  block_sum2(csum, unused, red);
  const A inv_h = inv_count<A>(H);
  const A cmean = csum * inv_h;
  A q = A(0);
  for (int64_t j = tid; j < H; j += kExtThreads) {
    const A d = scr[j] - cmean;
    q += d * d;
  }
  unused = A(0);
  block_sum2(q, unused, red);
  const A crstd = ln_rstd(q * inv_h);
  if (ws != nullptr && tid == 0) ws[xc_col + H] = crstd;
  for (int64_t j = tid; j < H; j += kExtThreads) {
    const A xh = (scr[j] - cmean) * crstd;
    const A tc = Math<A>::tanh(xh * to_float(lcw[j]) + to_float(lcb[j]));
    if (ws != nullptr) {
      ws[xc_col + j] = xh;
      ws[5 * H + j] = tc;
    }
    const A r = scr[H + j] * tc;
    if (p.proj) {
      static_cast<A*>(p.r_out)[b * H + j] = r;
      continue;
    }
    S* hs = static_cast<S*>(p.h_state) + b * H + j;
    const S h = from_float<S>(zoneout_mix(p.zh, b, H, j, to_float(*hs), r));
    *hs = h;
    static_cast<S*>(p.out)[b * p.ld_out + j] = h;
    const A* m = static_cast<const A*>(p.mask);
    static_cast<A*>(p.hm)[b * H + j] = m != nullptr ? to_float(h) * m[b * H + j] : to_float(h);
  }
}

// The end of a projected LSTM step on its D = P units (ExtMixParams).
template <typename S>
__device__ __forceinline__ void ext_mix(const ExtMixParams& p) {
  using A = acc_t<S>;
  const int64_t b = blockIdx.x, D = p.D;
  const A* __restrict__ hn = static_cast<const A*>(p.hnew) + b * D;
  const A* __restrict__ m = static_cast<const A*>(p.mask);
  for (int64_t j = threadIdx.x; j < D; j += kExtThreads) {
    S* hs = static_cast<S*>(p.h_state) + b * D + j;
    const S h = from_float<S>(zoneout_mix(p.zh, b, D, j, to_float(*hs), hn[j]));
    *hs = h;
    static_cast<S*>(p.out)[b * p.ld_out + j] = h;
    static_cast<A*>(p.hm)[b * D + j] = m != nullptr ? to_float(h) * m[b * D + j] : to_float(h);
  }
}

// The zoneout split of dL/dh_t on the D = P units of a projected LSTM (ExtSplitParams).
template <typename S>
__device__ __forceinline__ void ext_split(const ExtSplitParams& p) {
  using A = acc_t<S>;
  const int64_t b = blockIdx.x, D = p.D;
  const S* __restrict__ go = static_cast<const S*>(p.grad_out);
  for (int64_t j = threadIdx.x; j < D; j += kExtThreads) {
    A* dh = static_cast<A*>(p.dh_state) + b * D + j;
    const A d = *dh + (go != nullptr ? to_float(go[b * p.ld_grad_out + j]) : A(0));
    const A kh = zoneout_k<A>(p.zh, b, D, j);
    static_cast<A*>(p.dh_new)[b * D + j] = (A(1) - kh) * d;
    *dh = kh * d;
  }
}

// LayerNorm backward of the G = n_gates * H values of a row, owner-mapped (thread tid handles columns
// g * H + j for its units j, the same columns it wrote to dl): da = rstd * (dxhat - mean(dxhat) -
// xhat * mean(dxhat * xhat)), dxhat = dl * w.
template <typename S, int kGates>
__device__ __forceinline__ void ln_backward_row(const acc_t<S>* __restrict__ dl, const acc_t<S>* __restrict__ xh,
                                                acc_t<S> rstd, const S* __restrict__ w, int64_t H,
                                                acc_t<S>* __restrict__ da, acc_t<S>* red) {
  using A = acc_t<S>;
  const int64_t G = kGates * H;
  A s1 = A(0), s2 = A(0);
  for (int64_t j = threadIdx.x; j < H; j += kExtThreads) {
#pragma unroll
    for (int g = 0; g < kGates; ++g) {
      const int64_t i = g * H + j;
      const A dx = dl[i] * to_float(w[i]);
      s1 += dx;
      s2 += dx * xh[i];
    }
  }
  block_sum2(s1, s2, red);
  const A inv_g = inv_count<A>(G);
  s1 *= inv_g;
  s2 *= inv_g;
  for (int64_t j = threadIdx.x; j < H; j += kExtThreads) {
#pragma unroll
    for (int g = 0; g < kGates; ++g) {
      const int64_t i = g * H + j;
      da[i] = rstd * (dl[i] * to_float(w[i]) - s1 - xh[i] * s2);
    }
  }
}

// ----------------------------------------------------------------------------------------- LSTM backward
template <typename S>
__device__ __forceinline__ void lstm_ext_bwd(const LstmExtBwdParams& p) {
  using A = acc_t<S>;
  FASTRNN_DYNAMIC_SMEM(A, red);
  const int64_t b = blockIdx.x, tid = threadIdx.x, H = p.H, G = 4 * H;
  const A* __restrict__ ws = static_cast<const A*>(p.ws) + b * p.ws_width;
  const A* __restrict__ cprev = static_cast<const A*>(p.c_prev) + b * H;
  const S* __restrict__ lnw = static_cast<const S*>(p.ln_hh_w);
  const S* __restrict__ lcw = static_cast<const S*>(p.ln_c_w);
  const S* __restrict__ go = static_cast<const S*>(p.grad_out);
  const A* __restrict__ dr = static_cast<const A*>(p.dr);
  A* __restrict__ dc_state = static_cast<A*>(p.dc_state) + b * H;
  S* __restrict__ dgx = static_cast<S*>(p.dgx) + b * G;
  A* __restrict__ dl = static_cast<A*>(p.da_ln) + b * G;
  const bool ln = lnw != nullptr, lnc = lcw != nullptr;
  const int64_t xc_col = 6 * H + (ln ? G + 1 : 0);
  A* __restrict__ dyc = lnc ? static_cast<A*>(p.dy_c) + b * H : nullptr;

  // The gates' backward from dc~ (the gradient of the new cell before zoneout, without its c_t part).
  auto gates = [&](int64_t j, A dcn) {
    const A gi = ws[j], gf = ws[H + j], gg = ws[2 * H + j];
    const A dct = dc_state[j];
    const A kc = zoneout_k<A>(p.zc, b, H, j);
    dcn += (A(1) - kc) * dct;
    const A di = dcn * gg * gi * (A(1) - gi);
    const A df = dcn * cprev[j] * gf * (A(1) - gf);
    const A dg = dcn * gi * (A(1) - gg * gg);
    dc_state[j] = kc * dct + dcn * gf;
    dgx[j] = from_float<S>(di);
    dgx[H + j] = from_float<S>(df);
    dgx[2 * H + j] = from_float<S>(dg);
    dl[j] = di;
    dl[H + j] = df;
    dl[2 * H + j] = dg;
  };

  // Pass 1: dL/dr (zoneout split of dh here without projection), the o gate, dL/d tanh's argument.
  A s1 = A(0), s2 = A(0);
  for (int64_t j = tid; j < H; j += kExtThreads) {
    A dn;
    if (dr != nullptr) {
      dn = dr[b * H + j];
    } else {
      A* dh = static_cast<A*>(p.dh_state) + b * H + j;
      const A d = *dh + (go != nullptr ? to_float(go[b * p.ld_grad_out + j]) : A(0));
      const A kh = zoneout_k<A>(p.zh, b, H, j);
      dn = (A(1) - kh) * d;
      *dh = kh * d;
    }
    const A o = ws[3 * H + j], tc = ws[5 * H + j];
    const A dpo = dn * tc * o * (A(1) - o);
    dgx[3 * H + j] = from_float<S>(dpo);
    dl[3 * H + j] = dpo;
    const A dy = dn * o * (A(1) - tc * tc);
    if (lnc) {
      dyc[j] = dy;
      const A dx = dy * to_float(lcw[j]);
      s1 += dx;
      s2 += dx * ws[xc_col + j];
    } else {
      gates(j, dy);
    }
  }
  if (lnc) {  // uniform over the block
    block_sum2(s1, s2, red);
    const A inv_h = inv_count<A>(H);
    s1 *= inv_h;
    s2 *= inv_h;
    const A crstd = ws[xc_col + H];
    for (int64_t j = tid; j < H; j += kExtThreads)
      gates(j, crstd * (dyc[j] * to_float(lcw[j]) - s1 - ws[xc_col + j] * s2));
  }
  if (ln) ln_backward_row<S, 4>(dl, ws + 6 * H, ws[6 * H + G], lnw, H, static_cast<A*>(p.da) + b * G, red);
}

// ------------------------------------------------------------------------------------------- GRU forward
template <typename S>
__device__ __forceinline__ void gru_ext_fwd(const GruExtFwdParams& p) {
  using A = acc_t<S>;
  FASTRNN_DYNAMIC_SMEM(A, red);
  const int64_t b = blockIdx.x, tid = threadIdx.x, H = p.H, G = 3 * H;
  const A* __restrict__ a = static_cast<const A*>(p.a) + b * G;
  const S* __restrict__ gx = static_cast<const S*>(p.gx) + b * G;
  const S* __restrict__ bhh = static_cast<const S*>(p.b_hh);
  const S* __restrict__ lnw = static_cast<const S*>(p.ln_hh_w);
  const S* __restrict__ lnb = static_cast<const S*>(p.ln_hh_b);
  const A* __restrict__ m = static_cast<const A*>(p.mask);
  A* __restrict__ ws = p.ws != nullptr ? static_cast<A*>(p.ws) + b * p.ws_width : nullptr;
  const bool ln = lnw != nullptr;

  A mean = A(0), rstd = A(1);
  if (ln) row_stats(a, G, red, mean, rstd);
  // The recurrent term of gate column i: LN (saving xhat) then b_hh.
  auto rec = [&](int64_t i) {
    A v = a[i];
    if (ln) {
      const A xh = (v - mean) * rstd;
      if (ws != nullptr) ws[4 * H + i] = xh;
      v = xh * to_float(lnw[i]) + to_float(lnb[i]);
    }
    if (bhh != nullptr) v += to_float(bhh[i]);
    return v;
  };
  if (ln && ws != nullptr && tid == 0) ws[4 * H + G] = rstd;
  for (int64_t j = tid; j < H; j += kExtThreads) {
    S* hs = static_cast<S*>(p.h_state) + b * H + j;
    const A hp = to_float(*hs);
    const GruActs<A> g =
        gru_forward<A>(to_float(gx[j]), to_float(gx[H + j]), to_float(gx[2 * H + j]), rec(j), rec(H + j),
                       rec(2 * H + j), hp);
    const S h = from_float<S>(zoneout_mix(p.zh, b, H, j, hp, g.h));
    *hs = h;
    static_cast<S*>(p.out)[b * p.ld_out + j] = h;
    static_cast<A*>(p.hm)[b * H + j] = m != nullptr ? to_float(h) * m[b * H + j] : to_float(h);
    if (ws != nullptr) {
      ws[j] = g.r;
      ws[H + j] = g.z;
      ws[2 * H + j] = g.n;
      ws[3 * H + j] = g.hn;
    }
  }
}

// ------------------------------------------------------------------------------------------ GRU backward
template <typename S>
__device__ __forceinline__ void gru_ext_bwd(const GruExtBwdParams& p) {
  using A = acc_t<S>;
  FASTRNN_DYNAMIC_SMEM(A, red);
  const int64_t b = blockIdx.x, tid = threadIdx.x, H = p.H, G = 3 * H;
  const A* __restrict__ ws = static_cast<const A*>(p.ws) + b * p.ws_width;
  const S* __restrict__ hprev = static_cast<const S*>(p.h_prev) + b * H;
  const S* __restrict__ go = static_cast<const S*>(p.grad_out);
  const S* __restrict__ lnw = static_cast<const S*>(p.ln_hh_w);
  A* __restrict__ dh = static_cast<A*>(p.dh_state) + b * H;
  S* __restrict__ dgx = static_cast<S*>(p.dgx) + b * G;
  A* __restrict__ dl = static_cast<A*>(p.da_ln) + b * G;
  for (int64_t j = tid; j < H; j += kExtThreads) {
    const A d = dh[j] + (go != nullptr ? to_float(go[b * p.ld_grad_out + j]) : A(0));
    const A kh = zoneout_k<A>(p.zh, b, H, j);
    const A dht = (A(1) - kh) * d;
    const GruGrads<A> g = gru_backward<A>(ws[j], ws[H + j], ws[2 * H + j], ws[3 * H + j], to_float(hprev[j]), dht);
    dh[j] = kh * d + g.dh_prev;
    dgx[j] = from_float<S>(g.dr);
    dgx[H + j] = from_float<S>(g.dz);
    dgx[2 * H + j] = from_float<S>(g.dpx_n);
    dl[j] = g.dr;
    dl[H + j] = g.dz;
    dl[2 * H + j] = g.dph_n;
  }
  if (lnw != nullptr) ln_backward_row<S, 3>(dl, ws + 4 * H, ws[4 * H + G], lnw, H, static_cast<A*>(p.da) + b * G, red);
}

// __launch_bounds__(256, 2): with __launch_bounds__(256) alone ptxas (nvcc 13.0) held the float32 LSTM forward (sm_80)
// and the float64 LSTM/GRU backward (sm_80, sm_90) at 64 registers with 4-12 byte spills. A minimum of 2 resident
// blocks (<= 128 registers) lets it use what it needs while an SM still overlaps two rows' memory traffic.
#if defined(__CUDACC__)
#define FASTRNN_EXT_BOUNDS __launch_bounds__(kExtThreads, 2)
#else
#define FASTRNN_EXT_BOUNDS
#endif

template <typename S>
__global__ void FASTRNN_EXT_BOUNDS lstm_ext_fwd_kernel(const LstmExtFwdParams p) {
  lstm_ext_fwd<S>(p);
}
template <typename S>
__global__ void FASTRNN_EXT_BOUNDS lstm_ext_bwd_kernel(const LstmExtBwdParams p) {
  lstm_ext_bwd<S>(p);
}
template <typename S>
__global__ void FASTRNN_EXT_BOUNDS gru_ext_fwd_kernel(const GruExtFwdParams p) {
  gru_ext_fwd<S>(p);
}
template <typename S>
__global__ void FASTRNN_EXT_BOUNDS gru_ext_bwd_kernel(const GruExtBwdParams p) {
  gru_ext_bwd<S>(p);
}
template <typename S>
__global__ void FASTRNN_EXT_BOUNDS ext_mix_kernel(const ExtMixParams p) {
  ext_mix<S>(p);
}
template <typename S>
__global__ void FASTRNN_EXT_BOUNDS ext_split_kernel(const ExtSplitParams p) {
  ext_split<S>(p);
}

}  // namespace fastrnn::cuda
