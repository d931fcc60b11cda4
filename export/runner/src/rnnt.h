// The three ExecuTorch programs of an `asrq export` directory and the streaming greedy search
// that asrq.decode.streaming.stream_decode (method "greedy", max_sym_per_frame 1) defines:
//
//   encoder_streaming.pte  x (1, 4C+3, F) f32, x_lens (1,) i64, *states -> enc (1, C, J),
//                          out_lens (1,) i64, *new_states (states: shapes and dtypes read from
//                          the program's own input metadata, so any encoder's states work)
//   predictor.pte          y (N, ctx) i64 (-1 = padding) -> (N, J)
//   joiner.pte             enc (N, J), pred (N, J) -> logits (N, V)
//
// Windows of 4C+3 fbank frames start every 4C frames; a window past the end of the audio is
// padded with log(1e-10) and x_lens holds its true length; ceil(T'/C) windows in all, with
// T' = ((T - 1) / 2 - 1) / 2. Search: the context starts as [-1]*(ctx-1) + [blank]; per valid
// encoder frame one joiner call, argmax (first maximum), a non-blank symbol is appended and the
// predictor re-run on the last ctx tokens.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <executorch/extension/module/module.h>

namespace asrq {

struct StateBuffer {
  std::vector<int32_t> sizes;
  bool is_int64 = false;
  std::vector<float> f;
  std::vector<int64_t> i;
};

struct DecodeResult {
  std::vector<int64_t> tokens;
  std::vector<double> chunk_ms;  // wall time of each chunk: encoder + its search steps
};

class StreamingRnnt {
 public:
  // Loads and plans the three programs of model_dir (throws std::runtime_error naming the file).
  explicit StreamingRnnt(const std::string& model_dir);
  ~StreamingRnnt();

  // fbank row-major (T, F) -> tokens, per-chunk timings.
  DecodeResult decode(const std::vector<float>& feats, int num_frames);

  int chunk_frames() const { return chunk_; }
  int window_frames() const { return window_; }
  int feature_dim() const { return feat_dim_; }
  int context_size() const { return ctx_; }
  int vocab_size() const { return vocab_; }
  int joiner_dim() const { return joiner_dim_; }
  int64_t blank_id() const { return blank_; }

 private:
  void predict(const std::vector<int64_t>& hyp, std::vector<float>& out);

  std::string dir_;
  std::unique_ptr<executorch::extension::Module> enc_, pred_, join_;
  std::vector<StateBuffer> init_states_;
  int chunk_ = 0, window_ = 0, feat_dim_ = 0, ctx_ = 0, vocab_ = 0, joiner_dim_ = 0;
  int64_t blank_ = 0;
};

// Resize ExecuTorch's global threadpool (XNNPACK's workers); returns the resulting count.
int set_threads(int n);

}  // namespace asrq
