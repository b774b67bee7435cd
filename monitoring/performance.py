"""Model performance with delayed labels: realized metrics for weeks whose labels have matured, estimated ones (CBPE) for the rest.

Fraud labels are chargebacks that arrive days to weeks after the transaction, so the latest
weeks' "no chargeback yet" is not yet a negative. Per week of scored transactions this module
reports:

- **realized** ROC AUC, PR AUC (average precision), and precision and recall at the model's
  threshold, once the week is `maturity` old at `as_of` (labels known by `as_of` only: the
  label's availability time, never its transaction time), with bootstrap 95 % intervals for the
  AUCs and Wilson intervals for precision and recall;
- **estimated** values of the same metrics from the scores alone (confidence-based performance
  estimation, as NannyML's CBPE): with calibrated probabilities p, each row counts as a
  positive with weight p and as a negative with weight 1 - p, which gives the expected
  confusion matrix and the expected curves; the 95 % interval comes from labels drawn as
  Bernoulli(p). Before estimating, calibration is checked on the reference window (the model's
  own evaluation window, labels mature): Spiegelhalter's z test over every row, expected against
  actual positives above the threshold, and the expected calibration error; when a test
  rejects, an isotonic map fitted on that window calibrates the scores;
- for mature weeks, the estimate's error against the realized value.

The estimate assumes that P(label | features) is what it was on the reference window. It tracks
a covariate shift (the features move, the odds given them do not) and cannot see a concept
shift (the same features now mean something else): `docs/monitoring.md` shows both, measured.

Scores come from the prediction log (what was served) or from history (every transaction of
the window scored by the current bundle on its point-in-time features: a backtest, and the
reference window).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from feastkit.errors import FeastkitError
from monitoring.check_metrics import write_performance_metrics

METRICS = ("roc_auc", "pr_auc", "precision", "recall")
METRIC_NAMES = {"roc_auc": "ROC AUC", "pr_auc": "PR AUC", "precision": "precision at threshold",
                "recall": "recall at threshold"}
CONFIDENCE = 0.95
RESAMPLES = 200           # bootstrap resamples (realized) and label draws (estimated) per week
CALIBRATION_ALPHA = 0.05  # Spiegelhalter's test rejecting at this level triggers calibration
CALIBRATION_BINS = 10     # equal-count bins of the expected calibration error


# Metrics over weighted rows ----------------------------------------------------------------------

@dataclass(frozen=True)
class RankedScores:
    """Scores sorted once, ascending, with their tie groups: every metric below reads them."""

    order: np.ndarray    # positions of the rows in ascending score order
    starts: np.ndarray   # where each group of equal scores starts in that order
    scores: np.ndarray   # the distinct scores, ascending

    @classmethod
    def of(cls, scores: np.ndarray) -> RankedScores:
        scores = np.asarray(scores, dtype="float64")
        if not np.isfinite(scores).all():
            raise FeastkitError("a score is not a finite number", "check the model's outputs (the log's __probability)")
        order = np.argsort(scores, kind="stable")
        ordered = scores[order]
        starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
        return cls(order, starts, ordered[starts])


def weighted_metrics(ranked: RankedScores, positive: np.ndarray, negative: np.ndarray,
                     threshold: float) -> dict[str, np.ndarray]:
    """ROC AUC, average precision, precision and recall at `score >= threshold` for each row of
    the (k, n) weight matrices: how much each scored row counts as a positive and as a negative.

    Weights 0/1 are ordinary labels, bootstrap counts times labels a resample, and p / 1 - p the
    expected metrics of CBPE. Ties in score count half (ROC AUC) and form one step (average
    precision), as scikit-learn's `roc_auc_score` and `average_precision_score` do.
    """
    pos = np.atleast_2d(np.asarray(positive, dtype="float64"))[:, ranked.order]
    neg = np.atleast_2d(np.asarray(negative, dtype="float64"))[:, ranked.order]
    pos_g = np.add.reduceat(pos, ranked.starts, axis=1)  # (k, groups), ascending score
    neg_g = np.add.reduceat(neg, ranked.starts, axis=1)
    total_pos, total_neg = pos_g.sum(axis=1), neg_g.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        below = np.cumsum(neg_g, axis=1) - neg_g
        roc_auc = (pos_g * (below + 0.5 * neg_g)).sum(axis=1) / (total_pos * total_neg)
        tp = np.cumsum(pos_g[:, ::-1], axis=1)  # descending score: rows at or above each score
        fp = np.cumsum(neg_g[:, ::-1], axis=1)
        precision_curve = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        pr_auc = (pos_g[:, ::-1] * precision_curve).sum(axis=1) / total_pos
        flagged = ranked.scores >= threshold
        tp_t, fp_t = pos_g[:, flagged].sum(axis=1), neg_g[:, flagged].sum(axis=1)
        precision = tp_t / (tp_t + fp_t)
        recall = tp_t / total_pos
    return {"roc_auc": roc_auc, "pr_auc": pr_auc, "precision": precision, "recall": recall}


def wilson_interval(successes: float, trials: float, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson's score interval for a proportion (nan, nan with no trials)."""
    if trials <= 0:
        return math.nan, math.nan
    z = float(stats.norm.ppf(0.5 + confidence / 2))
    share = successes / trials
    centre = (share + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(share * (1 - share) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return max(0.0, centre - half), min(1.0, centre + half)


def _interval(draws: np.ndarray) -> tuple[float, float]:
    finite = draws[np.isfinite(draws)]
    if not len(finite):
        return math.nan, math.nan
    tail = (1 - CONFIDENCE) / 2
    low, high = np.quantile(finite, [tail, 1 - tail])
    return float(low), float(high)


def _number(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


@dataclass(frozen=True)
class Estimate:
    """One metric: its value and 95 % interval (None where undefined, e.g. no positives)."""

    value: float | None
    low: float | None
    high: float | None

    @classmethod
    def of(cls, value: float, low: float, high: float) -> Estimate:
        return cls(_number(value), _number(low), _number(high))

    def to_dict(self) -> dict[str, float | None]:
        return {"value": self.value, "low": self.low, "high": self.high}


def realized_metrics(scores: np.ndarray, labels: np.ndarray, threshold: float,
                     rng: np.random.Generator, resamples: int = RESAMPLES) -> dict[str, Estimate]:
    """The metrics on known labels; bootstrap intervals for the AUCs, Wilson's for the rates."""
    ranked = RankedScores.of(scores)
    y = np.asarray(labels, dtype="float64")
    point = {k: float(v[0]) for k, v in weighted_metrics(ranked, y, 1 - y, threshold).items()}
    counts = rng.poisson(1.0, size=(resamples, len(y))).astype("float64")  # the Poisson bootstrap
    boot = weighted_metrics(ranked, counts * y, counts * (1 - y), threshold)
    flagged = np.asarray(scores) >= threshold
    tp = float((flagged & (y == 1)).sum())
    out = {k: Estimate.of(point[k], *_interval(boot[k])) for k in ("roc_auc", "pr_auc")}
    out["precision"] = Estimate.of(point["precision"], *wilson_interval(tp, float(flagged.sum())))
    out["recall"] = Estimate.of(point["recall"], *wilson_interval(tp, float(y.sum())))
    return out


def estimated_metrics(scores: np.ndarray, probabilities: np.ndarray, threshold: float,
                      rng: np.random.Generator, resamples: int = RESAMPLES) -> dict[str, Estimate]:
    """CBPE: the expected metrics if each row is a positive with its calibrated probability;
    the interval spans the metrics of labels drawn as Bernoulli(probability)."""
    ranked = RankedScores.of(scores)
    p = np.clip(np.asarray(probabilities, dtype="float64"), 0.0, 1.0)
    point = weighted_metrics(ranked, p, 1 - p, threshold)
    drawn = (rng.random((resamples, len(p))) < p).astype("float64")
    spread = weighted_metrics(ranked, drawn, 1 - drawn, threshold)
    return {k: Estimate.of(float(point[k][0]), *_interval(spread[k])) for k in METRICS}


# Calibration -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Calibration:
    """How well the scores match the label rate on the reference window, and what was done."""

    rows: int
    positives: int
    spiegelhalter_z: float
    spiegelhalter_p: float
    flagged_rows: int          # rows at or above the threshold
    flagged_z: float           # (positives - expected positives) / sd among them
    flagged_p: float
    ece: float                 # expected calibration error of the raw scores (equal-count bins)
    ece_calibrated: float      # of the scores as used for estimating (in-sample when calibrated)
    calibrated: bool           # an isotonic map was fitted because a test rejected
    bins: list[dict[str, float]] = field(default_factory=list)  # mean score vs label rate per bin

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "alpha": CALIBRATION_ALPHA,
                "method": "isotonic regression on the reference window" if self.calibrated else "none needed"}


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray,
                               bins: int = CALIBRATION_BINS) -> tuple[float, list[dict[str, float]]]:
    """Row-weighted mean |mean probability - label rate| over equal-count bins, and the bins."""
    order = np.argsort(probabilities, kind="stable")
    table = []
    ece = 0.0
    for part in np.array_split(order, min(bins, len(order))):
        if not len(part):
            continue
        mean_p, rate = float(probabilities[part].mean()), float(labels[part].mean())
        ece += len(part) / len(order) * abs(mean_p - rate)
        table.append({"rows": int(len(part)), "mean_probability": mean_p, "label_rate": rate})
    return ece, table


def spiegelhalter(probabilities: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Spiegelhalter's z statistic of calibration and its two-sided p-value."""
    p = np.clip(probabilities, 1e-12, 1 - 1e-12)
    variance = float(((1 - 2 * p) ** 2 * p * (1 - p)).sum())
    if variance <= 0:
        return math.nan, math.nan
    z = float(((labels - p) * (1 - 2 * p)).sum()) / math.sqrt(variance)
    return z, float(2 * stats.norm.sf(abs(z)))


def expected_positives_test(probabilities: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Do the rows hold as many positives as their probabilities add up to? z and two-sided p."""
    variance = float((probabilities * (1 - probabilities)).sum())
    if variance <= 0:
        return math.nan, math.nan
    z = float((labels - probabilities).sum()) / math.sqrt(variance)
    return z, float(2 * stats.norm.sf(abs(z)))


def calibrate(scores: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> tuple[Calibration, Any]:
    """Check the reference window's calibration; the map from scores to probabilities to use.

    Two tests, either of which rejecting at `CALIBRATION_ALPHA` fits an isotonic map: Spiegelhalter's
    over every row, which the bulk of low scores dominates, and expected against actual positives
    among the rows at or above the threshold, where precision and recall are decided.
    """
    from sklearn.isotonic import IsotonicRegression

    scores, labels = np.asarray(scores, dtype="float64"), np.asarray(labels, dtype="float64")
    if labels.min() == labels.max():
        raise FeastkitError(f"the reference window has only one class ({int(labels.sum())} positives in "
                            f"{len(labels):,} rows): calibration cannot be checked",
                            "use a longer reference window with mature labels (--reference-start/--reference-end)")
    z, p_value = spiegelhalter(scores, labels)
    flagged = scores >= threshold
    flagged_z, flagged_p = expected_positives_test(scores[flagged], labels[flagged])
    ece, table = expected_calibration_error(scores, labels)
    needed = any(math.isfinite(p) and p < CALIBRATION_ALPHA for p in (p_value, flagged_p))
    if needed:
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(scores, labels)
        mapping: Any = iso.predict
        after, _ = expected_calibration_error(mapping(scores), labels)
    else:
        mapping, after = (lambda s: np.asarray(s, dtype="float64")), ece
    return Calibration(len(labels), int(labels.sum()), z, p_value, int(flagged.sum()), flagged_z, flagged_p,
                       ece, after, needed, table), mapping


# Weeks of scored rows ------------------------------------------------------------------------------

@dataclass
class PeriodPerformance:
    """One week of scored transactions: realized metrics once mature, estimated ones always."""

    start: datetime
    end: datetime
    rows: int
    mature: bool
    positives_known: int             # chargebacks known by as_of (all of them once mature)
    realized: dict[str, Estimate] | None
    estimated: dict[str, Estimate]
    dropped: list[str] = field(default_factory=list)  # metrics whose upper bound fell below the allowed drop

    @property
    def degraded(self) -> bool:
        return bool(self.dropped)

    @property
    def error(self) -> dict[str, float | None] | None:
        """Estimated minus realized, per metric (mature weeks)."""
        if self.realized is None:
            return None
        return {k: None if self.realized[k].value is None or self.estimated[k].value is None
                else self.estimated[k].value - self.realized[k].value for k in METRICS}

    def judged(self) -> dict[str, Estimate]:
        """What this week is judged by: realized metrics when mature, estimated ones before."""
        return self.realized if self.realized is not None else self.estimated

    def to_dict(self) -> dict[str, Any]:
        return {"start": self.start.isoformat(), "end": self.end.isoformat(), "rows": self.rows,
                "mature": self.mature, "positives_known": self.positives_known,
                "realized": None if self.realized is None else {k: v.to_dict() for k, v in self.realized.items()},
                "estimated": {k: v.to_dict() for k, v in self.estimated.items()},
                "estimate_error": self.error, "degraded": self.degraded, "dropped": self.dropped}


def week_start(moment: pd.Timestamp) -> pd.Timestamp:
    """Monday 00:00 UTC of the ISO week holding `moment`."""
    day = pd.Timestamp(moment).tz_convert(UTC).normalize()
    return day - pd.Timedelta(days=day.weekday())


def weekly_performance(scored: pd.DataFrame, threshold: float, to_probability: Any, as_of: datetime,
                       maturity: timedelta, seed: int = 0) -> list[PeriodPerformance]:
    """Per ISO week of `scored` (columns time, score, label: 1 = a chargeback known by as_of)."""
    if scored.empty:
        return []
    rng = np.random.default_rng(seed)
    times = pd.to_datetime(scored["time"], utc=True)
    periods = []
    for week, part in scored.assign(time=times).groupby(times.map(week_start).to_numpy(), sort=True):
        start = pd.Timestamp(week).to_pydatetime()
        end = min(start + timedelta(days=7), part["time"].max().to_pydatetime() + timedelta(microseconds=1))
        scores, labels = part["score"].to_numpy("float64"), part["label"].to_numpy("float64")
        mature = end + maturity <= as_of
        realized = realized_metrics(scores, labels, threshold, rng) if mature else None
        estimated = estimated_metrics(scores, to_probability(scores), threshold, rng)
        periods.append(PeriodPerformance(start, end, len(part), mature, int(labels.sum()), realized, estimated))
    return periods


# Where the scores come from -----------------------------------------------------------------------

SOURCES = ("history", "log")


def data_end(clean_dir: Path) -> datetime:
    """The time of the last clean transaction: labels are known as of then by default."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from feastkit.clean import clean_table

    column = pq.read_table(clean_table(Path(clean_dir), "transactions"), columns=["event_timestamp"]).column(0)
    return pd.Timestamp(pc.max(column).as_py()).tz_convert(UTC).to_pydatetime()


def scored_history(store: Any, clean_dir: Path, service: str, bundle: Any, start: datetime, end: datetime,
                   as_of: datetime) -> pd.DataFrame:
    """Every transaction of [start, end) scored by `bundle` on its point-in-time features, with
    its label as known at `as_of` (a backtest: what the model would have said)."""
    from feastkit.recipes import AS_OF_OFFSET, fraud_entities
    from feastkit.services import build_training_set

    entities = fraud_entities(clean_dir, start, min(end, as_of), label_as_of=as_of, maturity=timedelta(0))
    labels = entities.pop("label").to_numpy()
    features = build_training_set(store, service, entities)
    scores, _ = bundle.predict_proba(features)
    return pd.DataFrame({"time": pd.to_datetime(entities["event_timestamp"], utc=True) + AS_OF_OFFSET,
                         "score": scores, "label": labels})


def scored_log(log_dir: Path, clean_dir: Path, service: str, model_version: str, start: datetime,
               end: datetime, as_of: datetime) -> tuple[pd.DataFrame, int]:
    """The logged predictions of `model_version` in [start, end), each labelled by a chargeback of
    the same user, merchant and transaction time known at `as_of`; and how many logged rows of
    other model versions were left out."""
    from feastkit import prediction_log as fmt
    from monitoring.replay import read_log

    log = read_log(log_dir, service, start, end)
    other = int((log[fmt.MODEL_VERSION].astype(str) != model_version).sum())
    log = log[log[fmt.MODEL_VERSION].astype(str) == model_version]
    absent = [c for c in ("user_id", "merchant_id") if c not in log.columns]
    if absent:
        raise FeastkitError(f"the prediction log of {service} has no {absent} to match chargebacks on",
                            "the performance check reads fraud services (user and merchant keys)")
    labels = pd.read_parquet(Path(clean_dir) / "fraud_labels.parquet",
                             columns=["user_id", "merchant_id", "transaction_timestamp", "label_timestamp"])
    labels = labels[pd.to_datetime(labels["label_timestamp"], utc=True) <= pd.Timestamp(as_of)]
    times = pd.to_datetime(log[fmt.REQUEST_TIME], utc=True)
    key = pd.DataFrame({"user_id": log["user_id"].astype("int64").to_numpy(),
                        "merchant_id": log["merchant_id"].astype("int64").to_numpy(),
                        "time": times.dt.as_unit("us").to_numpy()})
    known = pd.DataFrame({"user_id": labels["user_id"].astype("int64"),
                          "merchant_id": labels["merchant_id"].astype("int64"),
                          "time": pd.to_datetime(labels["transaction_timestamp"], utc=True).dt.as_unit("us"),
                          "label": 1}).drop_duplicates(["user_id", "merchant_id", "time"])
    joined = key.merge(known, how="left", on=["user_id", "merchant_id", "time"], validate="many_to_one")
    return pd.DataFrame({"time": times.to_numpy(), "score": log[fmt.PROBABILITY].to_numpy("float64"),
                         "label": joined["label"].fillna(0).astype("int64").to_numpy()}), other


# One service, every service ------------------------------------------------------------------------

@dataclass
class ServicePerformance:
    """A model's weeks: realized where labels matured, estimated where they have not, and the
    reference window its calibration and the allowed drops are judged against."""

    service: str
    model_version: str
    source: str
    threshold: float
    as_of: datetime
    maturity: timedelta
    max_drops: dict[str, float]
    reference_start: datetime
    reference_end: datetime
    reference: dict[str, Estimate]
    calibration: Calibration
    periods: list[PeriodPerformance]
    left_out_rows: int = 0           # logged rows of other model versions

    @property
    def degraded(self) -> list[PeriodPerformance]:
        return [p for p in self.periods if p.degraded]

    def to_dict(self) -> dict[str, Any]:
        return {"service": self.service, "model_version": self.model_version, "source": self.source,
                "threshold": self.threshold, "as_of": self.as_of.isoformat(),
                "maturity_days": self.maturity / timedelta(days=1), "max_drops": self.max_drops,
                "reference": {"start": self.reference_start.isoformat(), "end": self.reference_end.isoformat(),
                              "metrics": {k: v.to_dict() for k, v in self.reference.items()}},
                "calibration": self.calibration.to_dict(), "left_out_rows": self.left_out_rows,
                "periods": [p.to_dict() for p in self.periods],
                "degraded": [p.start.isoformat() for p in self.degraded]}


def service_performance(store: Any, settings: Any, service: str, source: str = "history",
                        start: datetime | None = None, end: datetime | None = None,
                        as_of: datetime | None = None, maturity: timedelta | None = None,
                        max_auc_drop: float | None = None, max_rate_drop: float | None = None,
                        seed: int = 0) -> ServicePerformance:
    """Weekly realized and estimated performance of a fraud service's promoted model."""
    from feastkit.bundle import current_bundle
    from feastkit.recipes import recipe_of
    from feastkit.times import utc

    if source not in SOURCES:
        raise FeastkitError(f"unknown score source '{source}'", f"use one of {list(SOURCES)}")
    if recipe_of(store, service) != "fraud":
        raise FeastkitError(f"'{service}' is not a fraud service: the performance check follows chargebacks, "
                            "labels that arrive late", "pass a service whose model tag is fraud")
    maturity = timedelta(days=settings.performance_maturity_days) if maturity is None else maturity
    max_auc_drop = settings.performance_max_auc_drop if max_auc_drop is None else max_auc_drop
    max_rate_drop = settings.performance_max_rate_drop if max_rate_drop is None else max_rate_drop
    for name, value in (("ROC AUC", max_auc_drop), ("precision and recall", max_rate_drop)):
        if not 0.0 <= value <= 1.0:
            raise FeastkitError(f"the allowed {name} drop {value} is not in [0, 1]", "pass e.g. 0.05 or 0.2")
    max_drops = {"roc_auc": max_auc_drop, "precision": max_rate_drop, "recall": max_rate_drop}
    bundle = current_bundle(settings.models_dir, service)
    as_of = utc(as_of) if as_of is not None else data_end(settings.clean_dir)
    window = bundle.manifest["evaluation_window"]
    ref_start = utc(datetime.fromisoformat(window["start"]))
    ref_end = utc(datetime.fromisoformat(window["end"])) + timedelta(microseconds=1)
    if ref_end + maturity > as_of:
        raise FeastkitError(f"the model's evaluation window (to {ref_end:%Y-%m-%d}) is not {maturity.days} days "
                            f"old at {as_of:%Y-%m-%d}: its labels have not matured, so calibration cannot be checked",
                            "pass a later --as-of, or a shorter --maturity-days")
    reference_rows = scored_history(store, settings.clean_dir, service, bundle, ref_start, ref_end, as_of)
    rng = np.random.default_rng(seed)
    reference = realized_metrics(reference_rows["score"].to_numpy(), reference_rows["label"].to_numpy(),
                                 bundle.threshold, rng)
    calibration, to_probability = calibrate(reference_rows["score"].to_numpy(), reference_rows["label"].to_numpy(),
                                            bundle.threshold)
    left_out = 0
    if source == "history":
        start = utc(start) if start is not None else ref_start
        end = utc(end) if end is not None else as_of + timedelta(microseconds=1)
        scored = scored_history(store, settings.clean_dir, service, bundle, start, end, as_of)
    else:
        from monitoring.replay import logged_hours

        span = logged_hours(Path(settings.prediction_log_dir))
        if (start is None or end is None) and span is None:
            from feastkit.prediction_log import NothingLogged

            raise NothingLogged(f"no prediction log under {settings.prediction_log_dir}",
                                "serve predictions first, or score history (--source history)")
        start = utc(start) if start is not None else span[0]
        end = min(utc(end) if end is not None else span[1], as_of + timedelta(microseconds=1))
        scored, left_out = scored_log(Path(settings.prediction_log_dir), settings.clean_dir, service,
                                      bundle.version, start, end, as_of)
    periods = weekly_performance(scored, bundle.threshold, to_probability, as_of, maturity, seed)
    for period in periods:
        judged = period.judged()
        period.dropped = [metric for metric, drop in max_drops.items()
                          if reference[metric].value is not None and judged[metric].high is not None
                          and judged[metric].high < reference[metric].value - drop]
    return ServicePerformance(service, bundle.version, source, bundle.threshold, as_of, maturity, max_drops,
                              ref_start, ref_end, reference, calibration, periods, left_out)


@dataclass
class PerformanceOutcome:
    results: list[ServicePerformance]
    report_json: Path
    report_html: Path

    @property
    def degraded(self) -> dict[str, list[str]]:
        return {r.service: [f"{p.start:%Y-%m-%d} ({', '.join(p.dropped)})" for p in r.degraded]
                for r in self.results if r.degraded}


def fraud_services(store: Any, models_dir: Path) -> list[str]:
    """The fraud services with a promoted model."""
    from feastkit.bundle import CURRENT_FILE
    from feastkit.recipes import RECIPE_TAG

    return sorted(s.name for s in store.list_feature_services()
                  if s.tags.get(RECIPE_TAG) == "fraud" and (Path(models_dir) / s.name / CURRENT_FILE).is_file())


def performance_check(settings: Any, service: str | None = None, source: str = "history",
                      start: datetime | None = None, end: datetime | None = None, as_of: datetime | None = None,
                      maturity_days: float | None = None, max_auc_drop: float | None = None,
                      max_rate_drop: float | None = None, store: Any = None) -> PerformanceOutcome:
    """Performance of every fraud service with a promoted model (or one); writes the reports."""
    from feastkit.store import open_store, require_applied

    store = store or open_store(settings)
    require_applied(store)
    known = {s.name for s in store.list_feature_services()}
    if service is not None and service not in known:
        raise FeastkitError(f"unknown feature service '{service}'", f"use one of {sorted(known)}")
    if maturity_days is not None and not maturity_days >= 0:
        raise FeastkitError(f"--maturity-days {maturity_days} is negative", "pass the days labels take to arrive, e.g. 30")
    services = [service] if service else fraud_services(store, settings.models_dir)
    if not services:
        raise FeastkitError("no fraud service has a promoted model", "run `feastkit train` first")
    if source == "log":  # the services with logged predictions in the interval, or nothing to check
        from feastkit import prediction_log as fmt
        from feastkit.prediction_log import NothingLogged

        log_dir = Path(settings.prediction_log_dir)
        services = [s for s in services if fmt.log_files(log_dir, s, start, end)]
        if not services:
            raise NothingLogged(f"no prediction log under {log_dir} for {service or 'any fraud service'} "
                                "in the interval asked about", "serve predictions first (the log is on by "
                                "default), or score history (--source history)")
    maturity = None if maturity_days is None else timedelta(days=maturity_days)
    results = [service_performance(store, settings, name, source, start, end, as_of, maturity, max_auc_drop,
                                   max_rate_drop) for name in services]
    json_path, html_path = write_performance_reports(Path(settings.reports_dir), results)
    write_performance_metrics(settings, results)
    return PerformanceOutcome(results, json_path, html_path)


# Reports -------------------------------------------------------------------------------------------

def write_performance_reports(reports_dir: Path, results: list[ServicePerformance],
                              generated_at: datetime | None = None) -> tuple[Path, Path]:
    """`performance-<stamp>.json` and `.html` in `reports_dir`; their paths."""
    generated_at = generated_at or datetime.now(UTC)
    stamp = f"{generated_at:%Y%m%dT%H%M%S%fZ}"
    reports_dir.mkdir(parents=True, exist_ok=True)
    document = {"generated_at": generated_at.isoformat(), "confidence": CONFIDENCE,
                "services": [r.to_dict() for r in results]}
    json_path = reports_dir / f"performance-{stamp}.json"
    html_path = reports_dir / f"performance-{stamp}.html"
    json_path.write_text(json.dumps(document, indent=2, default=str))
    html_path.write_text(render_html(document, results))
    return json_path, html_path


def plot_periods(result: ServicePerformance) -> str:
    """The four metrics per week (realized with intervals, estimated as a band) as a base64 PNG."""
    import base64
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(METRICS), figsize=(14, 3.2), dpi=100)
    x = [p.start for p in result.periods]
    for ax, metric in zip(axes, METRICS, strict=True):
        est = [p.estimated[metric] for p in result.periods]
        value = [np.nan if e.value is None else e.value for e in est]
        ax.fill_between(x, [np.nan if e.low is None else e.low for e in est],
                        [np.nan if e.high is None else e.high for e in est], color="#9ecae1", alpha=0.5,
                        label="estimated (CBPE), 95 %")
        ax.plot(x, value, color="#3182bd", marker=".")
        mature = [p for p in result.periods if p.realized is not None and p.realized[metric].value is not None]
        if mature:
            got = [p.realized[metric] for p in mature]
            centre = np.array([g.value for g in got])
            low = np.array([g.value if g.low is None else g.low for g in got])
            high = np.array([g.value if g.high is None else g.high for g in got])
            # a percentile bootstrap interval need not hold the point (few positives): no negative bars
            ax.errorbar([p.start for p in mature], centre,
                        yerr=[np.maximum(centre - low, 0), np.maximum(high - centre, 0)], fmt="o",
                        color="#e6550d", capsize=2, label="realized, 95 %")
        ref = result.reference[metric].value
        if ref is not None:
            ax.axhline(ref, color="#636363", linestyle="--", linewidth=1, label="reference window")
        ax.set_title(METRIC_NAMES[metric], fontsize=9)
        ax.tick_params(axis="x", labelrotation=45, labelsize=7)
    axes[0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _cell(estimate: dict[str, float | None] | None) -> str:
    if not estimate or estimate["value"] is None:
        return "<td></td>"
    span = "" if estimate["low"] is None else f" <small>[{estimate['low']:.3f}, {estimate['high']:.3f}]</small>"
    return f"<td>{estimate['value']:.3f}{span}</td>"


def render_html(document: dict[str, Any], results: list[ServicePerformance]) -> str:
    parts = ["<!doctype html><meta charset='utf-8'><title>feastkit performance</title>",
             "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child{text-align:left}"
             ".bad{background:#fdd}.est{color:#3182bd}</style>",
             f"<h1>Model performance</h1><p>generated {escape(document['generated_at'])}. Realized metrics for "
             "weeks whose chargebacks have matured; for later weeks, metrics estimated from the calibrated scores "
             "(CBPE), which assumes the odds given the features are unchanged: it follows shifts in the features, "
             "not a change in what they mean.</p>"]
    for service, result in zip(document["services"], results, strict=True):
        cal = service["calibration"]
        parts.append(
            f"<h2>{escape(service['service'])}</h2><p>model {escape(service['model_version'])}, scores from "
            f"{escape(service['source'])}, threshold {service['threshold']:.3f}; labels as of "
            f"{escape(service['as_of'])}, mature after {service['maturity_days']:g} days. Reference: the model's "
            f"evaluation window [{escape(service['reference']['start'])}, {escape(service['reference']['end'])}). "
            f"Calibration there: {cal['rows']:,} rows, {cal['positives']:,} positives, Spiegelhalter p = "
            f"{cal['spiegelhalter_p']:.3g}; at or above the threshold {cal['flagged_rows']:,} rows, expected vs "
            f"actual positives p = {cal['flagged_p']:.3g}; ECE {cal['ece']:.4f} ({escape(cal['method'])}"
            + (f"; ECE after {cal['ece_calibrated']:.4f}, in-sample" if cal["calibrated"] else "") + "). "
            "A week is flagged when a metric's upper bound is further under the reference's than allowed ("
            + ", ".join(f"{METRIC_NAMES[k]} {v:g}" for k, v in service["max_drops"].items()) + ").</p>")
        if service["left_out_rows"]:
            parts.append(f"<p>{service['left_out_rows']:,} logged row(s) of other model versions left out.</p>")
        if result.periods:
            parts.append(f"<img alt='performance per week' src='data:image/png;base64,{plot_periods(result)}'>")
        head = "".join(f"<th>{METRIC_NAMES[m]}</th>" for m in METRICS)
        parts.append(f"<table><tr><th>week</th><th>rows</th><th>chargebacks known</th><th>labels</th>{head}"
                     f"<th>estimate error (ROC AUC)</th></tr>")
        ref = service["reference"]["metrics"]
        parts.append("<tr><td>reference</td><td></td><td></td><td>realized</td>"
                     + "".join(_cell(ref[m]) for m in METRICS) + "<td></td></tr>")
        for p in service["periods"]:
            cls = " class='bad'" if p["degraded"] else ""
            shown = p["realized"] or p["estimated"]
            kind = "realized" if p["realized"] else "<span class='est'>estimated</span>"
            error = p["estimate_error"]["roc_auc"] if p["estimate_error"] else None
            parts.append(f"<tr{cls}><td>{escape(p['start'][:10])}</td><td>{p['rows']:,}</td>"
                         f"<td>{p['positives_known']:,}</td><td>{kind}</td>"
                         + "".join(_cell(shown[m]) for m in METRICS)
                         + f"<td>{'' if error is None else f'{error:+.3f}'}</td></tr>")
        parts.append("</table>")
    return "\n".join(parts)
