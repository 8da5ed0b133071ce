//! Bar charts of ratios, as SVG: what `xbb-lab bench --svg` and the real
//! Xen host's comparison (`xbb-lab chart`) draw.
//!
//! A chart is a list of [`Bar`]s: one group per test (a row of the chart),
//! one bar per series within it (xbb/raw, feature on/off, xbb-serve vs a
//! peer), drawn horizontally with the value printed beside each bar and a
//! line at 1.0, where the two sides of a ratio are equal. Drawn with the
//! `plotters` library's SVG back-end, which needs no fonts.

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// One bar: the value of `series` in test `group`.
#[derive(Clone, Debug, PartialEq)]
pub struct Bar {
    /// The test (a row of the chart).
    pub group: String,
    /// What is compared (a bar colour and a legend entry).
    pub series: String,
    /// The ratio.
    pub value: f64,
}

/// Colours of the series, in order of first appearance.
const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Reads bars from tab-separated lines `group<TAB>series<TAB>value`;
/// blank lines and lines starting with `#` are skipped.
pub fn parse_tsv(text: &str) -> Result<Vec<Bar>, String> {
    let mut bars = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = line.split('\t').collect();
        let [group, series, value] = f[..] else {
            return Err(format!("line {}: want group, series and value", n + 1));
        };
        let value: f64 = value
            .trim()
            .parse()
            .map_err(|_| format!("line {}: not a number: {value}", n + 1))?;
        if !value.is_finite() || value < 0.0 {
            return Err(format!("line {}: not a ratio: {value}", n + 1));
        }
        bars.push(Bar {
            group: group.to_string(),
            series: series.to_string(),
            value,
        });
    }
    Ok(bars)
}

fn first_seen<'a>(it: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    for s in it {
        if !out.contains(&s) {
            out.push(s);
        }
    }
    out
}

/// Draws `bars` under `title` and returns the SVG document.
pub fn ratio_svg(title: &str, bars: &[Bar]) -> Result<String, String> {
    if bars.is_empty() {
        return Err(String::from("nothing to draw"));
    }
    let groups = first_seen(bars.iter().map(|b| b.group.as_str()));
    let series = first_seen(bars.iter().map(|b| b.series.as_str()));
    let per = series.len() as f64;
    // Room on the right for the values and the legend.
    let top = bars.iter().map(|b| b.value).fold(1.0f64, f64::max) * 1.45;
    let height =
        90 + groups.len() as u32 * (14 * series.len() as u32 + 16) + 20 * series.len() as u32;
    let label_width = groups.iter().map(|g| g.len()).max().unwrap_or(8) as u32 * 7 + 10;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (760, height)).into_drawing_area();
        fn err<E: std::error::Error + Send + Sync>(e: DrawingAreaErrorKind<E>) -> String {
            format!("chart: {e}")
        }
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(34)
            .y_label_area_size(label_width)
            .build_cartesian_2d(0f64..top, 0f64..groups.len() as f64)
            .map_err(err)?;
        // Row r (from the bottom) holds group len - 1 - r: the first group
        // is drawn at the top.
        let name_of = |y: &f64| {
            let r = y.floor() as usize;
            groups
                .len()
                .checked_sub(r + 1)
                .and_then(|i| groups.get(i))
                .filter(|_| (y - y.floor() - 0.5).abs() < 1e-6)
                .map_or(String::new(), |g| g.to_string())
        };
        chart
            .configure_mesh()
            .disable_y_mesh()
            .light_line_style(WHITE)
            .y_labels(groups.len() * 2 + 1)
            .y_label_formatter(&name_of)
            .x_desc("ratio (1.0: the two sides are equal)")
            .draw()
            .map_err(err)?;
        for (si, s) in series.iter().enumerate() {
            let colour = PALETTE[si % PALETTE.len()];
            let rects = bars.iter().filter(|b| b.series == *s).map(|b| {
                let gi = groups.iter().position(|g| *g == b.group).unwrap_or(0);
                // Rows are drawn top-down in the order the groups came.
                let row = (groups.len() - 1 - gi) as f64;
                let y0 = row + 0.1 + 0.8 * (per - 1.0 - si as f64) / per;
                let y1 = y0 + 0.8 / per;
                Rectangle::new([(0.0, y0), (b.value, y1)], colour.filled())
            });
            chart
                .draw_series(rects)
                .map_err(err)?
                .label(*s)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], colour.filled())
                });
            let values = bars.iter().filter(|b| b.series == *s).map(|b| {
                let gi = groups.iter().position(|g| *g == b.group).unwrap_or(0);
                let row = (groups.len() - 1 - gi) as f64;
                let y = row + 0.1 + 0.8 * (per - 0.5 - si as f64) / per;
                Text::new(
                    format!("{:.2}", b.value),
                    (b.value + top * 0.01, y),
                    ("sans-serif", 11)
                        .into_font()
                        .into_text_style(&root)
                        .pos(Pos::new(HPos::Left, VPos::Center)),
                )
            });
            chart.draw_series(values).map_err(err)?;
        }
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(1.0, 0.0), (1.0, groups.len() as f64)],
                BLACK.stroke_width(1),
            )))
            .map_err(err)?;
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK.mix(0.3))
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsv_is_read_and_bad_lines_are_refused() {
        let bars =
            parse_tsv("# test\tseries\tratio\nseq\txbb/blkback\t1.25\n\nseq\txbb/qdisk\t2\n")
                .unwrap();
        assert_eq!(bars.len(), 2);
        assert_eq!(bars[1].series, "xbb/qdisk");
        assert_eq!(bars[1].value, 2.0);
        assert!(parse_tsv("a\tb\n").is_err());
        assert!(parse_tsv("a\tb\tx\n").is_err());
        assert!(parse_tsv("a\tb\t-1\n").is_err());
        assert!(parse_tsv("a\tb\tNaN\n").is_err());
    }

    #[test]
    fn every_bar_series_and_value_is_drawn() {
        let bars = parse_tsv("seq read\tA\t1.5\nseq read\tB\t0.5\nrand 4k\tA\t0.75\n").unwrap();
        let svg = ratio_svg("title here", &bars).unwrap();
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(svg.contains("title here"));
        for w in ["seq read", "rand 4k", "1.50", "0.50", "0.75", ">A<", ">B<"] {
            assert!(svg.replace('\n', "").contains(w), "{w} missing");
        }
        // Three bars plus two legend swatches, in two colours.
        let blue = svg.matches("fill=\"#1F77B4\"").count();
        let orange = svg.matches("fill=\"#FF7F0E\"").count();
        assert_eq!((blue, orange), (3, 2), "{svg}");
        assert!(ratio_svg("empty", &[]).is_err());
    }
}
