//! Plots as inline SVG, drawn on the server (no script, no library): each
//! is a `<figure>` with a title and a text summary for screen readers.

use std::collections::BTreeMap;
use std::fmt::Write;

use convoy_store::{EventRecord, InstructionRecord};
use convoy_wire::{DeploymentInfo, TargetHistoryEntry};

use super::esc;

const W: f64 = 640.0;
const H: f64 = 220.0;
const LEFT: f64 = 56.0;
const BOTTOM: f64 = 28.0;
const TOP: f64 = 12.0;
const RIGHT: f64 = 12.0;

/// Metrics the agent itself reports (the rest come from health hooks);
/// go-live lag, health time and bytes fetched have plots of their own.
const KNOWN: &[&str] = &[
    "activate_ms",
    "bytes_fetched",
    "chunks_cached",
    "chunks_fetched",
    "chunks_from_delta",
    "chunks_seeded",
    "chunks_synced",
    "chunks_total",
    "delta_bytes",
    "golive_lag_ms",
    "health_ms",
    "source_failures",
    "stage_ms",
    "switch_ms",
    "sync_bytes",
    "transfer",
    "tuf_check_us",
    "via",
];

/// Every plot of a deployment: staged and live over time per wave, bytes
/// moved per target, go-live lag and health-check time, and any other
/// numeric metric the health hooks report.
/// `names` gives hostnames by target id (ids are shown for the others).
pub fn deployment(
    d: &DeploymentInfo,
    instrs: &[InstructionRecord],
    events: &[EventRecord],
    names: &std::collections::HashMap<&str, &str>,
) -> String {
    let mut out = String::from("<section aria-labelledby=\"plots-h\" class=\"plots\"><h2 id=\"plots-h\">Plots</h2>");
    out.push_str(&over_time(d, instrs, events));
    let metrics: Vec<BTreeMap<String, String>> =
        instrs.iter().map(|i| serde_json::from_str(&i.metrics_json).unwrap_or_default()).collect();
    let mut bytes: Vec<(String, f64)> = instrs
        .iter()
        .zip(&metrics)
        .filter_map(|(i, m)| {
            let name = names.get(i.target_id.as_str()).map_or_else(|| i.target_id.clone(), |n| n.to_string());
            Some((name, m.get("bytes_fetched")?.parse::<f64>().ok().filter(|x| x.is_finite())?))
        })
        .collect();
    bytes.sort_by(|a, b| b.1.total_cmp(&a.1));
    if !bytes.is_empty() {
        out.push_str(&bars(
            "plot-bytes",
            "Bytes moved per target",
            &format!("the {} targets that fetched most, largest first", bytes.len().min(30)),
            &bytes[..bytes.len().min(30)],
            "bytes",
        ));
    }
    for (key, title) in [("golive_lag_ms", "Go-live lag"), ("health_ms", "Health-check time")] {
        let v: Vec<f64> =
            metrics.iter().filter_map(|m| m.get(key)?.parse::<f64>().ok().filter(|x| x.is_finite())).collect();
        if !v.is_empty() {
            out.push_str(&histogram(&format!("plot-{key}"), title, &v, "ms"));
        }
    }
    let mut others: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for m in &metrics {
        for (k, v) in m {
            if KNOWN.contains(&k.as_str()) || k.ends_with("_version") {
                continue;
            }
            if let Ok(x) = v.parse::<f64>() {
                if x.is_finite() {
                    others.entry(k.as_str()).or_default().push(x);
                }
            }
        }
    }
    for (k, v) in others.iter().take(12) {
        out.push_str(&histogram(&format!("plot-m-{}", super::enc(k)), &format!("Health hook metric {k}"), v, ""));
    }
    out.push_str("</section>");
    out
}

/// Staged and live targets over time, one pair of lines per wave.
fn over_time(d: &DeploymentInfo, instrs: &[InstructionRecord], events: &[EventRecord]) -> String {
    let wave_of: BTreeMap<&str, u32> = instrs.iter().map(|i| (i.id.as_str(), i.wave)).collect();
    let mut staged_seen = std::collections::HashSet::new();
    let mut series: BTreeMap<(u32, &str), Vec<(i64, f64)>> = BTreeMap::new();
    let mut counts: BTreeMap<(u32, &str), f64> = BTreeMap::new();
    let t0 = d.created_at;
    let mut t1 = t0 + 1000;
    for e in events {
        let Some(iid) = e.instruction_id.as_deref() else { continue };
        let wave = wave_of.get(iid).copied().unwrap_or(0);
        let kind = match e.to_state.as_str() {
            "staged" | "activating" | "succeeded" if staged_seen.insert(iid.to_owned()) => Some("staged"),
            _ => None,
        };
        for k in kind.into_iter().chain((e.to_state == "succeeded").then_some("live")) {
            let c = counts.entry((wave, k)).or_default();
            *c += 1.0;
            series.entry((wave, k)).or_default().push((e.at, *c));
        }
        t1 = t1.max(e.at);
    }
    if series.is_empty() {
        return String::new();
    }
    let ymax = instrs.len().max(1) as f64;
    let x = |t: i64| LEFT + (t - t0) as f64 / (t1 - t0) as f64 * (W - LEFT - RIGHT);
    let y = |v: f64| TOP + (1.0 - v / ymax) * (H - TOP - BOTTOM);
    let mut svg = axes(&format!("{}", ymax as u64), "0", &format!("{} s", (t1 - t0) / 1000));
    let mut legend = Vec::new();
    for (n, ((wave, kind), pts)) in series.iter().enumerate() {
        let mut path = format!("M{:.1},{:.1}", x(t0), y(0.0));
        for (t, v) in pts {
            let _ = write!(path, " L{:.1},{:.1} L{:.1},{:.1}", x(*t), y(v - 1.0), x(*t), y(*v));
        }
        let _ = write!(path, " L{:.1},{:.1}", x(t1), y(pts.last().map_or(0.0, |p| p.1)));
        let class = format!("s{} {}", n % 6, kind);
        let _ = write!(svg, "<path class=\"line {class}\" d=\"{path}\" fill=\"none\"/>");
        legend.push(format!(
            "<li><span class=\"key {class}\" aria-hidden=\"true\"></span>wave {wave} {kind}: {}</li>",
            pts.last().map_or(0.0, |p| p.1)
        ));
    }
    let summary: Vec<String> = series
        .iter()
        .map(|((w, k), pts)| format!("wave {w} {k} {} of {}", pts.last().map_or(0.0, |p| p.1), ymax))
        .collect();
    figure(
        "plot-progress",
        "Staged and live targets over time, per wave",
        &summary.join("; "),
        &svg,
        &format!("<ul class=\"legend\">{}</ul>", legend.join("")),
    )
}

/// Horizontal bars, one per item.
fn bars(id: &str, title: &str, what: &str, items: &[(String, f64)], unit: &str) -> String {
    let max = items.iter().map(|i| i.1).fold(0.0, f64::max).max(1.0);
    let row = 18.0;
    let h = TOP + items.len() as f64 * row + 8.0;
    let label_w = 150.0;
    let mut svg = String::new();
    for (n, (label, v)) in items.iter().enumerate() {
        let y = TOP + n as f64 * row;
        let w = ((v / max) * (W - label_w - 120.0)).max(0.0);
        let short: String = label.chars().take(22).collect();
        let _ = write!(
            svg,
            "<text x=\"{:.0}\" y=\"{:.1}\" class=\"label\" text-anchor=\"end\">{}</text>\
             <rect class=\"bar\" x=\"{label_w}\" y=\"{:.1}\" width=\"{w:.1}\" height=\"{:.1}\"><title>{}: {} {unit}</title></rect>\
             <text x=\"{:.1}\" y=\"{:.1}\" class=\"value\">{} {unit}</text>",
            label_w - 6.0,
            y + 12.0,
            esc(&short),
            y + 2.0,
            row - 4.0,
            esc(label),
            human(*v),
            label_w + w + 4.0,
            y + 12.0,
            human(*v)
        );
    }
    let summary: Vec<String> = items.iter().take(10).map(|(l, v)| format!("{}: {} {unit}", l, human(*v))).collect();
    figure_sized(id, title, &format!("{what}. {}", summary.join("; ")), &svg, "", h)
}

/// A distribution: counts per bucket, as vertical bars.
fn histogram(id: &str, title: &str, values: &[f64], unit: &str) -> String {
    let (lo, hi) = values.iter().fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(*v), b.max(*v)));
    let bins = 12usize;
    let width = if hi > lo { (hi - lo) / bins as f64 } else { 1.0 };
    let mut counts = vec![0u32; bins];
    for v in values {
        let i = (((v - lo) / width) as usize).min(bins - 1);
        counts[i] += 1;
    }
    let cmax = counts.iter().copied().max().unwrap_or(1).max(1) as f64;
    let bw = (W - LEFT - RIGHT) / bins as f64;
    let mut svg = axes(&cmax.to_string(), &human(lo), &human(hi));
    for (i, c) in counts.iter().enumerate() {
        let h = *c as f64 / cmax * (H - TOP - BOTTOM);
        let from = lo + i as f64 * width;
        let _ = write!(
            svg,
            "<rect class=\"bar\" x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{h:.1}\"><title>{} to {} {unit}: {c}</title></rect>",
            LEFT + i as f64 * bw + 1.0,
            H - BOTTOM - h,
            bw - 2.0,
            human(from),
            human(from + width),
        );
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let q = |p: f64| sorted[((sorted.len() - 1) as f64 * p).round() as usize];
    let summary = format!(
        "{} values from {} to {} {unit}; median {}, 90th percentile {}",
        values.len(),
        human(lo),
        human(hi),
        human(q(0.5)),
        human(q(0.9))
    );
    figure(
        id,
        &format!("{title}{}", if unit.is_empty() { String::new() } else { format!(" ({unit})") }),
        &summary,
        &svg,
        "",
    )
}

/// The target page: its numeric metrics over its last deployments.
pub fn target_metrics(history: &[TargetHistoryEntry]) -> String {
    let mut out = String::new();
    for (key, title) in
        [("golive_lag_ms", "Go-live lag per deployment"), ("health_ms", "Health-check time per deployment")]
    {
        let items: Vec<(String, f64)> = history
            .iter()
            .rev()
            .filter_map(|h| {
                let v = h.metrics.get(key)?.parse::<f64>().ok().filter(|x| x.is_finite())?;
                Some((format!("{}@{}", h.app, h.version), v))
            })
            .collect();
        if !items.is_empty() {
            out.push_str(&bars(&format!("plot-t-{key}"), title, "oldest first", &items, "ms"));
        }
    }
    if out.is_empty() {
        return out;
    }
    format!("<section aria-labelledby=\"tplots-h\" class=\"plots\"><h2 id=\"tplots-h\">Plots</h2>{out}</section>")
}

fn axes(ymax: &str, x0: &str, x1: &str) -> String {
    format!(
        "<line class=\"axis\" x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{LEFT}\" y2=\"{b}\"/>\
         <line class=\"axis\" x1=\"{LEFT}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\"/>\
         <text class=\"label\" x=\"{l}\" y=\"{t}\" text-anchor=\"end\">{}</text>\
         <text class=\"label\" x=\"{l}\" y=\"{b}\" text-anchor=\"end\">0</text>\
         <text class=\"label\" x=\"{LEFT}\" y=\"{xl}\">{}</text>\
         <text class=\"label\" x=\"{r}\" y=\"{xl}\" text-anchor=\"end\">{}</text>",
        esc(ymax),
        esc(x0),
        esc(x1),
        b = H - BOTTOM,
        r = W - RIGHT,
        l = LEFT - 6.0,
        t = TOP + 10.0,
        xl = H - 8.0,
    )
}

fn figure(id: &str, title: &str, summary: &str, svg: &str, extra: &str) -> String {
    figure_sized(id, title, summary, svg, extra, H)
}

fn figure_sized(id: &str, title: &str, summary: &str, svg: &str, extra: &str, h: f64) -> String {
    format!(
        "<figure class=\"plot\" id=\"{id}\"><figcaption id=\"{id}-t\">{}</figcaption>\
         <svg viewBox=\"0 0 {W} {h:.0}\" role=\"img\" aria-labelledby=\"{id}-t {id}-d\" preserveAspectRatio=\"xMinYMin meet\">\
         <desc id=\"{id}-d\">{}</desc>{svg}</svg>{extra}</figure>",
        esc(title),
        esc(summary)
    )
}

/// 1234567 as `1.2M`, 950 as `950`, 0.5 as `0.5`.
fn human(v: f64) -> String {
    let a = v.abs();
    if a >= 1e9 {
        format!("{:.1}G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else if a.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn hostile_values_draw_without_panicking_and_stay_escaped() {
        let svg = super::histogram("h", "t<", &[0.0, 1e300, f64::MAX, -5.0], "ms");
        assert!(svg.contains("<svg") && !svg.contains("t<"));
        let one = super::histogram("h", "one", &[7.0], "");
        assert!(one.contains("1 values from 7 to 7"));
        let items = vec![("<script>alert(1)</script>é".to_owned(), 1e18), ("b".to_owned(), 0.0)];
        let bars = super::bars("b", "Bytes", "what", &items, "bytes");
        assert!(!bars.contains("<script>") && bars.contains("&lt;script&gt;"));
    }
}
