//! `throughput.svg`: one panel per workload, a bar per engine (and per thread count,
//! depth or committer count), throughput on a linear axis.

use std::path::Path;

use plotters::prelude::*;

use super::Row;
use crate::spec::{COMMITTERS, LTM_DEPTHS, MIXED_THREADS, MIXES};

struct Panel {
    title: String,
    workload: String,
    series: Vec<(usize, String)>,
    with_fio: bool,
}

fn short(engine: &str) -> &str {
    match engine {
        "ringkv-uring" => "rk-uring",
        "ringkv-threadpool" => "rk-tpool",
        "ringkv-uring-none" => "rk-uring-none",
        "ringkv-threadpool-none" => "rk-tpool-none",
        "rocksdb" => "rocks",
        other => other,
    }
}

const COLORS: [RGBColor; 4] =
    [RGBColor(31, 119, 180), RGBColor(255, 127, 14), RGBColor(44, 160, 44), RGBColor(214, 39, 40)];

/// Draws the plot into `path` (SVG).
pub fn draw(rows: &[Row], path: &Path) -> anyhow::Result<()> {
    let mut panels: Vec<Panel> = MIXES
        .iter()
        .map(|m| Panel {
            title: format!("{} ops/s", m.id),
            workload: m.id.into(),
            series: MIXED_THREADS.iter().map(|&t| (t, format!("{t} thr"))).collect(),
            with_fio: false,
        })
        .collect();
    panels.push(Panel {
        title: "larger than memory: 4 KiB gets/s".into(),
        workload: "ltm-read".into(),
        series: LTM_DEPTHS.iter().map(|&d| (d, format!("depth {d}"))).collect(),
        with_fio: true,
    });
    panels.push(Panel {
        title: "durable commits/s".into(),
        workload: "durable".into(),
        series: COMMITTERS.iter().map(|&c| (c, format!("{c} committers"))).collect(),
        with_fio: false,
    });
    panels.push(Panel {
        title: "bulk load keys/s".into(),
        workload: "bulk".into(),
        series: vec![(1, "keys/s".into())],
        with_fio: false,
    });
    panels.retain(|p| rows.iter().any(|r| r.workload == p.workload));
    anyhow::ensure!(!panels.is_empty(), "nothing to plot");

    let cols = 3;
    let nrows = panels.len().div_ceil(cols);
    let root = SVGBackend::new(path, (1500, 420 * nrows as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let areas = root.split_evenly((nrows, cols));
    let order = crate::engine::EngineKind::ALL.map(|e| e.name());
    for (area, p) in areas.iter().zip(&panels) {
        let mut engines: Vec<&str> = order
            .iter()
            .copied()
            .filter(|e| rows.iter().any(|r| r.workload == p.workload && r.engine == *e))
            .collect();
        let fio_name = "fio-randread";
        if p.with_fio && rows.iter().any(|r| r.workload == fio_name) {
            engines.push("fio");
        }
        let value = |e: &str, t: usize| -> f64 {
            let w = if e == "fio" { fio_name } else { p.workload.as_str() };
            rows.iter()
                .find(|r| r.workload == w && r.engine == e && r.threads as usize == t)
                .map_or(0.0, |r| r.ops_per_s)
        };
        let ymax = engines
            .iter()
            .flat_map(|e| p.series.iter().map(move |(t, _)| (e, *t)))
            .map(|(e, t)| value(e, t))
            .fold(0.0, f64::max)
            .max(1.0)
            * 1.15;
        let k = p.series.len() + 1; // slots per engine: one per series and a gap
        let slots = (engines.len() * k) as i32;
        let mut chart = ChartBuilder::on(area)
            .caption(&p.title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(70)
            .build_cartesian_2d((0..slots).into_segmented(), 0f64..ymax)?;
        let names = engines.clone();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(slots as usize)
            .x_label_formatter(&|v| match v {
                SegmentValue::CenterOf(j) if (*j as usize) % k == (k - 1) / 2 => {
                    names.get(*j as usize / k).map_or(String::new(), |e| short(e).to_string())
                }
                _ => String::new(),
            })
            .y_label_formatter(&|y| super::markdown::num(*y))
            .draw()?;
        for (si, (t, label)) in p.series.iter().enumerate() {
            let color = COLORS[si % COLORS.len()];
            let bars: Vec<_> = engines
                .iter()
                .enumerate()
                .map(|(ei, e)| {
                    let j = (ei * k + si) as i32;
                    Rectangle::new(
                        [(SegmentValue::Exact(j), 0.0), (SegmentValue::Exact(j + 1), value(e, *t))],
                        color.filled(),
                    )
                })
                .collect();
            chart
                .draw_series(bars)?
                .label(label.clone())
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
        }
        if p.series.len() > 1 {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .label_font(("sans-serif", 12))
                .draw()?;
        }
    }
    root.present()?;
    Ok(())
}
