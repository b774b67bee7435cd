"""Freshness per feature view: how old the newest materialized data is, against the view's SLA."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from feastkit.errors import FeastkitError
from feastkit.times import require_aware, utc

if TYPE_CHECKING:
    from feast import FeatureStore

SLA_TAG = "freshness_sla"


@dataclass
class ViewFreshness:
    """One online feature view: its SLA, its materialization watermark and whether it is stale."""

    view: str
    sla_seconds: float | None         # None: no SLA (no tag and no TTL)
    sla_source: str                   # "tag" | "ttl" | "none"
    materialized_until: str | None    # newest materialized instant (ISO, UTC) from the registry
    age_seconds: float | None
    stale: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_sla(text: str, view: str) -> timedelta:
    """'15m', '2h', '26h', '2d' -> timedelta; a clear error naming the view otherwise."""
    units = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
    try:
        value, unit = float(text[:-1]), units[text[-1]]
    except (KeyError, ValueError, IndexError):
        raise FeastkitError(f"feature view '{view}' has tag {SLA_TAG}='{text}', not a duration",
                            "tag it like 15m, 2h or 1d and run `feastkit apply`") from None
    if value <= 0:
        raise FeastkitError(f"feature view '{view}' has a non-positive {SLA_TAG} '{text}'",
                            "tag it with a positive duration and run `feastkit apply`")
    return timedelta(**{unit: value})


def _fmt(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def check_freshness(store: FeatureStore, as_of: datetime | None = None,
                    views: list[str] | None = None) -> list[ViewFreshness]:
    """Age of each online view's materialized data at `as_of` (default now) vs its SLA.

    The newest materialized instant is the end of the view's latest materialization interval,
    as Feast's registry records it. The SLA is the view's `freshness_sla` tag, else its TTL
    (data older than the TTL is not served anyway), else none.
    """
    as_of = require_aware(as_of or datetime.now(UTC), "the freshness time")
    known = {fv.name: fv for fv in store.list_feature_views() if fv.online}
    chosen = sorted(views or known)
    unknown = sorted(set(chosen) - set(known))
    if unknown:
        raise FeastkitError(f"unknown feature view(s) {unknown}", f"choose from {sorted(known)}")
    out = []
    for name in chosen:
        fv = known[name]
        if SLA_TAG in fv.tags:
            sla, source = parse_sla(fv.tags[SLA_TAG], name), "tag"
        elif fv.ttl and fv.ttl > timedelta(0):
            sla, source = fv.ttl, "ttl"
        else:
            sla, source = None, "none"
        intervals = list(fv.materialization_intervals or [])
        newest = max((b for _, b in intervals), default=None) or fv.most_recent_end_time
        if newest is None:
            out.append(ViewFreshness(name, sla.total_seconds() if sla else None, source, None, None,
                                     True, "never materialized"))
            continue
        newest = utc(newest)
        age = (as_of - newest).total_seconds()
        stale = sla is not None and age > sla.total_seconds()
        if sla is None:
            reason = f"{_fmt(max(age, 0))} old, no SLA"
        elif stale:
            reason = f"{_fmt(age)} old > SLA {_fmt(sla.total_seconds())}"
        else:
            reason = f"{_fmt(max(age, 0))} old <= SLA {_fmt(sla.total_seconds())}"
        out.append(ViewFreshness(name, sla.total_seconds() if sla else None, source,
                                 newest.isoformat(), age, stale, reason))
    return out
