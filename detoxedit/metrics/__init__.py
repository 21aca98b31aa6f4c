"""Metrics of a detoxification run: safety (DS, DG, DG-Avg, with bootstrap intervals) and fluency.

Import from the submodules (``detoxedit.metrics.safety``, ``detoxedit.metrics.fluency``); the names
below are re-exported for convenience. Pure Python and numpy: no model is needed.
"""

from detoxedit.metrics.fluency import (fluency, mean_fluency, n_gram_entropy, ngram_entropy, split_sentences,
                                       text_entropy, treebank_tokenize, word_tokenize)
from detoxedit.metrics.safety import (DG_AVG, DG_KEYS, INPUT_KEYS, METRIC_KEYS, bootstrap_ci, by_category,
                                      by_category_ci, label_matrix, metric_ci, metric_table,
                                      paired_difference, safety_score, safety_table)

__all__ = [
    "DG_AVG", "DG_KEYS", "INPUT_KEYS", "METRIC_KEYS", "bootstrap_ci", "by_category", "by_category_ci",
    "fluency", "label_matrix", "mean_fluency", "metric_ci", "metric_table", "n_gram_entropy",
    "ngram_entropy", "paired_difference", "safety_score", "safety_table", "split_sentences",
    "text_entropy", "treebank_tokenize", "word_tokenize",
]
