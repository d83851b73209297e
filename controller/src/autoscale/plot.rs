//! The autoscaling timeline as an SVG: load and replica counts over time, drawn alike
//! for `dockscale simulate --plot` and the benchmark's autoscaling section. It only
//! draws; which lines to show is the caller's choice.

use std::path::{Path, PathBuf};

use plotters::prelude::*;

/// The lines' colours, in order.
const PALETTE: [RGBColor; 4] = [BLUE, RED, GREEN, MAGENTA];

/// One line of the timeline: its legend and its points, `(seconds, value)`. A sample
/// that failed is a point left out (the line joins its neighbours).
#[derive(Clone, Debug)]
pub struct Line<'a> {
    pub label: &'a str,
    pub points: Vec<(f64, f64)>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot draw {path}: {message}")]
pub struct PlotError {
    pub path: PathBuf,
    pub message: String,
}

/// Draws `lines` (blue, red, green, magenta, in that order) over seconds into an SVG at `path`,
/// under `title`; both axes start at 0, the value axis with a tenth of headroom.
pub fn timeline(path: &Path, title: &str, lines: &[Line<'_>]) -> Result<(), PlotError> {
    let err = |e: &dyn std::fmt::Display| PlotError {
        path: path.to_owned(),
        message: e.to_string(),
    };
    let points = || lines.iter().flat_map(|l| l.points.iter());
    let t_max = points().map(|p| p.0).fold(1.0_f64, f64::max);
    let y_max = points().map(|p| p.1).fold(1.0_f64, f64::max) * 1.1;
    let root = SVGBackend::new(path, (900, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(45)
        .build_cartesian_2d(0.0..t_max, 0.0..y_max)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("requests in flight / replicas")
        .draw()
        .map_err(|e| err(&e))?;
    for (line, color) in lines.iter().zip(PALETTE.iter().cycle()) {
        let color = *color;
        chart
            .draw_series(LineSeries::new(
                line.points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(|e| err(&e))?
            .label(line.label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeline_is_drawn_with_every_legend() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("timeline.svg");
        let lines = [
            Line {
                label: "demand",
                points: vec![(0.0, 2.0), (1.0, 12.5), (3.0, 4.0)],
            },
            Line {
                label: "ready replicas",
                points: vec![(0.0, 1.0), (2.0, 3.0)],
            },
        ];
        timeline(&path, "a step", &lines).expect("draws");
        let svg = std::fs::read_to_string(&path).expect("written");
        for text in ["a step", "demand", "ready replicas", "seconds"] {
            assert!(svg.contains(text), "no {text:?} in the SVG");
        }
    }

    #[test]
    fn an_unwritable_path_is_an_error_naming_it() {
        let path = Path::new("/nonexistent-dir/timeline.svg");
        let err = timeline(path, "t", &[]).expect_err("cannot write");
        assert!(
            err.to_string()
                .starts_with("cannot draw /nonexistent-dir/timeline.svg"),
            "{err}"
        );
    }
}
