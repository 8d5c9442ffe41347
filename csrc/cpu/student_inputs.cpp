// edgekd::student_check_inputs: one pass over a batch of (input_ids, attention_mask) that returns
// what the student's forward needs (lengths, bool mask) and whether the batch is valid: ids in
// [0, vocab_size), a 0/1 post-padded mask (ones then zeros) with >= 1 valid token per row.
// It replaces ~15 small tensor ops (and their per-call overhead) on the batch-1 inference path.
// The third output is the number of valid tokens N = sum(lengths) (>= B) when the batch is valid
// and -1 when it is not; on failure the Python caller (edgekd/students/bilstm_attention.py)
// recomputes a detailed EdgekdValueError message.
// Internal helper: the schema is defined here because it only exists when edgekd._C is built
// (the student falls back to plain tensor ops otherwise).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <tuple>

#include "layout.h"

namespace {

using at::Tensor;

std::tuple<Tensor, Tensor, int64_t> student_check_inputs(const Tensor& ids_in, const Tensor& mask_in,
                                                         int64_t vocab_size) {
  TORCH_CHECK(ids_in.dim() == 2 && mask_in.dim() == 2 && ids_in.sizes() == mask_in.sizes(),
              "student_check_inputs: input_ids and attention_mask must be (B, T) of the same shape");
  TORCH_CHECK(ids_in.scalar_type() == at::kLong, "student_check_inputs: input_ids must be int64");
  TORCH_CHECK(ids_in.device().is_cpu() && mask_in.device().is_cpu(), "student_check_inputs: CPU tensors only");
  const Tensor ids = ids_in.contiguous();
  const Tensor mask = mask_in.contiguous();
  const int64_t B = ids.size(0), T = ids.size(1);
  Tensor lengths = at::empty({B}, ids.options());
  Tensor mask_bool = at::empty({B, T}, ids.options().dtype(at::kBool));
  bool ok = false;
  AT_DISPATCH_INTEGRAL_TYPES_AND(at::kBool, mask.scalar_type(), "student_check_inputs", [&] {
    ok = edgekd_layout::post_padded_lengths<scalar_t>(ids.data_ptr<int64_t>(), mask.data_ptr<scalar_t>(), B, T,
                                                      vocab_size, lengths.data_ptr<int64_t>(),
                                                      mask_bool.data_ptr<bool>());
  });
  const int64_t* Lp = lengths.data_ptr<int64_t>();
  int64_t total = 0;
  for (int64_t b = 0; b < B; ++b) total += Lp[b];
  return {lengths, mask_bool, ok ? total : int64_t(-1)};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(edgekd, m) {
  m.def("student_check_inputs(Tensor input_ids, Tensor attention_mask, int vocab_size) -> (Tensor, Tensor, int)");
}

TORCH_LIBRARY_IMPL(edgekd, CPU, m) {
  m.impl("student_check_inputs", &student_check_inputs);
}
