"""Streaming benchmark of exported models (``asrq bench``): per-chunk latency, RTF, load time,
peak memory and file sizes per backend and thread count (:mod:`asrq.bench.runner`), reported
as JSON, a table and a chart (:mod:`asrq.bench.report`)."""
