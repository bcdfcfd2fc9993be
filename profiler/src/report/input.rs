//! Reading what `netprof bench [--profile]` wrote: `DIR/<mode>.json` (`netprof.bench.mode/v1`)
//! and the agent reports they list (`netprof.agent/v1`). Every file is checked for its schema,
//! every listed profile must exist, and a profiled mode must have the ping and ab steps of each
//! of its paths on both nodes; any problem names the file.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use super::merge::NodeDoc;
use crate::agent::report::{AgentReport, SCHEMA as AGENT_SCHEMA};
use crate::bench::cpu_idle::CpuIdle;
use crate::bench::result::{ModeResult, SCHEMA as MODE_SCHEMA};
use crate::bench::validate::{CheckRun, ProfiledRun, ValidateResult, SCHEMA as VALIDATE_SCHEMA};
use crate::lab::Mode;
use crate::rundir::{NetPath, Node, ProfileFile, RunDir, Tool, TopFile};

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("cannot read {path}: {source} (give the directory `netprof bench --out DIR` wrote)")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not valid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path} has no \"schema\" field: not a netprof file (remove it from the directory)")]
    NoSchema { path: PathBuf },
    #[error("{path} has schema {found:?}, expected {expected:?} (written by another netprof version, or not a netprof file)")]
    Schema {
        path: PathBuf,
        found: String,
        expected: &'static str,
    },
    #[error("{path} does not match schema {schema}: {source}")]
    Shape {
        path: PathBuf,
        schema: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path} holds mode {found}, but its name says {expected}: rename or remove it")]
    ModeMismatch {
        path: PathBuf,
        found: Mode,
        expected: String,
    },
    #[error("{path}: not a file netprof writes here (<mode>.json for host, flannel-hostgw, flannel-vxlan, calico, l2; validate.json; calibration-<ms>ms.json or calibration.json; report.json): move it out of the run directory")]
    UnknownFile { path: PathBuf },
    #[error("no benchmark results in {dir}: expected <mode>.json files from `netprof bench --profile --out {dir}`")]
    Empty { dir: PathBuf },
    #[error(
        "{path} is missing: {mode} lists it as the {what} profile (copy the whole bench directory)"
    )]
    MissingProfile {
        path: PathBuf,
        mode: Mode,
        what: String,
    },
    #[error("{mode}: incomplete profile: no {what} report (expected a file like {expected}); rerun `netprof bench --profile`")]
    IncompleteProfile {
        mode: Mode,
        what: String,
        expected: PathBuf,
    },
    #[error("{path}: {field} = {value}: {why} (a file netprof did not write, or a damaged one: rerun the benchmark)")]
    Invalid {
        path: PathBuf,
        field: String,
        value: String,
        why: &'static str,
    },
    #[error("{path} ran with --cpu-idle {found}, {other} with --cpu-idle {other_idle}: RTTs with the CPUs polling and with them halting do not compare; put the runs in separate directories")]
    CpuIdleMismatch {
        path: PathBuf,
        found: CpuIdle,
        other: PathBuf,
        other_idle: CpuIdle,
    },
    #[error("{path} is the report of {found}, but {mode}.json lists it for {expected}")]
    ProfileMismatch {
        path: PathBuf,
        mode: Mode,
        found: String,
        expected: Node,
    },
}

/// One agent report with where it came from.
#[derive(Debug, Clone)]
pub struct Profile {
    pub file: ProfileFile,
    pub report: AgentReport,
    /// The agent followed 1 in `sample` TCP/UDP benchmark flows: those counts are multiplied by
    /// it. Read from the document's `sample` field (absent: 1, every flow).
    pub sample: u32,
}

impl Profile {
    pub fn doc(&self) -> NodeDoc<'_> {
        NodeDoc {
            node: self.file.node,
            report: &self.report,
            // Sampling picks TCP and UDP flows; an agent follows every ping.
            sample: if self.file.tool == Tool::Ping {
                1
            } else {
                self.sample
            },
        }
    }
}

/// Reads and checks one agent report.
fn load_profile(path: &Path, file: &ProfileFile) -> Result<Profile, InputError> {
    let value = read_json(path)?;
    let sample = match value.get("sample") {
        None | Some(serde_json::Value::Null) => 1,
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| InputError::Invalid {
                path: path.to_path_buf(),
                field: "sample".to_owned(),
                value: v.to_string(),
                why: "1 in N flows is followed, N a whole number",
            })?,
    };
    let report: AgentReport = typed(path, value, AGENT_SCHEMA)?;
    super::sanity::agent_report(path, &report, sample)?;
    Ok(Profile {
        file: file.clone(),
        report,
        sample,
    })
}

/// One mode's results and its agents' reports (empty without `--profile`).
#[derive(Debug, Clone)]
pub struct ModeInput {
    pub result: ModeResult,
    pub profiles: Vec<Profile>,
}

impl ModeInput {
    pub fn mode(&self) -> Mode {
        self.result.mode
    }

    pub fn is_profiled(&self) -> bool {
        !self.profiles.is_empty()
    }

    /// The reports of one step, one per node, in node order.
    pub fn step(&self, path: NetPath, tool: Tool) -> Vec<&Profile> {
        let mut step: Vec<&Profile> = self
            .profiles
            .iter()
            .filter(|p| p.file.path == path && p.file.tool == tool)
            .collect();
        step.sort_by_key(|p| p.file.node);
        step
    }
}

/// A profiled validation run with its agent reports.
#[derive(Debug, Clone)]
pub struct ProfiledInput {
    pub run: ProfiledRun,
    pub profiles: Vec<Profile>,
}

impl ProfiledInput {
    /// The reports of one tool, in node order.
    pub fn step(&self, tool: Tool) -> Vec<&Profile> {
        let mut step: Vec<&Profile> = self
            .profiles
            .iter()
            .filter(|p| p.file.tool == tool)
            .collect();
        step.sort_by_key(|p| p.file.node);
        step
    }
}

/// One check with its profiled runs' reports.
#[derive(Debug, Clone)]
pub struct CheckInput {
    pub run: CheckRun,
    pub profiled: Vec<ProfiledInput>,
}

/// `validate.json` and its profiled runs.
#[derive(Debug, Clone)]
pub struct ValidationInput {
    pub result: ValidateResult,
    pub checks: Vec<CheckInput>,
}

/// Everything in one bench output directory, modes in the study's order.
#[derive(Debug, Clone)]
pub struct Input {
    pub dir: PathBuf,
    pub modes: Vec<ModeInput>,
    pub validation: Option<ValidationInput>,
}

impl Input {
    pub fn mode(&self, mode: Mode) -> Option<&ModeInput> {
        self.modes.iter().find(|m| m.mode() == mode)
    }

    pub fn results(&self) -> Vec<ModeResult> {
        self.modes.iter().map(|m| m.result.clone()).collect()
    }
}

pub(crate) fn read_json(path: &Path) -> Result<serde_json::Value, InputError> {
    let text = fs::read_to_string(path).map_err(|source| InputError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| InputError::Json {
        path: path.to_path_buf(),
        source,
    })
}

fn schema_of(path: &Path, value: &serde_json::Value) -> Result<String, InputError> {
    value
        .get("schema")
        .and_then(|s| s.as_str())
        .map(str::to_owned)
        .ok_or_else(|| InputError::NoSchema {
            path: path.to_path_buf(),
        })
}

pub(crate) fn typed<T: serde::de::DeserializeOwned>(
    path: &Path,
    value: serde_json::Value,
    expected: &'static str,
) -> Result<T, InputError> {
    let found = schema_of(path, &value)?;
    if found != expected {
        return Err(InputError::Schema {
            path: path.to_path_buf(),
            found,
            expected,
        });
    }
    serde_json::from_value(value).map_err(|source| InputError::Shape {
        path: path.to_path_buf(),
        schema: expected,
        source,
    })
}

/// Every mode file of `inputs` must say the same of what the CPUs did between packets; files
/// that differ are an error naming two of them.
pub fn one_cpu_idle(inputs: &[&Input]) -> Result<(), InputError> {
    let mut first: Option<(PathBuf, CpuIdle)> = None;
    for input in inputs {
        let run = RunDir::new(&input.dir);
        for mode in &input.modes {
            let idle = mode.result.config.cpu_idle;
            let path = run.mode_file(mode.mode());
            match &first {
                Some((other, other_idle)) if *other_idle != idle => {
                    return Err(InputError::CpuIdleMismatch {
                        path,
                        found: idle,
                        other: other.clone(),
                        other_idle: *other_idle,
                    })
                }
                Some(_) => {}
                None => first = Some((path, idle)),
            }
        }
    }
    Ok(())
}

/// Reads and checks a bench output directory.
pub fn load(dir: &Path) -> Result<Input, InputError> {
    let entries = fs::read_dir(dir).map_err(|source| InputError::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut files: Vec<PathBuf> = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| InputError::Read {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = entry.path();
        // Directories (profile/, clean/, ...) are read through the files that list them;
        // anything else named *.json is read, so a dangling link is an error, not a gap.
        if path.extension().is_some_and(|e| e == "json") && !path.is_dir() {
            files.push(path);
        }
    }
    files.sort();
    let mut modes: BTreeMap<Mode, ModeInput> = BTreeMap::new();
    let mut validation = None;
    for path in files {
        let value = read_json(&path)?;
        let name = path
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let named = match RunDir::classify(&name) {
            Some(TopFile::Mode(mode)) => mode,
            Some(TopFile::Validate) => {
                let result: ValidateResult = typed(&path, value, VALIDATE_SCHEMA)?;
                validation = Some(load_validation(dir, &path, result)?);
                continue;
            }
            Some(TopFile::Calibration | TopFile::Report) => continue,
            None => {
                // Tell a foreign file from a netprof file under the wrong name.
                schema_of(&path, &value)?;
                return Err(InputError::UnknownFile { path });
            }
        };
        let result: ModeResult = typed(&path, value, MODE_SCHEMA)?;
        super::sanity::mode_result(&path, &result)?;
        if named != result.mode {
            return Err(InputError::ModeMismatch {
                path,
                found: result.mode,
                expected: named.name().to_owned(),
            });
        }
        let profiles = load_profiles(dir, &result)?;
        modes.insert(result.mode, ModeInput { result, profiles });
    }
    if modes.is_empty() {
        return Err(InputError::Empty {
            dir: dir.to_path_buf(),
        });
    }
    Ok(Input {
        dir: dir.to_path_buf(),
        modes: modes.into_values().collect(),
        validation,
    })
}

fn load_validation(
    dir: &Path,
    path: &Path,
    result: ValidateResult,
) -> Result<ValidationInput, InputError> {
    super::sanity::validate_result(path, &result)?;
    let mut checks = Vec::new();
    for check in &result.checks {
        let mut profiled = Vec::new();
        for run in &check.profiled {
            let base = dir.join(&run.dir);
            let mut profiles = Vec::new();
            for file in &run.profiles {
                let at = base.join(&file.file);
                if !at.is_file() {
                    return Err(InputError::MissingProfile {
                        path: at,
                        mode: run.mode,
                        what: format!("validate {} {} {}", run.dir, file.tool, file.node),
                    });
                }
                profiles.push(load_profile(&at, file)?);
            }
            for tool in REQUIRED_TOOLS {
                for node in Node::BOTH {
                    if !profiles
                        .iter()
                        .any(|p| p.file.tool == tool && p.file.node == node)
                    {
                        return Err(InputError::IncompleteProfile {
                            mode: run.mode,
                            what: format!("validate {} pod path {tool} {node}", run.dir),
                            expected: base.join(RunDir::profile_relative(
                                run.mode,
                                NetPath::Pod,
                                tool,
                                node,
                            )),
                        });
                    }
                }
            }
            profiled.push(ProfiledInput {
                run: run.clone(),
                profiles,
            });
        }
        checks.push(CheckInput {
            run: check.clone(),
            profiled,
        });
    }
    Ok(ValidationInput { result, checks })
}

/// The steps a profiled mode must have, per path.
pub const REQUIRED_TOOLS: [Tool; 2] = [Tool::Ping, Tool::Ab];

fn load_profiles(dir: &Path, result: &ModeResult) -> Result<Vec<Profile>, InputError> {
    let mode = result.mode;
    let mut profiles = Vec::new();
    for file in &result.profiles {
        let path = dir.join(&file.file);
        let what = format!("{} {} {}", file.path, file.tool, file.node);
        if !path.is_file() {
            return Err(InputError::MissingProfile { path, mode, what });
        }
        let profile = load_profile(&path, file)?;
        if profile.report.node != file.node.name() {
            return Err(InputError::ProfileMismatch {
                path,
                mode,
                found: profile.report.node,
                expected: file.node,
            });
        }
        profiles.push(profile);
    }
    if profiles.is_empty() {
        return Ok(profiles);
    }
    let mut paths = vec![NetPath::Host];
    if result.pod_path.is_some() {
        paths.push(NetPath::Pod);
    }
    for path in paths {
        for tool in REQUIRED_TOOLS {
            for node in Node::BOTH {
                let found = profiles
                    .iter()
                    .any(|p| p.file.path == path && p.file.tool == tool && p.file.node == node);
                if !found {
                    return Err(InputError::IncompleteProfile {
                        mode,
                        what: format!("{path} {tool} {node}"),
                        expected: dir.join(RunDir::profile_relative(mode, path, tool, node)),
                    });
                }
            }
        }
    }
    Ok(profiles)
}
