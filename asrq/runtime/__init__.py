"""Run exported models: audio loading + fbank (:mod:`asrq.runtime.audio`), onnxruntime /
ExecuTorch programs behind the decoder interface (:mod:`asrq.runtime.backends`) and file
transcription (:mod:`asrq.runtime.transcribe`). No torch model is built here."""
