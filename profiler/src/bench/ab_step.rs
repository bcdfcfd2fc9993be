//! The ab step: nginx's QPS and the machine's busy CPU time per request. With agents, ab also
//! runs with every agent program detached, once just before and once just after the profiled
//! run on the same path, so netprof's own CPU cost per request under load is measured in the
//! same seconds (`AbAgentsOff`). The report takes that much out of the load step's stages
//! instead of a calibration measured with pings, whose idle CPUs make every probe run cost
//! several times what it costs under load.

use super::result::{AbAgentsOff, AbRun};
use super::{tools, BenchError, PathContext};
use crate::lab::PathEndpoints;
use crate::parse::ab::AbReport;
use crate::rundir::{NetPath, Tool};

/// What the ab step measured on one path.
pub(super) struct AbStep {
    pub ab: AbReport,
    pub cpu_ns_per_request: Option<f64>,
    pub agents_off: Option<AbAgentsOff>,
}

/// One ab run with the machine's CPU time per request.
async fn timed(
    ctx: &PathContext<'_>,
    path: NetPath,
    endpoints: &PathEndpoints,
) -> Result<AbRun, BenchError> {
    let (ab, cpu_ns_per_request) =
        tools::ab_with_cpu(&endpoints.http_client_netns, endpoints.http_target, ctx.cfg)
            .await
            .map_err(|source| BenchError::Tool {
                mode: ctx.lab.mode(),
                step: format!("{}: ab", path.label()),
                source,
            })?;
    Ok(AbRun {
        ab,
        cpu_ns_per_request,
    })
}

/// ab on `endpoints`, profiled when agents are attached (then bracketed by two detached runs).
pub(super) async fn run(
    ctx: &mut PathContext<'_>,
    path: NetPath,
    endpoints: &PathEndpoints,
) -> Result<AbStep, BenchError> {
    let detached = ctx.profiled();
    let mut off = Vec::new();
    if detached {
        ctx.set_attached(false)?;
        off.push(timed(ctx, path, endpoints).await?);
        ctx.set_attached(true)?;
    }
    ctx.before(endpoints, Tool::Ab)?;
    let profiled = timed(ctx, path, endpoints).await?;
    ctx.after(path, Tool::Ab)?;
    if detached {
        ctx.set_attached(false)?;
        off.push(timed(ctx, path, endpoints).await?);
        ctx.set_attached(true)?;
    }
    Ok(AbStep {
        ab: profiled.ab,
        cpu_ns_per_request: profiled.cpu_ns_per_request,
        agents_off: detached.then_some(AbAgentsOff { runs: off }),
    })
}
