//! `opt plot`: training curves of one or several runs (`metrics.jsonl`), one panel per metric,
//! as PNG or SVG with `plotters`; `opt train` writes `OUT/curves.png` with it.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, ValueEnum};
use plotters::coord::Shift;
use plotters::prelude::*;
use serde_json::Value;

/// Metrics drawn when none are named.
pub const DEFAULT_METRICS: &[&str] = &["loss", "val_loss", "lr", "grad_norm"];
const PANEL: (u32, u32) = (1000, 280);
const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// The x axis.
#[derive(ValueEnum, Clone, Copy, PartialEq, Eq)]
pub enum XAxis {
    /// Optimizer updates.
    Step,
    /// Tokens trained on.
    Tokens,
}

/// Arguments of `opt plot`.
#[derive(Args)]
pub struct PlotArgs {
    /// Run folders (each with a `metrics.jsonl`), drawn over each other.
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
    /// Output file: `.png` or `.svg`.
    #[arg(long, default_value = "curves.png")]
    pub out: PathBuf,
    /// Comma-separated metrics (any numeric field of metrics.jsonl, e.g. loss, val_loss, lr,
    /// grad_norm, tokens_per_second).
    #[arg(long, value_delimiter = ',')]
    pub metric: Vec<String>,
    #[arg(long, value_enum, default_value_t = XAxis::Step)]
    pub x: XAxis,
}

/// One run's name and metric lines.
struct Run {
    name: String,
    rows: Vec<Value>,
}

/// `opt plot`
pub fn plot(args: PlotArgs) -> Result<()> {
    let runs = args
        .runs
        .iter()
        .map(|r| read_run(r))
        .collect::<Result<Vec<_>>>()?;
    let named = !args.metric.is_empty();
    let metrics: Vec<&str> = if named {
        args.metric.iter().map(String::as_str).collect()
    } else {
        DEFAULT_METRICS.to_vec()
    };
    let drawn = write_curves(&runs, &metrics, named, args.x, &args.out)?;
    println!(
        "{}: {} of {} runs",
        args.out.display(),
        drawn.join(", "),
        runs.len()
    );
    Ok(())
}

/// `OUT/curves.png` of one finished run (the default metrics it has).
pub fn run_curves(run: &Path) -> Result<PathBuf> {
    let out = run.join("curves.png");
    write_curves(&[read_run(run)?], DEFAULT_METRICS, false, XAxis::Step, &out)?;
    Ok(out)
}

fn read_run(dir: &Path) -> Result<Run> {
    let path = dir.join("metrics.jsonl");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let rows = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{}:{}: not JSON", path.display(), i + 1))
        })
        .collect::<Result<Vec<Value>>>()?;
    let name = dir
        .file_name()
        .map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into());
    Ok(Run { name, rows })
}

/// The (x, value) points of `metric` in a run.
fn points(run: &Run, metric: &str, x: XAxis) -> Vec<(f64, f64)> {
    let key = match x {
        XAxis::Step => "step",
        XAxis::Tokens => "tokens",
    };
    run.rows
        .iter()
        .filter_map(|r| Some((r[key].as_f64()?, r[metric].as_f64()?)))
        .filter(|(a, b)| a.is_finite() && b.is_finite())
        .collect()
}

/// Draw the metrics that some run has, one panel each; returns their names. With `strict`, a
/// metric that no run has is an error (else it is left out).
fn write_curves(
    runs: &[Run],
    metrics: &[&str],
    strict: bool,
    x: XAxis,
    out: &Path,
) -> Result<Vec<String>> {
    let drawn: Vec<&str> = metrics
        .iter()
        .copied()
        .filter(|m| runs.iter().any(|r| !points(r, m, x).is_empty()))
        .collect();
    if drawn.is_empty() {
        bail!("no run has any of the metrics {}", metrics.join(", "));
    }
    if let Some(missing) = metrics.iter().find(|m| strict && !drawn.contains(m)) {
        bail!("no run has the metric `{missing}` in its metrics.jsonl");
    }
    let size = (PANEL.0, PANEL.1 * drawn.len() as u32);
    // Both backends lay text out with the registered font.
    register_font()?;
    let bytes = match out.extension().and_then(|e| e.to_str()) {
        Some("svg") => {
            let mut svg = String::new();
            draw(
                SVGBackend::with_string(&mut svg, size).into_drawing_area(),
                runs,
                &drawn,
                x,
            )?;
            svg.into_bytes()
        }
        Some("png") => {
            let mut rgb = vec![0u8; (size.0 * size.1 * 3) as usize];
            draw(
                BitMapBackend::with_buffer(&mut rgb, size).into_drawing_area(),
                runs,
                &drawn,
                x,
            )?;
            encode_png(&rgb, size)?
        }
        _ => bail!("{}: the output must end in .png or .svg", out.display()),
    };
    opt::data::fsutil::write_atomic(out, &bytes)
        .with_context(|| format!("writing {}", out.display()))?;
    Ok(drawn.iter().map(|m| m.to_string()).collect())
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    runs: &[Run],
    metrics: &[&str],
    x: XAxis,
) -> Result<()> {
    let fail = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("drawing the plot: {e}");
    root.fill(&WHITE).map_err(fail)?;
    for (area, metric) in root.split_evenly((metrics.len(), 1)).iter().zip(metrics) {
        let series: Vec<(usize, Vec<(f64, f64)>)> = runs
            .iter()
            .enumerate()
            .map(|(i, r)| (i, points(r, metric, x)))
            .collect();
        let all = series.iter().flat_map(|(_, p)| p);
        let (x0, x1) = bounds(all.clone().map(|p| p.0));
        let (y0, y1) = bounds(all.map(|p| p.1));
        let mut chart = ChartBuilder::on(area)
            .caption(*metric, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(70)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(fail)?;
        let x_desc = if x == XAxis::Step { "step" } else { "tokens" };
        chart.configure_mesh().x_desc(x_desc).draw().map_err(fail)?;
        for (i, pts) in series.into_iter().filter(|(_, p)| !p.is_empty()) {
            let color = COLORS[i % COLORS.len()];
            chart
                .draw_series(LineSeries::new(pts, color.stroke_width(2)))
                .map_err(fail)?
                .label(runs[i].name.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(fail)?;
    }
    root.present().map_err(fail)
}

/// A range around the values with 5% room (a flat series gets +-1).
fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
        (a.min(v), b.max(v))
    });
    let pad = if hi > lo { (hi - lo) * 0.05 } else { 1.0 };
    (lo - pad, hi + pad)
}

/// Text needs a font: the Ubuntu Light face that egui ships, so no system font is needed.
fn register_font() -> Result<()> {
    static ONCE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = *ONCE.get_or_init(|| {
        plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            epaint_default_fonts::UBUNTU_LIGHT,
        )
        .is_ok()
    });
    if !ok {
        bail!("the built-in font could not be loaded");
    }
    Ok(())
}

fn encode_png(rgb: &[u8], (w, h): (u32, u32)) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, w, h);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(rgb)?;
    writer.finish()?;
    Ok(out)
}
