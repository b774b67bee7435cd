"""Gradient-boosted trees as flat numpy arrays: sklearn's HistGradientBoostingClassifier, minus its per-call cost.

On one row, `HistGradientBoostingClassifier.predict_proba` spends most of its ~0.3 ms in input
validation and per-tree calls into its Cython predictor. Here every tree's nodes sit in one
array and all trees advance together, one level per numpy step; leaf values are then added in
sklearn's order (baseline, tree 1, tree 2, ...) and passed through the same `expit`, so the
probabilities are sklearn's, bit for bit (`tests/unit/test_trees.py`). Models this does not cover
(categorical splits, more than two classes, other estimators) are left to sklearn.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import expit


class CompiledTrees:
    """A fitted binary HistGradientBoostingClassifier, ready for fast positive-class probabilities."""

    def __init__(self, model: Any) -> None:
        trees = [predictors[0] for predictors in model._predictors]
        offsets = np.cumsum([0] + [len(t.nodes) for t in trees[:-1]])
        nodes = np.concatenate([t.nodes for t in trees])
        self.roots = offsets.astype(np.intp)
        tree_of_node = np.repeat(offsets, [len(t.nodes) for t in trees])
        self.feature = nodes["feature_idx"].astype(np.intp)
        self.threshold = nodes["num_threshold"].astype(np.float64)
        self.missing_left = nodes["missing_go_to_left"].astype(bool)
        self.left = (nodes["left"].astype(np.intp) + tree_of_node).astype(np.intp)
        self.right = (nodes["right"].astype(np.intp) + tree_of_node).astype(np.intp)
        self.leaf = nodes["is_leaf"].astype(bool)
        self.value = nodes["value"].astype(np.float64)
        self.baseline = float(np.ravel(model._baseline_prediction)[0])
        self.n_features = int(model.n_features_in_)

    @classmethod
    def compile(cls, model: Any) -> CompiledTrees | None:
        """The compiled model, or None when it is not a binary, numeric-split HistGradientBoostingClassifier."""
        from sklearn.ensemble import HistGradientBoostingClassifier

        if not isinstance(model, HistGradientBoostingClassifier) or not hasattr(model, "_predictors"):
            return None
        if len(model.classes_) != 2 or model.n_trees_per_iteration_ != 1 or not model._predictors:
            return None
        if any(p[0].nodes["is_categorical"].any() for p in model._predictors):
            return None
        return cls(model)

    def leaves(self, x: np.ndarray) -> np.ndarray:
        """The leaf each row reaches in each tree: shape (rows, trees)."""
        node = np.broadcast_to(self.roots, (len(x), len(self.roots))).copy()
        rows = np.arange(len(x))[:, None]
        while True:
            at_leaf = self.leaf[node]
            if at_leaf.all():
                return node
            value = x[rows, self.feature[node]]
            go_left = np.where(np.isnan(value), self.missing_left[node], value <= self.threshold[node])
            node = np.where(at_leaf, node, np.where(go_left, self.left[node], self.right[node]))

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Positive-class probability per row, equal to sklearn's predict_proba(x)[:, 1]."""
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"expected a (rows, {self.n_features}) matrix, got shape {x.shape}")
        values = self.value[self.leaves(np.asarray(x, dtype=np.float64))]
        # sklearn adds tree after tree to the baseline: the same order gives the same float
        raw = np.array([sum(row, self.baseline) for row in values.tolist()], dtype=np.float64)
        return expit(raw)
