//! `--report DIR`: one self-contained HTML page with SVG charts (plotters) of throughput over
//! time and latency (percentile spectrum and histogram) per group, plus the run's JSON.

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;
use serde_json::Value;

use crate::flows::GroupResult;
use crate::Res;

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// One series of a report: a label (phase and group) and its result.
pub struct Series<'a> {
    /// Legend label.
    pub label: String,
    /// The measurements.
    pub group: &'a GroupResult,
}

/// Writes `DIR/index.html` (and `DIR/result.json`) for a run.
pub fn write(dir: &Path, title: &str, series: &[Series<'_>], summary: &Value) -> Res<()> {
    std::fs::create_dir_all(dir).map_err(|e| format!("--report {}: {e}", dir.display()))?;
    let mut html = String::new();
    let _ = write!(
        html,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title>\
         <style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}\
         td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}}</style></head><body>\
         <h1>{t}</h1>",
        t = escape(title)
    );
    html.push_str(&table(summary));
    html.push_str("<h2>Throughput over time</h2>");
    html.push_str(&throughput_svg(series)?);
    html.push_str("<h2>Latency by percentile</h2>");
    html.push_str(&percentile_svg(series)?);
    html.push_str("<h2>Latency histogram</h2>");
    html.push_str(&histogram_svg(series)?);
    let _ = write!(html, "<h2>JSON</h2><pre>{}</pre></body></html>", escape(&summary.to_string()));
    std::fs::write(dir.join("index.html"), html).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("result.json"), summary.to_string()).map_err(|e| e.to_string())?;
    Ok(())
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// A table of the groups' main figures.
fn table(summary: &Value) -> String {
    let cols = [
        "phase",
        "group",
        "sent",
        "received",
        "lost",
        "duplicated",
        "out_of_order",
        "msg_per_s",
        "msg_per_broker_cpu_s",
        "p50_us",
        "p99_us",
        "p999_us",
        "max_us",
    ];
    let mut t = String::from("<table><tr>");
    for c in cols {
        let _ = write!(t, "<th>{c}</th>");
    }
    t.push_str("</tr>");
    for g in summary.get("groups").and_then(|g| g.as_array()).into_iter().flatten() {
        t.push_str("<tr>");
        for c in cols {
            let cell = match g.get(c) {
                Some(Value::Number(n)) => n.as_f64().map_or(n.to_string(), |f| format!("{f:.0}")),
                Some(Value::String(s)) => escape(s),
                Some(Value::Null) | None => "".into(),
                Some(v) => escape(&v.to_string()),
            };
            let _ = write!(t, "<td>{cell}</td>");
        }
        t.push_str("</tr>");
    }
    t.push_str("</table>");
    t
}

fn err<E: std::fmt::Debug>(e: E) -> String {
    format!("report: {e:?}")
}

/// One line of a chart: label, colour, stroke width, points.
type Line = (String, RGBColor, u32, Vec<(f64, f64)>);

/// Draws `lines` on axes `x` and `y` (linear or log ranges) with a legend; returns the SVG.
fn chart<X, Y>(
    x: X,
    y: Y,
    desc: (&str, &str),
    x_fmt: Option<&dyn Fn(&f64) -> String>,
    lines: &[Line],
) -> Res<String>
where
    X: plotters::coord::ranged1d::AsRangedCoord<Value = f64>,
    Y: plotters::coord::ranged1d::AsRangedCoord<Value = f64>,
    X::CoordDescType: plotters::coord::ranged1d::ValueFormatter<f64>,
    Y::CoordDescType: plotters::coord::ranged1d::ValueFormatter<f64>,
{
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (900, 360)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut c = ChartBuilder::on(&root)
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(80)
            .build_cartesian_2d(x, y)
            .map_err(err)?;
        let mut mesh = c.configure_mesh();
        mesh.x_desc(desc.0).y_desc(desc.1);
        if let Some(f) = x_fmt {
            mesh.x_labels(5).x_label_formatter(f);
        }
        mesh.draw().map_err(err)?;
        for (label, color, width, pts) in lines {
            let color = *color;
            c.draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(*width)))
                .map_err(err)?
                .label(label.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        c.configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(out)
}

fn throughput_svg(series: &[Series<'_>]) -> Res<String> {
    let secs = crate::flows::BUCKET.as_secs_f64();
    let mut lines: Vec<Line> = Vec::new();
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        for (what, tl, width) in
            [("delivered/s", &s.group.received_timeline, 2), ("sent/s", &s.group.sent_timeline, 1)]
        {
            let pts: Vec<(f64, f64)> =
                tl.per_second().into_iter().enumerate().map(|(k, y)| (k as f64 * secs, y)).collect();
            if !pts.is_empty() {
                lines.push((format!("{} {what}", s.label), color, width, pts));
            }
        }
    }
    let xmax = lines.iter().flat_map(|l| l.3.last().map(|p| p.0)).fold(secs, f64::max);
    let ymax = lines.iter().flat_map(|l| l.3.iter().map(|p| p.1)).fold(1.0, f64::max) * 1.1;
    chart(0f64..xmax, 0f64..ymax, ("seconds", "messages per second"), None, &lines)
}

/// Latency against percentile on a log scale of 1/(1-q): p50, p90, p99, p99.9, p99.99.
fn percentile_svg(series: &[Series<'_>]) -> Res<String> {
    let qs: Vec<f64> = (0..=400).map(|i| 1.0 - 10f64.powf(-(i as f64) / 100.0)).collect();
    let lines: Vec<Line> = series
        .iter()
        .enumerate()
        .filter(|(_, s)| !s.group.hist.is_empty())
        .map(|(i, s)| {
            let pts = qs
                .iter()
                .map(|q| {
                    (
                        -(1.0 - q).max(1e-4).log10(),
                        (s.group.hist.value_at_quantile(*q) as f64 / 1000.0).max(1.0),
                    )
                })
                .collect();
            (s.label.clone(), COLORS[i % COLORS.len()], 2, pts)
        })
        .collect();
    let ymax = lines.iter().flat_map(|l| l.3.iter().map(|p| p.1)).fold(1.0, f64::max) * 1.1;
    let fmt = |x: &f64| match x.round() as i64 {
        0 => "p0".to_string(),
        1 => "p90".into(),
        2 => "p99".into(),
        3 => "p99.9".into(),
        _ => "p99.99".into(),
    };
    chart(0f64..4f64, (1f64..ymax).log_scale(), ("percentile", "latency (µs)"), Some(&fmt), &lines)
}

/// Share of messages per latency bucket (log-spaced, 10 per decade).
fn histogram_svg(series: &[Series<'_>]) -> Res<String> {
    let lines: Vec<Line> = series
        .iter()
        .enumerate()
        .filter(|(_, s)| !s.group.hist.is_empty())
        .map(|(i, s)| {
            let h = &s.group.hist;
            let total = h.len() as f64;
            let mut pts = Vec::new();
            let mut lo = 1_000u64; // 1 µs in ns
            while lo <= h.max() {
                let hi = ((lo as f64) * 10f64.powf(0.1)) as u64 + 1;
                let n = h.count_between(lo, hi - 1);
                pts.push(((lo as f64 * hi as f64).sqrt() / 1000.0, 100.0 * n as f64 / total));
                lo = hi;
            }
            (s.label.clone(), COLORS[i % COLORS.len()], 2, pts)
        })
        .collect();
    let xmax = lines.iter().flat_map(|l| l.3.iter().map(|p| p.0)).fold(10.0, f64::max) * 1.2;
    let ymax = lines.iter().flat_map(|l| l.3.iter().map(|p| p.1)).fold(1.0, f64::max) * 1.1;
    chart((1f64..xmax).log_scale(), 0f64..ymax, ("latency (µs)", "% of messages"), None, &lines)
}
