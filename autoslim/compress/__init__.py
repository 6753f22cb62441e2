"""The compression operators' implementations, in torch: one module per cut (``depth``,
``heads``, ``prune``, ``recovery``, ``distill``), the quantization backends (``backends/``), the
families' layouts (``families``) and the calibration batch (``calibration``).

Each is called by its operator's declaration (``autoslim/operators/``) and never imports one;
:mod:`autoslim.build` composes them from a Recipe. Nothing is imported here, so a torch-free
module (``temperatures``) can be read without loading torch.
"""
