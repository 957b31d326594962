// The seed network's five convolutions (float32, batch 32 or argv[1]) in oneDNN (the v3 API of the
// onednn-cpu-gomp wheel): forward with bias, backward-data and backward-weights with bias, median
// of 15 runs after one, with the activations in NHWC / weights in HWIO (what XLA holds), in
// NHWC with the weights in oneDNN's own layout (what alexnet_jax/model/cpu/onednn_kernels.cc runs),
// and all in the blocked layouts oneDNN prefers (reorders not counted).
// Built and run by scripts/onednn_probe.sh; benchmarks/xla_convolutions.py times XLA's.
#include <oneapi/dnnl/dnnl.hpp>
#include <chrono>
#include <cstdlib>
#include <cstdio>
#include <vector>
#include <algorithm>
#include <tuple>
#include <unordered_map>
using namespace dnnl;
using tag = memory::format_tag;
using dt = memory::data_type;

void fill(memory& m, float value) {
  float* data = static_cast<float*>(m.get_data_handle());
  std::fill(data, data + m.get_desc().get_size() / sizeof(float), value);
}

// Median milliseconds of `reps` runs of `p` after one, each argument a fresh buffer of its
// descriptor filled with its value.
double time_ms(engine& eng, stream& s, primitive p,
               const std::vector<std::tuple<int, memory::desc, float>>& args, int reps = 15) {
  std::unordered_map<int, memory> buffers;
  for (const auto& [arg, desc, value] : args) {
    memory buffer(desc, eng);
    fill(buffer, value);
    buffers.emplace(arg, buffer);
  }
  p.execute(s, buffers); s.wait();
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    auto a = std::chrono::steady_clock::now();
    p.execute(s, buffers); s.wait();
    t.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - a).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

int main(int argc, char** argv) {
  const int n = argc > 1 ? std::atoi(argv[1]) : 32;  // the batch
  engine eng(engine::kind::cpu, 0);
  stream s(eng);
  struct C { const char* name; int n, h, c, o, k, stride, pad_l, pad_r, oh; };
  std::vector<C> convs = {{"conv1", n, 224, 3, 64, 11, 4, 3, 4, 56},
                          {"conv2", n, 27, 64, 192, 5, 1, 2, 2, 27},
                          {"conv3", n, 13, 192, 384, 3, 1, 1, 1, 13},
                          {"conv4", n, 13, 384, 256, 3, 1, 1, 1, 13},
                          {"conv5", n, 13, 256, 256, 3, 1, 1, 1, 13}};
  const char* layouts[] = {"nhwc", "nhwc+any-weights", "blocked"};
  for (auto& c : convs) {
    memory::dims src{c.n, c.c, c.h, c.h}, wei{c.o, c.c, c.k, c.k}, dst{c.n, c.o, c.oh, c.oh};
    memory::dims strides{c.stride, c.stride}, pl{c.pad_l, c.pad_l}, pr{c.pad_r, c.pad_r};
    for (int layout = 0; layout < 3; ++layout) {
      auto smd = memory::desc(src, dt::f32, layout == 2 ? tag::any : tag::nhwc);
      auto wmd = memory::desc(wei, dt::f32, layout == 0 ? tag::hwio : tag::any);
      auto dmd = memory::desc(dst, dt::f32, layout == 2 ? tag::any : tag::nhwc);
      auto bmd = memory::desc({c.o}, dt::f32, tag::a);
      auto fpd = convolution_forward::primitive_desc(eng, prop_kind::forward_training,
                                                     algorithm::convolution_direct, smd, wmd, bmd,
                                                     dmd, strides, pl, pr);
      double f = time_ms(eng, s, convolution_forward(fpd),
                         {{DNNL_ARG_SRC, fpd.src_desc(), 0.5f}, {DNNL_ARG_WEIGHTS, fpd.weights_desc(), 0.01f},
                          {DNNL_ARG_BIAS, fpd.bias_desc(), 0.0f}, {DNNL_ARG_DST, fpd.dst_desc(), 0.0f}});
      auto bdpd = convolution_backward_data::primitive_desc(eng, algorithm::convolution_direct, smd,
                                                            wmd, dmd, strides, pl, pr, fpd);
      double b = time_ms(eng, s, convolution_backward_data(bdpd),
                         {{DNNL_ARG_DIFF_DST, bdpd.diff_dst_desc(), 0.1f},
                          {DNNL_ARG_WEIGHTS, bdpd.weights_desc(), 0.01f},
                          {DNNL_ARG_DIFF_SRC, bdpd.diff_src_desc(), 0.0f}});
      auto bwpd = convolution_backward_weights::primitive_desc(
          eng, algorithm::convolution_direct, smd, wmd, bmd, dmd, strides, pl, pr, fpd);
      double w = time_ms(eng, s, convolution_backward_weights(bwpd),
                         {{DNNL_ARG_SRC, bwpd.src_desc(), 0.5f}, {DNNL_ARG_DIFF_DST, bwpd.diff_dst_desc(), 0.1f},
                          {DNNL_ARG_DIFF_WEIGHTS, bwpd.diff_weights_desc(), 0.0f},
                          {DNNL_ARG_DIFF_BIAS, bwpd.diff_bias_desc(), 0.0f}});
      printf("%s %-16s fwd %8.2f ms  bwd_data %8.2f ms  bwd_weights %8.2f ms  (%s | %s | %s)\n",
             c.name, layouts[layout], f, b, w, fpd.impl_info_str(), bdpd.impl_info_str(),
             bwpd.impl_info_str());
    }
  }
}
