//! `netprof bench`.
use clap::Args;

#[derive(Debug, Args)]
pub struct BenchArgs {}
pub fn run(_args: BenchArgs) -> anyhow::Result<()> { anyhow::bail!("not yet") }
