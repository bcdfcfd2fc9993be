//! `netprof report DIR`: the attributed report of a `netprof bench --profile` directory.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;

use crate::report::{self, render::Format};

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The directory `netprof bench --profile --out DIR` wrote.
    pub dir: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// Write to this file instead of stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print on stderr how long loading, attributing and rendering every format took.
    #[arg(long)]
    pub timing: bool,
}

pub fn run(args: ReportArgs) -> Result<()> {
    let started = Instant::now();
    let report = report::from_dir(&args.dir)?;
    let built = started.elapsed();
    let text = report::render::render(&report, args.format);
    let rendered = started.elapsed();
    if args.timing {
        // Every format, so one run shows the cost of all of them.
        let t = Instant::now();
        let sizes: Vec<String> = Format::ALL
            .iter()
            .map(|&f| {
                format!(
                    "{f:?} {} KB",
                    report::render::render(&report, f).len() / 1024
                )
            })
            .collect();
        let all_formats = t.elapsed();
        eprintln!(
            "timing: load and attribute {:.1} ms, render {:?} {:.1} ms; all four formats again {:.1} ms ({}); total {:.1} ms",
            built.as_secs_f64() * 1e3,
            args.format,
            (rendered - built).as_secs_f64() * 1e3,
            all_formats.as_secs_f64() * 1e3,
            sizes.join(", "),
            (rendered + all_formats).as_secs_f64() * 1e3,
        );
    }
    match &args.out {
        Some(path) => std::fs::write(path, &text)
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => print!("{text}"),
    }
    Ok(())
}
