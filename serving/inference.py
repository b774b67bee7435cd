"""Per-request model input built with numpy: the bundle's matrix without a pandas round trip."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from feastkit.bundle import ModelBundle
from serving.trees import CompiledTrees


def _number(value: Any) -> float:
    """As pandas.to_numeric(errors="coerce"): numbers and numeric strings, everything else NaN."""
    if value is None:
        return math.nan
    if isinstance(value, int | float):  # bool is an int, as in pandas
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _imputer_is_identity_without_nans(step: Any) -> bool:
    """A fitted SimpleImputer that only replaces NaN and keeps every column: a no-op on NaN-free X."""
    from sklearn.impute import SimpleImputer

    if not isinstance(step, SimpleImputer) or getattr(step, "add_indicator", False):
        return False
    missing = step.missing_values
    if not (isinstance(missing, float) and math.isnan(missing)):
        return False
    return bool(step.keep_empty_features) or not np.isnan(step.statistics_).any()


def _fast_path(model: Any) -> Any | None:
    """The final estimator when every earlier pipeline step is such an imputer, else None."""
    from sklearn.pipeline import Pipeline

    if not isinstance(model, Pipeline):
        return None
    *head, (_, final) = model.steps
    if all(_imputer_is_identity_without_nans(step) for _, step in head):
        return final
    return None


class Scorer:
    """Scores feature rows with a bundle; same matrix and missing lists as ModelBundle.matrix.

    The columns, defaults and names are resolved once; each call builds one float array from
    the rows, fills the bundle's defaults where values are missing and runs the model once.
    When the filled matrix has no NaN and the pipeline's only preprocessing is a NaN imputer,
    the imputer would return its input unchanged, so the final estimator is called directly
    (the imputer's input validation costs about as much as the model itself on one row), as
    compiled trees when it is a HistGradientBoostingClassifier (`serving/trees.py`, same floats).
    """

    def __init__(self, bundle: ModelBundle) -> None:
        self.bundle = bundle
        self.columns = bundle.feature_columns
        defaults = bundle.defaults
        self.defaults = np.array([defaults.get(c, math.nan) for c in self.columns], dtype="float64")
        self.model = bundle.model
        self.final = _fast_path(bundle.model)
        self.compiled = CompiledTrees.compile(self.final) if self.final is not None else None

    def matrix(self, rows: list[dict[str, Any]]) -> tuple[np.ndarray, list[list[str]]]:
        columns = self.columns
        x = np.array([[_number(row.get(c)) for c in columns] for row in rows], dtype="float64")
        x = x.reshape(len(rows), len(columns))
        missing_mask = np.isnan(x)
        missing = [[columns[j] for j in np.flatnonzero(mask)] for mask in missing_mask]
        if missing_mask.any():
            x = np.where(missing_mask, self.defaults, x)
        return x, missing

    def predict_proba(self, rows: list[dict[str, Any]]) -> tuple[np.ndarray, list[list[str]]]:
        """Positive-class probabilities and, per row, the features that fell back to defaults."""
        x, missing = self.matrix(rows)
        if self.final is not None and not np.isnan(x).any():
            if self.compiled is not None:
                return self.compiled.predict_proba(x), missing
            return self.final.predict_proba(x)[:, 1], missing
        return self.model.predict_proba(x)[:, 1], missing
