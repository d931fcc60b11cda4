// asrq-runner: 16 kHz wav in, text out, through an `asrq export` directory's ExecuTorch
// programs (streaming encoder + greedy RNN-T search). See export/runner/README.md.
#include <sys/resource.h>
#include <sys/utsname.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "fbank.h"
#include "rnnt.h"
#include "wav.h"

namespace {

const char* kUsage =
    "usage: asrq-runner --model-dir DIR --wav A.wav [--wav B.wav ...] [--threads N]\n"
    "                   [--json OUT.json] [--warmup K] [--dump-fbank DIR] [--fbank-only]\n"
    "\n"
    "Transcribes 16 kHz wav files (PCM 16/24/32-bit or float32; channels are averaged)\n"
    "with the ExecuTorch programs of an `asrq export` directory: fbank as lhotse computes it,\n"
    "the streaming encoder chunk by chunk with its states, greedy RNN-T search.\n"
    "Prints one line per file: PATH<TAB>TEXT. --json writes token ids, texts and timings:\n"
    "per-chunk latency (p50/p90/p99 ms), RTF, load time and peak RSS.\n"
    "  --threads N      ExecuTorch threadpool size (XNNPACK workers), default 1\n"
    "  --warmup K       decode the first file K times before timing (default 1)\n"
    "  --dump-fbank DIR write each file's fbank as DIR/<index>.npy (float32, (T, F))\n"
    "  --fbank-only     compute (and dump) fbank only; no model is loaded\n"
    "  --decode-ids L   print the text of comma-separated token ids L (tokens.txt) and exit\n";

struct Args {
  std::string model_dir, json, dump_fbank;
  std::vector<std::string> wavs;
  int threads = 1, warmup = 1;
  bool fbank_only = false;
  std::string decode_ids;
};

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string k = argv[i];
    auto val = [&]() -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument(k + " needs a value");
      return argv[++i];
    };
    if (k == "--model-dir") a.model_dir = val();
    else if (k == "--wav") a.wavs.push_back(val());
    else if (k == "--threads") a.threads = std::stoi(val());
    else if (k == "--json") a.json = val();
    else if (k == "--warmup") a.warmup = std::stoi(val());
    else if (k == "--dump-fbank") a.dump_fbank = val();
    else if (k == "--fbank-only") a.fbank_only = true;
    else if (k == "--decode-ids") a.decode_ids = val();
    else if (k == "-h" || k == "--help") {
      std::cout << kUsage;
      std::exit(0);
    } else
      throw std::invalid_argument("unknown argument " + k);
  }
  if (!a.decode_ids.empty()) {
    if (a.model_dir.empty()) throw std::invalid_argument("--decode-ids needs --model-dir");
    return a;
  }
  if (a.wavs.empty()) throw std::invalid_argument("no --wav given");
  if (!a.fbank_only && a.model_dir.empty()) throw std::invalid_argument("no --model-dir given");
  if (a.threads < 1) throw std::invalid_argument("--threads must be >= 1");
  return a;
}

std::vector<std::string> read_tokens(const std::string& path) {
  std::ifstream f(path);
  if (!f) throw std::runtime_error(path + ": tokens file not found");
  std::vector<std::string> out;
  std::string line;
  while (std::getline(f, line)) {
    if (line.empty()) continue;
    const size_t sp = line.find_last_of(' ');
    if (sp == std::string::npos) throw std::runtime_error(path + ": bad line '" + line + "'");
    const size_t id = std::stoul(line.substr(sp + 1));
    if (out.size() <= id) out.resize(id + 1);
    out[id] = line.substr(0, sp);
  }
  return out;
}

// SentencePiece's DecodeIds over pieces: "▁" -> " ", except that leading "▁"s are dropped
// while nothing has been written yet; <unk> -> " ⁇ "; other symbols (<sos/eos>, ...) verbatim.
std::string detokenize(const std::vector<int64_t>& ids, const std::vector<std::string>& sym) {
  const std::string meta = "\xe2\x96\x81";  // U+2581
  std::string s;
  bool bos = true;
  for (int64_t id : ids) {
    std::string p = (id >= 0 && size_t(id) < sym.size()) ? sym[size_t(id)] : "<unk>";
    if (p == "<unk>") {
      s += " \xe2\x81\x87 ";
      bos = false;
      continue;
    }
    if (bos && p.compare(0, meta.size(), meta) == 0) p.erase(0, meta.size());
    size_t pos;
    while ((pos = p.find(meta)) != std::string::npos) p.replace(pos, meta.size(), " ");
    s += p;
    if (!p.empty()) bos = false;
  }
  return s;
}

std::string json_str(const std::string& s) {
  std::string o = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') o += '\\', o += char(c);
    else if (c == '\n') o += "\\n";
    else if (c == '\t') o += "\\t";
    else if (c < 0x20) {
      char b[8];
      std::snprintf(b, sizeof b, "\\u%04x", c);
      o += b;
    } else o += char(c);
  }
  return o + "\"";
}

double percentile(std::vector<double> v, double q) {  // linear interpolation, as numpy
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const double pos = q / 100.0 * double(v.size() - 1);
  const size_t lo = size_t(pos);
  const size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (pos - double(lo));
}

void write_npy(const std::string& path, const std::vector<float>& data, int rows, int cols) {
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" +
                       std::to_string(rows) + ", " + std::to_string(cols) + "), }";
  while ((10 + header.size() + 1) % 64 != 0) header += ' ';
  header += '\n';
  std::ofstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error(path + ": cannot write");
  f.write("\x93NUMPY\x01\x00", 8);
  const unsigned short n = (unsigned short)header.size();
  f.put(char(n & 0xff)).put(char(n >> 8));
  f << header;
  f.write(reinterpret_cast<const char*>(data.data()), std::streamsize(data.size() * sizeof(float)));
}

// `field` (VmRSS, VmHWM) of /proc/self/status in MiB; -1 without /proc.
double status_mb(const char* field) {
  std::ifstream f("/proc/self/status");
  const std::string key = std::string(field) + ":";
  for (std::string line; std::getline(f, line);)
    if (line.compare(0, key.size(), key) == 0) return std::atof(line.c_str() + key.size()) / 1024.0;
  return -1.0;
}

// Resident high-water mark in MiB (VmHWM; else getrusage's ru_maxrss).
double hwm_mb() {
  const double v = status_mb("VmHWM");
  if (v >= 0) return v;
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  return double(ru.ru_maxrss) / 1024.0;  // Linux: KiB
}

// Reset VmHWM to the current RSS (write 5 to /proc/self/clear_refs, Linux >= 4.0).
bool reset_hwm() {
  {
    std::ofstream f("/proc/self/clear_refs");
    if (!f) return false;
    f << "5";
    if (!f.flush()) return false;
  }
  const double hwm = status_mb("VmHWM"), rss = status_mb("VmRSS");
  return hwm >= 0 && rss >= 0 && hwm <= rss + 4.0;
}

}  // namespace

int main(int argc, char** argv) {
  using clock = std::chrono::steady_clock;
  auto ms = [](clock::time_point a, clock::time_point b) {
    return std::chrono::duration<double, std::milli>(b - a).count();
  };
  try {
    const Args args = parse(argc, argv);
    if (!args.decode_ids.empty()) {
      std::vector<int64_t> ids;
      std::stringstream in(args.decode_ids);
      for (std::string v; std::getline(in, v, ',');) ids.push_back(std::stoll(v));
      std::cout << detokenize(ids, read_tokens(args.model_dir + "/tokens.txt")) << "\n";
      return 0;
    }
    asrq::Fbank fbank;
    // read every file first: a bad path fails before the model loads
    std::vector<asrq::Wav> wavs;
    for (const auto& p : args.wavs) {
      wavs.push_back(asrq::read_wav(p));
      if (wavs.back().sample_rate != 16000)
        throw std::runtime_error(p + ": sample rate " + std::to_string(wavs.back().sample_rate) +
                                 " Hz; the runner takes 16 kHz (resample first)");
    }
    if (args.fbank_only) {
      for (size_t i = 0; i < wavs.size(); ++i) {
        int t = 0;
        auto f = fbank.compute(wavs[i].samples, &t);
        if (!args.dump_fbank.empty())
          write_npy(args.dump_fbank + "/" + std::to_string(i) + ".npy", f, t, fbank.num_bins());
        std::cout << args.wavs[i] << "\t" << t << " frames\n";
      }
      return 0;
    }
    // memory baseline: the wavs are read, nothing of the model is loaded yet
    const double hwm_before_mb = hwm_mb();
    double rss_before_load_mb = status_mb("VmRSS");
    const bool hwm_reset = reset_hwm();
    if (hwm_reset) rss_before_load_mb = status_mb("VmRSS");
    const auto t_load = clock::now();
    const int threads = asrq::set_threads(args.threads);
    asrq::StreamingRnnt model(args.model_dir);
    const auto syms = read_tokens(args.model_dir + "/tokens.txt");
    const double load_ms = ms(t_load, clock::now());
    if (model.feature_dim() != fbank.num_bins())
      throw std::runtime_error(args.model_dir + ": the encoder takes " +
                               std::to_string(model.feature_dim()) + " features, not 80");

    for (int w = 0; w < args.warmup; ++w) {  // first calls plan XNNPACK's buffers
      int t = 0;
      auto f = fbank.compute(wavs[0].samples, &t);
      model.decode(f, t);
    }
    std::vector<double> all_chunks;
    double audio_s = 0.0, compute_ms = 0.0;
    std::ostringstream files;
    for (size_t i = 0; i < wavs.size(); ++i) {
      const auto t0 = clock::now();
      int t = 0;
      auto f = fbank.compute(wavs[i].samples, &t);
      const double fbank_ms = ms(t0, clock::now());
      const auto r = model.decode(f, t);
      const double total_ms = ms(t0, clock::now());
      if (!args.dump_fbank.empty())
        write_npy(args.dump_fbank + "/" + std::to_string(i) + ".npy", f, t, fbank.num_bins());
      const double dur = double(wavs[i].samples.size()) / 16000.0;
      audio_s += dur;
      compute_ms += total_ms;
      all_chunks.insert(all_chunks.end(), r.chunk_ms.begin(), r.chunk_ms.end());
      const std::string text = detokenize(r.tokens, syms);
      std::cout << args.wavs[i] << "\t" << text << "\n";
      files << (i ? ",\n" : "") << "    {\"wav\": " << json_str(args.wavs[i])
            << ", \"duration_s\": " << dur << ", \"fbank_frames\": " << t
            << ", \"chunks\": " << r.chunk_ms.size() << ", \"fbank_ms\": " << fbank_ms
            << ", \"total_ms\": " << total_ms << ", \"rtf\": " << total_ms / 1000.0 / dur
            << ", \"text\": " << json_str(text) << ", \"tokens\": [";
      for (size_t k = 0; k < r.tokens.size(); ++k) files << (k ? ", " : "") << r.tokens[k];
      files << "]}";
    }
    std::cout.flush();
    if (!args.json.empty()) {
      struct utsname u {};
      uname(&u);
      std::ostringstream j;
      j.precision(6);
      j << "{\n  \"runner\": \"asrq-runner\",\n  \"runtime\": \"executorch\",\n"
        << "  \"arch\": " << json_str(u.machine) << ",\n  \"model_dir\": " << json_str(args.model_dir)
        << ",\n  \"threads\": " << threads << ",\n  \"chunk_frames\": " << model.chunk_frames()
        << ",\n  \"chunk_ms_audio\": " << model.chunk_frames() * 40 << ",\n  \"load_ms\": " << load_ms
        << ",\n  \"peak_rss_mb\": " << std::max(hwm_before_mb, hwm_mb())
        << ",\n  \"rss_before_load_mb\": " << rss_before_load_mb
        << ",\n  \"model_peak_mb\": " << std::max(0.0, hwm_mb() - rss_before_load_mb)
        << ",\n  \"rss_end_mb\": " << status_mb("VmRSS")
        << ",\n  \"hwm_reset\": " << (hwm_reset ? "true" : "false") << ",\n  \"audio_s\": " << audio_s
        << ",\n  \"compute_s\": " << compute_ms / 1000.0 << ",\n  \"rtf\": " << compute_ms / 1000.0 / audio_s
        << ",\n  \"chunk_latency_ms\": {\"count\": " << all_chunks.size()
        << ", \"p50\": " << percentile(all_chunks, 50) << ", \"p90\": " << percentile(all_chunks, 90)
        << ", \"p99\": " << percentile(all_chunks, 99) << ", \"max\": " << percentile(all_chunks, 100)
        << "},\n  \"chunk_ms\": [";
      for (size_t k = 0; k < all_chunks.size(); ++k) j << (k ? ", " : "") << all_chunks[k];
      j << "],\n  \"files\": [\n" << files.str() << "\n  ]\n}\n";
      const std::string tmp = args.json + ".tmp";
      {
        std::ofstream f(tmp);
        if (!f) throw std::runtime_error(args.json + ": cannot write");
        f << j.str();
      }
      if (std::rename(tmp.c_str(), args.json.c_str()) != 0)
        throw std::runtime_error(args.json + ": cannot write");
    }
  } catch (const std::exception& e) {
    std::cerr << "asrq-runner: error: " << e.what() << "\n";
    return 2;
  }
  return 0;
}
