//! The kernel's BTF objects by id and name: vmlinux's and one per loaded module with BTF
//! (`BPF_BTF_GET_NEXT_ID`, `BPF_BTF_GET_FD_BY_ID`, `BPF_OBJ_GET_INFO_BY_FD`). A tracing
//! program attached to a module's function is loaded with that module's object fd
//! (`attach_btf_obj_fd`), which only this enumeration gives.

use std::{
    io,
    mem::size_of,
    os::fd::{AsRawFd, BorrowedFd, OwnedFd},
};

use super::netfilter::{
    is_permission, sys_bpf, sys_bpf_fd, zeroed, ATTR_SIZE, BPF_OBJ_GET_INFO_BY_FD,
};

const BPF_BTF_GET_FD_BY_ID: libc::c_long = 19;
const BPF_BTF_GET_NEXT_ID: libc::c_long = 23;
/// Longest name the kernel gives a BTF object (`MODULE_NAME_LEN`).
const NAME_LEN: usize = 64;

/// Errors finding a kernel BTF object.
#[derive(Debug, thiserror::Error)]
pub enum BtfObjectError {
    #[error(
        "permission denied while listing the kernel's BTF objects: run as root (needs \
         CAP_SYS_ADMIN)"
    )]
    PermissionDenied {
        #[source]
        source: io::Error,
    },
    #[error("cannot list the kernel's BTF objects")]
    List {
        #[source]
        source: io::Error,
    },
    #[error(
        "the kernel has no BTF object named {name}: module {name} is not loaded, or was built \
         without BTF (CONFIG_DEBUG_INFO_BTF_MODULES)"
    )]
    NotFound { name: String },
}

/// `union bpf_attr` for `BPF_*_GET_NEXT_ID` and `BPF_*_GET_FD_BY_ID`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct IdAttr {
    /// `start_id` (GET_NEXT_ID) or `btf_id` (GET_FD_BY_ID).
    id: u32,
    next_id: u32,
    open_flags: u32,
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

/// `struct bpf_btf_info`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct BtfInfo {
    btf: u64,
    btf_size: u32,
    id: u32,
    name: u64,
    name_len: u32,
    kernel_btf: u32,
}

const _: () = assert!(size_of::<IdAttr>() == ATTR_SIZE);
const _: () = assert!(size_of::<InfoAttr>() == ATTR_SIZE);
const _: () = assert!(size_of::<BtfInfo>() == 32);

/// One of the kernel's BTF objects, open.
#[derive(Debug)]
pub struct KernelBtfObject {
    pub id: u32,
    /// `vmlinux` or the module's name.
    pub name: String,
    fd: OwnedFd,
}

impl KernelBtfObject {
    pub fn fd(&self) -> BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.fd.as_fd()
    }
}

/// The kernel's BTF object `name` (`vmlinux` or a loaded module's name).
pub fn find(name: &str) -> Result<KernelBtfObject, BtfObjectError> {
    let mut id = 0;
    while let Some(next) = next_id(id)? {
        id = next;
        // An object freed since it was listed is simply gone.
        let Some(fd) = open(id)? else { continue };
        let (kernel, object_name) = describe(fd.as_raw_fd())?;
        if kernel && object_name == name {
            return Ok(KernelBtfObject {
                id,
                name: object_name,
                fd,
            });
        }
    }
    Err(BtfObjectError::NotFound {
        name: name.to_owned(),
    })
}

/// The names of the kernel's BTF objects (vmlinux's and the modules'), in id order.
pub fn kernel_names() -> Result<Vec<String>, BtfObjectError> {
    let mut names = Vec::new();
    let mut id = 0;
    while let Some(next) = next_id(id)? {
        id = next;
        let Some(fd) = open(id)? else { continue };
        let (kernel, name) = describe(fd.as_raw_fd())?;
        if kernel {
            names.push(name);
        }
    }
    Ok(names)
}

fn list_error(source: io::Error) -> BtfObjectError {
    if is_permission(&source) {
        BtfObjectError::PermissionDenied { source }
    } else {
        BtfObjectError::List { source }
    }
}

/// The id after `id`, `None` at the end.
fn next_id(id: u32) -> Result<Option<u32>, BtfObjectError> {
    let mut attr: IdAttr = zeroed();
    attr.id = id;
    match sys_bpf(BPF_BTF_GET_NEXT_ID, &mut attr) {
        Ok(_) => Ok(Some(attr.next_id)),
        Err(err) if err.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(err) => Err(list_error(err)),
    }
}

fn open(id: u32) -> Result<Option<OwnedFd>, BtfObjectError> {
    let mut attr: IdAttr = zeroed();
    attr.id = id;
    match sys_bpf_fd(BPF_BTF_GET_FD_BY_ID, &mut attr) {
        Ok(fd) => Ok(Some(fd)),
        Err(err) if err.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(err) => Err(list_error(err)),
    }
}

/// Whether the object is the kernel's (vmlinux or a module), and its name.
fn describe(fd: i32) -> Result<(bool, String), BtfObjectError> {
    let mut name = [0u8; NAME_LEN];
    let mut info = BtfInfo {
        name: name.as_mut_ptr() as u64,
        name_len: NAME_LEN as u32,
        ..BtfInfo::default()
    };
    let mut attr: InfoAttr = zeroed();
    attr.bpf_fd = fd as u32;
    attr.info_len = size_of::<BtfInfo>() as u32;
    attr.info = &mut info as *mut BtfInfo as u64;
    sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr).map_err(list_error)?;
    let len = name.iter().position(|b| *b == 0).unwrap_or(NAME_LEN);
    Ok((
        info.kernel_btf != 0,
        String::from_utf8_lossy(&name[..len]).into_owned(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vmlinux_is_listed_and_absent_modules_are_named() {
        if let Err(err) = super::super::preflight() {
            crate::testing::print_skip("btf_objects", &err.to_string());
            return;
        }
        let names = kernel_names().unwrap();
        assert_eq!(
            names.first().map(String::as_str),
            Some("vmlinux"),
            "{names:?}"
        );
        let vmlinux = find("vmlinux").unwrap();
        assert!(vmlinux.id > 0);
        // Every module listed is one /sys/kernel/btf has too.
        for name in &names {
            assert!(
                std::path::Path::new("/sys/kernel/btf").join(name).exists(),
                "{name}"
            );
        }
        let err = find("netprof_no_such_module").unwrap_err();
        assert!(
            err.to_string()
                .contains("module netprof_no_such_module is not loaded"),
            "{err}"
        );
    }
}
