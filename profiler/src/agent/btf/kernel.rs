//! The kernel's BTF as a whole: vmlinux's, and each loaded module's on top of it. The
//! functions the fentry fallback traces are built in on some kernels and modules on others
//! (`nf_conntrack_in`, `ipt_do_table` and `nft_do_chain` are in `nf_conntrack`, `ip_tables`
//! and `nf_tables` on distribution kernels), so a function is looked up in vmlinux first, then
//! in the module that usually holds it, then in every other loaded module.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use super::{Btf, BtfError};

/// Where the kernel publishes its BTF objects: `vmlinux` and one file per loaded module.
pub const SYS_KERNEL_BTF: &str = "/sys/kernel/btf";

/// The module that holds each traced function on modular kernels (tried first, and named in
/// the error when it is not loaded).
const USUAL_MODULE: &[(&str, &str)] = &[
    ("nf_conntrack_in", "nf_conntrack"),
    ("ipt_do_table", "ip_tables"),
    ("nft_do_chain", "nf_tables"),
];

/// Why a function's BTF could not be had.
#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    #[error(
        "{function} is in no BTF of this kernel: it is not in vmlinux, and module {module}, \
         which holds it, is not loaded (nothing on this node uses it yet; `modprobe {module}` \
         to measure it anyway)"
    )]
    ModuleNotLoaded {
        function: String,
        module: &'static str,
    },
    #[error(
        "{function} is in no BTF of this kernel (neither vmlinux nor any loaded module has \
         it): this kernel does not have the function"
    )]
    NotInAnyBtf { function: String },
    #[error(transparent)]
    Btf(#[from] BtfError),
}

/// A function and the BTF object that defines it.
#[derive(Debug, Clone)]
pub struct FunctionBtf {
    pub function: String,
    /// The module whose BTF defines it; `None` for vmlinux.
    pub module: Option<String>,
    /// That BTF (a module's also answers for vmlinux's types).
    pub btf: Arc<Btf>,
    /// The function's `BTF_KIND_FUNC` id in it.
    pub type_id: u32,
}

/// vmlinux's BTF and the modules' BTF read so far.
#[derive(Debug)]
pub struct KernelBtf {
    /// The directory with `vmlinux` and module files; `None`: vmlinux only.
    dir: Option<PathBuf>,
    vmlinux: Arc<Btf>,
    modules: HashMap<String, Arc<Btf>>,
}

impl KernelBtf {
    /// The running kernel's (`/sys/kernel/btf`).
    pub fn from_sys_fs() -> Result<Self, BtfError> {
        Self::from_dir(Path::new(SYS_KERNEL_BTF))
    }

    /// The BTF objects in `dir` (`vmlinux` plus module files, as in `/sys/kernel/btf`).
    pub fn from_dir(dir: &Path) -> Result<Self, BtfError> {
        Ok(Self {
            vmlinux: Arc::new(Btf::from_file(&dir.join("vmlinux"))?),
            dir: Some(dir.to_path_buf()),
            modules: HashMap::new(),
        })
    }

    /// vmlinux's BTF alone (no modules).
    pub fn vmlinux_only(vmlinux: Btf) -> Self {
        Self {
            dir: None,
            vmlinux: Arc::new(vmlinux),
            modules: HashMap::new(),
        }
    }

    pub fn vmlinux(&self) -> &Arc<Btf> {
        &self.vmlinux
    }

    /// Module `name`'s BTF; `None` when the module is not loaded.
    pub fn module(&mut self, name: &str) -> Result<Option<Arc<Btf>>, BtfError> {
        if let Some(btf) = self.modules.get(name) {
            return Ok(Some(Arc::clone(btf)));
        }
        let Some(dir) = &self.dir else {
            return Ok(None);
        };
        let path = dir.join(name);
        let data = match std::fs::read(&path) {
            Ok(data) => data,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(BtfError::Read {
                    path: path.display().to_string(),
                    source,
                })
            }
        };
        let btf = Arc::new(Btf::parse_split(
            &data,
            &path.display().to_string(),
            Arc::clone(&self.vmlinux),
        )?);
        self.modules.insert(name.to_owned(), Arc::clone(&btf));
        Ok(Some(btf))
    }

    /// The names of the loaded modules with BTF.
    fn module_names(&self) -> Result<Vec<String>, BtfError> {
        let Some(dir) = &self.dir else {
            return Ok(Vec::new());
        };
        let entries = std::fs::read_dir(dir).map_err(|source| BtfError::Read {
            path: dir.display().to_string(),
            source,
        })?;
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| name != "vmlinux")
            .collect();
        names.sort();
        Ok(names)
    }

    /// Where function `name` is defined: vmlinux, the module that usually holds it, or any
    /// other loaded module.
    pub fn function(&mut self, name: &str) -> Result<FunctionBtf, LocateError> {
        let found = |module: Option<String>, btf: Arc<Btf>| FunctionBtf {
            function: name.to_owned(),
            type_id: btf.func_id(name).expect("defined here"),
            module,
            btf,
        };
        if self.vmlinux.defines_func(name) {
            return Ok(found(None, Arc::clone(&self.vmlinux)));
        }
        let usual = USUAL_MODULE
            .iter()
            .find(|(function, _)| *function == name)
            .map(|(_, module)| *module);
        if let Some(module) = usual {
            match self.module(module)? {
                Some(btf) if btf.defines_func(name) => {
                    return Ok(found(Some(module.to_owned()), btf))
                }
                Some(_) => {}
                None => {
                    return Err(LocateError::ModuleNotLoaded {
                        function: name.to_owned(),
                        module,
                    })
                }
            }
        }
        for module in self.module_names()? {
            if Some(module.as_str()) == usual {
                continue;
            }
            if let Some(btf) = self.module(&module)? {
                if btf.defines_func(name) {
                    return Ok(found(Some(module), btf));
                }
            }
        }
        Err(LocateError::NotInAnyBtf {
            function: name.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::Builder;
    use super::super::KIND_STRUCT;
    use super::*;

    /// A directory removed on drop (tests leave nothing in /tmp).
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            use std::sync::atomic::{AtomicU32, Ordering};
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let dir =
                std::env::temp_dir().join(format!("netprof-{tag}-{}-{n}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }
        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A `/sys/kernel/btf`-like directory: vmlinux, nf_conntrack (with nf_conntrack_in) and
    /// xt_extra (with a function no usual module holds).
    fn sysfs_like() -> TempDir {
        let mut vmlinux = Builder::new();
        vmlinux.int("int", 4); // 1
        vmlinux.aggregate(KIND_STRUCT, "nf_hook_state", 8, &[("hook", 1, 0)]); // 2
        vmlinux.function("nf_hook_slow", 3, &[("state", 2)]); // 3, 4
        let mut conntrack = Builder::split(&vmlinux);
        conntrack.function("nf_conntrack_in", 5, &[("skb", 1), ("state", 2)]); // 5, 6
        let mut extra = Builder::split(&vmlinux);
        extra.function("xt_extra_fn", 5, &[("skb", 1)]); // 5, 6
        let dir = TempDir::new("kernel-btf");
        for (name, builder) in [
            ("vmlinux", &vmlinux),
            ("nf_conntrack", &conntrack),
            ("xt_extra", &extra),
        ] {
            std::fs::write(dir.path().join(name), builder.build()).unwrap();
        }
        dir
    }

    #[test]
    fn functions_are_found_in_vmlinux_or_their_module() {
        let dir = sysfs_like();
        let mut kernel = KernelBtf::from_dir(dir.path()).unwrap();
        let core = kernel.function("nf_hook_slow").unwrap();
        assert_eq!((core.module, core.type_id), (None, 4));
        let ct = kernel.function("nf_conntrack_in").unwrap();
        assert_eq!(ct.module.as_deref(), Some("nf_conntrack"));
        assert_eq!(
            ct.type_id, 6,
            "split ids continue after vmlinux's four types"
        );
        assert_eq!(ct.btf.params("nf_conntrack_in").unwrap(), ["skb", "state"]);
        // A function no usual module holds is searched for in every loaded module.
        let extra = kernel.function("xt_extra_fn").unwrap();
        assert_eq!(extra.module.as_deref(), Some("xt_extra"));
    }

    #[test]
    fn errors_name_the_missing_module_or_the_missing_function() {
        let dir = sysfs_like();
        let mut kernel = KernelBtf::from_dir(dir.path()).unwrap();
        let err = kernel.function("nft_do_chain").unwrap_err();
        assert!(matches!(
            err,
            LocateError::ModuleNotLoaded {
                module: "nf_tables",
                ..
            }
        ));
        assert!(err
            .to_string()
            .contains("module nf_tables, which holds it, is not loaded"));
        let err = kernel.function("no_such_fn").unwrap_err();
        assert!(matches!(err, LocateError::NotInAnyBtf { .. }), "{err}");
        std::fs::write(dir.path().join("nf_tables"), b"garbage").unwrap();
        let err = kernel.function("nft_do_chain").unwrap_err();
        assert!(err.to_string().contains("is not valid BTF"), "{err}");
    }

    /// Debian 12's 6.1 kernel as it publishes its BTF (`tests/fixtures/btf/`): the traced
    /// functions are in modules, `nf_conntrack_in`'s and `ipt_do_table`'s prototypes in
    /// vmlinux (deduplicated), their structs split between both.
    fn debian_6_1() -> TempDir {
        use std::io::Read;
        let fixture =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/btf/debian-6.1.0-57");
        let dir = TempDir::new("btf-6.1");
        let gz = std::fs::File::open(fixture.join("vmlinux.gz")).unwrap();
        let mut vmlinux = Vec::new();
        flate2::read::GzDecoder::new(gz)
            .read_to_end(&mut vmlinux)
            .unwrap();
        std::fs::write(dir.path().join("vmlinux"), vmlinux).unwrap();
        for module in ["nf_conntrack", "nf_tables", "ip_tables"] {
            std::fs::copy(fixture.join(module), dir.path().join(module)).unwrap();
        }
        dir
    }

    #[test]
    fn debian_6_1_module_functions_and_their_types() {
        let dir = debian_6_1();
        let mut kernel = KernelBtf::from_dir(dir.path()).unwrap();
        // Ids as `bpftool -B vmlinux btf dump file MODULE format raw` prints them.
        for (function, module, id, params) in [
            (
                "nf_conntrack_in",
                "nf_conntrack",
                95439,
                &["skb", "state"][..],
            ),
            ("nft_do_chain", "nf_tables", 95680, &["pkt", "priv"][..]),
            (
                "ipt_do_table",
                "ip_tables",
                95424,
                &["priv", "skb", "state"][..],
            ),
        ] {
            assert!(kernel.vmlinux().func_id(function).is_none(), "{function}");
            let found = kernel.function(function).unwrap();
            assert_eq!(found.module.as_deref(), Some(module), "{function}");
            assert_eq!(found.type_id, id, "{function}");
            assert_eq!(found.btf.params(function).unwrap(), params, "{function}");
        }
        let nf_tables = kernel.module("nf_tables").unwrap().unwrap();
        assert_eq!(nf_tables.member_offset("nft_pktinfo", "state").unwrap(), 8);
        // nft_base_chain is the module's, nf_hook_ops (its `ops`) vmlinux's.
        assert_eq!(
            nf_tables
                .member_offset("nft_base_chain", "ops.priority")
                .unwrap(),
            48
        );
        assert_eq!(
            nf_tables.member_offset("nft_base_chain", "chain").unwrap(),
            96
        );
        let ip_tables = kernel.module("ip_tables").unwrap().unwrap();
        assert_eq!(ip_tables.member_offset("xt_table", "priority").unwrap(), 52);
        assert!(kernel
            .vmlinux()
            .member_offset("xt_table", "priority")
            .is_err());
    }

    #[test]
    fn debian_6_1_fentry_configuration_comes_from_the_modules() {
        use profiler_common::datapath::{
            Config, ARG_CT_SKB, ARG_CT_STATE, ARG_IPT_SKB, ARG_IPT_STATE, ARG_IPT_TABLE,
            ARG_NFT_CHAIN, ARG_NFT_PKT,
        };
        let dir = debian_6_1();
        let mut kernel = KernelBtf::from_dir(dir.path()).unwrap();
        let mut config = Config::default();
        super::super::fill_fentry_config(&mut kernel, &mut config);
        assert_eq!(
            (
                config.nf_state_hook,
                config.nf_state_pf,
                config.nf_state_net
            ),
            (0, 1, 32)
        );
        assert_eq!(config.xt_table_priority, 52);
        assert_eq!((config.nft_pkt_skb, config.nft_pkt_state), (0, 8));
        assert_eq!(config.nft_chain_priority, 48 - 96);
        let args = config.fentry_args;
        assert_eq!([args[ARG_CT_SKB], args[ARG_CT_STATE]], [0, 1]);
        assert_eq!(
            [args[ARG_IPT_SKB], args[ARG_IPT_STATE], args[ARG_IPT_TABLE]],
            [1, 2, 0]
        );
        assert_eq!([args[ARG_NFT_PKT], args[ARG_NFT_CHAIN]], [0, 1]);
        // What reading vmlinux alone (the old way) gave: nothing for the module functions.
        let mut vmlinux_only =
            KernelBtf::vmlinux_only(Btf::from_file(&dir.path().join("vmlinux")).unwrap());
        let mut old = Config::default();
        super::super::fill_fentry_config(&mut vmlinux_only, &mut old);
        assert_eq!(old.xt_table_priority, 0);
        assert_eq!(
            old.fentry_args[ARG_NFT_PKT],
            profiler_common::datapath::ARG_UNKNOWN
        );
    }
}
