"""Monitoring reports: a JSON document with a stable schema and a self-contained HTML page."""

from __future__ import annotations

import base64
import html
import io
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from monitoring.drift import DriftThresholds

if TYPE_CHECKING:
    from monitoring.checks import MonitoringOutcome, ServiceDrift

SCHEMA_VERSION = 1
LATEST_JSON = "latest.json"
LATEST_HTML = "latest.html"
REFERENCE_COLOR = "#4C72B0"
CURRENT_COLOR = "#DD8452"


def build_document(outcome: MonitoringOutcome, thresholds: DriftThresholds, generated_at: datetime,
                   checks: list[str]) -> dict[str, Any]:
    """The JSON report (schema documented in docs/monitoring.md)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "generated_at": generated_at.isoformat(),
        "checks": checks,
        "thresholds": {"alpha": thresholds.alpha, "ks_statistic": thresholds.ks_statistic,
                       "psi": thresholds.psi, "null_rate_change": thresholds.null_rate_change},
        "summary": {"ok": outcome.ok, "drifted": outcome.drifted, "stale": outcome.stale,
                    "skewed": outcome.skewed, "notes": outcome.notes},
        "drift": [d.to_dict() for d in outcome.drift],
        "freshness": [f.to_dict() for f in outcome.freshness],
        "skew": [{"feature_service": service, "features": [f.to_dict() for f in results]}
                 for service, results in outcome.skew.items()],
    }


def write_reports(reports_dir: Path, outcome: MonitoringOutcome, *, thresholds: DriftThresholds,
                  generated_at: datetime | None = None,
                  checks: list[str] | None = None) -> tuple[Path, Path, dict[str, Any]]:
    """Write monitoring-<time>.json/.html under reports_dir and point latest.json/.html at them."""
    generated_at = generated_at or datetime.now(UTC)
    document = build_document(outcome, thresholds, generated_at, checks or [])
    reports_dir.mkdir(parents=True, exist_ok=True)
    stem = f"monitoring-{generated_at:%Y%m%dT%H%M%S%fZ}"
    json_path, html_path = reports_dir / f"{stem}.json", reports_dir / f"{stem}.html"
    text = json.dumps(document, indent=2, sort_keys=False, default=str)
    page = render_html(document, outcome.drift)
    for path, content in ((json_path, text), (html_path, page),
                          (reports_dir / LATEST_JSON, text), (reports_dir / LATEST_HTML, page)):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(content, encoding="utf-8")
        os.replace(tmp, path)  # readers (the server) never see half a file
    return json_path, html_path, document


# Plots -------------------------------------------------------------------------------------------


def _finite(values: pd.Series) -> np.ndarray:
    array = pd.to_numeric(values, errors="coerce").to_numpy(dtype="float64")
    return array[np.isfinite(array)]


def plot_feature(name: str, kind: str, reference: pd.Series, current: pd.Series, title: str) -> str:
    """Reference vs current as a PNG (base64): distribution on the left, ECDF on the right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ref, cur = _finite(reference), _finite(current)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.4), dpi=100)
    labels = (f"reference (n={len(ref):,})", f"current (n={len(cur):,})")
    if kind == "categorical":
        cats = np.unique(np.concatenate([ref, cur]))
        ref_share = np.array([(ref == c).mean() if len(ref) else 0 for c in cats])
        cur_share = np.array([(cur == c).mean() if len(cur) else 0 for c in cats])
        x = np.arange(len(cats))
        left.bar(x - 0.2, ref_share, 0.4, color=REFERENCE_COLOR, label=labels[0])
        left.bar(x + 0.2, cur_share, 0.4, color=CURRENT_COLOR, label=labels[1])
        step = max(1, len(cats) // 12)
        left.set_xticks(x[::step], [f"{c:g}" for c in cats[::step]])
        left.set_ylabel("share of rows")
        for ax in (left, right):
            ax.set_xlabel(name, fontsize=8)
    else:
        both = np.concatenate([ref, cur])
        lo, hi = np.quantile(both, [0.005, 0.995]) if len(both) else (0.0, 1.0)
        if hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5
        positive = both[both > 0]
        # a long right tail (model scores, amounts) squeezes a linear axis into one bar: use log x
        log_x = bool(lo >= 0 and len(positive) and
                     np.quantile(both, 0.9) - lo < 0.15 * (hi - lo))
        if log_x:
            log_lo = max(lo, float(np.quantile(positive, 0.005)))
            log_x = log_lo < hi
            lo = log_lo if log_x else lo
        bins = np.geomspace(lo, hi, 41) if log_x else np.linspace(lo, hi, 41)
        # reference filled and pale, current as a bold outline: both stay visible where they overlap
        # bar height = share of the window's rows in the bin (comparable across windows and scales)
        left.hist(np.clip(ref, lo, hi), bins=bins, weights=np.full(len(ref), 1 / max(len(ref), 1)),
                  alpha=0.35, color=REFERENCE_COLOR, label=labels[0])
        left.hist(np.clip(cur, lo, hi), bins=bins, weights=np.full(len(cur), 1 / max(len(cur), 1)),
                  histtype="step", linewidth=2, color=CURRENT_COLOR, label=labels[1])
        left.set_ylabel("share of rows per bin")
        if log_x:
            for ax in (left, right):
                ax.set_xscale("log")
            right.set_xlim(lo, hi)
        else:
            right.set_xlim(lo - (hi - lo) * 0.02, hi + (hi - lo) * 0.02)
        scale = ", log scale" if log_x else ""
        for ax in (left, right):
            ax.set_xlabel(f"{name}  (middle 99% shown{scale}; tails in the end bins)", fontsize=8)
    left.set_title("distribution", fontsize=10)
    left.legend(fontsize=8, frameon=False)
    both = np.concatenate([ref, cur])
    # the ECDFs evaluated on one grid of at most ~800 points: same picture, far cheaper to draw
    grid = np.unique(np.quantile(both, np.linspace(0, 1, 801))) if len(both) else both
    if kind == "numeric" and len(grid):
        grid = np.clip(grid, lo, hi)
    for values, color, label in ((ref, REFERENCE_COLOR, labels[0]), (cur, CURRENT_COLOR, labels[1])):
        if len(values):
            share = np.searchsorted(np.sort(values), grid, side="right") / len(values)
            right.step(grid, share, where="post", color=color, label=label, linewidth=1.6)
    right.set_title("cumulative share (ECDF)", fontsize=10)
    right.set_ylim(0, 1.02)
    right.set_ylabel("share of rows <= x")
    right.grid(alpha=0.3)
    right.legend(fontsize=8, frameon=False, loc="lower right")
    for ax in (left, right):
        ax.spines[["top", "right"]].set_visible(False)
        ax.tick_params(labelsize=8)
    fig.suptitle(title, fontsize=11, x=0.01, ha="left")
    return _png(fig)


# HTML --------------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1100px;
color:#222;padding:0 16px}
h1{font-size:22px;margin-bottom:4px} h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd}
h3{font-size:15px;margin-bottom:4px}
.meta{color:#666;font-size:13px}
.status{display:inline-block;padding:6px 12px;border-radius:4px;font-weight:600;margin:12px 0}
.ok{background:#e3f4e6;color:#1e6b2f} .bad{background:#fde5e3;color:#9b1c1c}
table{border-collapse:collapse;font-size:13px;width:100%;margin:8px 0}
th,td{padding:4px 8px;border-bottom:1px solid #eee;text-align:right;white-space:nowrap}
th{background:#f6f6f6;position:sticky;top:0} td.l,th.l{text-align:left}
tr.flag td{background:#fff1ef} tr.flag td:first-child{font-weight:600}
.badge{font-size:11px;padding:1px 6px;border-radius:3px;background:#9b1c1c;color:#fff}
.muted{color:#999} img{max-width:100%;border:1px solid #eee;margin:4px 0 16px}
.note{font-size:12px;color:#666}
"""


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return '<span class="muted">–</span>'
    if isinstance(value, float):
        if value != 0 and abs(value) < 10 ** -digits:
            return f"{value:.1e}"
        return f"{value:,.{digits}f}"
    return html.escape(str(value))


def plot_joint(x_name: str, y_name: str, reference: pd.DataFrame, current: pd.DataFrame, title: str) -> str:
    """Two features against each other, reference beside current, as a PNG (base64): how a
    change in their relation looks when each feature's own distribution has not moved."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), dpi=100, sharex=True, sharey=True)
    for ax, frame, label, color in ((axes[0], reference, "reference", REFERENCE_COLOR),
                                    (axes[1], current, "current", CURRENT_COLOR)):
        xy = frame[[x_name, y_name]].apply(pd.to_numeric, errors="coerce").dropna()
        xy = xy.sample(n=min(len(xy), 3000), random_state=0)
        ax.scatter(xy[x_name], xy[y_name], s=4, alpha=0.3, color=color)
        ax.set_title(f"{label} (n={len(xy):,} shown)", fontsize=9)
        ax.set_xlabel(x_name, fontsize=8)
    axes[0].set_ylabel(y_name, fontsize=8)
    fig.suptitle(title, fontsize=9)
    return _png(fig)


def _png(fig: Any) -> str:
    """A laid-out figure as base64 PNG, closed afterwards."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _multivariate_section(service: dict[str, Any], run: ServiceDrift | None) -> str:
    tests = service.get("multivariate") or []
    if not tests:
        return ""
    rows = "".join(
        f'<tr class="{"flag" if m["drifted"] else ""}"><td class="l">{html.escape(m["ref"])}</td>'
        f'<td>{len(m["features"])}</td><td>{m["auc"]:.3f}</td><td>{_num(m["p_value"])}</td>'
        f'<td>{_num(m["null_auc_max"])}</td><td>{m["permutations"]}</td>'
        f'<td class="l">{html.escape(", ".join(t["feature"] for t in m["top_features"][:3]))}</td>'
        f'<td class="l">{html.escape("; ".join(m["reasons"]))}</td></tr>' for m in tests)
    parts = ["<p class='note'>Multivariate: a domain classifier (boosted trees, out-of-fold, folds grouped "
             "by entity) tries to tell current rows from reference rows; shuffled window labels, refitted, "
             "give its null (no shuffle runs for an AUROC below the bar, and they stop once the decision is "
             "known). It sees changes in how features go together that per-feature tests miss.</p>"
             "<table><tr><th class='l'>test</th><th>features</th><th>AUROC</th><th>permutation p</th>"
             "<th>best shuffle</th><th>shuffles</th><th class='l'>most telling</th>"
             f"<th class='l'>why flagged</th></tr>{rows}</table>"]
    for m in tests:
        if not m["drifted"]:
            continue
        img = ""
        top = [t["feature"] for t in m["top_features"][:2]]
        if run is not None and run.reference_frame is not None and len(top) == 2 \
                and all(c in run.reference_frame for c in top):
            png = plot_joint(top[0], top[1], run.reference_frame, run.current_frame,
                             f"{m['ref']}: AUROC {m['auc']:.3f}, permutation p {m['p_value']:.3f}")
            img = (f'<img alt="{html.escape(m["ref"])}: {html.escape(top[0])} vs {html.escape(top[1])}" '
                   f'data-feature="{html.escape(m["ref"])}" src="data:image/png;base64,{png}">')
        parts.append(f'<h3 id="{_anchor(m["ref"])}">{html.escape(m["ref"])}</h3>'
                     f'<div class="note">{html.escape("; ".join(m["reasons"]))}</div>{img}')
    return "".join(parts)


def _anchor(text: str) -> str:
    return "f-" + "".join(c if c.isalnum() else "-" for c in text)


def _drift_table(service: dict[str, Any]) -> str:
    rows = []
    features = list(service["features"])
    if service.get("prediction"):
        features.append({**service["prediction"], "ref": f"prediction:{service['feature_service']}"})
    order = sorted(features, key=lambda f: (not f["drifted"], -(f["psi"] or 0)))
    for f in order:
        name = html.escape(f["ref"])
        link = f'<a href="#{_anchor(f["ref"])}">{name}</a>' if f["drifted"] else name
        badge = ' <span class="badge">drift</span>' if f["drifted"] else ""
        rows.append(
            f'<tr class="{"flag" if f["drifted"] else ""}"><td class="l">{link}{badge}</td>'
            f'<td class="l">{f["kind"]}</td><td class="l">{f["test"]}</td>'
            f"<td>{_num(f['statistic'])}</td><td>{_num(f['p_value'])}</td><td>{_num(f['p_adjusted'])}</td>"
            f"<td>{_num(f['psi'])}</td><td>{_num(f['mean_reference'])}</td><td>{_num(f['mean_current'])}</td>"
            f"<td>{f['null_rate_reference']:.1%} → {f['null_rate_current']:.1%}</td>"
            f'<td class="l">{html.escape("; ".join(f["reasons"]))}</td></tr>')
    head = ("<tr><th class='l'>feature</th><th class='l'>kind</th><th class='l'>test</th><th>statistic</th>"
            "<th>p</th><th>BH q</th><th>PSI</th><th>mean ref</th><th>mean cur</th><th>nulls</th>"
            "<th class='l'>why flagged</th></tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def render_html(document: dict[str, Any], drift: list[ServiceDrift]) -> str:
    """One self-contained page: status, summary tables, and plots of every drifted feature."""
    s = document["summary"]
    t = document["thresholds"]
    problems = [f"{len(s['drifted'])} drifted", f"{len(s['stale'])} stale view(s)",
                f"{len(s['skewed'])} skewed feature(s)"]
    status = ('<div class="status ok">OK: no drift, nothing stale, no skew</div>' if s["ok"] else
              f'<div class="status bad">ATTENTION: {", ".join(problems)}</div>')
    parts = [f"<h1>feastkit monitoring report</h1><div class='meta'>generated "
             f"{html.escape(document['generated_at'])} · checks: {', '.join(document['checks'])}</div>",
             status]
    parts.extend(f"<p class='note'><b>Note:</b> {html.escape(n)}</p>" for n in s.get("notes", []))
    if s["drifted"]:
        parts.append("<p>Drifted: " + ", ".join(
            f'<a href="#{_anchor(r)}">{html.escape(r)}</a>' for r in s["drifted"]) + "</p>")
    frames = {d.feature_service: d for d in drift}
    for service in document["drift"]:
        ref, cur = service["reference"], service["current"]
        parts.append(f"<h2>Drift · {html.escape(service['feature_service'])}</h2>"
                     f"<p class='meta'>reference [{ref['start'][:16]}, {ref['end'][:16]}) · {ref['rows']:,} rows"
                     f" &nbsp;vs&nbsp; current [{cur['start'][:16]}, {cur['end'][:16]}) · {cur['rows']:,} rows"
                     f"</p><p class='note'>Flagged when the Benjamini–Hochberg adjusted p-value is below "
                     f"{t['alpha']} and the effect is large enough (KS ≥ {t['ks_statistic']} or PSI ≥ "
                     f"{t['psi']}; categorical: PSI ≥ {t['psi']}), or when the null rate moves by ≥ "
                     f"{t['null_rate_change']:.0%}.</p>")
        parts.append(_drift_table(service))
        run = frames.get(service["feature_service"])
        flagged = [f for f in service["features"] if f["drifted"]]
        if service.get("prediction") and service["prediction"]["drifted"]:
            flagged.append({**service["prediction"], "ref": f"prediction:{service['feature_service']}"})
        for f in flagged:
            title = (f"{f['ref']}: mean {_shift(f['mean_reference'], f['mean_current'])} · "
                     f"{'KS' if f['test'] == 'ks' else 'chi²'} {_plain(f['statistic'])} · "
                     f"PSI {_plain(f['psi'])} · BH q {_plain(f['p_adjusted'])}")
            img = ""
            if run is not None and run.reference_frame is not None and f["feature"] in run.reference_frame:
                png = plot_feature(f["feature"], f["kind"], run.reference_frame[f["feature"]],
                                   run.current_frame[f["feature"]], title)
                img = (f'<img alt="{html.escape(f["ref"])} reference vs current" '
                       f'data-feature="{html.escape(f["ref"])}" src="data:image/png;base64,{png}">')
            parts.append(f'<h3 id="{_anchor(f["ref"])}">{html.escape(f["ref"])}</h3>'
                         f'<div class="note">{html.escape("; ".join(f["reasons"]))}</div>{img}')
        parts.append(_multivariate_section(service, run))
    if "freshness" in document["checks"]:
        rows = "".join(
            f'<tr class="{"flag" if v["stale"] else ""}"><td class="l">{html.escape(v["view"])}</td>'
            f'<td class="l">{html.escape(v["materialized_until"] or "never")}</td>'
            f'<td class="l">{v["sla_source"]}</td><td class="l">{"STALE" if v["stale"] else "ok"}</td>'
            f'<td class="l">{html.escape(v["reason"])}</td></tr>' for v in document["freshness"])
        parts.append("<h2>Freshness</h2><table><tr><th class='l'>feature view</th>"
                     "<th class='l'>materialized until</th><th class='l'>SLA from</th>"
                     f"<th class='l'>status</th><th class='l'>detail</th></tr>{rows}</table>")
    if "skew" in document["checks"]:
        parts.append("<h2>Training–serving skew</h2><p class='note'>Online values of sampled entities "
                     "vs Feast's offline point-in-time values at the materialization end.</p>")
        for service in document["skew"]:
            rows = "".join(
                f'<tr class="{"flag" if f["mismatches"] else ""}"><td class="l">{html.escape(f["feature"])}</td>'
                f'<td>{f["compared"]}</td><td>{f["mismatches"]}</td>'
                f'<td class="l">{html.escape(json.dumps(f["examples"][:2], default=str))}</td></tr>'
                for f in service["features"])
            parts.append(f"<h3>{html.escape(service['feature_service'])}</h3><table><tr>"
                         "<th class='l'>feature</th><th>entities</th><th>mismatches</th>"
                         f"<th class='l'>examples</th></tr>{rows}</table>")
    body = "\n".join(parts)
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>feastkit monitoring {html.escape(document['generated_at'][:19])}</title>"
            f"<style>{_CSS}</style></head><body>{body}</body></html>")


def _shift(before: float | None, after: float | None) -> str:
    if before is None or after is None:
        return "n/a"
    change = f" ({(after - before) / abs(before):+.0%})" if before else ""
    return f"{before:,.3g} → {after:,.3g}{change}"


def _plain(value: Any) -> str:
    if value is None:
        return "–"
    if value == 0.0 and isinstance(value, float):
        return "< 1e-300"
    if isinstance(value, float) and value != 0 and abs(value) < 1e-3:
        return f"{value:.1e}"
    return f"{value:.3f}" if isinstance(value, float) else str(value)
