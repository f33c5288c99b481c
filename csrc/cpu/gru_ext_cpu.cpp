// The GRU with fastrnn's options (layer_norm on W_hh h, zoneout, recurrent dropout) on the CPU: one layer,
// one direction, a whole (packed) sequence, from its input-side gates gates_x (fastrnn.cpp's comment block
// gives the op's semantics and workspace layout; fastrnn/reference.py gru_ext_cell the equations).
//
// The per-step plan of gru_cpu.cpp's per-step path: one GEMM for the recurrent side of a step into a [B, 3H]
// buffer, then one fused pointwise pass over its rows (the LayerNorm statistics of the row, the gates,
// zoneout; the output, the state and the workspace written). Everything is computed in the accumulation
// dtype (float for bfloat16): the weight is converted to it once per call, the GEMMs run in it, and the
// masked state the GEMM reads is kept in it, while the state itself (what z * h and zoneout see, and what
// the output holds) is rounded to the input's dtype, like the existing ops.
//
// Backward, per step in reverse order: the pointwise backward of a row (zoneout, the gates, the LayerNorm
// from the saved normalised values and 1/sigma) writes the gradient of gates_x and that of the recurrent
// pre-activation (before LN), then one GEMM carries the latter into the gradient of the previous state
// (times the recurrent mask) on top of its direct terms (z * h and zoneout). The weight gradient is one
// whole-sequence GEMM afterwards against the (masked) states each row started from; the bias and the
// LayerNorm parameters' gradients are whole-sequence reductions.
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "../ext_args.h"
#include "../ext_grads.h"
#include "ext_activate.h"
#include "huge_pages.h"
#include "step_loop.h"

namespace fastrnn::cpu {
namespace {

constexpr const char* kFwd = "fastrnn::gru_ext_forward";
constexpr const char* kBwd = "fastrnn::gru_ext_backward";
constexpr double kLnEps = 1e-5;  // fastrnn/reference.py LN_EPS

// The workspace columns of a row (ext_args.h gru_ext_ws_width) and the argument checks: ext_args.h.

// The zoneout weights as the kernels read them: rows [N, H] (contiguous) or a constant.
struct Zoneout {
  at::Tensor rows;  // undefined: constant or none
  double k = 0;
  bool on = false;
};
Zoneout zoneout_of(const std::optional<at::Tensor>& k, int64_t N, int64_t H) {
  Zoneout z;
  if (!k.has_value()) return z;
  z.on = true;
  if (k->numel() == 1) {
    z.k = k->item<double>();
  } else {
    z.rows = k->contiguous().view({N, H});
  }
  return z;
}

inline at::Tensor to_acc(const at::Tensor& t) { return t.to(acc_dtype(t.scalar_type())).contiguous(); }

// activate: ext_activate.h.

// ----------------------------------------------------------------------------------------------- forward
std::tuple<at::Tensor, at::Tensor, at::Tensor> gru_ext_forward(
    const at::Tensor& gates_x, const std::optional<at::Tensor>& batch_sizes, const at::Tensor& hx,
    const at::Tensor& w_hh, const std::optional<at::Tensor>& b_hh, const std::optional<at::Tensor>& ln_hh_weight,
    const std::optional<at::Tensor>& ln_hh_bias, const std::optional<at::Tensor>& zoneout_h,
    const std::optional<at::Tensor>& recurrent_mask, bool reverse, bool train) {
  const NoAutocast no_autocast;  // inner ATen calls keep their inputs' dtypes (sequence.h)
  const ExtShape s = check_gru_ext_forward_args(kFwd, gates_x, batch_sizes, hx, w_hh, b_hh, ln_hh_weight, ln_hh_bias,
                                                zoneout_h, recurrent_mask);
  const int64_t H = s.H, G = 3 * H;
  const SeqLayout& L = s.L;
  const bool ln = ln_hh_weight.has_value();

  const auto dtype = gates_x.scalar_type();
  const auto acc_opts = gates_x.options().dtype(acc_dtype(dtype));
  const int64_t W = gru_ext_ws_width(H, ln);
  auto out_sizes = gates_x.sizes().vec();
  out_sizes.back() = H;
  at::Tensor output = at::empty(out_sizes, gates_x.options());
  at::Tensor h_state = hx.contiguous().clone();
  at::Tensor ws = empty_on_huge_pages({train ? L.N : 0, train ? W : 0}, acc_opts);
  if (L.N == 0 || H == 0) {
    FASTRNN_CPU_DISPATCH(dtype, kFwd, [&] {});
    if (train && ws.numel() > 0) ws.zero_();
    return {output, h_state, ws};
  }

  const at::Tensor gx = rows2d(gates_x.contiguous());
  const at::Tensor out = rows2d(output);
  const at::Tensor w_acc = to_acc(w_hh);
  const at::Tensor bh = b_hh.has_value() ? to_acc(*b_hh) : at::Tensor();
  const at::Tensor lnw = ln ? to_acc(*ln_hh_weight) : at::Tensor(), lnb = ln ? to_acc(*ln_hh_bias) : at::Tensor();
  const Zoneout zo = zoneout_of(zoneout_h, L.N, H);
  const at::Tensor mask = recurrent_mask.has_value() ? recurrent_mask->contiguous() : at::Tensor();
  // The GEMM's operand: the state (rounded to the input's dtype) times the mask, in the accumulation dtype.
  at::Tensor hm = at::empty({L.B, H}, acc_opts);
  hm.copy_(h_state);
  if (mask.defined()) hm.mul_(mask);
  const at::Tensor gh = at::empty({L.B, G}, acc_opts);
  const StepGemm gemm_hh(w_acc, /*transpose_w=*/true, L.B, INT64_MAX, L.T);

  FASTRNN_CPU_DISPATCH(dtype, kFwd, [&] {
    using acc = acc_t<scalar_t>;
    const acc* bh_p = ptr_or_null<acc>(bh);
    const acc* lnw_p = ptr_or_null<acc>(lnw);
    const acc* lnb_p = ptr_or_null<acc>(lnb);
    const acc* k_rows = ptr_or_null<acc>(zo.rows);
    const acc k_const = static_cast<acc>(zo.k);
    const acc* m_p = ptr_or_null<acc>(mask);
    const scalar_t* gx_p = gx.data_ptr<scalar_t>();
    scalar_t* out_p = out.data_ptr<scalar_t>();
    scalar_t* h_p = h_state.data_ptr<scalar_t>();
    acc* hm_p = hm.data_ptr<acc>();
    const acc* gh_p = gh.data_ptr<acc>();
    acc* ws_p = train ? ws.data_ptr<acc>() : nullptr;
    const bool has_k = zo.on;
    const acc inv_g = acc(1) / static_cast<acc>(G);
    const ActivationFn act = activation_kernel(active_isa());

    for (int64_t s = 0; s < L.T; ++s) {
      const int64_t t = L.step(s, reverse), bs = L.batch_sizes[t], off = L.offsets[t];
      gemm_hh.run(hm.narrow(0, 0, bs), gh.narrow(0, 0, bs));
      for_rows(bs, G, [&](int64_t b0, int64_t b1) {
        std::vector<acc> buf(4 * H);
        for (int64_t b = b0; b < b1; ++b) {
          const int64_t row = off + b;
          const acc* a = gh_p + b * G;
          const scalar_t* x = gx_p + row * G;
          acc* w = ws_p ? ws_p + row * W : nullptr;
          acc mean = 0, rstd = 1;
          if (ln) {  // two-pass statistics in the accumulation dtype
            acc sum = 0;
            for (int64_t i = 0; i < G; ++i) sum += a[i];
            mean = sum * inv_g;
            acc sq = 0;
            for (int64_t i = 0; i < G; ++i) sq += (a[i] - mean) * (a[i] - mean);
            rstd = acc(1) / std::sqrt(sq * inv_g + static_cast<acc>(kLnEps));
          }
          // The recurrent term of gate column i: LN (saving xhat) then b_hh.
          auto rec = [&](int64_t i) {
            acc v = a[i];
            if (ln) {
              const acc xh = (v - mean) * rstd;
              if (w) w[4 * H + i] = xh;
              v = xh * lnw_p[i] + lnb_p[i];
            }
            if (bh_p) v += bh_p[i];
            return v;
          };
          // The gate pre-activations, then the activations over whole arrays (vectorised for float32).
          acc* pre = buf.data();  // r, z pre-activations (then r, z), then the n-gate's recurrent term
          acc* nn = pre + G;      // n's pre-activation, then n
          for (int64_t i = 0; i < 2 * H; ++i) pre[i] = static_cast<acc>(x[i]) + rec(i);
          for (int64_t j = 0; j < H; ++j) pre[2 * H + j] = rec(2 * H + j);
          activate(act, pre, 2 * H, Activation::kSigmoid);
          for (int64_t j = 0; j < H; ++j) nn[j] = static_cast<acc>(x[2 * H + j]) + pre[j] * pre[2 * H + j];
          activate(act, nn, H, Activation::kTanh);
          const acc* kr = k_rows ? k_rows + row * H : nullptr;
          const acc* mr = m_p ? m_p + b * H : nullptr;
          for (int64_t j = 0; j < H; ++j) {
            const acc z = pre[H + j], n = nn[j];
            const acc hp = static_cast<acc>(h_p[b * H + j]);
            acc hn = (acc(1) - z) * n + z * hp;
            if (has_k) {
              const acc k = kr ? kr[j] : k_const;
              hn = k * hp + (acc(1) - k) * hn;
            }
            const scalar_t hs = static_cast<scalar_t>(hn);
            out_p[row * H + j] = hs;
            h_p[b * H + j] = hs;
            hm_p[b * H + j] = mr ? static_cast<acc>(hs) * mr[j] : static_cast<acc>(hs);
            if (w) {
              w[j] = pre[j];
              w[H + j] = z;
              w[2 * H + j] = n;
              w[3 * H + j] = pre[2 * H + j];
            }
          }
          if (ln && w) w[7 * H] = rstd;
        }
      });
    }
  });
  return {output, h_state, ws};
}

// ---------------------------------------------------------------------------------------------- backward
GruExtBackwardResult gru_ext_backward(
    const at::Tensor& grad_output, const at::Tensor& grad_hy, const std::optional<at::Tensor>& batch_sizes,
    const at::Tensor& hx, const at::Tensor& w_hh, const std::optional<at::Tensor>& ln_hh_weight,
    const std::optional<at::Tensor>& zoneout_h, const std::optional<at::Tensor>& recurrent_mask,
    const at::Tensor& output, const at::Tensor& workspace, bool reverse, bool has_bias) {
  const NoAutocast no_autocast;  // inner ATen calls keep their inputs' dtypes (sequence.h)
  const ExtShape s = check_gru_ext_backward_args(kBwd, grad_output, grad_hy, batch_sizes, hx, w_hh, ln_hh_weight,
                                                 zoneout_h, recurrent_mask, output, workspace);
  const int64_t H = s.H, G = 3 * H;
  const SeqLayout& L = s.L;
  const bool packed = batch_sizes.has_value();
  const bool ln = ln_hh_weight.has_value();
  const int64_t W = gru_ext_ws_width(H, ln);

  const auto dtype = output.scalar_type();
  const auto acc_opts = output.options().dtype(acc_dtype(dtype));
  auto gx_sizes = output.sizes().vec();
  gx_sizes.back() = G;
  at::Tensor grad_gates_x = empty_on_huge_pages(gx_sizes, output.options());
  const at::Tensor dgx = rows2d(grad_gates_x);
  at::Tensor dh_state = at::empty({L.B, H}, acc_opts);
  dh_state.copy_(grad_hy);
  // The gradient of the recurrent pre-activation W_hh (h * m) of every row, and with LN that of its
  // normalised value (the gradient of b_hh and of the LN bias: da_ln = [d r, d z, d n * r]).
  at::Tensor da = empty_on_huge_pages({L.N, G}, acc_opts);
  at::Tensor da_ln = ln ? empty_on_huge_pages({L.N, G}, acc_opts) : da;

  if (L.N > 0 && H > 0) {
    const at::Tensor ws = workspace.contiguous();
    const StepRows go(grad_output, packed);
    const at::Tensor out = rows2d(output.contiguous());
    const at::Tensor h0 = hx.contiguous();
    const at::Tensor w_acc = to_acc(w_hh);
    const at::Tensor lnw = ln ? to_acc(*ln_hh_weight) : at::Tensor();
    const Zoneout zo = zoneout_of(zoneout_h, L.N, H);
    const at::Tensor mask = recurrent_mask.has_value() ? recurrent_mask->contiguous() : at::Tensor();
    const at::Tensor carry = mask.defined() ? at::empty({L.B, H}, acc_opts) : at::Tensor();
    const StepGemm gemm_hh(w_acc, /*transpose_w=*/false, L.B, da.nbytes());

    FASTRNN_CPU_DISPATCH(dtype, kBwd, [&] {
      using acc = acc_t<scalar_t>;
      const acc* lnw_p = ptr_or_null<acc>(lnw);
      const acc* k_rows = ptr_or_null<acc>(zo.rows);
      const acc k_const = static_cast<acc>(zo.k);
      const bool has_k = zo.on;
      const acc* m_p = ptr_or_null<acc>(mask);
      const acc* ws_p = ws.data_ptr<acc>();
      const scalar_t* out_p = out.data_ptr<scalar_t>();
      const scalar_t* h0_p = h0.data_ptr<scalar_t>();
      scalar_t* dgx_p = dgx.data_ptr<scalar_t>();
      acc* dh_p = dh_state.data_ptr<acc>();
      acc* da_p = da.data_ptr<acc>();
      acc* daln_p = da_ln.data_ptr<acc>();
      acc* carry_p = ptr_or_null<acc>(carry);
      const acc inv_g = acc(1) / static_cast<acc>(G);

      for (int64_t s = 0; s < L.T; ++s) {
        const int64_t t = L.step(s, !reverse), bs = L.batch_sizes[t], off = L.offsets[t];
        const int64_t prev = L.prev_step(t, reverse), with_prev = L.rows_with_prev(t, reverse);
        const scalar_t* go_p = go.step<scalar_t>(L, t);
        const scalar_t* prev_p = with_prev > 0 ? out_p + L.offsets[prev] * H : nullptr;
        for_rows(bs, G, [&](int64_t b0, int64_t b1) {
          for (int64_t b = b0; b < b1; ++b) {
            const int64_t row = off + b;
            const acc* w = ws_p + row * W;
            const scalar_t* hp_row = b < with_prev ? prev_p + b * H : h0_p + b * H;
            const scalar_t* g_row = go_p + b * go.ld;
            const acc* kr = k_rows ? k_rows + row * H : nullptr;
            acc* dh = dh_p + b * H;
            scalar_t* dg = dgx_p + row * G;
            acc* dl = daln_p + row * G;
            for (int64_t j = 0; j < H; ++j) {
              const acc r = w[j], z = w[H + j], n = w[2 * H + j], an = w[3 * H + j];
              const acc hp = static_cast<acc>(hp_row[j]);
              const acc d = static_cast<acc>(g_row[j]) + dh[j];
              acc dprev = 0, dht = d;
              if (has_k) {
                const acc k = kr ? kr[j] : k_const;
                dprev = k * d;
                dht = (acc(1) - k) * d;
              }
              dprev += dht * z;
              const acc dpn = dht * (acc(1) - z) * (acc(1) - n * n);
              const acc dpz = dht * (hp - n) * z * (acc(1) - z);
              const acc dpr = dpn * an * r * (acc(1) - r);
              dg[j] = static_cast<scalar_t>(dpr);
              dg[H + j] = static_cast<scalar_t>(dpz);
              dg[2 * H + j] = static_cast<scalar_t>(dpn);
              dl[j] = dpr;
              dl[H + j] = dpz;
              dl[2 * H + j] = dpn * r;
              dh[j] = dprev;
            }
            if (ln) {  // dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)), dxhat = da_ln * w
              const acc* xh = w + 4 * H;
              const acc rstd = w[7 * H];
              acc s1 = 0, s2 = 0;
              for (int64_t i = 0; i < G; ++i) {
                const acc dx = dl[i] * lnw_p[i];
                s1 += dx;
                s2 += dx * xh[i];
              }
              s1 *= inv_g;
              s2 *= inv_g;
              acc* dr = da_p + row * G;
              for (int64_t i = 0; i < G; ++i) dr[i] = rstd * (dl[i] * lnw_p[i] - s1 - xh[i] * s2);
            }
          }
        });
        // The carry into the previous state: (da @ W_hh) * m on top of the direct terms.
        if (carry_p == nullptr) {
          gemm_hh.run(da.narrow(0, off, bs), dh_state.narrow(0, 0, bs), /*accumulate=*/true);
        } else {
          gemm_hh.run(da.narrow(0, off, bs), carry.narrow(0, 0, bs));
          for_rows(bs, H, [&](int64_t b0, int64_t b1) {
            for (int64_t i = b0 * H; i < b1 * H; ++i) dh_p[i] += m_p[i] * carry_p[i];
          });
        }
      }
    });
  } else {
    FASTRNN_CPU_DISPATCH(dtype, kBwd, [&] {});
    da.zero_();
    da_ln.zero_();
    grad_gates_x.zero_();
  }

  // Whole-sequence: the weight gradient against the masked states the rows started from, the reductions and the
  // returned tuple: ext_grads.h.
  return gru_ext_backward_result(grad_gates_x, dh_state, da, da_ln, output, hx, workspace, recurrent_mask, L, H,
                                 packed, reverse, has_bias, ln);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrnn, CPU, m) {
  m.impl("gru_ext_forward", &gru_ext_forward);
  m.impl("gru_ext_backward", &gru_ext_backward);
}

}  // namespace fastrnn::cpu
