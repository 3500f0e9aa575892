"""report.html: one self-contained page (styles and images inline) readable without a server.

Sections: the run's settings (from run.json), headline figures with units, quality (argen evaluate's results
with the reference named), speed per shard (a plot per worker and a table), method counters, the contact sheet
with its rows labelled, what went wrong (retries, replaced workers, repaired shards), links to the run's files.
"""
from __future__ import annotations

import base64
import html
import io
import json
from datetime import datetime
from typing import Any, Sequence

from pipeline import layout
from pipeline.stats import CounterMerger

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.2em;margin-top:1.8em;border-bottom:1px solid #ddd}
.sub{color:#666}.ok{color:#176b2c}.bad{color:#a31515}
table{border-collapse:collapse;margin:.5em 0}td,th{padding:3px 10px;border-bottom:1px solid #eee;text-align:left}
th{font-weight:600;color:#444}td.n{text-align:right;font-variant-numeric:tabular-nums}
.cards{display:flex;flex-wrap:wrap;gap:10px}.card{border:1px solid #ddd;border-radius:6px;padding:8px 14px;min-width:150px}
.card b{display:block;font-size:1.35em}.card span{color:#666;font-size:.9em}
.sheet{display:flex;gap:8px;align-items:flex-start}.labels div{height:66px;line-height:66px;white-space:nowrap;
overflow:hidden;text-overflow:ellipsis;max-width:220px;color:#444}.labels{padding-top:2px}
details pre{background:#f6f6f6;padding:8px;overflow:auto;max-height:400px}
"""


def _num(x: Any, digits: int = 3) -> str:
    if x is None:
        return "—"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        return f"{x:.{digits}g}" if abs(x) < 1e4 else f"{x:,.0f}"
    return str(x)


def _e(x: Any) -> str:
    return html.escape(_num(x) if not isinstance(x, str) else x)


def _table(rows: Sequence[tuple[str, Any]]) -> str:
    return "<table>" + "".join(f"<tr><th>{html.escape(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows) + "</table>"


def _card(value: str, label: str) -> str:
    return f"<div class='card'><b>{html.escape(value)}</b><span>{html.escape(label)}</span></div>"


def _options(options: Any) -> str:
    if not options:
        return "defaults"
    return ", ".join(f"{k}={v}" for k, v in sorted(options.items()))


def settings_rows(run: dict[str, Any] | None, report: dict[str, Any]) -> list[tuple[str, Any]]:
    if not run:
        return [("model", report.get("model")), ("accel", report.get("accel"))]
    config, plan = run.get("config") or {}, (run.get("plan") or {}).get("settings") or {}
    model, accel, data, output = (config.get(k) or {} for k in ("model", "accel", "data", "output"))
    if data.get("conditions_file"):
        conditions = f"{data['conditions_file']} (one sample per entry)"
    else:
        classes = plan.get("data.classes")
        shown = "all" if data.get("classes") is None else ", ".join(map(str, classes or []))
        conditions = f"classes {shown} ({len(classes or [])}) x {plan.get('data.per_class')} per class"
    return [
        ("model", model.get("name")), ("model options", _options(model.get("options"))),
        ("checkpoint", model.get("checkpoint") or ("random init" if model.get("random_init") else "default")),
        ("tokenizer checkpoint", model.get("tokenizer_checkpoint") or "default"),
        ("accel", accel.get("name")), ("accel options", _options(accel.get("options"))),
        ("conditions", conditions), ("samples", (run.get("plan") or {}).get("num_samples")),
        ("shards", f"{(run.get('plan') or {}).get('num_shards')} of {output.get('shard_size')} samples"),
        ("batch size", config.get("batch_size")), ("seed", config.get("seed")), ("device", config.get("device")),
        ("workers", f"{(config.get('ray') or {}).get('num_workers')} "
                    f"({(config.get('ray') or {}).get('gpus_per_worker')} GPU each)"),
        ("output", run.get("output")), ("argen", run.get("argen")), ("started", run.get("created_at")),
        ("plan hash", (run.get("plan") or {}).get("hash")),
    ]


def headline(report: dict[str, Any]) -> str:
    images, planned = report.get("images"), report.get("planned_images")
    cards = [_card(f"{images} / {planned}", "images committed / planned"),
             _card(f"{report.get('shards')} / {report.get('planned_shards')}", "shards committed / planned")]
    if report.get("generated_images"):
        cards.append(_card(f"{report.get('images_per_second', 0):.2f} img/s", "this run, wall clock"))
        if report.get("images_per_second_after_startup"):
            cards.append(_card(f"{report['images_per_second_after_startup']:.2f} img/s",
                               f"after {report.get('startup_seconds', 0):.1f} s start-up"))
    cards.append(_card(f"{report.get('seconds', 0):.1f} s", "this run's wall time"))
    if images:
        cards.append(_card(f"{report.get('flops', 0) / images / 1e9:.3g} GFLOP", "per image (analytic)"))
        cards.append(_card(f"{report.get('bytes', 0) / 1e6:.3g} MB", "of tars"))
    return "<div class='cards'>" + "".join(cards) + "</div>"


def workers_quality(records: Sequence[dict[str, Any]]) -> str:
    """Class-consistency as the workers measured it (eval.features), weighted by images."""
    total = weight = 0.0
    extractor = None
    for r in records:
        q = r.get("quality") or {}
        if q.get("class_consistency") is not None:
            total += float(q["class_consistency"]) * int(r.get("count") or 0)
            weight += int(r.get("count") or 0)
            extractor = q.get("extractor") or extractor
    if not weight:
        return ""
    return _table([("class-consistency", total / weight),
                   ("measured by", f"the workers' {extractor or 'feature'} extractor, {weight:.0f} images")]
                  ) + per_class_table(records)


def per_class_table(records: Sequence[dict[str, Any]], show: int = 20) -> str:
    """Class-consistency of each class id over the shards (the `show` lowest when there are more)."""
    totals: dict[int, list[int]] = {}
    for r in records:
        for c, (hits, n) in ((r.get("quality") or {}).get("class_consistency_by_class") or {}).items():
            t = totals.setdefault(int(c), [0, 0])
            t[0] += int(hits)
            t[1] += int(n)
    if not totals:
        return ""
    ranked = sorted(totals.items(), key=lambda kv: (kv[1][0] / kv[1][1], kv[0]))[:show]
    title = "per class" if len(totals) <= show else f"the {show} lowest of {len(totals)} classes"
    cells = "".join(f"<tr><td class='n'>{c}</td><td class='n'>{h}/{n}</td><td class='n'>{h / n:.2f}</td></tr>"
                    for c, (h, n) in sorted(ranked))
    return (f"<p class='sub'>Class-consistency {title}:</p><table><tr><th>class</th><th>assigned</th>"
            f"<th>share</th></tr>{cells}</table>")


def quality_section(report: dict[str, Any], records: Sequence[dict[str, Any]] = ()) -> str:
    details = report.get("eval") or {}
    if "fid" not in report and "class_consistency" not in report:
        return workers_quality(records) + (
            "<p class='sub'>Not evaluated yet: <code>argen evaluate output.uri=... eval.reference=...</code> "
            "adds FID, Inception Score, precision/recall and class-consistency here.</p>")
    ref = details.get("reference") or {}
    rows = [("FID", report.get("fid")), ("Inception Score", report.get("inception_score")),
            ("IS std", report.get("inception_score_std")), ("precision", report.get("precision")),
            ("recall", report.get("recall")), ("class-consistency", report.get("class_consistency")),
            ("extractor", f"{report.get('extractor')} ({details.get('feature_dim')}-d)"),
            ("samples", details.get("samples")),
            ("reference", ref.get("uri") or "none"), ("reference statistics", ref.get("statistics"))]
    notes = "".join(f"<li>{html.escape(str(n))}</li>" for n in details.get("notes") or [])
    return _table(rows) + (f"<ul class='sub'>{notes}</ul>" if notes else "")


def speed_plot(records: Sequence[dict[str, Any]]) -> str | None:
    """images/s of each shard against the time it finished, one series per worker: an inline PNG."""
    points = []
    for r in records:
        try:
            points.append((datetime.fromisoformat(str(r["finished_at"])), float(r["images_per_second"]),
                           str(r["worker"]).split("@")[0]))
        except (KeyError, ValueError, TypeError):
            continue
    if len(points) < 2:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = min(p[0] for p in points)
    fig, ax = plt.subplots(figsize=(8, 3), dpi=100)
    for worker in sorted({p[2] for p in points}):
        series = sorted(((p[0] - t0).total_seconds(), p[1]) for p in points if p[2] == worker)
        ax.plot([x for x, _ in series], [y for _, y in series], marker="o", markersize=3, linewidth=1, label=worker)
    ax.set_xlabel("seconds since the first shard of the output finished")
    ax.set_ylabel("images / s per shard")
    ax.set_ylim(0, 1.12 * max(p[1] for p in points))  # room above the fastest shard's marker
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def shard_table(records: Sequence[dict[str, Any]], limit: int = 200) -> str:
    head = ("<tr><th>shard</th><th>images</th><th>seconds</th><th>images/s</th><th>GFLOP/image</th>"
            "<th>worker</th><th>attempt</th><th>finished</th></tr>")
    rows = []
    for r in sorted(records, key=lambda r: int(r["shard"]))[:limit]:
        count = int(r.get("count") or 0)
        rows.append(f"<tr><td class='n'>{int(r['shard'])}</td><td class='n'>{count}</td>"
                    f"<td class='n'>{float(r.get('seconds') or 0):.2f}</td>"
                    f"<td class='n'>{float(r.get('images_per_second') or 0):.2f}</td>"
                    f"<td class='n'>{float(r.get('flops') or 0) / max(count, 1) / 1e9:.3g}</td>"
                    f"<td>{_e(r.get('worker'))}</td><td class='n'>{_e(r.get('attempt'))}</td>"
                    f"<td>{_e(r.get('finished_at'))}</td></tr>")
    more = f"<p class='sub'>... and {len(records) - limit} more in manifest.parquet</p>" if len(records) > limit else ""
    return f"<table>{head}{''.join(rows)}</table>{more}"


def counters_section(records: Sequence[dict[str, Any]]) -> str:
    merger = CounterMerger()
    for r in records:
        if isinstance(r.get("counters"), dict) and r["counters"]:
            merger.add({**r["counters"], "images": int(r.get("count") or 1)})
    counters = {k: v for k, v in merger.result().items() if not k.startswith("flops")}  # FLOPs are above
    if not counters:
        return "<p class='sub'>No method counters (accel=none, or shards read from the manifest only).</p>"
    rows = [(k, ", ".join(_num(x) for x in v) if isinstance(v, list) else v) for k, v in sorted(counters.items())]
    return "<p class='sub'>Mean over the images of the shards generated by the last run.</p>" + _table(rows)


def problems_section(report: dict[str, Any]) -> str:
    items = [f"shard retry: {r}" for r in report.get("retries") or []]
    if report.get("replaced_workers"):
        items.append(f"{report['replaced_workers']} worker(s) died and were replaced")
    items += [f"shard {r.get('shard')} was damaged ({r.get('problem')}) and regenerated"
              for r in report.get("repaired_shards") or []]
    if not items:
        return "<p class='ok'>Nothing went wrong in the last run.</p>"
    return "<ul>" + "".join(f"<li>{html.escape(str(i))}</li>" for i in items) + "</ul>"


def sheet_section(sheet: bytes | None, labels: Sequence[str]) -> str:
    if not sheet:
        return "<p class='sub'>No samples yet.</p>"
    data = base64.b64encode(sheet).decode()
    names = "".join(f"<div title='{html.escape(str(t))}'>{html.escape(str(t))}</div>" for t in labels)
    return (f"<div class='sheet'><div class='labels'>{names}</div>"
            f"<img src='data:image/png;base64,{data}' alt='contact sheet: samples per row'></div>")


def report_html(report: dict[str, Any], run: dict[str, Any] | None = None,
                records: Sequence[dict[str, Any]] = (), sheet: bytes | None = None,
                labels: Sequence[str] = ()) -> str:
    complete = report.get("complete")
    status = ("<span class='ok'>complete</span>" if complete else "<span class='bad'>incomplete</span>")
    plot = speed_plot(records)
    links = " · ".join(f"<a href='{k}'>{k}</a>" for k in (layout.RUN_JSON, layout.MANIFEST, layout.REPORT_JSON,
                                                          layout.CONTACT_SHEET))
    shown = {k: v for k, v in report.items() if k not in ("retries", "workers")}
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>argen run report</title>"
        f"<style>{STYLE}</style></head><body>"
        f"<h1>argen run report</h1><p class='sub'>{_e(report.get('model'))} with accel={_e(report.get('accel'))} "
        f"· {status} · finished {_e(report.get('finished_at'))}</p>"
        f"{headline(report)}"
        f"<h2>Settings</h2>{_table(settings_rows(run, report))}"
        f"<h2>Quality</h2>{quality_section(report, records)}"
        f"<h2>Samples</h2>{sheet_section(sheet, labels)}"
        "<h2>Speed per shard</h2>"
        + (f"<img src='data:image/png;base64,{plot}' alt='images per second per shard, per worker'>" if plot else "")
        + f"{shard_table(records)}"
        f"<h2>Method counters</h2>{counters_section(records)}"
        f"<h2>What went wrong</h2>{problems_section(report)}"
        f"<h2>Files</h2><p>{links}</p>"
        f"<details><summary>report.json</summary><pre>{html.escape(json.dumps(shown, indent=1, sort_keys=True))}"
        "</pre></details></body></html>\n")
