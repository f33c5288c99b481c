// Operator schemas of the fastrnn library and the Python module stub that loads them.
//
// One forward op per cell type runs a whole sequence of one layer in one direction; its backward is an op
// of its own so that autograd (fastrnn/ops.py) and torch.compile see both through the dispatcher. The
// *_bidir_* ops run both directions of a layer in one call (two one-direction calls, at once on the CPU).
// Implementations are registered per dispatch key in cpu/ and cuda/.
//
// Sequence layout, shared by every op:
//   batch_sizes None:  input [T, B, I], output [T, B, D] (time-major, contiguous).
//   batch_sizes given: input [N, I] packed as PackedSequence.data, batch_sizes an int64 CPU tensor [T],
//                      non-increasing, summing to N; output [N, D] in the same packing.
//   hx/cx hold the state of every sequence: [B, *] with B = batch_sizes[0] (or input.size(1)).
//   reverse=True runs the sequence from its last step to its first (the backward half of a
//   bidirectional layer): sequence b starts at its own last step, len_b - 1, from hx[b].
//   train=True makes the forward write the activations its backward needs into `workspace`;
//   train=False (inference) returns an empty workspace and stores nothing per step.
#include <torch/library.h>

#ifdef TORCH_EXTENSION_NAME
// Built as the Python extension fastrnn._C (setup.py): `import fastrnn._C` loads this shared library, which
// runs the TORCH_LIBRARY registrations below. The CMake build (a plain C++ library, no Python) omits it.
#include <Python.h>
namespace fastrnn {
void add_cell_step(PyObject* module);  // cell_autograd.cpp
}
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr, nullptr, nullptr, nullptr, nullptr};
  PyObject* module = PyModule_Create(&module_def);
  if (module == nullptr) return nullptr;
  try {
    fastrnn::add_cell_step(module);
  } catch (const std::exception& e) {
    Py_DECREF(module);
    PyErr_SetString(PyExc_ImportError, e.what());
    return nullptr;
  }
  return module;
}
#endif

TORCH_LIBRARY(fastrnn, m) {
  // LSTM, optionally with projection (w_hr [P, H]; the recurrent state h then has size P).
  // workspace (train): [N, 5H] in the accumulation dtype: gates i, f, g, o after activation, then c.
  m.def(
      "lstm_forward(Tensor input, Tensor? batch_sizes, Tensor hx, Tensor cx, Tensor w_ih, Tensor w_hh, "
      "Tensor? b_ih, Tensor? b_hh, Tensor? w_hr, bool reverse, bool train) "
      "-> (Tensor output, Tensor hy, Tensor cy, Tensor workspace)");
  m.def(
      "lstm_backward(Tensor grad_output, Tensor grad_hy, Tensor grad_cy, Tensor input, Tensor? batch_sizes, "
      "Tensor hx, Tensor cx, Tensor w_ih, Tensor w_hh, Tensor? w_hr, Tensor output, Tensor workspace, "
      "bool reverse, bool has_bias) "
      "-> (Tensor grad_input, Tensor grad_hx, Tensor grad_cx, Tensor grad_w_ih, Tensor grad_w_hh, "
      "Tensor grad_b_ih, Tensor grad_b_hh, Tensor grad_w_hr)");

  // GRU. workspace (train): [N, 4H] in the accumulation dtype: r, z, n after activation, then W_hn h + b_hn.
  m.def(
      "gru_forward(Tensor input, Tensor? batch_sizes, Tensor hx, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
      "Tensor? b_hh, bool reverse, bool train) -> (Tensor output, Tensor hy, Tensor workspace)");
  m.def(
      "gru_backward(Tensor grad_output, Tensor grad_hy, Tensor input, Tensor? batch_sizes, Tensor hx, "
      "Tensor w_ih, Tensor w_hh, Tensor output, Tensor workspace, bool reverse, bool has_bias) "
      "-> (Tensor grad_input, Tensor grad_hx, Tensor grad_w_ih, Tensor grad_w_hh, Tensor grad_b_ih, "
      "Tensor grad_b_hh)");

  // Elman RNN with tanh or relu. Its backward needs only the outputs, so there is no workspace.
  m.def(
      "rnn_forward(Tensor input, Tensor? batch_sizes, Tensor hx, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
      "Tensor? b_hh, bool relu, bool reverse) -> (Tensor output, Tensor hy)");
  m.def(
      "rnn_backward(Tensor grad_output, Tensor grad_hy, Tensor input, Tensor? batch_sizes, Tensor hx, "
      "Tensor w_ih, Tensor w_hh, Tensor output, bool relu, bool reverse, bool has_bias) "
      "-> (Tensor grad_input, Tensor grad_hx, Tensor grad_w_ih, Tensor grad_w_hh, Tensor grad_b_ih, "
      "Tensor grad_b_hh)");

  // Both directions of a bidirectional layer in one call: exactly the two one-direction ops above (forward
  // reverse=false with the first set of arguments, reverse=true with the `_r` set), in one call so that the
  // CPU can run them at once, a thread each (cpu/bidir_cpu.cpp), and CUDA their recurrences in one persistent
  // launch (cuda/persistent.h FASTRNN_CUDA_BIDIR). Results: the forward direction's, then the
  // reverse direction's, each as its one-direction op returns them, except that the backward returns one
  // grad_input, the input's whole gradient (the sum of the two directions' parts), first.
  m.def(
      "lstm_bidir_forward(Tensor input, Tensor? batch_sizes, Tensor hx, Tensor cx, Tensor w_ih, Tensor w_hh, "
      "Tensor? b_ih, Tensor? b_hh, Tensor? w_hr, Tensor hx_r, Tensor cx_r, Tensor w_ih_r, Tensor w_hh_r, "
      "Tensor? b_ih_r, Tensor? b_hh_r, Tensor? w_hr_r, bool train) "
      "-> (Tensor output, Tensor hy, Tensor cy, Tensor workspace, Tensor output_r, Tensor hy_r, Tensor cy_r, "
      "Tensor workspace_r)");
  m.def(
      "lstm_bidir_backward(Tensor grad_output, Tensor grad_hy, Tensor grad_cy, Tensor grad_output_r, "
      "Tensor grad_hy_r, Tensor grad_cy_r, Tensor input, Tensor? batch_sizes, Tensor hx, Tensor cx, Tensor w_ih, "
      "Tensor w_hh, Tensor? w_hr, Tensor output, Tensor workspace, Tensor hx_r, Tensor cx_r, Tensor w_ih_r, "
      "Tensor w_hh_r, Tensor? w_hr_r, Tensor output_r, Tensor workspace_r, bool has_bias) "
      "-> (Tensor grad_input, Tensor grad_hx, Tensor grad_cx, Tensor grad_w_ih, Tensor grad_w_hh, "
      "Tensor grad_b_ih, Tensor grad_b_hh, Tensor grad_w_hr, Tensor grad_hx_r, "
      "Tensor grad_cx_r, Tensor grad_w_ih_r, Tensor grad_w_hh_r, Tensor grad_b_ih_r, Tensor grad_b_hh_r, "
      "Tensor grad_w_hr_r)");
  m.def(
      "gru_bidir_forward(Tensor input, Tensor? batch_sizes, Tensor hx, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
      "Tensor? b_hh, Tensor hx_r, Tensor w_ih_r, Tensor w_hh_r, Tensor? b_ih_r, Tensor? b_hh_r, bool train) "
      "-> (Tensor output, Tensor hy, Tensor workspace, Tensor output_r, Tensor hy_r, Tensor workspace_r)");
  m.def(
      "gru_bidir_backward(Tensor grad_output, Tensor grad_hy, Tensor grad_output_r, Tensor grad_hy_r, "
      "Tensor input, Tensor? batch_sizes, Tensor hx, Tensor w_ih, Tensor w_hh, Tensor output, Tensor workspace, "
      "Tensor hx_r, Tensor w_ih_r, Tensor w_hh_r, Tensor output_r, Tensor workspace_r, bool has_bias) "
      "-> (Tensor grad_input, Tensor grad_hx, Tensor grad_w_ih, Tensor grad_w_hh, Tensor grad_b_ih, "
      "Tensor grad_b_hh, Tensor grad_hx_r, Tensor grad_w_ih_r, Tensor grad_w_hh_r, "
      "Tensor grad_b_ih_r, Tensor grad_b_hh_r)");
  m.def(
      "rnn_bidir_forward(Tensor input, Tensor? batch_sizes, Tensor hx, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
      "Tensor? b_hh, Tensor hx_r, Tensor w_ih_r, Tensor w_hh_r, Tensor? b_ih_r, Tensor? b_hh_r, bool relu) "
      "-> (Tensor output, Tensor hy, Tensor output_r, Tensor hy_r)");
  m.def(
      "rnn_bidir_backward(Tensor grad_output, Tensor grad_hy, Tensor grad_output_r, Tensor grad_hy_r, "
      "Tensor input, Tensor? batch_sizes, Tensor hx, Tensor w_ih, Tensor w_hh, Tensor output, Tensor hx_r, "
      "Tensor w_ih_r, Tensor w_hh_r, Tensor output_r, bool relu, bool has_bias) "
      "-> (Tensor grad_input, Tensor grad_hx, Tensor grad_w_ih, Tensor grad_w_hh, Tensor grad_b_ih, "
      "Tensor grad_b_hh, Tensor grad_hx_r, Tensor grad_w_ih_r, Tensor grad_w_hh_r, "
      "Tensor grad_b_ih_r, Tensor grad_b_hh_r)");

  // The regularised cells of fastrnn's options beyond torch.nn (layer_norm, zoneout, recurrent_dropout; the
  // modules do weight_drop on W_hh themselves): the recurrence of one layer and direction, with the input
  // side already computed as `gates_x` = LN_ih(x @ W_ih^T) + b_ih (+ b_hh for the LSTM), [T, B, G*H] or
  // packed [N, G*H], in the input's dtype. Equations: fastrnn/reference.py (lstm_ext_cell, gru_ext_cell).
  //   ln_hh_weight/ln_hh_bias [G*H]: LayerNorm (eps 1e-5, over the G*H gates of a row) of W_hh h, both or neither.
  //   ln_c_weight/ln_c_bias [H] (LSTM): h = o * tanh(LN(c)) instead of o * tanh(c), both or neither.
  //   zoneout_h [T, B, D] or [N, D] (D: the state size), zoneout_c likewise over H (LSTM): the weight k of the
  //     previous state, h_t = k * h_{t-1} + (1 - k) * h~_t; 0/1 masks in training, or a tensor of one element
  //     (the expectation p in eval); the accumulation dtype (fp32 for half types). None: no zoneout.
  //   recurrent_mask [B, D], accumulation dtype: multiplies h_{t-1} where it enters W_hh (variational
  //     dropout; already scaled by 1/(1-p)); the zoneout and GRU z-paths use the unmasked h_{t-1}.
  // workspace (train) [N, W], accumulation dtype:
  //   LSTM: W = 6H + (ln_hh ? 4H + 1 : 0) + (ln_c ? H + 1 : 0): i, f, g, o after activation; c (after
  //         zoneout); tanh(LN_c(c~) or c~); then with ln_hh the normalised W_hh h (4H) and its 1/sigma;
  //         then with ln_c the normalised c~ (H) and its 1/sigma.
  //   GRU:  W = 4H + (ln_hh ? 3H + 1 : 0): r, z, n after activation, the n-gate's recurrent term (after
  //         LN and b_hn, what r multiplies); then with ln_hh the normalised W_hh h (3H) and its 1/sigma.
  // The backward returns empty [0] tensors for the gradients of absent optional arguments.
  m.def(
      "lstm_ext_forward(Tensor gates_x, Tensor? batch_sizes, Tensor hx, Tensor cx, Tensor w_hh, Tensor? w_hr, "
      "Tensor? ln_hh_weight, Tensor? ln_hh_bias, Tensor? ln_c_weight, Tensor? ln_c_bias, Tensor? zoneout_h, "
      "Tensor? zoneout_c, Tensor? recurrent_mask, bool reverse, bool train) "
      "-> (Tensor output, Tensor hy, Tensor cy, Tensor workspace)");
  m.def(
      "lstm_ext_backward(Tensor grad_output, Tensor grad_hy, Tensor grad_cy, Tensor? batch_sizes, Tensor hx, "
      "Tensor cx, Tensor w_hh, Tensor? w_hr, Tensor? ln_hh_weight, Tensor? ln_c_weight, Tensor? zoneout_h, "
      "Tensor? zoneout_c, Tensor? recurrent_mask, Tensor output, Tensor workspace, bool reverse) "
      "-> (Tensor grad_gates_x, Tensor grad_hx, Tensor grad_cx, Tensor grad_w_hh, Tensor grad_w_hr, "
      "Tensor grad_ln_hh_weight, Tensor grad_ln_hh_bias, Tensor grad_ln_c_weight, Tensor grad_ln_c_bias)");
  m.def(
      "gru_ext_forward(Tensor gates_x, Tensor? batch_sizes, Tensor hx, Tensor w_hh, Tensor? b_hh, "
      "Tensor? ln_hh_weight, Tensor? ln_hh_bias, Tensor? zoneout_h, Tensor? recurrent_mask, bool reverse, "
      "bool train) -> (Tensor output, Tensor hy, Tensor workspace)");
  m.def(
      "gru_ext_backward(Tensor grad_output, Tensor grad_hy, Tensor? batch_sizes, Tensor hx, Tensor w_hh, "
      "Tensor? ln_hh_weight, Tensor? zoneout_h, Tensor? recurrent_mask, Tensor output, Tensor workspace, "
      "bool reverse, bool has_bias) "
      "-> (Tensor grad_gates_x, Tensor grad_hx, Tensor grad_w_hh, Tensor grad_b_hh, Tensor grad_ln_hh_weight, "
      "Tensor grad_ln_hh_bias)");

  // Test-only ops (fakes in fastrnn/_testing_ops.py; implementations in cpu/testing_ops.cpp).
  // How many distinct threads ran the chunks of the drivers' row-parallel loop (for_rows) over `rows` wide
  // rows: 1 when fastrnn's parallel loops run serially (an extension built without OpenMP).
  m.def("_parallel_threads_used(int rows) -> int");
  // The float32 gate activation `fn` ("sigmoid" or "tanh") exactly as the CPU step kernels of the active
  // instruction set compute it (FASTRNN_CPU_CAPABILITY, FASTRNN_CPU_FAST_MATH apply).
  m.def("_cpu_activation(Tensor x, str fn) -> Tensor");
  // Whether the CPU forward ops run on the fused brgemm path (cpu/brgemm_step.h) for this dtype now
  // (processor, FASTRNN_CPU_CAPABILITY and FASTRNN_CPU_BRGEMM apply).
  m.def("_cpu_brgemm_enabled(ScalarType dtype) -> bool");
  // c + a @ b (add) or a @ b through the whole-sequence GEMM of the CPU kernels (cpu/seq_gemm.h), and whether
  // it ran on brgemm (FASTRNN_CPU_SEQ_GEMM and its block-size switches apply).
  m.def("_cpu_seq_gemm(Tensor a, Tensor b, Tensor c, bool add) -> (Tensor, bool)");
  // The same through the short-sequence backward's products (cpu/step_gemm.h small_mm_into), and whether they
  // served (FASTRNN_CPU_SMALL_MM and the row limit apply; otherwise at::mm).
  m.def("_cpu_small_mm(Tensor a, Tensor b, Tensor c, bool add) -> (Tensor, bool)");
  // x.t() through the active instruction set's transpose kernel (cpu/pointwise.h, what packs the brgemm weights),
  // written into rows `pad` floats longer than needed, the pad left at -1.
  m.def("_cpu_transpose(Tensor x, int pad) -> Tensor");
  // a @ w.t() through the per-step paths' in-place product (cpu/step_gemm.h mm_wt_into), and whether it served
  // (FASTRNN_CPU_WT_GEMV and the row limit apply; otherwise at::mm).
  m.def("_cpu_mm_wt(Tensor a, Tensor w) -> (Tensor, bool)");
  // The per-thread scratch pool (cpu/scratch.h) on a fresh thread, buffers of `bytes`: (two taken at once are
  // distinct, one taken after the first's release reuses its memory). FASTRNN_CPU_SCRATCH applies.
  m.def("_cpu_scratch_probe(int bytes) -> (bool, bool)");
  // How many threads the CPU bidirectional ops run their two directions on now for a batch of `rows`
  // sequences: 2 at once, 1 in turn (cpu/bidir_cpu.cpp; FASTRNN_CPU_BIDIR and torch's thread count apply).
  m.def("_cpu_bidir_threads_used(int rows) -> int");
}
