//! A line plot as SVG, for the demo's and the benchmarks' results: no plotting
//! library, a few dozen lines of markup.

use std::fmt::Write as _;

pub struct Series<'a> {
    pub name: &'a str,
    /// An SVG colour.
    pub color: &'a str,
    /// Dashed lines tell failures from successes.
    pub dashed: bool,
    /// One value per x step.
    pub values: Vec<f64>,
}

const WIDTH: f64 = 900.0;
const HEIGHT: f64 = 420.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 220.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;

/// Lines over x = 0, 1, 2, … (`x_label` names the unit), y from 0 to the largest value.
pub fn lines(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> String {
    let steps = series.iter().map(|s| s.values.len()).max().unwrap_or(0).max(2);
    let top = series.iter().flat_map(|s| s.values.iter().copied()).fold(1.0, f64::max) * 1.1;
    let (plot_w, plot_h) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
    let x = |i: usize| LEFT + plot_w * i as f64 / (steps - 1) as f64;
    let y = |v: f64| TOP + plot_h * (1.0 - v / top);

    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{LEFT}" y="24" font-size="15">{title}</text>
<line x1="{LEFT}" y1="{}" x2="{}" y2="{}" stroke="black"/>
<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{}" stroke="black"/>
<text x="{}" y="{}" text-anchor="middle">{x_label}</text>
<text x="16" y="{}" transform="rotate(-90 16 {})" text-anchor="middle">{y_label}</text>
"#,
        TOP + plot_h,
        LEFT + plot_w,
        TOP + plot_h,
        TOP + plot_h,
        LEFT + plot_w / 2.0,
        HEIGHT - 12.0,
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0,
    );
    for tick in 0..=4 {
        let v = top / 1.1 * f64::from(tick) / 4.0;
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="end">{v:.0}</text><line x1="{LEFT}" y1="{1}" x2="{}" y2="{1}" stroke="lightgray"/>"#,
            LEFT - 6.0,
            y(v),
            LEFT + plot_w
        );
    }
    for i in (0..steps).step_by((steps / 10).max(1)) {
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="middle">{i}</text>"#,
            x(i),
            TOP + plot_h + 16.0
        );
    }
    for (n, s) in series.iter().enumerate() {
        let points: Vec<String> =
            s.values.iter().enumerate().map(|(i, v)| format!("{:.1},{:.1}", x(i), y(*v))).collect();
        let dash = if s.dashed { r#" stroke-dasharray="6 4""# } else { "" };
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{}" stroke-width="2"{dash} points="{}"/>"#,
            s.color,
            points.join(" ")
        );
        let ly = TOP + 18.0 * n as f64;
        let _ = writeln!(
            svg,
            r#"<line x1="{}" y1="{ly}" x2="{}" y2="{ly}" stroke="{}" stroke-width="2"{dash}/><text x="{}" y="{}">{}</text>"#,
            WIDTH - RIGHT + 15.0,
            WIDTH - RIGHT + 40.0,
            s.color,
            WIDTH - RIGHT + 46.0,
            ly + 4.0,
            s.name
        );
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_one_polyline_per_series_scaled_to_the_top_value() {
        let svg = lines(
            "t",
            "s",
            "calls/s",
            &[
                Series {
                    name: "ok",
                    color: "green",
                    dashed: false,
                    values: vec![0.0, 500.0, 250.0],
                },
                Series { name: "failed", color: "red", dashed: true, values: vec![0.0, 0.0, 0.0] },
            ],
        );
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains(&format!("{LEFT:.1},{:.1}", TOP + (HEIGHT - TOP - BOTTOM))));
        assert!(svg.contains("stroke-dasharray"));
        assert!(svg.ends_with("</svg>\n"));
    }
}
