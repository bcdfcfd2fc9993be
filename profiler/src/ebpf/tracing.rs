//! A loader for fentry/fexit programs that can attach to a module's function, which aya 0.14
//! cannot: it loads tracing programs against vmlinux's BTF only (aya-rs/aya#301), and on
//! distribution kernels the netfilter functions netprof traces live in modules. The kernel
//! needs the function's type id in the module's split BTF *and* the module's BTF object fd
//! (`attach_btf_obj_fd`) at load.
//!
//! The programs are those of netprof's aya object (sections `fentry/FUNCTION`,
//! `fexit/FUNCTION`); their map references are pointed at the maps the caller already has
//! (the agent's aya maps), so they share state with every other program. The ELF handling is
//! the netfilter loader's ([`super::netfilter::parse_section`]): legacy maps only, no calls,
//! globals or CO-RE relocations. Attaching is `BPF_RAW_TRACEPOINT_OPEN` (kernel 5.5+), and
//! dropping the link detaches.

use std::{
    collections::HashMap,
    io,
    mem::size_of,
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd},
};

use super::netfilter::{
    self, kernel_release, log_tail, object_name, patch_map_fds, sys_bpf, sys_bpf_fd, zeroed,
    NetfilterError, ATTR_SIZE, BPF_OBJ_GET_INFO_BY_FD, BPF_PROG_LOAD, LOG_SIZE,
};

const BPF_RAW_TRACEPOINT_OPEN: libc::c_long = 17;
/// `BPF_PROG_TYPE_TRACING`.
const BPF_PROG_TYPE_TRACING: u32 = 26;
/// `BPF_TRACE_FENTRY`, `BPF_TRACE_FEXIT` in `enum bpf_attach_type`.
const BPF_TRACE_FENTRY: u32 = 24;
const BPF_TRACE_FEXIT: u32 = 25;

/// Which end of the function a program runs at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraceEdge {
    Entry,
    Exit,
}

impl TraceEdge {
    /// The program kind, as in its section name (`fentry/...`).
    pub fn kind(self) -> &'static str {
        match self {
            TraceEdge::Entry => "fentry",
            TraceEdge::Exit => "fexit",
        }
    }

    fn attach_type(self) -> u32 {
        match self {
            TraceEdge::Entry => BPF_TRACE_FENTRY,
            TraceEdge::Exit => BPF_TRACE_FEXIT,
        }
    }
}

/// The traced function: its `BTF_KIND_FUNC` id, and the BTF object it is in (`None`:
/// vmlinux, whose id the kernel assumes).
#[derive(Debug, Clone, Copy)]
pub struct TraceTarget<'a> {
    pub function: &'a str,
    pub btf_id: u32,
    pub btf_object: Option<BorrowedFd<'a>>,
}

/// Errors loading or attaching a tracing program.
#[derive(Debug, thiserror::Error)]
pub enum TracingError {
    #[error("{kind} program {program} for {function}: netprof's object is unusable")]
    Object {
        kind: &'static str,
        program: String,
        function: String,
        #[source]
        source: Box<NetfilterError>,
    },
    #[error(
        "{kind} program {program} uses map {map}, which the agent does not have: rebuild netprof"
    )]
    MapMissing {
        kind: &'static str,
        program: String,
        map: String,
    },
    #[error(
        "{kind} load refused for {function} ({}): this kernel does not allow {kind} \
         programs (lockdown, or CONFIG_FUNCTION_TRACER / DYNAMIC_FTRACE_WITH_DIRECT_CALLS \
         missing)", .source
    )]
    Refused {
        kind: &'static str,
        function: String,
        #[source]
        source: io::Error,
    },
    #[error("the verifier of {kernel} rejected {kind} program {program} on {function}: {}", log_tail(.log))]
    Verifier {
        kind: &'static str,
        program: String,
        function: String,
        kernel: String,
        /// The whole verifier log.
        log: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot attach {kind} program {program} to {function}")]
    Attach {
        kind: &'static str,
        program: String,
        function: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot read the {what}'s info")]
    Info {
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

/// `union bpf_attr` for `BPF_PROG_LOAD`, up to `attach_btf_obj_fd`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    prog_btf_fd: u32,
    func_info_rec_size: u32,
    func_info: u64,
    func_info_cnt: u32,
    line_info_rec_size: u32,
    line_info: u64,
    line_info_cnt: u32,
    attach_btf_id: u32,
    attach_btf_obj_fd: u32,
    _pad: [u8; ATTR_SIZE - 116],
}

/// `union bpf_attr` for `BPF_RAW_TRACEPOINT_OPEN`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct RawTracepointAttr {
    name: u64,
    prog_fd: u32,
    _pad: [u8; ATTR_SIZE - 12],
}

/// `union bpf_attr` for `BPF_OBJ_GET_INFO_BY_FD`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
    _pad: [u8; ATTR_SIZE - 16],
}

const _: () = assert!(size_of::<ProgLoadAttr>() == ATTR_SIZE);
const _: () = assert!(size_of::<RawTracepointAttr>() == ATTR_SIZE);
const _: () = assert!(size_of::<InfoAttr>() == ATTR_SIZE);

/// A loaded fentry or fexit program. Dropping it closes the program (its links keep it
/// alive while they exist).
#[derive(Debug)]
pub struct TracingProgram {
    fd: OwnedFd,
    id: u32,
    name: String,
    edge: TraceEdge,
    function: String,
    /// Duplicates of the lent maps (the program owns every map fd it holds).
    _maps: Vec<OwnedFd>,
}

impl TracingProgram {
    /// Loads `program` (an `edge` program of `object` for `target.function`), its map
    /// references pointed at `maps` (by map symbol name).
    pub fn load(
        object: &[u8],
        program: &str,
        edge: TraceEdge,
        target: &TraceTarget<'_>,
        maps: &HashMap<String, BorrowedFd<'_>>,
    ) -> Result<Self, TracingError> {
        let kind = edge.kind();
        let section = format!("{kind}/{}", target.function);
        let parsed = netfilter::parse_section(object, &section, program).map_err(|source| {
            TracingError::Object {
                kind,
                program: program.to_owned(),
                function: target.function.to_owned(),
                source: Box::new(source),
            }
        })?;
        let mut owned = Vec::new();
        let mut raw: HashMap<String, RawFd> = HashMap::new();
        for map in parsed.maps.keys() {
            let lent = maps.get(map).ok_or_else(|| TracingError::MapMissing {
                kind,
                program: program.to_owned(),
                map: map.clone(),
            })?;
            let fd = lent
                .try_clone_to_owned()
                .map_err(|source| TracingError::Info {
                    what: "shared map",
                    source,
                })?;
            raw.insert(map.clone(), fd.as_raw_fd());
            owned.push(fd);
        }
        let insns = patch_map_fds(&parsed.insns, &parsed.relocations, &raw);
        let mut attr: ProgLoadAttr = zeroed();
        attr.prog_type = BPF_PROG_TYPE_TRACING;
        attr.expected_attach_type = edge.attach_type();
        attr.insn_cnt = (insns.len() / 8) as u32;
        attr.insns = insns.as_ptr() as u64;
        attr.license = parsed.license.as_ptr() as u64;
        attr.prog_name = object_name(program);
        attr.attach_btf_id = target.btf_id;
        attr.attach_btf_obj_fd = target.btf_object.map_or(0, |fd| fd.as_raw_fd() as u32);
        let fd = load_with_log(&mut attr).map_err(|(source, log)| {
            classify_refusal(kind, program, target.function, source, log)
        })?;
        let id = program_id(fd.as_fd())?;
        log::debug!(
            "loaded {kind} program {program} on {} (id {id})",
            target.function
        );
        Ok(Self {
            fd,
            id,
            name: program.to_owned(),
            edge,
            function: target.function.to_owned(),
            _maps: owned,
        })
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Attaches the program to its function; dropping the link detaches it.
    pub fn attach(&self) -> Result<TracingLink, TracingError> {
        let mut attr: RawTracepointAttr = zeroed();
        attr.prog_fd = self.fd.as_raw_fd() as u32;
        let fd = sys_bpf_fd(BPF_RAW_TRACEPOINT_OPEN, &mut attr).map_err(|source| {
            TracingError::Attach {
                kind: self.edge.kind(),
                program: self.name.clone(),
                function: self.function.clone(),
                source,
            }
        })?;
        Ok(TracingLink { _fd: fd })
    }
}

/// An attached fentry/fexit program; dropping it detaches.
#[derive(Debug)]
pub struct TracingLink {
    _fd: OwnedFd,
}

/// `BPF_PROG_LOAD` without a log, then (unless the kernel refused the program type, EPERM)
/// again with one to say why: the verifier rejects with EACCES or EINVAL. Returns the error
/// and the log.
fn load_with_log(attr: &mut ProgLoadAttr) -> Result<OwnedFd, (io::Error, String)> {
    let first = match sys_bpf_fd(BPF_PROG_LOAD, attr) {
        Ok(fd) => return Ok(fd),
        Err(err) => err,
    };
    if first.raw_os_error() == Some(libc::EPERM) {
        return Err((first, String::new()));
    }
    let mut log = vec![0u8; LOG_SIZE];
    attr.log_level = 1;
    attr.log_size = LOG_SIZE as u32;
    attr.log_buf = log.as_mut_ptr() as u64;
    let source = match sys_bpf_fd(BPF_PROG_LOAD, attr) {
        Ok(fd) => return Ok(fd),
        Err(err) => err,
    };
    let len = log.iter().position(|b| *b == 0).unwrap_or(log.len());
    Err((source, String::from_utf8_lossy(&log[..len]).into_owned()))
}

/// EPERM (or an empty log) is the kernel refusing the program type; a log is the verifier's
/// verdict.
fn classify_refusal(
    kind: &'static str,
    program: &str,
    function: &str,
    source: io::Error,
    log: String,
) -> TracingError {
    if source.raw_os_error() == Some(libc::EPERM) || log.trim().is_empty() {
        TracingError::Refused {
            kind,
            function: function.to_owned(),
            source,
        }
    } else {
        TracingError::Verifier {
            kind,
            program: program.to_owned(),
            function: function.to_owned(),
            kernel: kernel_release(),
            log,
            source,
        }
    }
}

fn program_id(fd: BorrowedFd<'_>) -> Result<u32, TracingError> {
    // The first words of `struct bpf_prog_info`: type, id.
    #[repr(C, align(8))]
    struct Head([u32; 4]);
    let mut head = Head([0; 4]);
    let mut attr: InfoAttr = zeroed();
    attr.bpf_fd = fd.as_raw_fd() as u32;
    attr.info_len = size_of::<Head>() as u32;
    attr.info = head.0.as_mut_ptr() as u64;
    sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr).map_err(|source| TracingError::Info {
        what: "program",
        source,
    })?;
    Ok(head.0[1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_attr_layout_matches_the_uapi() {
        let attr: ProgLoadAttr = zeroed();
        let base = &attr as *const _ as usize;
        let at = |field: *const u32| field as usize - base;
        assert_eq!(at(&attr.expected_attach_type), 68);
        assert_eq!(at(&attr.prog_btf_fd), 72);
        assert_eq!(at(&attr.func_info_cnt), 88);
        assert_eq!(at(&attr.line_info_cnt), 104);
        assert_eq!(at(&attr.attach_btf_id), 108);
        assert_eq!(at(&attr.attach_btf_obj_fd), 112);
    }

    #[test]
    fn refusals_and_verifier_rejections_read_differently() {
        let eperm = io::Error::from_raw_os_error(libc::EPERM);
        let err = classify_refusal(
            "fentry",
            "cp_fe_ct",
            "nf_conntrack_in",
            eperm,
            String::new(),
        );
        assert!(matches!(err, TracingError::Refused { .. }));
        assert!(err
            .to_string()
            .starts_with("fentry load refused for nf_conntrack_in (Operation not permitted"));
        // The verifier rejects with EACCES: that is its verdict, not a missing privilege.
        let eacces = io::Error::from_raw_os_error(libc::EACCES);
        let log = "0: R1=ctx()\nR2 invalid mem access 'scalar'\nprocessed 3 insns\n".to_owned();
        let err = classify_refusal("fexit", "cp_fx_ct", "nf_conntrack_in", eacces, log);
        assert!(matches!(err, TracingError::Verifier { .. }));
        assert!(
            err.to_string().contains("R2 invalid mem access 'scalar'"),
            "{err}"
        );
    }

    #[test]
    fn the_objects_fentry_programs_parse_with_their_maps() {
        use profiler_common::datapath::NF_TRACED;
        for (function, entry, exit) in NF_TRACED {
            for (edge, program) in [(TraceEdge::Entry, entry), (TraceEdge::Exit, exit)] {
                let section = format!("{}/{function}", edge.kind());
                let parsed = netfilter::parse_section(super::super::OBJECT, &section, program)
                    .unwrap_or_else(|err| panic!("{section} {program}: {err}"));
                assert!(
                    !parsed.relocations.is_empty(),
                    "{program} uses the agent's maps"
                );
            }
        }
    }
}
