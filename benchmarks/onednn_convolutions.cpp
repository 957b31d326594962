// The seed network's five convolutions (batch 32, float32) in oneDNN: forward, backward-data and
// backward-weights, median of 15 runs after one, with the activations in NHWC / weights in HWIO
// (what XLA holds) and in the blocked layouts oneDNN prefers (reorders not counted).
// Built and run by scripts/onednn_probe.sh; benchmarks/xla_convolutions.py times XLA's.
#include <oneapi/dnnl/dnnl.hpp>
#include <chrono>
#include <cstdio>
#include <vector>
#include <algorithm>
#include <unordered_map>
using namespace dnnl;
using tag = memory::format_tag;
using dt = memory::data_type;

void fill(memory& m, float value) {
  float* data = static_cast<float*>(m.get_data_handle());
  std::fill(data, data + m.get_desc().get_size() / sizeof(float), value);
}

double time_ms(stream& s, primitive& p, std::unordered_map<int, memory>& args, int reps) {
  p.execute(s, args); s.wait();
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    auto a = std::chrono::steady_clock::now();
    p.execute(s, args); s.wait();
    t.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - a).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

int main() {
  engine eng(engine::kind::cpu, 0);
  stream s(eng);
  struct C { const char* name; int n, h, c, o, k, stride, pad_l, pad_r, oh; };
  std::vector<C> convs = {{"conv1", 32, 224, 3, 64, 11, 4, 3, 4, 56},
                          {"conv2", 32, 27, 64, 192, 5, 1, 2, 2, 27},
                          {"conv3", 32, 13, 192, 384, 3, 1, 1, 1, 13},
                          {"conv4", 32, 13, 384, 256, 3, 1, 1, 1, 13},
                          {"conv5", 32, 13, 256, 256, 3, 1, 1, 1, 13}};
  for (auto& c : convs) {
    memory::dims src{c.n, c.c, c.h, c.h}, wei{c.o, c.c, c.k, c.k}, dst{c.n, c.o, c.oh, c.oh};
    memory::dims strides{c.stride, c.stride}, pl{c.pad_l, c.pad_l}, pr{c.pad_r, c.pad_r};
    for (int any = 0; any < 2; ++any) {
      auto smd = memory::desc(src, dt::f32, any ? tag::any : tag::nhwc);
      auto wmd = memory::desc(wei, dt::f32, any ? tag::any : tag::hwio);
      auto dmd = memory::desc(dst, dt::f32, any ? tag::any : tag::nhwc);
      auto fd = convolution_forward::desc(prop_kind::forward_training, algorithm::convolution_direct,
                                          smd, wmd, dmd, strides, pl, pr);
      auto fpd = convolution_forward::primitive_desc(fd, eng);
      memory sm(fpd.src_desc(), eng), wm(fpd.weights_desc(), eng), dm(fpd.dst_desc(), eng);
      fill(sm, 0.5f);
      fill(wm, 0.01f);
      auto fwd = convolution_forward(fpd);
      std::unordered_map<int, memory> fa{{DNNL_ARG_SRC, sm}, {DNNL_ARG_WEIGHTS, wm}, {DNNL_ARG_DST, dm}};
      double f = time_ms(s, fwd, fa, 15);
      auto bdd = convolution_backward_data::desc(algorithm::convolution_direct, smd, wmd, dmd, strides, pl, pr);
      auto bdpd = convolution_backward_data::primitive_desc(bdd, eng, fpd);
      memory dsm(bdpd.diff_src_desc(), eng), ddm(bdpd.diff_dst_desc(), eng), wm2(bdpd.weights_desc(), eng);
      fill(ddm, 0.1f);
      fill(wm2, 0.01f);
      auto bd = convolution_backward_data(bdpd);
      std::unordered_map<int, memory> ba{{DNNL_ARG_DIFF_SRC, dsm}, {DNNL_ARG_WEIGHTS, wm2}, {DNNL_ARG_DIFF_DST, ddm}};
      double b = time_ms(s, bd, ba, 15);
      auto bwd_w = convolution_backward_weights::desc(algorithm::convolution_direct, smd, wmd, dmd, strides, pl, pr);
      auto bwpd = convolution_backward_weights::primitive_desc(bwd_w, eng, fpd);
      memory sm3(bwpd.src_desc(), eng), dwm(bwpd.diff_weights_desc(), eng), ddm3(bwpd.diff_dst_desc(), eng);
      fill(sm3, 0.5f);
      fill(ddm3, 0.1f);
      auto bw = convolution_backward_weights(bwpd);
      std::unordered_map<int, memory> wa{{DNNL_ARG_SRC, sm3}, {DNNL_ARG_DIFF_WEIGHTS, dwm}, {DNNL_ARG_DIFF_DST, ddm3}};
      double w = time_ms(s, bw, wa, 15);
      printf("%s %-6s fwd %8.2f ms  bwd_data %8.2f ms  bwd_weights %8.2f ms  (%s)\n", c.name,
             any ? "any" : "nhwc", f, b, w, fpd.impl_info_str());
    }
  }
}
