"""The paper's analyses (Zhao et al., EMNLP 2020) as ``maskfit analyze <name>``.

One module per analysis, each with ``run(...)`` (returns the numbers, writes
``<out>/<name>.png`` and ``<out>/<name>.csv`` / ``.json``) and a CLI sub-command:

=================  ======================  =========================================
command            module                  paper
=================  ======================  =========================================
sparsity-sweep     :mod:`.sparsity_sweep`  Fig. 1, dev score vs initial sparsity
layers             :mod:`.layers`          Fig. 2 / Table 7, masking k blocks
tsne               :mod:`.tsne`            Fig. 4, t-SNE of [CLS] vectors
similarity         :mod:`.similarity`      Fig. 5, dissimilarity of task masks
connectivity       :mod:`.connectivity`    Fig. 6, linear interpolation of minima
bezier             :mod:`.bezier`          App. B / Fig. 7, Bézier curve of minima
transfer           :mod:`.transfer`        Table 3 + IMDB, out-of-domain scores
=================  ======================  =========================================

Every model is trained by :func:`maskfit.train.fit` (runs under ``<out>/runs/`` are
reused when complete) and scored through :mod:`maskfit.train`'s evaluation functions.
"""
from __future__ import annotations

import importlib

ANALYSES = ("sparsity_sweep", "layers", "tsne", "similarity", "connectivity", "bezier", "transfer")


def add_parsers(subparsers) -> None:
    """Register one ``maskfit analyze`` sub-command per analysis on ``subparsers``."""
    for name in ANALYSES:
        importlib.import_module(f"{__name__}.{name}").add_parser(subparsers)


__all__ = ["ANALYSES", "add_parsers"]
