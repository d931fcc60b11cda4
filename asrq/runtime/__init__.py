"""Run exported models; no torch model is built here.

- :mod:`asrq.runtime.model_dir`: the model directory (format constants, ``metadata.json``),
  read once and passed down;
- :mod:`asrq.runtime.backends`: the backend table (onnxruntime, ExecuTorch program runners);
- :mod:`asrq.runtime.exported`: the shared exported-programs base (encoders, batching);
- :mod:`asrq.runtime.rnnt`, :mod:`asrq.runtime.ctc_attention`: one module per head;
- :mod:`asrq.runtime.heads`: the head table that picks them;
- :mod:`asrq.runtime.audio`, :mod:`asrq.runtime.transcribe`: files -> fbank -> text.
"""
