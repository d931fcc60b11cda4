#include "rnnt.h"

#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <fstream>
#include <regex>
#include <sstream>
#include <stdexcept>

// The wheel ships libexecutorch_threadpool.so but not its header
// (extension/threadpool/threadpool.h): declare the two members we call, with the signatures the
// library exports (executorch 1.5.1: ThreadPool::_unsafe_reset_threadpool(unsigned int),
// ThreadPool::get_thread_count() const, get_threadpool()).
namespace executorch::extension::threadpool {
class ThreadPool {
 public:
  size_t get_thread_count() const;
  bool _unsafe_reset_threadpool(uint32_t num_threads);
};
ThreadPool* get_threadpool();
}  // namespace executorch::extension::threadpool

namespace asrq {

using executorch::aten::ScalarType;
using executorch::extension::from_blob;
using executorch::extension::Module;
using executorch::runtime::Error;
using executorch::runtime::EValue;

namespace {

constexpr float kLogEps = -23.025850929940457f;  // log(1e-10), lhotse's fbank padding

[[noreturn]] void fail(const std::string& what) { throw std::runtime_error(what); }

std::unique_ptr<Module> load(const std::string& path) {
  std::ifstream probe(path);
  if (!probe) fail(path + ": ExecuTorch program not found (export with --executorch)");
  auto m = std::make_unique<Module>(path, Module::LoadMode::Mmap);
  const Error e = m->load_method("forward");
  if (e != Error::Ok)
    fail(path + ": the ExecuTorch runtime cannot load it (error " + std::to_string(int(e)) + ")");
  return m;
}

// The first integer value of "key" in a JSON text (the "model" section precedes "config" in
// asrq's metadata.json, so the first occurrence is the model's).
bool json_int(const std::string& text, const std::string& key, int64_t* out) {
  std::smatch m;
  if (!std::regex_search(text, m, std::regex("\"" + key + "\"\\s*:\\s*(-?[0-9]+)"))) return false;
  *out = std::stoll(m[1].str());
  return true;
}

std::vector<EValue> run(Module& m, const std::vector<EValue>& in, const char* name) {
  auto r = m.forward(in);
  if (!r.ok()) fail(std::string(name) + ": execution failed (error " + std::to_string(int(r.error())) + ")");
  return std::move(r.get());
}

}  // namespace

int set_threads(int n) {
  auto* pool = executorch::extension::threadpool::get_threadpool();
  if (!pool) return 1;
  pool->_unsafe_reset_threadpool(uint32_t(std::max(1, n)));
  return int(pool->get_thread_count());
}

StreamingRnnt::StreamingRnnt(const std::string& dir) : dir_(dir) {
  std::ifstream mf(dir + "/metadata.json");
  if (!mf) fail(dir + ": no metadata.json; not an `asrq export` model directory");
  std::stringstream ss;
  ss << mf.rdbuf();
  const std::string meta = ss.str();
  if (meta.find("\"asrq-export") == std::string::npos)
    fail(dir + "/metadata.json: not asrq export metadata (no format 'asrq-export-*')");
  if (!json_int(meta, "blank_id", &blank_)) blank_ = 0;

  enc_ = load(dir + "/encoder_streaming.pte");
  pred_ = load(dir + "/predictor.pte");
  join_ = load(dir + "/joiner.pte");

  auto em = enc_->method_meta("forward");
  if (!em.ok() || em->num_inputs() < 2) fail(dir + "/encoder_streaming.pte: unexpected signature");
  {
    auto x = em->input_tensor_meta(0);
    auto sz = x->sizes();
    if (sz.size() != 3 || (sz[1] - 3) % 4 != 0)
      fail(dir + "/encoder_streaming.pte: input x is not (1, 4C+3, F)");
    window_ = sz[1];
    chunk_ = (sz[1] - 3) / 4;
    feat_dim_ = sz[2];
  }
  for (size_t i = 2; i < em->num_inputs(); ++i) {
    auto t = em->input_tensor_meta(i);
    StateBuffer s;
    s.sizes.assign(t->sizes().begin(), t->sizes().end());
    size_t n = 1;
    for (int32_t d : s.sizes) n *= size_t(d);
    s.is_int64 = t->scalar_type() == ScalarType::Long;
    if (!s.is_int64 && t->scalar_type() != ScalarType::Float)
      fail(dir + "/encoder_streaming.pte: state input " + std::to_string(i) + " is neither f32 nor i64");
    if (s.is_int64) s.i.assign(n, 0);
    else s.f.assign(n, 0.0f);
    init_states_.push_back(std::move(s));
  }
  auto pm = pred_->method_meta("forward");
  if (!pm.ok()) fail(dir + "/predictor.pte: no method meta");
  ctx_ = pm->input_tensor_meta(0)->sizes()[1];
  joiner_dim_ = pm->output_tensor_meta(0)->sizes()[1];
  auto jm = join_->method_meta("forward");
  if (!jm.ok()) fail(dir + "/joiner.pte: no method meta");
  vocab_ = jm->output_tensor_meta(0)->sizes()[1];
}

StreamingRnnt::~StreamingRnnt() = default;

void StreamingRnnt::predict(const std::vector<int64_t>& hyp, std::vector<float>& out) {
  std::vector<int64_t> y(hyp.end() - ctx_, hyp.end());
  auto yt = from_blob(y.data(), {1, ctx_}, ScalarType::Long);
  auto o = run(*pred_, {EValue(*yt)}, "predictor.pte");
  const auto& t = o[0].toTensor();
  out.assign(t.const_data_ptr<float>(), t.const_data_ptr<float>() + t.numel());
}

DecodeResult StreamingRnnt::decode(const std::vector<float>& feats, int num_frames) {
  using clock = std::chrono::steady_clock;
  DecodeResult res;
  std::vector<StateBuffer> states = init_states_;
  std::vector<int64_t> hyp(size_t(ctx_ - 1), -1);
  hyp.push_back(blank_);
  std::vector<float> pred;
  predict(hyp, pred);

  const int enc_frames = std::max(0, ((num_frames - 1) / 2 - 1) / 2);
  const int chunks = (enc_frames + chunk_ - 1) / chunk_;
  const int hop = 4 * chunk_;
  std::vector<float> x(size_t(window_) * size_t(feat_dim_));
  for (int k = 0; k < chunks; ++k) {
    const auto t0 = clock::now();
    const int start = k * hop;
    const int valid = std::max(0, std::min(window_, num_frames - start));
    std::fill(x.begin(), x.end(), kLogEps);
    if (valid > 0)
      std::memcpy(x.data(), feats.data() + size_t(start) * size_t(feat_dim_),
                  size_t(valid) * size_t(feat_dim_) * sizeof(float));
    int64_t x_len = valid;
    auto xt = from_blob(x.data(), {1, window_, feat_dim_}, ScalarType::Float);
    auto lt = from_blob(&x_len, {1}, ScalarType::Long);
    std::vector<executorch::extension::TensorPtr> keep;
    std::vector<EValue> in{EValue(*xt), EValue(*lt)};
    for (auto& s : states) {
      keep.push_back(s.is_int64 ? from_blob(s.i.data(), s.sizes, ScalarType::Long)
                                : from_blob(s.f.data(), s.sizes, ScalarType::Float));
      in.emplace_back(*keep.back());
    }
    auto out = run(*enc_, in, "encoder_streaming.pte");
    if (out.size() != 2 + states.size()) fail("encoder_streaming.pte: unexpected number of outputs");
    // copy the new states out of the method's planned memory before the next call
    for (size_t i = 0; i < states.size(); ++i) {
      const auto& t = out[2 + i].toTensor();
      if (states[i].is_int64)
        std::memcpy(states[i].i.data(), t.const_data_ptr<int64_t>(), states[i].i.size() * 8);
      else
        std::memcpy(states[i].f.data(), t.const_data_ptr<float>(), states[i].f.size() * 4);
    }
    const auto& et = out[0].toTensor();
    const int64_t n_valid = out[1].toTensor().const_data_ptr<int64_t>()[0];
    const int j = int(et.sizes()[2]);
    std::vector<float> enc(et.const_data_ptr<float>(), et.const_data_ptr<float>() + et.numel());
    for (int64_t t = 0; t < n_valid; ++t) {
      auto e = from_blob(enc.data() + size_t(t) * size_t(j), {1, j}, ScalarType::Float);
      auto p = from_blob(pred.data(), {1, j}, ScalarType::Float);
      auto lo = run(*join_, {EValue(*e), EValue(*p)}, "joiner.pte");
      const auto& lt2 = lo[0].toTensor();
      const float* l = lt2.const_data_ptr<float>();
      const int64_t v = lt2.numel();
      int64_t best = 0;
      for (int64_t c = 1; c < v; ++c)
        if (l[c] > l[best]) best = c;
      if (best != blank_) {
        hyp.push_back(best);
        res.tokens.push_back(best);
        predict(hyp, pred);
      }
    }
    res.chunk_ms.push_back(std::chrono::duration<double, std::milli>(clock::now() - t0).count());
  }
  return res;
}

}  // namespace asrq
