//! SVG charts drawn on the server: a time series chart with markers (deploys,
//! onsets) and shaded windows, and a grouped bar chart. Labels are escaped like
//! any other text; colours come from the stylesheet's `c0`…`c5` classes.

use std::fmt::Write;

use chrono::{DateTime, Utc};

use super::esc;

const W: f64 = 900.0;
const H: f64 = 260.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 22.0;
const BOTTOM: f64 = 30.0;

pub struct Series {
    pub label: String,
    pub points: Vec<(DateTime<Utc>, f64)>,
}

/// A vertical line at a moment: `marker` (a deploy) or `onset`.
pub struct Marker {
    pub at: DateTime<Utc>,
    pub label: String,
    pub class: &'static str,
}

/// A shaded stretch of time, such as the baseline window.
pub struct Band {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub label: String,
}

/// A round upper bound for an axis: 1, 2 or 5 times a power of ten.
fn nice_max(v: f64) -> f64 {
    if !(v.is_finite() && v > 0.0) {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if m * p >= v {
            return m * p;
        }
    }
    10.0 * p
}

fn fmt_value(v: f64, unit: &str) -> String {
    let n = if v >= 100.0 || v == 0.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    };
    if unit.is_empty() { n } else { format!("{n} {unit}") }
}

fn legend(labels: &[&str]) -> String {
    let mut o = String::from("<div class=\"legend\">");
    for (i, l) in labels.iter().enumerate() {
        let _ = write!(o, "<span><i class=\"c{}\"></i>{}</span>", i % 6, esc(l));
    }
    o.push_str("</div>");
    o
}

/// Four horizontal grid lines up to `ymax`, labelled on the left.
fn y_grid(o: &mut String, ymax: f64, unit: &str, y: &dyn Fn(f64) -> f64) {
    for i in 0..=4 {
        let v = ymax * i as f64 / 4.0;
        let yy = y(v);
        let _ = write!(
            o,
            "<line class=\"grid\" x1=\"{LEFT}\" x2=\"{:.1}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            W - RIGHT,
            LEFT - 6.0,
            yy + 4.0,
            esc(&fmt_value(v, unit))
        );
    }
}

/// Lines over time, with markers and bands. `unit` labels the y axis.
pub fn time_chart(title: &str, series: &[Series], unit: &str, markers: &[Marker], bands: &[Band]) -> String {
    let times = series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let extra = markers.iter().map(|m| m.at).chain(bands.iter().flat_map(|b| [b.start, b.end]));
    let (Some(t0), Some(t1)) = (times.clone().chain(extra.clone()).min(), times.chain(extra).max()) else {
        return format!("<p class=\"muted\">{}: no data in this range.</p>", esc(title));
    };
    if series.iter().all(|s| s.points.is_empty()) {
        return format!("<p class=\"muted\">{}: no data in this range.</p>", esc(title));
    }
    let span = (t1 - t0).num_milliseconds().max(1) as f64;
    let ymax = nice_max(series.iter().flat_map(|s| s.points.iter().map(|p| p.1)).fold(0.0, f64::max) * 1.08);
    let x = |t: DateTime<Utc>| LEFT + (t - t0).num_milliseconds() as f64 / span * (W - LEFT - RIGHT);
    let y = |v: f64| TOP + (1.0 - (v / ymax).clamp(0.0, 1.0)) * (H - TOP - BOTTOM);
    let mut o = String::new();
    let _ = write!(
        o,
        "<svg class=\"chart\" viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"{t}\"><title>{t}</title>",
        t = esc(title)
    );
    for b in bands {
        let (x0, x1) = (x(b.start), x(b.end));
        let _ = write!(
            o,
            "<rect class=\"band\" x=\"{x0:.1}\" y=\"{TOP}\" width=\"{:.1}\" height=\"{:.1}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            (x1 - x0).max(0.0),
            H - TOP - BOTTOM,
            x0 + 4.0,
            TOP + 12.0,
            esc(&b.label)
        );
    }
    y_grid(&mut o, ymax, unit, &y);
    let same_day = t0.date_naive() == t1.date_naive();
    for i in 0..=5 {
        let t = t0 + chrono::Duration::milliseconds((span * i as f64 / 5.0) as i64);
        let label = if same_day { t.format("%H:%M") } else { t.format("%m-%d %H:%M") };
        let anchor = match i {
            0 => "start",
            5 => "end",
            _ => "middle",
        };
        let _ = write!(o, "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"{anchor}\">{label}</text>", x(t), H - 10.0);
    }
    let _ = write!(
        o,
        "<line class=\"axis\" x1=\"{LEFT}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\"/>",
        W - RIGHT,
        H - BOTTOM,
        H - BOTTOM
    );
    for (i, s) in series.iter().enumerate() {
        if s.points.is_empty() {
            continue;
        }
        let mut d = String::new();
        for (k, (t, v)) in s.points.iter().enumerate() {
            let _ = write!(d, "{}{:.1},{:.1}", if k == 0 { "M" } else { " L" }, x(*t), y(*v));
        }
        let _ = write!(o, "<path class=\"line c{}\" d=\"{d}\"><title>{}</title></path>", i % 6, esc(&s.label));
    }
    for (k, m) in markers.iter().enumerate() {
        let xx = x(m.at);
        let label_class = if m.class == "onset" { "olabel" } else { "mlabel" };
        // Alternate label heights so close markers stay readable.
        let ly = TOP - 6.0 + if k % 2 == 1 { 12.0 } else { 0.0 };
        let anchor = if xx > W * 0.8 { "end" } else { "start" };
        let _ = write!(
            o,
            "<line class=\"{}\" x1=\"{xx:.1}\" x2=\"{xx:.1}\" y1=\"{TOP}\" y2=\"{:.1}\"/>\
             <text class=\"{label_class}\" x=\"{:.1}\" y=\"{ly:.1}\" text-anchor=\"{anchor}\">{}</text>",
            m.class,
            H - BOTTOM,
            if anchor == "end" { xx - 3.0 } else { xx + 3.0 },
            esc(&m.label)
        );
    }
    o.push_str("</svg>");
    let labels: Vec<&str> = series.iter().map(|s| s.label.as_str()).collect();
    o.push_str(&legend(&labels));
    o
}

/// Bars per category, one bar per series side by side. `unit` labels values;
/// `max` fixes the top of the axis (1 for shares). A category named
/// `attribute=value` is labelled with its value, and the attribute is written
/// once beneath the first of its group.
pub fn bars(title: &str, categories: &[String], series: &[(String, Vec<f64>)], unit: &str, max: Option<f64>) -> String {
    if categories.is_empty() || series.is_empty() {
        return format!("<p class=\"muted\">{}: no data.</p>", esc(title));
    }
    let ymax =
        max.unwrap_or_else(|| nice_max(series.iter().flat_map(|s| s.1.iter().copied()).fold(0.0, f64::max) * 1.08));
    let y = |v: f64| TOP + (1.0 - (v / ymax).clamp(0.0, 1.0)) * (H - TOP - BOTTOM - 14.0);
    let base = H - BOTTOM - 14.0;
    let mut group = "";
    let slot = (W - LEFT - RIGHT) / categories.len() as f64;
    let bar = (slot * 0.8 / series.len() as f64).min(48.0);
    let mut o = String::new();
    let _ = write!(
        o,
        "<svg class=\"chart\" viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"{t}\"><title>{t}</title>",
        t = esc(title)
    );
    y_grid(&mut o, ymax, unit, &y);
    for (c, cat) in categories.iter().enumerate() {
        let x0 = LEFT + c as f64 * slot + (slot - bar * series.len() as f64) / 2.0;
        for (s, (label, values)) in series.iter().enumerate() {
            let v = values.get(c).copied().unwrap_or(0.0);
            let (bx, by) = (x0 + s as f64 * bar, y(v));
            let _ = write!(
                o,
                "<rect class=\"c{}\" x=\"{bx:.1}\" y=\"{by:.1}\" width=\"{:.1}\" height=\"{:.1}\">\
                 <title>{}: {}</title></rect>",
                s % 6,
                (bar - 2.0).max(1.0),
                (base - by).max(0.0),
                esc(&format!("{label}, {cat}")),
                esc(&fmt_value(v, unit))
            );
        }
        let (attribute, value) = cat.split_once('=').unwrap_or(("", cat.as_str()));
        let mut name: String = value.chars().take(24).collect();
        if value.chars().count() > 24 {
            name.push('…');
        }
        let cx = LEFT + (c as f64 + 0.5) * slot;
        let _ = write!(o, "<text x=\"{cx:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>", base + 14.0, esc(&name));
        if attribute != group {
            group = attribute;
            let _ = write!(
                o,
                "<text class=\"mlabel\" x=\"{:.1}\" y=\"{:.1}\">{}</text>",
                LEFT + c as f64 * slot + 4.0,
                base + 30.0,
                esc(attribute)
            );
        }
    }
    let _ = write!(
        o,
        "<line class=\"axis\" x1=\"{LEFT}\" x2=\"{:.1}\" y1=\"{base:.1}\" y2=\"{base:.1}\"/></svg>",
        W - RIGHT
    );
    let labels: Vec<&str> = series.iter().map(|s| s.0.as_str()).collect();
    o.push_str(&legend(&labels));
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_bounds_are_round() {
        assert_eq!(nice_max(87.0), 100.0);
        assert_eq!(nice_max(0.042), 0.05);
        assert_eq!(nice_max(1.9), 2.0);
        assert_eq!(nice_max(0.0), 1.0);
    }

    #[test]
    fn labels_are_escaped() {
        let t = Utc::now();
        let s = Series { label: "<script>alert(1)</script>".into(), points: vec![(t, 1.0)] };
        let m = Marker { at: t, label: "v<b>2</b>".into(), class: "marker" };
        let svg = time_chart("p95 \"quoted\"", &[s], "ms", &[m], &[]);
        assert!(!svg.contains("<script>") && !svg.contains("<b>"), "{svg}");
        assert!(svg.contains("&lt;script&gt;") && svg.contains("p95 &quot;quoted&quot;"));
    }

    #[test]
    fn an_empty_chart_says_so() {
        assert!(time_chart("p95", &[], "ms", &[], &[]).contains("no data"));
        assert!(bars("attempts", &[], &[], "", None).contains("no data"));
    }
}
