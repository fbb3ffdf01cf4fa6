//! Turning one run's measurements into ratios on the console and a markdown report.

use std::fmt::Write;

use crate::bench::{GroupResult, ThreadResult, RUNNERS};
use crate::child::LoadStats;
use crate::machine::{Machine, TRACT_VERSION};
use crate::stats::Summary;

pub struct RunInfo {
    pub date: String,
    pub command: String,
    pub machine: Machine,
    pub ort_version: Option<String>,
    pub load_avg_start: Option<f64>,
    pub load_avg_end: Option<f64>,
    pub settings: crate::bench::Settings,
    /// Paths in the report are shown relative to this (the repository root).
    pub root: std::path::PathBuf,
}

const MIB: f64 = 1024.0 * 1024.0;

/// Bytes in MiB, or KiB below one MiB (the default bundle's files are ~50 KiB).
fn mib(bytes: f64) -> String {
    if bytes.abs() < MIB {
        format!("{:.0} KiB", bytes / 1024.0)
    } else {
        format!("{:.1} MiB", bytes / MIB)
    }
}

fn ratio(a: f64, b: f64) -> String {
    if a.is_finite() && b.is_finite() && b > 0.0 {
        format!("{:.2}", a / b)
    } else {
        "n/a".into()
    }
}

fn latency(s: &Summary) -> String {
    if s.n == 0 {
        "n/a".into()
    } else {
        format!("{:.2} [{:.2}–{:.2}]", s.median, s.p10, s.p90)
    }
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    Summary::of(&values.collect::<Vec<_>>()).map_or(f64::NAN, |s| s.median)
}

fn load_median(loads: &[LoadStats], f: impl Fn(&LoadStats) -> f64) -> f64 {
    median(loads.iter().map(f))
}

fn threads_label(t: &ThreadResult, have_ort: bool) -> String {
    if have_ort {
        format!(
            "{} (ort {}, edgedx {})",
            t.threads.label, t.threads.ort, t.threads.edgedx
        )
    } else {
        format!("edgedx {}", t.threads.edgedx)
    }
}

/// The short console summary: the ratios the issue asks for.
pub fn console(results: &[GroupResult], have_ort: bool) -> String {
    let mut s = String::new();
    for g in results {
        for t in &g.runs {
            let _ = write!(
                s,
                "{:<12} threads {:<24} edgedx int8/fp32 {:>5}",
                g.group.name,
                threads_label(t, have_ort),
                ratio(t.median(0), t.median(1)),
            );
            if have_ort {
                let _ = write!(
                    s,
                    "  ort int8/fp32 {:>5}  edgedx/ort int8 {:>5} fp32 {:>5}  max|dp| int8 {:.2e} fp32 {:.2e}  preprocessing/int8 {:>5}",
                    ratio(t.median(2), t.median(3)),
                    ratio(t.median(0), t.median(2)),
                    ratio(t.median(1), t.median(3)),
                    t.max_prob_diff[0],
                    t.max_prob_diff[1],
                    ratio(t.preprocess.median, t.median(0)),
                );
            }
            s.push('\n');
        }
        let [i8l, f32l] = &g.loads;
        let _ = writeln!(
            s,
            "{:<12} load ms int8 {:.1} fp32 {:.1}; load peak int8 {} ({} x file, {} of it code; data {} x file) fp32 {}; steady model RSS int8/fp32 {}",
            g.group.name,
            load_median(i8l, |l| l.load_ms),
            load_median(f32l, |l| l.load_ms),
            mib(load_median(i8l, |l| l.load_peak() as f64)),
            ratio(load_median(i8l, |l| l.load_peak() as f64), g.int8_file as f64),
            mib(load_median(i8l, |l| l.code_paged_in() as f64)),
            ratio(load_median(i8l, |l| l.data_peak() as f64), g.int8_file as f64),
            mib(load_median(f32l, |l| l.load_peak() as f64)),
            ratio(
                load_median(i8l, |l| l.model_rss() as f64),
                load_median(f32l, |l| l.model_rss() as f64)
            ),
        );
    }
    s
}

pub fn markdown(info: &RunInfo, results: &[GroupResult]) -> String {
    let have_ort = info.ort_version.is_some();
    let m = &info.machine;
    let mut s = String::new();
    let _ = writeln!(s, "# edgedx benchmark results\n");
    let _ = writeln!(
        s,
        "Written by `edgedx-bench` (firmware/bench/README.md) on {}. Every number below was \
         measured in this one run; rerun the command to refresh the file.\n",
        info.date
    );
    let _ = writeln!(s, "    {}\n", info.command);
    let _ = writeln!(s, "| machine | |\n|---|---|");
    let _ = writeln!(s, "| CPU | {} ({}) |", m.cpu, m.arch);
    let _ = writeln!(s, "| features | {} |", m.features.join(", "));
    let _ = writeln!(s, "| cores | {} |", m.cores);
    let _ = writeln!(
        s,
        "| tract | {TRACT_VERSION} (edgedx-engine, release build; `multithread-mm`, threads per row via `edgedx_engine::set_threads`, 1 = no executor) |"
    );
    let _ = writeln!(
        s,
        "| onnxruntime | {} |",
        info.ort_version.as_deref().map_or_else(
            || "not run (--no-ort)".to_string(),
            |v| format!("{v} (Python, CPU EP, sequential, inter-op 1 thread, spinning off)")
        )
    );
    let fmt_load = |l: Option<f64>| l.map_or("?".into(), |v| format!("{v:.2}"));
    let _ = writeln!(
        s,
        "| load average (1 min), start / end | {} / {} |",
        fmt_load(info.load_avg_start),
        fmt_load(info.load_avg_end)
    );
    let st = &info.settings;
    let _ = writeln!(
        s,
        "| rounds | {} warm-up, then {}–{} interleaved rounds within ~{} s per model and thread setting |\n",
        st.warmup, st.min_rounds, st.max_rounds, st.seconds
    );

    let _ = writeln!(
        s,
        "## Ratios (of median latencies, same run, interleaved)\n"
    );
    let _ = writeln!(
        s,
        "| model | threads | edgedx int8/fp32 | ort int8/fp32 | edgedx/ort int8 | edgedx/ort fp32 | preprocessing/edgedx int8 | max abs Δp int8 | max abs Δp fp32 | same top-1 | rounds |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|");
    for g in results {
        for t in &g.runs {
            let _ = writeln!(
                s,
                "| {} | {} | **{}** | {} | {} | {} | {} | {:.1e} | {:.1e} | {} | {} |",
                g.group.name,
                threads_label(t, have_ort),
                ratio(t.median(0), t.median(1)),
                ratio(t.median(2), t.median(3)),
                ratio(t.median(0), t.median(2)),
                ratio(t.median(1), t.median(3)),
                ratio(t.preprocess.median, t.median(0)),
                t.max_prob_diff[0],
                t.max_prob_diff[1],
                if !have_ort {
                    "n/a"
                } else if t.same_top1 == [true, true] {
                    "yes"
                } else {
                    "NO"
                },
                t.rounds
            );
        }
    }

    let _ = writeln!(s, "\n## Latency (ms per image, median [p10–p90])\n");
    let _ = writeln!(
        s,
        "| model | threads | {} | preprocessing |",
        RUNNERS.join(" | ")
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|");
    for g in results {
        for t in &g.runs {
            let mut cells: Vec<String> = t.latency.iter().map(latency).collect();
            cells.push(latency(&t.preprocess));
            let _ = writeln!(
                s,
                "| {} | {} | {} |",
                g.group.name,
                threads_label(t, have_ort),
                cells.join(" | ")
            );
        }
    }

    let _ = writeln!(
        s,
        "\n## Load and memory (edgedx; each load in a fresh child process, median of {})\n",
        info.settings.load_repeats
    );
    let _ = writeln!(
        s,
        "Load peak = VmHWM after `Model::load` minus VmRSS before it; code = the growth of RssFile \
         over the load, the program's own pages the load touched (included in the peak; how many \
         depends on the page cache's folios for the executable as well as on the code run); data = \
         load peak minus code. Model RSS = \
         VmRSS after {} inferences minus VmRSS before the load (the process itself: the column after).\n",
        info.settings.steady_runs
    );
    let _ = writeln!(
        s,
        "| model | variant | file | load ms | ort session ms | load peak | peak / file | code | data | data / file | model RSS | process RSS |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    for g in results {
        for (i, (variant, file)) in [(&g.group.int8, g.int8_file), (&g.group.fp32, g.fp32_file)]
            .into_iter()
            .enumerate()
        {
            let l = &g.loads[i];
            let peak = load_median(l, |x| x.load_peak() as f64);
            let data = load_median(l, |x| x.data_peak() as f64);
            let _ = writeln!(
                s,
                "| {} | {variant} | {} | {:.1} | {} | {} | {} | {} | {} | {} | {} | {} |",
                g.group.name,
                mib(file as f64),
                load_median(l, |x| x.load_ms),
                if g.ort_load_ms[i].is_finite() {
                    format!("{:.1}", g.ort_load_ms[i])
                } else {
                    "n/a".into()
                },
                mib(peak),
                ratio(peak, file as f64),
                mib(load_median(l, |x| x.code_paged_in() as f64)),
                mib(data),
                ratio(data, file as f64),
                mib(load_median(l, |x| x.model_rss() as f64)),
                mib(load_median(l, |x| x.rss_steady as f64)),
            );
        }
        let _ = writeln!(
            s,
            "| {} | **int8/fp32** | {} | {} | {} | {} | | | {} | | {} | {} |",
            g.group.name,
            ratio(g.int8_file as f64, g.fp32_file as f64),
            ratio(
                load_median(&g.loads[0], |x| x.load_ms),
                load_median(&g.loads[1], |x| x.load_ms)
            ),
            ratio(g.ort_load_ms[0], g.ort_load_ms[1]),
            ratio(
                load_median(&g.loads[0], |x| x.load_peak() as f64),
                load_median(&g.loads[1], |x| x.load_peak() as f64)
            ),
            ratio(
                load_median(&g.loads[0], |x| x.data_peak() as f64),
                load_median(&g.loads[1], |x| x.data_peak() as f64)
            ),
            ratio(
                load_median(&g.loads[0], |x| x.model_rss() as f64),
                load_median(&g.loads[1], |x| x.model_rss() as f64)
            ),
            ratio(
                load_median(&g.loads[0], |x| x.rss_steady as f64),
                load_median(&g.loads[1], |x| x.rss_steady as f64)
            ),
        );
    }

    let _ = writeln!(s, "\n## Optimised plans (edgedx)\n");
    let _ = writeln!(
        s,
        "| model | variant | matrix kernels | operators (count) |"
    );
    let _ = writeln!(s, "|---|---|---|---|");
    for g in results {
        for (i, variant) in [&g.group.int8, &g.group.fp32].into_iter().enumerate() {
            let Some(l) = g.loads[i].first() else {
                continue;
            };
            let ops: Vec<String> = l.ops.iter().map(|(n, c)| format!("{n} {c}")).collect();
            let _ = writeln!(
                s,
                "| {} | {variant} | {} | {} |",
                g.group.name,
                l.kernels.join(", "),
                ops.join(", ")
            );
        }
    }

    let _ = writeln!(s, "\n## Models\n");
    let rel = |p: &std::path::Path| {
        p.strip_prefix(&info.root)
            .unwrap_or(p)
            .display()
            .to_string()
    };
    for g in results {
        let _ = writeln!(
            s,
            "- **{}**: {} (bundle `{}`, input image `{}`)",
            g.group.name,
            g.group.note,
            rel(&g.group.bundle),
            rel(&g.group.image)
        );
    }
    let _ = writeln!(
        s,
        "\nedge224 is MobileNetV2 with seeded random weights (firmware/bench/edge224.py): real \
         ImageNet weights cannot be downloaded here. Its latency is representative because every \
         kernel is dense: the work depends on the layer shapes, not on the weight values; its \
         classes mean nothing, and agreement with onnxruntime is still checked."
    );
    s
}
