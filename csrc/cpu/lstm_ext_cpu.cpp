// The LSTM with fastrnn's options (LayerNorm of W_hh h and of c, zoneout, recurrent dropout) on the CPU:
// fastrnn::lstm_ext_forward / lstm_ext_backward, one layer and direction of a whole (packed) sequence. The
// schemas, argument meanings and the workspace layout are stated in csrc/fastrnn.cpp; the equations are
// fastrnn/reference.py's lstm_ext_cell (the op-layout oracle: fastrnn/composite.py lstm_ext_forward).
//
// Forward, per step (the per-step path of lstm_cpu.cpp): one GEMM h_{t-1} * m @ W_hh^T into a [B, 4H] buffer,
// then one fused pass over the step's rows (parallel over rows): the LayerNorm statistics of the row (two-pass
// mean and variance in the accumulation dtype), the gates, the cell update, LN_c, zoneout of c and, without a
// projection, of h; the output, the states and the workspace row are written there. With a projection the
// pass writes r = o * tanh(u), a second GEMM r @ W_hr^T writes the output rows and a small pass applies the
// zoneout of h over the P units. The GEMMs run in the accumulation dtype (for bfloat16 on float32 copies of
// the weights, made once per call), so W_hh h reaches LN_hh and r @ W_hr^T reaches zoneout unrounded; the h
// state itself stays in the input's dtype (as in lstm_cpu.cpp), the c state in the accumulation dtype. The gate
// activations of float32 rows are the step kernels' vectorised ones (pointwise.h).
// Backward, per step in reverse order: the pointwise backward (zoneout split, LN_c and LN_hh backward from the
// saved normalised values and 1/sigma), then the GEMM da @ W_hh for the gradient reaching h_{t-1} through
// W_hh (times the mask), added to the direct zoneout term. The weight and LayerNorm gradients are
// whole-sequence GEMMs and column sums afterwards. The backward computes in the accumulation dtype throughout
// (its GEMMs too, on weights converted once per call for bfloat16).
#include <torch/library.h>

#include <cmath>
#include <optional>
#include <vector>

#include "../ext_args.h"
#include "../ext_grads.h"
#include "ext_activate.h"
#include "huge_pages.h"
#include "step_loop.h"

namespace fastrnn::cpu {
namespace {

constexpr const char* kFwd = "fastrnn::lstm_ext_forward";
constexpr const char* kBwd = "fastrnn::lstm_ext_backward";
constexpr double kLnEps = 1e-5;

// The workspace's columns: ext_args.h LstmExtWorkspace.

// A zoneout weight as [N, D] rows of the accumulation dtype read through strides: a full tensor (its rows),
// or the one-element eval constant expanded with zero strides. Absent: p == nullptr.
template <typename acc>
struct Rows {
  const acc* p = nullptr;
  int64_t ld = 0, cs = 0;
  acc at(int64_t row, int64_t j) const { return p[row * ld + j * cs]; }
};
template <typename acc>
Rows<acc> rows_of(const at::Tensor& t) {  // t: [N, D] (possibly expanded) or undefined
  Rows<acc> r;
  if (t.defined() && t.numel() > 0) {
    r.p = t.const_data_ptr<acc>();
    r.ld = t.stride(0);
    r.cs = t.stride(1);
  }
  return r;
}

// ---------------------------------------------------------------------------------------------- inputs
// The zoneout weight `z` of the rows of `seq` with D units as [N, D] (expanded for the constant), in the
// accumulation dtype; undefined when absent.
at::Tensor zoneout_rows(const std::optional<at::Tensor>& z, int64_t N, int64_t D) {
  if (!z.has_value()) return at::Tensor();
  if (z->numel() == 1 && !(N == 1 && D == 1)) return z->reshape({1, 1}).expand({N, D});
  return z->contiguous().reshape({N, D});
}

at::Tensor acc_contiguous(const std::optional<at::Tensor>& t, at::ScalarType acc) {
  return t.has_value() ? t->to(acc).contiguous() : at::Tensor();
}

// activate: ext_activate.h.

// Two-pass mean and 1/sigma of x[0, n).
template <typename acc>
inline std::pair<acc, acc> moments(const acc* x, int64_t n) {
  acc s = 0;
  for (int64_t j = 0; j < n; ++j) s += x[j];
  const acc mean = s / acc(n);
  acc v = 0;
  for (int64_t j = 0; j < n; ++j) v += (x[j] - mean) * (x[j] - mean);
  return {mean, acc(1) / std::sqrt(v / acc(n) + acc(kLnEps))};
}

// The LayerNorm backward of one row: dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)), with
// dxhat = dy * w. dx may alias dy.
template <typename acc>
inline void ln_backward(const acc* dy, const acc* w, const acc* xhat, acc rstd, acc* dx, int64_t n) {
  acc s1 = 0, s2 = 0;
  for (int64_t j = 0; j < n; ++j) {
    const acc d = dy[j] * w[j];
    s1 += d;
    s2 += d * xhat[j];
  }
  s1 /= acc(n);
  s2 /= acc(n);
  for (int64_t j = 0; j < n; ++j) dx[j] = rstd * (dy[j] * w[j] - s1 - xhat[j] * s2);
}

// ---------------------------------------------------------------------------------------------- forward
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_ext_forward(
    const at::Tensor& gates_x, const std::optional<at::Tensor>& batch_sizes, const at::Tensor& hx,
    const at::Tensor& cx, const at::Tensor& w_hh_, const std::optional<at::Tensor>& w_hr_,
    const std::optional<at::Tensor>& ln_hh_weight, const std::optional<at::Tensor>& ln_hh_bias,
    const std::optional<at::Tensor>& ln_c_weight, const std::optional<at::Tensor>& ln_c_bias,
    const std::optional<at::Tensor>& zoneout_h, const std::optional<at::Tensor>& zoneout_c,
    const std::optional<at::Tensor>& recurrent_mask, bool reverse, bool train) {
  const NoAutocast no_autocast;  // inner ATen calls keep their inputs' dtypes (sequence.h)
  const ExtShape s = check_lstm_ext_forward_args(kFwd, gates_x, batch_sizes, hx, cx, w_hh_, w_hr_, ln_hh_weight,
                                                 ln_hh_bias, ln_c_weight, ln_c_bias, zoneout_h, zoneout_c,
                                                 recurrent_mask);
  const int64_t H = s.H, P = s.P;
  const SeqLayout& L = s.L;
  const bool proj = w_hr_.has_value(), has_ln_hh = ln_hh_weight.has_value(), has_ln_c = ln_c_weight.has_value();
  const LstmExtWorkspace wl(H, has_ln_hh, has_ln_c);
  const auto dt = gates_x.scalar_type();
  const auto acc_type = acc_dtype(dt);
  const auto acc_opts = gates_x.options().dtype(acc_type);
  // The GEMMs run in the accumulation dtype (weights converted once per call for bfloat16): W_hh h reaches
  // LN_hh and the projection reaches zoneout unrounded; only the h state itself is kept in the input's dtype.
  const at::Tensor w_hh = w_hh_.to(acc_type).contiguous();
  const at::Tensor w_hr = proj ? w_hr_->to(acc_type).contiguous() : at::Tensor();
  const at::Tensor lnh_w = acc_contiguous(ln_hh_weight, acc_type), lnh_b = acc_contiguous(ln_hh_bias, acc_type);
  const at::Tensor lnc_w = acc_contiguous(ln_c_weight, acc_type), lnc_b = acc_contiguous(ln_c_bias, acc_type);
  const at::Tensor kh_t = zoneout_rows(zoneout_h, L.N, P), kc_t = zoneout_rows(zoneout_c, L.N, H);
  const at::Tensor mask = recurrent_mask.has_value() ? recurrent_mask->contiguous() : at::Tensor();

  at::Tensor output = at::empty(lead_sizes(gates_x, P), gates_x.options());
  const at::Tensor out = rows2d(output);
  const at::Tensor gx = rows2d(gates_x.contiguous());
  at::Tensor h_state = hx.contiguous().clone();
  at::Tensor c_state = cx.to(acc_opts, /*non_blocking=*/false, /*copy=*/true).contiguous();
  at::Tensor ws = empty_on_huge_pages({train ? L.N : 0, train ? wl.width : 0}, acc_opts);
  const at::Tensor gh = at::empty({L.B, 4 * H}, acc_opts);
  // h_{t-1} * m in the accumulation dtype, the GEMM's operand (h_state itself where neither applies).
  const bool use_hm = mask.defined() || acc_type != dt;
  const at::Tensor hm = use_hm ? at::empty({L.B, P}, acc_opts) : at::Tensor();
  const at::Tensor r = proj ? at::empty({L.B, H}, acc_opts) : at::Tensor();      // o * tanh(u)
  const at::Tensor hp = proj ? at::empty({L.B, P}, acc_opts) : at::Tensor();     // r @ W_hr^T

  const StepGemm gemm_hh(w_hh, /*transpose_w=*/true, L.B, INT64_MAX, L.T);
  // (none without a projection: a stand-in StepGemm would copy W_hh^T for its small-GEMM loop on every call)
  std::optional<StepGemm> gemm_hr;
  if (proj) gemm_hr.emplace(w_hr, /*transpose_w=*/true, L.B, INT64_MAX, L.T);
  FASTRNN_CPU_DISPATCH(dt, kFwd, [&] {
    using acc = acc_t<scalar_t>;
    const ActivationFn act = activation_kernel(active_isa());
    const Rows<acc> kh = rows_of<acc>(kh_t), kc = rows_of<acc>(kc_t);
    const acc* m = mask.defined() ? mask.const_data_ptr<acc>() : nullptr;
    const acc* lhw = ptr_or_null<acc>(lnh_w);
    const acc* lhb = ptr_or_null<acc>(lnh_b);
    const acc* lcw = ptr_or_null<acc>(lnc_w);
    const acc* lcb = ptr_or_null<acc>(lnc_b);
    const scalar_t* gx_p = gx.const_data_ptr<scalar_t>();
    const acc* gh_p = gh.const_data_ptr<acc>();
    scalar_t* out_p = out.data_ptr<scalar_t>();
    scalar_t* h_p = h_state.data_ptr<scalar_t>();
    acc* c_p = c_state.data_ptr<acc>();
    acc* ws_p = train ? ws.data_ptr<acc>() : nullptr;
    acc* r_p = proj ? r.data_ptr<acc>() : nullptr;
    const acc* hp_p = proj ? hp.const_data_ptr<acc>() : nullptr;
    acc* hm_p = use_hm ? hm.data_ptr<acc>() : nullptr;
    const int64_t G = 4 * H, W = wl.width;

    for (int64_t k = 0; k < L.T; ++k) {
      const int64_t t = L.step(k, reverse), bs = L.batch_sizes[t], off = L.offsets[t];
      if (use_hm) {
        for_rows(bs, P, [&](int64_t b0, int64_t b1) {
          for (int64_t i = b0 * P; i < b1 * P; ++i)
            hm_p[i] = m != nullptr ? static_cast<acc>(h_p[i]) * m[i] : static_cast<acc>(h_p[i]);
        });
        gemm_hh.run(hm.narrow(0, 0, bs), gh.narrow(0, 0, bs));
      } else {
        gemm_hh.run(h_state.narrow(0, 0, bs), gh.narrow(0, 0, bs));
      }
      for_rows(bs, G, [&](int64_t b0, int64_t b1) {
        std::vector<acc> scratch(train ? 0 : W);
        for (int64_t b = b0; b < b1; ++b) {
          const int64_t row = off + b;
          acc* w = train ? ws_p + row * W : scratch.data();
          acc* gates = w;
          acc* cc = w + 4 * H;
          acc* tu = w + 5 * H;
          const acc* a = gh_p + b * G;
          const scalar_t* x = gx_p + row * G;
          if (lhw != nullptr) {  // LN_hh(a) * w + b, over the 4H gates
            acc* xa = w + wl.ln_hh;
            for (int64_t j = 0; j < G; ++j) xa[j] = a[j];
            const auto [mean, rstd] = moments(xa, G);
            for (int64_t j = 0; j < G; ++j) {
              xa[j] = (xa[j] - mean) * rstd;
              gates[j] = static_cast<acc>(x[j]) + xa[j] * lhw[j] + lhb[j];
            }
            xa[G] = rstd;
          } else {
            for (int64_t j = 0; j < G; ++j) gates[j] = static_cast<acc>(x[j]) + a[j];
          }
          activate(act, gates, 2 * H, Activation::kSigmoid);  // i, f
          activate(act, gates + 2 * H, H, Activation::kTanh);  // g
          activate(act, gates + 3 * H, H, Activation::kSigmoid);  // o
          acc* cs = c_p + b * H;
          for (int64_t j = 0; j < H; ++j) cc[j] = gates[H + j] * cs[j] + gates[j] * gates[2 * H + j];  // c~

          if (lcw != nullptr) {  // u = LN_c(c~)
            acc* xc = w + wl.ln_c;
            const auto [mean, rstd] = moments(cc, H);
            for (int64_t j = 0; j < H; ++j) {
              xc[j] = (cc[j] - mean) * rstd;
              tu[j] = xc[j] * lcw[j] + lcb[j];
            }
            xc[H] = rstd;
          } else {
            for (int64_t j = 0; j < H; ++j) tu[j] = cc[j];
          }
          activate(act, tu, H, Activation::kTanh);
          for (int64_t j = 0; j < H; ++j) {
            const acc c_new = kc.p != nullptr ? kc.at(row, j) * cs[j] + (acc(1) - kc.at(row, j)) * cc[j] : cc[j];
            cc[j] = c_new;
            cs[j] = c_new;
          }
          const acc* o = gates + 3 * H;
          if (proj) {
            for (int64_t j = 0; j < H; ++j) r_p[b * H + j] = o[j] * tu[j];
          } else {
            scalar_t* hs = h_p + b * P;
            scalar_t* ho = out_p + row * P;
            for (int64_t j = 0; j < H; ++j) {
              acc h = o[j] * tu[j];
              if (kh.p != nullptr) h = kh.at(row, j) * static_cast<acc>(hs[j]) + (acc(1) - kh.at(row, j)) * h;
              hs[j] = static_cast<scalar_t>(h);
              ho[j] = hs[j];
            }
          }
        }
      });
      if (proj) {
        gemm_hr->run(r.narrow(0, 0, bs), hp.narrow(0, 0, bs));
        for_rows(bs, P, [&](int64_t b0, int64_t b1) {
          for (int64_t b = b0; b < b1; ++b) {
            const int64_t row = off + b;
            scalar_t* hs = h_p + b * P;
            scalar_t* ho = out_p + row * P;
            const acc* h_new = hp_p + b * P;
            for (int64_t j = 0; j < P; ++j) {
              const acc k_h = kh.p != nullptr ? kh.at(row, j) : acc(0);
              const acc h = kh.p != nullptr ? k_h * static_cast<acc>(hs[j]) + (acc(1) - k_h) * h_new[j] : h_new[j];
              hs[j] = static_cast<scalar_t>(h);
              ho[j] = hs[j];
            }
          }
        });
      }
    }
  });
  return {output, h_state, c_state.to(dt), ws};
}

// --------------------------------------------------------------------------------------------- backward
LstmExtBackwardResult lstm_ext_backward(
    const at::Tensor& grad_output, const at::Tensor& grad_hy, const at::Tensor& grad_cy,
    const std::optional<at::Tensor>& batch_sizes, const at::Tensor& hx, const at::Tensor& cx, const at::Tensor& w_hh_,
    const std::optional<at::Tensor>& w_hr_, const std::optional<at::Tensor>& ln_hh_weight,
    const std::optional<at::Tensor>& ln_c_weight, const std::optional<at::Tensor>& zoneout_h,
    const std::optional<at::Tensor>& zoneout_c, const std::optional<at::Tensor>& recurrent_mask,
    const at::Tensor& output, const at::Tensor& workspace, bool reverse) {
  const NoAutocast no_autocast;  // inner ATen calls keep their inputs' dtypes (sequence.h)
  const ExtShape s = check_lstm_ext_backward_args(kBwd, grad_output, grad_hy, grad_cy, batch_sizes, hx, cx, w_hh_,
                                                  w_hr_, ln_hh_weight, ln_c_weight, zoneout_h, zoneout_c,
                                                  recurrent_mask, output, workspace);
  const int64_t H = s.H, P = s.P;
  const SeqLayout& L = s.L;
  const bool proj = w_hr_.has_value(), has_ln_hh = ln_hh_weight.has_value(), has_ln_c = ln_c_weight.has_value();
  const LstmExtWorkspace wl(H, has_ln_hh, has_ln_c);
  const auto dt = output.scalar_type();
  const auto acc_type = acc_dtype(dt);
  const auto acc_opts = output.options().dtype(acc_type);

  const at::Tensor ws = workspace.contiguous();
  const at::Tensor w_hh = w_hh_.to(acc_type).contiguous();
  const at::Tensor w_hr = proj ? w_hr_->to(acc_type).contiguous() : at::Tensor();
  const at::Tensor lnh_w = acc_contiguous(ln_hh_weight, acc_type), lnc_w = acc_contiguous(ln_c_weight, acc_type);
  const at::Tensor kh_t = zoneout_rows(zoneout_h, L.N, P), kc_t = zoneout_rows(zoneout_c, L.N, H);
  const at::Tensor mask = recurrent_mask.has_value() ? recurrent_mask->contiguous() : at::Tensor();
  const at::Tensor cx_acc = cx.to(acc_type).contiguous();
  const StepRows go(grad_output, batch_sizes.has_value());  // read in place

  at::Tensor dh_state = grad_hy.to(acc_opts, false, /*copy=*/true).contiguous();
  at::Tensor dc_state = grad_cy.to(acc_opts, false, /*copy=*/true).contiguous();
  const int64_t G = 4 * H, W = wl.width;
  at::Tensor dgates = empty_on_huge_pages({L.N, G}, acc_opts);            // d pre (= grad_gates_x)
  at::Tensor da = has_ln_hh ? empty_on_huge_pages({L.N, G}, acc_opts) : dgates;  // d (W_hh h m)
  at::Tensor du = has_ln_c ? at::empty({L.N, H}, acc_opts) : at::Tensor();   // d u (for LN_c's gradients)
  at::Tensor dht = proj ? at::empty({L.N, P}, acc_opts) : at::Tensor();     // d h~ (for dW_hr)
  at::Tensor dr = proj ? at::empty({L.B, H}, acc_opts) : at::Tensor();
  at::Tensor carry = mask.defined() ? at::empty({L.B, P}, acc_opts) : at::Tensor();

  {  // scoped: the packed weights are freed before the whole-sequence GEMMs
    const StepGemm gemm_hh(w_hh, /*transpose_w=*/false, L.B, dgates.nbytes());
    std::optional<StepGemm> gemm_hr;
    if (proj) gemm_hr.emplace(w_hr, /*transpose_w=*/false, L.B, dgates.nbytes());
    FASTRNN_CPU_DISPATCH(dt, kBwd, [&] {
      using acc = acc_t<scalar_t>;
      const Rows<acc> kh = rows_of<acc>(kh_t), kc = rows_of<acc>(kc_t);
      const acc* m = mask.defined() ? mask.const_data_ptr<acc>() : nullptr;
      const acc* lhw = ptr_or_null<acc>(lnh_w);
      const acc* lcw = ptr_or_null<acc>(lnc_w);
      const acc* ws_p = ws.const_data_ptr<acc>();
      const acc* cx_p = cx_acc.const_data_ptr<acc>();
      acc* dh_p = dh_state.data_ptr<acc>();
      acc* dc_p = dc_state.data_ptr<acc>();
      acc* dg_p = dgates.data_ptr<acc>();
      acc* da_p = da.data_ptr<acc>();
      acc* du_p = has_ln_c ? du.data_ptr<acc>() : nullptr;
      acc* dht_p = proj ? dht.data_ptr<acc>() : nullptr;
      acc* dr_p = proj ? dr.data_ptr<acc>() : nullptr;
      acc* carry_p = m != nullptr ? carry.data_ptr<acc>() : nullptr;

      for (int64_t k = 0; k < L.T; ++k) {
        const int64_t t = L.step(k, !reverse), bs = L.batch_sizes[t], off = L.offsets[t];
        const int64_t p = L.prev_step(t, reverse), with_prev = L.rows_with_prev(t, reverse);
        const scalar_t* go_t = go.step<scalar_t>(L, t);
        // dh = the gradient reaching h_t; dh_state keeps k_h * dh (the direct path to h_{t-1}), h~ gets the rest.
        auto split_dh = [&](int64_t b, int64_t j, acc* dst) {
          const acc d = dh_p[b * P + j] + static_cast<acc>(go_t[b * go.ld + j]);
          const acc kk = kh.p != nullptr ? kh.at(off + b, j) : acc(0);
          dh_p[b * P + j] = kk * d;
          dst[j] = (acc(1) - kk) * d;
        };
        if (proj) {
          for_rows(bs, P, [&](int64_t b0, int64_t b1) {
            for (int64_t b = b0; b < b1; ++b)
              for (int64_t j = 0; j < P; ++j) split_dh(b, j, dht_p + (off + b) * P);
          });
          gemm_hr->run(dht.narrow(0, off, bs), dr.narrow(0, 0, bs));
        }
        for_rows(bs, G, [&](int64_t b0, int64_t b1) {
          std::vector<acc> scratch(H);
          for (int64_t b = b0; b < b1; ++b) {
            const int64_t row = off + b;
            const acc* w = ws_p + row * W;
            const acc *gi = w, *gf = w + H, *gg = w + 2 * H, *go_ = w + 3 * H, *tu = w + 5 * H;
            const acc* c_prev = b < with_prev ? ws_p + (L.offsets[p] + b) * W + 4 * H : cx_p + b * H;
            acc* dg = dg_p + row * G;
            const acc* drow;
            if (proj) {
              drow = dr_p + b * H;
            } else {  // dr is d h~ here; dg's i-block holds it until overwritten below
              for (int64_t j = 0; j < H; ++j) split_dh(b, j, dg);
              drow = dg;
            }
            acc* dU = has_ln_c ? du_p + row * H : scratch.data();  // d u
            for (int64_t j = 0; j < H; ++j) {
              const acc d = drow[j], o = go_[j], th = tu[j];
              dU[j] = d * o * (acc(1) - th * th);
              dg[3 * H + j] = d * th * o * (acc(1) - o);
            }
            // dcu: the gradient reaching c~ through u (dU itself without LN_c; kept for LN_c's gradients).
            const acc* dcu = dU;
            if (lcw != nullptr) {
              ln_backward(dU, lcw, w + wl.ln_c, w[wl.ln_c + H], scratch.data(), H);
              dcu = scratch.data();
            }
            acc* dc = dc_p + b * H;
            for (int64_t j = 0; j < H; ++j) {
              const acc kk = kc.p != nullptr ? kc.at(row, j) : acc(0);
              const acc dct = (acc(1) - kk) * dc[j] + dcu[j];  // d c~
              const acc i = gi[j], f = gf[j], g = gg[j];
              dc[j] = dct * f + kk * dc[j];
              dg[j] = dct * g * i * (acc(1) - i);
              dg[H + j] = dct * c_prev[j] * f * (acc(1) - f);
              dg[2 * H + j] = dct * i * (acc(1) - g * g);
            }
            if (lhw != nullptr) ln_backward(dg, lhw, w + wl.ln_hh, w[wl.ln_hh + G], da_p + row * G, G);
          }
        });
        // The gradient reaching h_{t-1} through W_hh: (da @ W_hh) * m, added to the direct zoneout term.
        if (m != nullptr) {
          gemm_hh.run(da.narrow(0, off, bs), carry.narrow(0, 0, bs));
          for_rows(bs, P, [&](int64_t b0, int64_t b1) {
            for (int64_t i = b0 * P; i < b1 * P; ++i) dh_p[i] += carry_p[i] * m[i];
          });
        } else {
          gemm_hh.run(da.narrow(0, off, bs), dh_state.narrow(0, 0, bs), /*accumulate=*/true);
        }
      }
    });
  }

  // The whole-sequence weight and LayerNorm gradients and the returned tuple: ext_grads.h.
  return lstm_ext_backward_result(dgates.to(dt).view(lead_sizes(output, G)), dh_state, dc_state, da, dgates, du,
                                  dht, output, hx, ws, recurrent_mask, L, wl, H, P, reverse);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrnn, CPU, m) {
  m.impl("lstm_ext_forward", &lstm_ext_forward);
  m.impl("lstm_ext_backward", &lstm_ext_backward);
}

}  // namespace fastrnn::cpu
