//! One typed model of a run directory, shared by `netprof bench`, `netprof k8s run` and
//! `netprof report`: which benchmark path, tool and node a file belongs to (enums, never
//! strings), and where every file of a run lives ([`RunDir`]). Nothing else builds a path
//! inside a run directory.
//!
//! ```text
//! DIR/<mode>.json                                 one mode's results (netprof.bench.mode/v1)
//! DIR/table.txt                                   the study's table as text
//! DIR/profile/<mode>/<path>-<tool>-<node>.json    one agent report per step and node
//! DIR/clean/                                      the same modes without agents (a RunDir)
//! DIR/validate.json                               `bench --validate`'s checks
//! DIR/validate/<run>/                             a validation run's agent reports (a RunDir)
//! DIR/calibration-<ms>ms.json                     netprof's measured in-path cost, at pings
//!                                                 <ms> apart (older runs: calibration.json)
//! DIR/repeat-<k>/                                 `cargo xtask demo --repeat K`: one RunDir each
//! DIR/report.html                                 the report `cargo xtask demo` renders
//! ```

mod kinds;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::lab::Mode;
pub use crate::lab::Node;
pub use kinds::{NetPath, Tool};

/// The JSON files a run directory may hold at its top, by what they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopFile {
    Mode(Mode),
    Validate,
    Calibration,
    /// A rendered `--format json` report someone saved beside the results.
    Report,
}

/// A run directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDir {
    root: PathBuf,
}

pub const TABLE_FILE: &str = "table.txt";
pub const CLEAN_DIR: &str = "clean";
pub const VALIDATE_FILE: &str = "validate.json";
pub const VALIDATE_DIR: &str = "validate";
/// The older single calibration (its ping interval is inside); still read.
pub const CALIBRATION_FILE: &str = "calibration.json";
const CALIBRATION_PREFIX: &str = "calibration-";
const CALIBRATION_SUFFIX: &str = "ms.json";
pub const REPORT_HTML: &str = "report.html";
pub const REPORT_JSON: &str = "report.json";
const PROFILE_DIR: &str = "profile";
const REPEAT_PREFIX: &str = "repeat-";

impl RunDir {
    pub fn new(root: impl Into<PathBuf>) -> RunDir {
        RunDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A path relative to the run directory (as result files list them), made absolute.
    pub fn resolve(&self, relative: impl AsRef<Path>) -> PathBuf {
        self.root.join(relative)
    }

    pub fn mode_file(&self, mode: Mode) -> PathBuf {
        self.root.join(format!("{}.json", mode.name()))
    }

    pub fn table_file(&self) -> PathBuf {
        self.root.join(TABLE_FILE)
    }

    /// Where a mode's agent reports go, relative to the run directory.
    pub fn profile_dir_relative(mode: Mode) -> PathBuf {
        PathBuf::from(PROFILE_DIR).join(mode.name())
    }

    /// One step's agent report on one node, relative to the run directory (how results list it).
    pub fn profile_relative(mode: Mode, path: NetPath, tool: Tool, node: Node) -> PathBuf {
        Self::profile_part_relative(mode, path, tool, node, None)
    }

    /// [`profile_relative`](Self::profile_relative), or with `block` one block's report of a
    /// step profiled in blocks (`bench --validate`'s paired states).
    pub fn profile_part_relative(
        mode: Mode,
        path: NetPath,
        tool: Tool,
        node: Node,
        block: Option<usize>,
    ) -> PathBuf {
        let block = block.map_or(String::new(), |b| format!("-block{}", b + 1));
        Self::profile_dir_relative(mode).join(format!(
            "{}-{}-{}{block}.json",
            path.slug(),
            tool.name(),
            node.name()
        ))
    }

    /// The same benchmarks without agents (`cargo xtask demo` writes it).
    pub fn clean(&self) -> RunDir {
        RunDir::new(self.root.join(CLEAN_DIR))
    }

    pub fn validate_file(&self) -> PathBuf {
        self.root.join(VALIDATE_FILE)
    }

    /// The directory of one `bench --validate` run's agent reports, relative to this one.
    pub fn validate_run_relative(name: &str) -> PathBuf {
        PathBuf::from(VALIDATE_DIR).join(name)
    }

    /// The calibration measured with pings `ping_interval_s` apart (`calibration-10ms.json`).
    pub fn calibration_file(&self, ping_interval_s: f64) -> PathBuf {
        let ms = format!("{:.3}", ping_interval_s * 1e3);
        let ms = ms.trim_end_matches('0').trim_end_matches('.');
        self.root
            .join(format!("{CALIBRATION_PREFIX}{ms}{CALIBRATION_SUFFIX}"))
    }

    /// The files at the top of the run directory that netprof writes, with what each is,
    /// sorted by name (other files are left out).
    pub fn top_files(&self) -> io::Result<Vec<(PathBuf, TopFile)>> {
        let mut found = Vec::new();
        for entry in fs::read_dir(&self.root)? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if let Some(kind) = Self::classify(&name) {
                found.push((self.root.join(name), kind));
            }
        }
        found.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(found)
    }

    /// Every calibration file at the top of the run directory, by name.
    pub fn calibration_files(&self) -> io::Result<Vec<PathBuf>> {
        Ok(self
            .top_files()?
            .into_iter()
            .filter(|(_, kind)| *kind == TopFile::Calibration)
            .map(|(path, _)| path)
            .collect())
    }

    pub fn report_html(&self) -> PathBuf {
        self.root.join(REPORT_HTML)
    }

    /// Repeat `k` (from 1) of `cargo xtask demo --repeat K`.
    pub fn repeat(&self, k: u32) -> RunDir {
        RunDir::new(self.root.join(format!("{REPEAT_PREFIX}{k}")))
    }

    /// The repeats present, in order; empty for a single run. A gap (repeat-1 and repeat-3)
    /// is an error: a repeat that failed must not vanish from the medians unnoticed.
    pub fn repeats(&self) -> io::Result<Vec<(u32, RunDir)>> {
        let mut found: Vec<u32> = Vec::new();
        for entry in fs::read_dir(&self.root)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(k) = name.strip_prefix(REPEAT_PREFIX) {
                let k: u32 = k.parse().map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{name}: a repeat directory's name must be repeat-<number>"),
                    )
                })?;
                found.push(k);
            }
        }
        found.sort_unstable();
        for (i, &k) in found.iter().enumerate() {
            if k != i as u32 + 1 {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!(
                        "{REPEAT_PREFIX}{} is missing (found {REPEAT_PREFIX}{k})",
                        i + 1
                    ),
                ));
            }
        }
        Ok(found.into_iter().map(|k| (k, self.repeat(k))).collect())
    }

    /// What a JSON file at the top of a run directory is, by its name; `None` for a name no
    /// netprof command writes.
    pub fn classify(file_name: &str) -> Option<TopFile> {
        match file_name {
            VALIDATE_FILE => Some(TopFile::Validate),
            CALIBRATION_FILE => Some(TopFile::Calibration),
            REPORT_JSON => Some(TopFile::Report),
            name if is_calibration_at_interval(name) => Some(TopFile::Calibration),
            name => name
                .strip_suffix(".json")
                .and_then(|stem| stem.parse::<Mode>().ok())
                .map(TopFile::Mode),
        }
    }

    /// Creates the directory (and its parents) and checks that files can be written in it.
    pub fn prepare(&self) -> io::Result<()> {
        let probe = self.root.join(".netprof-write-test");
        fs::create_dir_all(&self.root)?;
        fs::write(&probe, b"")?;
        fs::remove_file(&probe)
    }
}

/// `calibration-<ms>ms.json`, `<ms>` a number.
fn is_calibration_at_interval(name: &str) -> bool {
    name.strip_prefix(CALIBRATION_PREFIX)
        .and_then(|rest| rest.strip_suffix(CALIBRATION_SUFFIX))
        .is_some_and(|ms| ms.parse::<f64>().is_ok_and(|v| v.is_finite() && v > 0.0))
}

/// One agent report written beside the benchmark results, as a mode's result lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProfileFile {
    pub path: NetPath,
    pub tool: Tool,
    pub node: Node,
    /// Relative to the run directory.
    pub file: String,
}

impl ProfileFile {
    /// The entry for `mode`'s report of one step on one node, at its place in the layout.
    pub fn of(mode: Mode, path: NetPath, tool: Tool, node: Node) -> ProfileFile {
        Self::of_part(mode, path, tool, node, None)
    }

    /// [`of`](Self::of), or with `block` the entry for one block's report of a step profiled in
    /// blocks.
    pub fn of_part(
        mode: Mode,
        path: NetPath,
        tool: Tool,
        node: Node,
        block: Option<usize>,
    ) -> ProfileFile {
        ProfileFile {
            path,
            tool,
            node,
            file: RunDir::profile_part_relative(mode, path, tool, node, block)
                .display()
                .to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_is_the_one_results_have_always_listed() {
        assert_eq!(
            RunDir::profile_relative(Mode::FlannelVxlan, NetPath::Pod, Tool::Ping, Node::Two),
            PathBuf::from("profile/flannel-vxlan/pod-path-ping-node2.json")
        );
        assert_eq!(
            RunDir::profile_part_relative(
                Mode::FlannelVxlan,
                NetPath::Pod,
                Tool::Ping,
                Node::Two,
                Some(9)
            ),
            PathBuf::from("profile/flannel-vxlan/pod-path-ping-node2-block10.json")
        );
        let dir = RunDir::new("/x");
        assert_eq!(dir.mode_file(Mode::L2), PathBuf::from("/x/l2.json"));
        assert_eq!(
            dir.clean().mode_file(Mode::Host),
            PathBuf::from("/x/clean/host.json")
        );
        assert_eq!(dir.repeat(2).root(), Path::new("/x/repeat-2"));
        assert_eq!(
            RunDir::classify("calico.json"),
            Some(TopFile::Mode(Mode::Calico))
        );
        assert_eq!(RunDir::classify("validate.json"), Some(TopFile::Validate));
        assert_eq!(RunDir::classify("notes.json"), None);
    }

    #[test]
    fn a_calibration_is_named_by_its_ping_interval() {
        let dir = RunDir::new("/x");
        assert_eq!(
            dir.calibration_file(0.01),
            PathBuf::from("/x/calibration-10ms.json")
        );
        assert_eq!(
            dir.calibration_file(0.002),
            PathBuf::from("/x/calibration-2ms.json")
        );
        assert_eq!(
            dir.calibration_file(0.0025),
            PathBuf::from("/x/calibration-2.5ms.json")
        );
        for name in [
            "calibration.json",
            "calibration-10ms.json",
            "calibration-2.5ms.json",
        ] {
            assert_eq!(RunDir::classify(name), Some(TopFile::Calibration), "{name}");
        }
        for name in [
            "calibration-ms.json",
            "calibration-xms.json",
            "calibration-10.json",
        ] {
            assert_eq!(RunDir::classify(name), None, "{name}");
        }
    }

    #[test]
    fn profile_entries_keep_their_json_words() {
        let entry = ProfileFile::of(Mode::Calico, NetPath::Host, Tool::Iperf3, Node::One);
        let json = serde_json::to_value(&entry).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"path": "host path", "tool": "iperf3", "node": "node1",
                "file": "profile/calico/host-path-iperf3-node1.json"})
        );
        let back: ProfileFile = serde_json::from_value(json).unwrap();
        assert_eq!(back, entry);
    }

    #[test]
    fn repeats_are_listed_in_order_and_a_gap_is_an_error() {
        let root = std::env::temp_dir().join(format!("netprof-rundir-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let dir = RunDir::new(&root);
        fs::create_dir_all(&root).unwrap();
        assert!(dir.repeats().unwrap().is_empty());
        for k in [2, 1] {
            fs::create_dir_all(dir.repeat(k).root()).unwrap();
        }
        let ks: Vec<u32> = dir.repeats().unwrap().iter().map(|(k, _)| *k).collect();
        assert_eq!(ks, [1, 2]);
        fs::create_dir_all(dir.repeat(4).root()).unwrap();
        let err = dir.repeats().unwrap_err().to_string();
        assert!(err.contains("repeat-3 is missing"), "{err}");
        fs::remove_dir_all(&root).unwrap();
    }
}
