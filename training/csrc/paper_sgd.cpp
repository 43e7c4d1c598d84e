// The paper's SGD update (training/optimizer.py PaperSGD) in one pass over each parameter on CPU:
//   v <- momentum v - weight_decay lr w - lr g;   w <- w + v
// reading w, g and v once and writing w and v once (torch's foreach ops make four passes, eleven streams).
// The products are fused multiply-adds, in the rule's order.

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <cmath>
#include <vector>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define SGD_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define SGD_CLONES
#endif

namespace {

template <typename T>
inline __attribute__((always_inline)) void update(T* w, const T* g, T* v, int64_t n, T lr, T momentum, T decay) {
  const T a = -decay * lr, b = -lr;
  for (int64_t i = 0; i < n; ++i) {
    const T vi = std::fma(g[i], b, std::fma(w[i], a, momentum * v[i]));
    v[i] = vi;
    w[i] += vi;
  }
}

SGD_CLONES void update_range(float* w, const float* g, float* v, int64_t n, float lr, float m, float d) {
  update(w, g, v, n, lr, m, d);
}
SGD_CLONES void update_range(double* w, const double* g, double* v, int64_t n, double lr, double m, double d) {
  update(w, g, v, n, lr, m, d);
}

template <typename T>
void step_one(at::Tensor& w, const at::Tensor& g, at::Tensor& v, double lr, double momentum, double decay) {
  T* wp = w.mutable_data_ptr<T>();
  const T* gp = g.const_data_ptr<T>();
  T* vp = v.mutable_data_ptr<T>();
  at::parallel_for(0, w.numel(), 1 << 15, [&](int64_t begin, int64_t end) {
    update_range(wp + begin, gp + begin, vp + begin, end - begin, T(lr), T(momentum), T(decay));
  });
}

// Every parameter updated in place, with its gradient and velocity: float32 or float64 CPU tensors, each trio of
// one shape and the same dense strides (any memory format), so element i of one is element i of the others.
void paper_sgd_(std::vector<at::Tensor> params, const std::vector<at::Tensor>& grads, std::vector<at::Tensor> velocities,
                double lr, double momentum, double weight_decay) {
  TORCH_CHECK(params.size() == grads.size() && params.size() == velocities.size(), "paper_sgd_: list lengths differ");
  for (size_t i = 0; i < params.size(); ++i) {
    at::Tensor& w = params[i];
    const at::Tensor& g = grads[i];
    at::Tensor& v = velocities[i];
    TORCH_CHECK(w.device().is_cpu() && w.is_non_overlapping_and_dense() && g.sizes() == w.sizes() &&
                    v.sizes() == w.sizes() && g.strides() == w.strides() && v.strides() == w.strides() &&
                    g.scalar_type() == w.scalar_type() && v.scalar_type() == w.scalar_type(),
                "paper_sgd_: parameter ", i, ", its gradient and velocity must be dense CPU tensors alike");
    if (w.scalar_type() == at::kFloat) {
      step_one<float>(w, g, v, lr, momentum, weight_decay);
    } else {
      TORCH_CHECK(w.scalar_type() == at::kDouble, "paper_sgd_: float32 or float64 parameters only");
      step_one<double>(w, g, v, lr, momentum, weight_decay);
    }
  }
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("paper_sgd_", &paper_sgd_, "the paper's SGD update, one pass per parameter");
}
