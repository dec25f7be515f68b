//! The status page: one HTML document, rendered here from a [`Snapshot`],
//! that reads without JavaScript (charts are inline SVG). The inline script
//! only refreshes it every few seconds and reads out a chart's value under
//! the pointer. Every figure carries `data-figure` (and each job's section
//! `data-job`) so tests and scrapers find them without parsing prose.

use std::fmt::Write;

use chrono::{DateTime, SecondsFormat, Utc};

use super::live::Point;
use super::{JobSnapshot, Snapshot};
use crate::cmd::status::{Status, TableStatus};

const STYLE: &str = "
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1d2330;background:#f5f6f8}
header{background:#1d2330;color:#fff;padding:.6em 1.2em;display:flex;gap:1em;align-items:baseline}
header h1{font-size:1.2em;margin:0}main{padding:0 1.2em 2em}
section.job{background:#fff;border:1px solid #dde1e8;border-radius:6px;margin:1em 0;padding:.2em 1em 1em}
.ok{color:#17803d}.bad{color:#b42318;font-weight:600}
.figures{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:.5em}
.figure{border:1px solid #e6e9ef;border-radius:4px;padding:.3em .6em}
.figure b{display:block;font-size:1.3em}.figure span{color:#5b6475;font-size:.85em}
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(260px,1fr));gap:.5em;margin-top:.8em}
.chart{border:1px solid #e6e9ef;border-radius:4px;padding:.3em .6em}
svg{width:100%;height:48px;display:block}polyline{fill:none;stroke:#2e6fdb;stroke-width:1.5}
table{border-collapse:collapse;margin:.3em 0;width:100%}
th,td{text-align:left;padding:.2em .6em;border-bottom:1px solid #eef0f4;vertical-align:top}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
td svg{width:120px;height:20px}h3{margin:1em 0 .2em;font-size:1em}
";

const SCRIPT: &str = r#"
const fmt = (v, unit) => v == null ? "-" : unit === "s" ? (v * 1000).toFixed(0) + " ms" : v.toFixed(1);
setInterval(async () => {
  try {
    const r = await fetch(location.pathname, { cache: "no-store" });
    const page = new DOMParser().parseFromString(await r.text(), "text/html");
    document.querySelector("main").replaceWith(page.querySelector("main"));
    document.querySelector("header time").replaceWith(page.querySelector("header time"));
  } catch (e) { /* the next refresh tries again */ }
}, 5000);
document.addEventListener("mousemove", (e) => {
  const svg = e.target.closest && e.target.closest("svg[data-values]");
  const out = svg && svg.parentElement.querySelector("output");
  if (!out) return;
  const values = JSON.parse(svg.dataset.values);
  const box = svg.getBoundingClientRect();
  const i = Math.round((e.clientX - box.left) / box.width * (values.length - 1));
  out.textContent = fmt(values[Math.max(0, Math.min(values.length - 1, i))], svg.dataset.unit);
});
"#;

/// The whole page.
pub fn render(snapshot: &Snapshot) -> String {
    let mut html = String::from("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">");
    html.push_str("<meta name=\"viewport\" content=\"width=device-width\"><link rel=\"icon\" href=\"data:,\"><title>weir status</title>");
    write!(html, "<style>{STYLE}</style>").unwrap();
    html.push_str("<noscript><meta http-equiv=\"refresh\" content=\"10\"></noscript></head><body>");
    write!(
        html,
        "<header><h1>weir</h1><time data-figure=\"at\">{}</time></header><main>",
        time(&snapshot.at)
    )
    .unwrap();
    for job in &snapshot.jobs {
        job_section(&mut html, job);
    }
    write!(html, "</main><script>{SCRIPT}</script></body></html>").unwrap();
    html
}

fn job_section(html: &mut String, job: &JobSnapshot) {
    write!(
        html,
        "<section class=\"job\" data-job=\"{}\">",
        esc(&job.job)
    )
    .unwrap();
    let health = match &job.unhealthy {
        None => "<span class=\"ok\" data-figure=\"health\">running</span>".to_owned(),
        Some(why) => format!(
            "<span class=\"bad\" data-figure=\"health\">{}</span>",
            esc(why)
        ),
    };
    write!(html, "<h2>{} {health}</h2>", esc(&job.job)).unwrap();
    figures(html, job);
    charts(html, &job.history);
    match (&job.tables, &job.tables_error) {
        (Some(status), _) => tables_part(html, job, status),
        (None, why) => write!(
            html,
            "<p class=\"bad\" data-figure=\"tables_error\">The tables could not be read: {}</p>",
            esc(why.as_deref().unwrap_or("not read yet"))
        )
        .unwrap(),
    }
    html.push_str("</section>");
}

fn figure(html: &mut String, key: &str, label: &str, value: &str) {
    write!(
        html,
        "<div class=\"figure\"><b data-figure=\"{key}\">{}</b><span>{label}</span></div>",
        esc(value)
    )
    .unwrap();
}

fn figures(html: &mut String, job: &JobSnapshot) {
    let live = &job.live;
    let last = job.history.last();
    html.push_str("<div class=\"figures\">");
    figure(
        html,
        "events_in",
        "events in since start",
        &live.events_in.to_string(),
    );
    let rate = last.map_or("-".into(), |p| format!("{:.1}", p.events_per_s));
    figure(html, "events_per_s", "events/s (last interval)", &rate);
    figure(
        html,
        "p50",
        "end-to-end p50",
        &millis(last.and_then(|p| p.p50)),
    );
    figure(
        html,
        "p99",
        "end-to-end p99",
        &millis(last.and_then(|p| p.p99)),
    );
    figure(
        html,
        "lag",
        "total lag (messages)",
        &live.total_lag().to_string(),
    );
    let holder = job.tables.as_ref().and_then(watermark_holder);
    let watermark = live
        .watermark
        .and_then(|s| DateTime::from_timestamp_micros((s * 1e6) as i64))
        .map_or("none yet".into(), |w| time(&w));
    let held = holder.map_or(String::new(), |p| format!(" (held by partition {p})"));
    figure(html, "watermark", &format!("watermark{held}"), &watermark);
    let dedup = format!("{} IDs", live.dedup_entries);
    let dedup_label = format!("dedup index, {}", mib(live.dedup_bytes));
    figure(html, "dedup_entries", &dedup_label, &dedup);
    for (queue, (fill, capacity)) in &live.queues {
        let label = format!("queue {queue} (batches)");
        figure(
            html,
            &format!("queue_{queue}"),
            &label,
            &format!("{fill} / {capacity}"),
        );
    }
    if !live.probes.is_empty() || live.probe_failures > 0 {
        let label = format!(
            "probe send → visible, slowest partition ({} failed)",
            live.probe_failures
        );
        figure(html, "probe", &label, &millis(live.slowest_probe()));
    }
    let paused = if live.paused { "paused" } else { "no" };
    let pauses = format!("partitions paused ({} pauses)", live.pauses);
    figure(html, "paused", &pauses, paused);
    figure(html, "restarts", "restarts", &live.restarts.to_string());
    figure(
        html,
        "duplicates",
        "duplicates dropped",
        &live.duplicates.to_string(),
    );
    let maintained = live
        .last_maintenance
        .and_then(|s| DateTime::from_timestamp(s as i64, 0))
        .map_or("not yet".into(), |t| time(&t));
    figure(
        html,
        "last_maintenance",
        "last maintenance round",
        &maintained,
    );
    if let Some(status) = &job.tables {
        let rows = |name: &str| table(status, name).map_or(0, TableStatus::rows);
        figure(
            html,
            "late_events",
            "late events (table late)",
            &rows("late").to_string(),
        );
        figure(
            html,
            "dlq_messages",
            "DLQ messages",
            &rows("dlq").to_string(),
        );
    }
    html.push_str("</div>");
}

fn charts(html: &mut String, history: &[Point]) {
    let series: [(&str, &str, &str, Vec<Option<f64>>); 4] = [
        (
            "events_per_s",
            "events/s",
            "",
            history.iter().map(|p| Some(p.events_per_s)).collect(),
        ),
        (
            "p50",
            "end-to-end p50",
            "s",
            history.iter().map(|p| p.p50).collect(),
        ),
        (
            "p99",
            "end-to-end p99",
            "s",
            history.iter().map(|p| p.p99).collect(),
        ),
        (
            "lag",
            "total lag",
            "",
            history
                .iter()
                .map(|p| Some(p.lag.values().sum::<i64>() as f64))
                .collect(),
        ),
    ];
    let span = history.len() as u64 * super::SAMPLE_EVERY.as_secs();
    let span = match span {
        0..60 => format!("{span} s"),
        _ => format!("{} min", span / 60),
    };
    html.push_str("<div class=\"charts\">");
    for (key, label, unit, values) in series {
        let last = match (values.last().copied().flatten(), unit) {
            (None, _) => "-".to_owned(),
            (Some(v), "s") => millis(Some(v)),
            (Some(v), _) => format!("{v:.1}"),
        };
        write!(
            html,
            "<div class=\"chart\" data-chart=\"{key}\">{label}, last {span}: <output>{last}</output>{}</div>",
            sparkline(&values, unit)
        )
        .unwrap();
    }
    html.push_str("</div>");
}

/// An inline SVG line over `values` (missing ones skipped), with the
/// values themselves for the script's readout.
fn sparkline(values: &[Option<f64>], unit: &str) -> String {
    let max = values
        .iter()
        .flatten()
        .copied()
        .fold(0.0, f64::max)
        .max(1e-9);
    let step = 100.0 / (values.len().max(2) - 1) as f64;
    let points: Vec<String> = values
        .iter()
        .enumerate()
        .filter_map(|(i, v)| {
            v.map(|v| format!("{:.1},{:.1}", i as f64 * step, 30.0 - v / max * 28.0))
        })
        .collect();
    let data = serde_json::to_string(values).unwrap_or_default();
    format!(
        "<svg viewBox=\"0 0 100 32\" preserveAspectRatio=\"none\" data-unit=\"{unit}\" data-values=\"{}\"><polyline points=\"{}\"/></svg>",
        esc(&data),
        points.join(" ")
    )
}

fn tables_part(html: &mut String, job: &JobSnapshot, status: &Status) {
    html.push_str("<h3>Partitions</h3><table data-figure=\"partitions\"><tr><th class=n>partition</th><th class=n>committed</th><th class=n>high watermark</th><th class=n>lag</th><th>trend</th><th class=n>events/s</th><th class=n>probe</th><th>last commit</th><th>note</th></tr>");
    for p in &status.partitions {
        let trend: Vec<Option<f64>> = job
            .history
            .iter()
            .map(|point| point.lag.get(&p.label).map(|&l| l as f64))
            .collect();
        write!(
            html,
            "<tr data-partition=\"{}\"><td class=n>{}</td><td class=n>{}</td><td class=n>{}</td><td class=n data-figure=\"lag\">{}</td><td>{}</td><td class=n>{}</td><td class=n data-figure=\"probe\">{}</td><td>{}</td><td>{}</td></tr>",
            p.label,
            p.label,
            p.committed.map_or("-".into(), |c| c.to_string()),
            p.high_watermark,
            p.lag,
            sparkline(&trend, ""),
            p.rate.map_or("-".into(), |r| format!("{r:.1}")),
            millis(job.live.probes.get(&p.label).copied()),
            p.last_commit.as_ref().map_or("-".into(), time),
            esc(p.note.as_deref().unwrap_or(""))
        )
        .unwrap();
    }
    html.push_str("</table>");
    if let Some(why) = &status.stalled {
        write!(
            html,
            "<p class=\"bad\" data-figure=\"stalled\">Watermark stalled: {}</p>",
            esc(why)
        )
        .unwrap();
    }
    html.push_str("<h3>Tables</h3><table data-figure=\"tables\"><tr><th>table</th><th class=n>rows</th><th>tiers (rows at version, last change)</th><th class=n>checkpoint lag</th><th>last commits</th></tr>");
    for t in &status.tables {
        let tiers: Vec<String> = t
            .tiers
            .iter()
            .map(|tier| {
                format!(
                    "{} {} at v{}, {}",
                    tier.tier,
                    tier.rows,
                    tier.version,
                    tier.last_commit.as_ref().map_or("-".into(), time)
                )
            })
            .collect();
        let commits: Vec<String> = t
            .commits
            .iter()
            .map(|c| {
                format!(
                    "v{} {} +{} rows at {}",
                    c.version,
                    c.operation,
                    c.rows_added,
                    c.at.as_ref().map_or("-".into(), time)
                )
            })
            .collect();
        let checkpoint = job
            .live
            .checkpoint_lag
            .get(&t.name)
            .map_or("-".into(), |v| v.to_string());
        write!(
            html,
            "<tr data-table=\"{}\"><td>{}</td><td class=n data-figure=\"rows\">{}</td><td>{}</td><td class=n>{}</td><td>{}</td></tr>",
            esc(&t.name),
            esc(&t.name),
            t.rows(),
            esc(&tiers.join("; ")),
            checkpoint,
            esc(&commits.join("; "))
        )
        .unwrap();
    }
    html.push_str("</table>");
    reasons(html, status);
    quality(html, status);
}

fn reasons(html: &mut String, status: &Status) {
    html.push_str("<h3>DLQ reasons</h3>");
    if status.dlq_reasons.is_empty() {
        html.push_str("<p>The DLQ is empty.</p>");
        return;
    }
    html.push_str(
        "<table data-figure=\"dlq_reasons\"><tr><th class=n>messages</th><th>reason</th></tr>",
    );
    for r in &status.dlq_reasons {
        write!(
            html,
            "<tr><td class=n>{}</td><td>{}</td></tr>",
            r.messages,
            esc(&r.reason)
        )
        .unwrap();
    }
    for r in &status.refused {
        write!(
            html,
            "<tr><td class=n>{}</td><td>schema ID {} refused, e.g. {}</td></tr>",
            r.messages,
            esc(&r.id),
            esc(&r.example)
        )
        .unwrap();
    }
    html.push_str("</table>");
}

fn quality(html: &mut String, status: &Status) {
    if status.expectations.is_empty() {
        return;
    }
    html.push_str("<h3>Data quality</h3><ul data-figure=\"quality\">");
    for e in &status.expectations {
        let class = if e.breaches > 0 { "bad" } else { "ok" };
        write!(html, "<li class=\"{class}\">{}</li>", esc(&e.to_string())).unwrap();
    }
    html.push_str("</ul>");
}

fn table<'a>(status: &'a Status, name: &str) -> Option<&'a TableStatus> {
    status.tables.iter().find(|t| t.name == name)
}

fn watermark_holder(status: &Status) -> Option<&str> {
    status
        .partitions
        .iter()
        .find(|p| {
            p.note
                .as_deref()
                .is_some_and(|n| n.contains("holds the watermark"))
        })
        .map(|p| p.label.as_str())
}

fn time(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn millis(seconds: Option<f64>) -> String {
    seconds.map_or("-".into(), |s| format!("{:.0} ms", s * 1e3))
}

fn mib(bytes: i64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

/// Text as HTML: every name and reason on the page may come from input.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::console::live::Figures;

    #[test]
    fn names_from_input_are_escaped_and_figures_are_marked() {
        let snapshot = Snapshot {
            at: Utc::now(),
            jobs: vec![JobSnapshot {
                job: "<script>x</script>".into(),
                unhealthy: Some("restarting after: a \"bad\" <batch>".into()),
                live: Figures {
                    events_in: 1234,
                    ..Figures::default()
                },
                history: Vec::new(),
                tables: None,
                tables_error: Some("broker <down>".into()),
            }],
        };
        let html = render(&snapshot);
        assert!(!html.contains("<script>x"), "{html}");
        assert!(html.contains("&lt;script&gt;x&lt;/script&gt;"));
        assert!(html.contains("a &quot;bad&quot; &lt;batch&gt;"));
        assert!(html.contains("<b data-figure=\"events_in\">1234</b>"));
        assert!(html.contains("broker &lt;down&gt;"));
        // The page's own script is the only one.
        assert_eq!(html.matches("<script>").count(), 1);
    }

    #[test]
    fn a_sparkline_skips_missing_values_and_carries_them_all() {
        let svg = sparkline(&[Some(0.0), None, Some(2.0)], "s");
        assert!(svg.contains("points=\"0.0,30.0 100.0,2.0\""), "{svg}");
        assert!(svg.contains("data-values=\"[0.0,null,2.0]\""), "{svg}");
    }
}
