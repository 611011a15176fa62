//! Line charts over time, as SVG: one panel per measure, one line per
//! contender, vertical markers where something happened.

use plotters::prelude::*;

/// Line colours, one per contender, in order.
const PALETTE: [RGBColor; 4] =
    [RGBColor(31, 119, 180), RGBColor(214, 39, 40), RGBColor(255, 127, 14), RGBColor(44, 160, 44)];

/// A chart: panels stacked vertically, sharing the time axis.
#[derive(Debug)]
pub(crate) struct Chart {
    pub(crate) title: String,
    /// The width of one bucket of values, in seconds.
    pub(crate) bucket: f64,
    /// The end of the time axis, in seconds.
    pub(crate) end: f64,
    /// Vertical markers: when, and what happened.
    pub(crate) markers: Vec<(f64, String)>,
    pub(crate) panels: Vec<Panel>,
}

/// One measure over time.
#[derive(Debug)]
pub(crate) struct Panel {
    pub(crate) y_label: String,
    pub(crate) lines: Vec<Line>,
}

/// One contender's values, one per bucket; `None` leaves a gap.
#[derive(Debug)]
pub(crate) struct Line {
    pub(crate) name: String,
    pub(crate) values: Vec<Option<f64>>,
}

/// Draws `chart` as an SVG document.
pub(crate) fn svg(chart: &Chart) -> Result<String, String> {
    let mut out = String::new();
    draw(chart, &mut out).map_err(|e| format!("cannot draw `{}`: {e}", chart.title))?;
    Ok(out)
}

fn draw(chart: &Chart, out: &mut String) -> Result<(), Box<dyn std::error::Error>> {
    let height = 40 + 260 * chart.panels.len() as u32;
    let root = SVGBackend::with_string(out, (960, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(&chart.title, ("sans-serif", 18))?;
    let areas = root.split_evenly((chart.panels.len(), 1));
    for (i, (area, panel)) in areas.iter().zip(&chart.panels).enumerate() {
        let highest =
            panel.lines.iter().flat_map(|l| l.values.iter().flatten()).fold(0.0_f64, |a, b| a.max(*b));
        let top = if highest > 0.0 { highest * 1.15 } else { 1.0 };
        let decimals = if top < 20.0 { 1 } else { 0 };
        let mut plot = ChartBuilder::on(area)
            .margin(12)
            .x_label_area_size(38)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..chart.end, 0.0..top)?;
        plot.configure_mesh()
            .x_desc("time (s)")
            .y_desc(panel.y_label.as_str())
            .y_label_formatter(&|v| format!("{v:.decimals$}"))
            .light_line_style(BLACK.mix(0.04))
            .draw()?;
        for (at, what) in &chart.markers {
            plot.draw_series(DashedLineSeries::new(
                [(*at, 0.0), (*at, top)],
                6,
                4,
                BLACK.mix(0.6).stroke_width(1),
            ))?;
            plot.draw_series(std::iter::once(Text::new(
                what.clone(),
                (*at + chart.end * 0.005, top * 0.97),
                ("sans-serif", 13).into_font(),
            )))?;
        }
        for (line, color) in panel.lines.iter().zip(PALETTE.iter().cycle()) {
            let color = *color;
            let mut labelled = false;
            for segment in segments(&line.values, chart.bucket) {
                let drawn = plot.draw_series(LineSeries::new(segment, color.stroke_width(2)))?;
                if !labelled {
                    drawn.label(line.name.as_str()).legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                    });
                    labelled = true;
                }
            }
        }
        // One legend, where the first panel's lines are not: below them.
        if i == 0 {
            plot.configure_series_labels()
                .position(SeriesLabelPosition::LowerRight)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK.mix(0.3))
                .draw()?;
        }
    }
    root.present()?;
    Ok(())
}

/// The runs of values without a gap, each value at the middle of its bucket.
fn segments(values: &[Option<f64>], bucket: f64) -> Vec<Vec<(f64, f64)>> {
    let mut segments: Vec<Vec<(f64, f64)>> = Vec::new();
    let mut current = Vec::new();
    for (i, value) in values.iter().enumerate() {
        match value {
            Some(v) => current.push(((i as f64 + 0.5) * bucket, *v)),
            None if !current.is_empty() => segments.push(std::mem::take(&mut current)),
            None => {}
        }
    }
    if !current.is_empty() {
        segments.push(current);
    }
    segments
}
