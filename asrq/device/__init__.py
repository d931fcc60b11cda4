"""Device kit: build the native runner (``export/runner``) for the host or linux-aarch64, move it
with a model and test audio to a target over one :class:`~asrq.device.transport.Transport`
(local, ssh, adb), run it there and collect its JSON (``asrq device bench``)."""
