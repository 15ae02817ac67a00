//! The PNG of a run over time: joined devices, received packets per second, CPU, loss.

use crate::stats::{Point, Summary};
use anyhow::{Result, anyhow};
use plotters::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Where TrueType fonts usually are; the first one found is used for the text.
const FONT_DIRS: &[&str] = &[
    "/usr/share/fonts",
    "/usr/local/share/fonts",
    "/usr/lib/fonts",
];
/// Fonts preferred, by file name.
const PREFERRED: &[&str] = &[
    "DejaVuSans.ttf",
    "LiberationSans-Regular.ttf",
    "FreeSans.ttf",
];

fn find_font(dir: &Path, depth: usize, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() && depth > 0 {
            find_font(&path, depth - 1, found);
        } else if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("ttf"))
        {
            found.push(path);
        }
    }
}

/// Registers a system font as `sans-serif` once; false if there is none (the plot then has no
/// text, only axes and lines).
fn font_ready() -> bool {
    static READY: OnceLock<bool> = OnceLock::new();
    *READY.get_or_init(|| {
        let mut fonts = Vec::new();
        for dir in FONT_DIRS {
            find_font(Path::new(dir), 4, &mut fonts);
        }
        fonts.sort_by_key(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            PREFERRED
                .iter()
                .position(|want| *want == name)
                .unwrap_or(PREFERRED.len())
        });
        for path in fonts {
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                return true;
            }
        }
        false
    })
}

/// One line of a panel.
struct Series<'a> {
    name: &'a str,
    color: RGBColor,
    value: fn(&Point) -> Option<f64>,
}

fn panel(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    title: &str,
    points: &[Point],
    lines: &[Series<'_>],
    text: bool,
) -> Result<()> {
    let t_max = points.last().map_or(1.0, |p| p.t).max(1.0);
    let y_max = points
        .iter()
        .flat_map(|p| lines.iter().filter_map(move |s| (s.value)(p)))
        .fold(0.0f64, f64::max);
    let y_max = if y_max > 0.0 { y_max * 1.1 } else { 1.0 };
    let mut builder = ChartBuilder::on(area);
    builder.margin(10);
    if text {
        builder
            .caption(title, ("sans-serif", 18))
            .x_label_area_size(28)
            .y_label_area_size(70);
    } else {
        builder.x_label_area_size(0).y_label_area_size(0);
    }
    let mut chart = builder
        .build_cartesian_2d(0.0..t_max, 0.0..y_max)
        .map_err(|e| anyhow!("building a chart: {e}"))?;
    let mut mesh = chart.configure_mesh();
    if text {
        mesh.x_desc("seconds").label_style(("sans-serif", 13));
    }
    mesh.draw().map_err(|e| anyhow!("drawing the mesh: {e}"))?;
    for line in lines {
        let data: Vec<(f64, f64)> = points
            .iter()
            .filter_map(|p| (line.value)(p).map(|v| (p.t, v)))
            .collect();
        let color = line.color;
        let drawn = chart
            .draw_series(LineSeries::new(data, color.stroke_width(2)))
            .map_err(|e| anyhow!("drawing a line: {e}"))?;
        if text {
            drawn.label(line.name).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        }
    }
    if text {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(|e| anyhow!("drawing the legend: {e}"))?;
    }
    Ok(())
}

/// Draws the run's time series into a PNG at `path`.
pub fn write_png(summary: &Summary, path: &Path) -> Result<()> {
    let text = font_ready();
    let root = BitMapBackend::new(path, (1100, 1200)).into_drawing_area();
    root.fill(&WHITE)
        .map_err(|e| anyhow!("filling the canvas: {e}"))?;
    let (title_area, body) = root.split_vertically(if text { 40 } else { 0 });
    if text {
        let title = format!(
            "cascade-loadtest {}: {} video + {} audio publishers, {} subscribers",
            summary.scenario.preset.as_deref().unwrap_or("custom"),
            summary.scenario.video_publishers,
            summary.scenario.audio_publishers,
            summary.scenario.subscribers
        );
        title_area
            .titled(&title, ("sans-serif", 22))
            .map_err(|e| anyhow!("drawing the title: {e}"))?;
    }
    let panels = body.split_evenly((4, 1));
    let points = &summary.series;
    panel(
        &panels[0],
        "devices",
        points,
        &[
            Series {
                name: "joined",
                color: BLUE,
                value: |p| Some(p.joined as f64),
            },
            Series {
                name: "failed",
                color: RED,
                value: |p| Some(p.failed as f64),
            },
        ],
        text,
    )?;
    panel(
        &panels[1],
        "received packets per second (all devices)",
        points,
        &[
            Series {
                name: "audio",
                color: GREEN,
                value: |p| Some(p.audio_pps),
            },
            Series {
                name: "video",
                color: BLUE,
                value: |p| Some(p.video_pps),
            },
            Series {
                name: "total",
                color: BLACK,
                value: |p| Some(p.audio_pps + p.video_pps),
            },
        ],
        text,
    )?;
    panel(
        &panels[2],
        "CPU, % of one core",
        points,
        &[
            Series {
                name: "focus",
                color: RED,
                value: |p| p.focus_cpu_pct,
            },
            Series {
                name: "load generator",
                color: MAGENTA,
                value: |p| Some(p.loadgen_cpu_pct),
            },
        ],
        text,
    )?;
    panel(
        &panels[3],
        "loss, % of packets sent",
        points,
        &[Series {
            name: "loss",
            color: RED,
            value: |p| Some(p.loss_pct),
        }],
        text,
    )?;
    root.present()
        .map_err(|e| anyhow!("writing {}: {e}", path.display()))?;
    Ok(())
}
