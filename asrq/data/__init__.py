"""Data layer: the espeak-ng corpus (:mod:`asrq.data.synth`), Lhotse manifests and fbank
features (:mod:`asrq.data.prepare`), the SentencePiece tokenizer (:mod:`asrq.data.bpe`) and
the training / evaluation data loaders (:mod:`asrq.data.loader`).

Submodules are imported on use (``from asrq.data.loader import make_train_loader``) so that
``import asrq.data`` stays cheap.
"""
