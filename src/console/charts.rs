//! The auditors' charts, drawn on the server as SVG (no script, no style
//! sheet of their own: presentation attributes only, so the console's
//! Content-Security-Policy holds): stacked bars by day, and bars by officer.

use std::collections::BTreeMap;

/// Colours of the series, in order (distinguishable, print-safe).
const PALETTE: &[&str] = &[
    "#1f5fa8", "#d9822b", "#2e8540", "#b3261e", "#6b4fa0", "#7a6a00", "#00838f", "#8d4a2c",
];

const WIDTH: f64 = 640.0;
const PLOT_TOP: f64 = 16.0;
const PLOT_HEIGHT: f64 = 180.0;
const LEFT: f64 = 44.0;

pub struct Rect {
    pub x: String,
    pub y: String,
    pub w: String,
    pub h: String,
    pub fill: &'static str,
    pub title: String,
}

pub struct Label {
    pub x: String,
    pub y: String,
    pub anchor: &'static str,
    pub text: String,
}

pub struct Chart {
    pub id: &'static str,
    pub title: String,
    pub width: u32,
    pub height: u32,
    pub rects: Vec<Rect>,
    pub labels: Vec<Label>,
    /// Colour and name of each series.
    pub legend: Vec<(&'static str, String)>,
    pub empty: bool,
}

fn n(v: f64) -> String {
    format!("{v:.1}")
}

/// Stacked bars: one bar a day (`days`, oldest first), one segment a
/// series; `points` are (day, series, count).
pub fn stacked_by_day(
    id: &'static str,
    title: String,
    days: &[String],
    points: &[(String, String, i64)],
) -> Chart {
    let series: Vec<String> = {
        let mut s: Vec<String> = points.iter().map(|(_, k, _)| k.clone()).collect();
        s.sort();
        s.dedup();
        s
    };
    let colour = |k: &str| PALETTE[series.iter().position(|s| s == k).unwrap_or(0) % PALETTE.len()];
    let mut by_day: BTreeMap<&str, Vec<(&str, i64)>> = BTreeMap::new();
    for (day, key, count) in points {
        by_day
            .entry(day.as_str())
            .or_default()
            .push((key.as_str(), *count));
    }
    let max = by_day
        .values()
        .map(|v| v.iter().map(|(_, c)| c).sum::<i64>())
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let slot = (WIDTH - LEFT - 8.0) / days.len().max(1) as f64;
    let mut rects = Vec::new();
    let mut labels = vec![
        Label {
            x: n(LEFT - 6.0),
            y: n(PLOT_TOP + 4.0),
            anchor: "end",
            text: format!("{max}"),
        },
        Label {
            x: n(LEFT - 6.0),
            y: n(PLOT_TOP + PLOT_HEIGHT),
            anchor: "end",
            text: "0".into(),
        },
    ];
    for (i, day) in days.iter().enumerate() {
        let x = LEFT + slot * i as f64 + slot * 0.15;
        let mut base = PLOT_TOP + PLOT_HEIGHT;
        for (key, count) in by_day.get(day.as_str()).into_iter().flatten() {
            let h = PLOT_HEIGHT * (*count as f64) / max;
            base -= h;
            rects.push(Rect {
                x: n(x),
                y: n(base),
                w: n(slot * 0.7),
                h: n(h),
                fill: colour(key),
                title: format!("{day}: {key}: {count}"),
            });
        }
        // Every other day is labelled, by its day of the month.
        if i % 2 == days.len() % 2 || days.len() <= 8 {
            labels.push(Label {
                x: n(x + slot * 0.35),
                y: n(PLOT_TOP + PLOT_HEIGHT + 14.0),
                anchor: "middle",
                text: day.get(8..10).unwrap_or(day).to_owned(),
            });
        }
    }
    let legend = series.iter().map(|k| (colour(k), k.clone())).collect::<Vec<_>>();
    Chart {
        id,
        title,
        width: WIDTH as u32,
        height: (PLOT_TOP + PLOT_HEIGHT + 24.0) as u32,
        rects,
        labels,
        legend,
        empty: points.is_empty(),
    }
}

/// Horizontal bars, largest first: (name, count).
pub fn bars(id: &'static str, title: String, items: &[(String, i64)]) -> Chart {
    const ROW: f64 = 22.0;
    const NAME: f64 = 220.0;
    let max = items.iter().map(|(_, c)| *c).max().unwrap_or(0).max(1) as f64;
    let mut rects = Vec::new();
    let mut labels = Vec::new();
    for (i, (name, count)) in items.iter().enumerate() {
        let y = 6.0 + ROW * i as f64;
        let w = (WIDTH - NAME - 60.0) * (*count as f64) / max;
        labels.push(Label {
            x: n(NAME - 6.0),
            y: n(y + 14.0),
            anchor: "end",
            text: name.clone(),
        });
        rects.push(Rect {
            x: n(NAME),
            y: n(y),
            w: n(w.max(1.0)),
            h: n(ROW - 6.0),
            fill: PALETTE[0],
            title: format!("{name}: {count}"),
        });
        labels.push(Label {
            x: n(NAME + w + 6.0),
            y: n(y + 14.0),
            anchor: "start",
            text: count.to_string(),
        });
    }
    Chart {
        id,
        title,
        width: WIDTH as u32,
        height: (12.0 + ROW * items.len().max(1) as f64) as u32,
        rects,
        labels,
        legend: Vec::new(),
        empty: items.is_empty(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stacked_bars_scale_to_the_busiest_day_and_name_every_series() {
        let days = vec!["2026-12-01".to_owned(), "2026-12-02".to_owned()];
        let points = vec![
            ("2026-12-01".to_owned(), "mot-cua".to_owned(), 3),
            ("2026-12-01".to_owned(), "y-te".to_owned(), 1),
            ("2026-12-02".to_owned(), "y-te".to_owned(), 2),
        ];
        let c = stacked_by_day("a", "t".into(), &days, &points);
        assert_eq!(c.rects.len(), 3);
        assert_eq!(c.legend.len(), 2);
        // The busiest day (4) fills the plot's height.
        let total: f64 = c
            .rects
            .iter()
            .take(2)
            .map(|r| r.h.parse::<f64>().unwrap_or(0.0))
            .sum();
        assert!((total - PLOT_HEIGHT).abs() < 0.2, "{total}");
        assert!(!c.empty);
        assert!(stacked_by_day("b", "t".into(), &days, &[]).empty);
    }
}
