//! Tracepoint record layouts from tracefs (`events/<group>/<event>/format`): the field offsets
//! the classic tracepoint programs read (`Config::tp_*`), and the drop reason names that
//! `skb:kfree_skb`'s `print fmt` lists (`__print_symbolic(REC->reason, { N, "NAME" }, ...)`).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use profiler_common::datapath::Config;

/// Where tracefs is mounted on current systems.
pub const TRACEFS: &str = "/sys/kernel/tracing";

/// Errors reading tracepoint formats.
#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    #[error(
        "tracefs is not mounted at {root}: run `cargo xtask setup` (it mounts it), or \
         `mount -t tracefs tracefs {root}`"
    )]
    NotMounted { root: String },
    #[error(
        "cannot read tracepoint format {path}: the kernel lacks the {group}/{event} tracepoint \
         (or tracefs is not readable: run as root)"
    )]
    Read {
        path: PathBuf,
        group: String,
        event: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "tracepoint {group}/{event} has no field {field}: this kernel's layout is not supported"
    )]
    NoField {
        group: String,
        event: String,
        field: String,
    },
}

/// One field of a tracepoint record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    /// The C declaration without the name, e.g. `void *`, `__u8 [4]`.
    pub c_type: String,
    pub offset: u32,
    pub size: u32,
}

/// A parsed `format` file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Format {
    pub name: String,
    pub id: u32,
    pub fields: Vec<Field>,
    pub print_fmt: String,
}

impl Format {
    /// Parses the text of a `format` file.
    pub fn parse(text: &str) -> Self {
        let mut format = Format::default();
        for line in text.lines() {
            let line = line.trim();
            if let Some(name) = line.strip_prefix("name:") {
                format.name = name.trim().to_owned();
            } else if let Some(id) = line.strip_prefix("ID:") {
                format.id = id.trim().parse().unwrap_or(0);
            } else if let Some(fmt) = line.strip_prefix("print fmt:") {
                format.print_fmt = fmt.trim().to_owned();
            } else if line.starts_with("field:") {
                if let Some(field) = parse_field(line) {
                    format.fields.push(field);
                }
            }
        }
        format
    }

    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// The `{ N, "NAME" }` pairs of the print fmt's `__print_symbolic` (drop reasons).
    pub fn symbols(&self) -> BTreeMap<u32, String> {
        let mut out = BTreeMap::new();
        let mut rest = self.print_fmt.as_str();
        while let Some(open) = rest.find('{') {
            rest = &rest[open + 1..];
            let Some(close) = rest.find('}') else { break };
            let inside = &rest[..close];
            rest = &rest[close + 1..];
            let Some((number, name)) = inside.split_once(',') else {
                continue;
            };
            let number = number.trim();
            let number = match number.strip_prefix("0x") {
                Some(hex) => u32::from_str_radix(hex, 16).ok(),
                None => number.parse().ok(),
            };
            let name = name.trim().trim_matches('"');
            if let Some(number) = number {
                if !name.is_empty() {
                    out.insert(number, name.to_owned());
                }
            }
        }
        out
    }
}

/// `field:void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;`
fn parse_field(line: &str) -> Option<Field> {
    let mut decl = None;
    let (mut offset, mut size) = (None, None);
    for part in line.split(';').map(str::trim) {
        if let Some(d) = part.strip_prefix("field:") {
            decl = Some(d.trim());
        } else if let Some(v) = part.strip_prefix("offset:") {
            offset = v.trim().parse().ok();
        } else if let Some(v) = part.strip_prefix("size:") {
            size = v.trim().parse().ok();
        }
    }
    let decl = decl?;
    // The name is the last identifier, before an optional array suffix: `__u8 saddr[4]`.
    let (head, array) = match decl.find('[') {
        Some(i) => (&decl[..i], &decl[i..]),
        None => (decl, ""),
    };
    let head = head.trim_end();
    let split = head.rfind(|c: char| !(c.is_alphanumeric() || c == '_'))?;
    let name = &head[split + 1..];
    if name.is_empty() {
        return None;
    }
    let c_type = format!(
        "{}{}",
        head[..=split].trim(),
        if array.is_empty() {
            String::new()
        } else {
            format!(" {array}")
        }
    );
    Some(Field {
        name: name.to_owned(),
        c_type: c_type.trim().to_owned(),
        offset: offset?,
        size: size?,
    })
}

/// Reads tracepoint formats under a tracefs root.
#[derive(Debug, Clone)]
pub struct Tracefs {
    root: PathBuf,
}

impl Tracefs {
    /// The system's tracefs; fails with "run `cargo xtask setup`" when it is not mounted.
    pub fn system() -> Result<Self, TracefsError> {
        Self::at(Path::new(TRACEFS))
    }

    pub fn at(root: &Path) -> Result<Self, TracefsError> {
        if !root.join("events").is_dir() {
            return Err(TracefsError::NotMounted {
                root: root.display().to_string(),
            });
        }
        Ok(Self {
            root: root.to_owned(),
        })
    }

    pub fn format(&self, group: &str, event: &str) -> Result<Format, TracefsError> {
        let path = self
            .root
            .join("events")
            .join(group)
            .join(event)
            .join("format");
        let text = std::fs::read_to_string(&path).map_err(|source| TracefsError::Read {
            path: path.clone(),
            group: group.to_owned(),
            event: event.to_owned(),
            source,
        })?;
        Ok(Format::parse(&text))
    }

    /// Fills the `tp_*` offsets of `config`, and returns the drop reason names.
    pub fn fill_config(&self, config: &mut Config) -> Result<BTreeMap<u32, String>, TracefsError> {
        let kfree = self.format("skb", "kfree_skb")?;
        let consume = self.format("skb", "consume_skb")?;
        let retrans = self.format("tcp", "tcp_retransmit_skb")?;
        fill_config(config, &kfree, &consume, &retrans)?;
        Ok(kfree.symbols())
    }
}

/// [`Tracefs::fill_config`] on parsed formats.
pub fn fill_config(
    config: &mut Config,
    kfree: &Format,
    consume: &Format,
    retrans: &Format,
) -> Result<(), TracefsError> {
    let offset = |format: &Format, group: &str, field: &str| {
        format
            .field(field)
            .map(|f| f.offset)
            .ok_or_else(|| TracefsError::NoField {
                group: group.to_owned(),
                event: format.name.clone(),
                field: field.to_owned(),
            })
    };
    config.tp_kfree_skbaddr = offset(kfree, "skb", "skbaddr")?;
    config.tp_kfree_reason = offset(kfree, "skb", "reason")?;
    config.tp_consume_skbaddr = offset(consume, "skb", "skbaddr")?;
    config.tp_retrans_saddr = offset(retrans, "tcp", "saddr")?;
    config.tp_retrans_daddr = offset(retrans, "tcp", "daddr")?;
    config.tp_retrans_sport = offset(retrans, "tcp", "sport")?;
    config.tp_retrans_dport = offset(retrans, "tcp", "dport")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KFREE: &str = include_str!("../../../tests/fixtures/tracefs/kfree_skb.format");
    const CONSUME: &str = include_str!("../../../tests/fixtures/tracefs/consume_skb.format");
    const RETRANS: &str = include_str!("../../../tests/fixtures/tracefs/tcp_retransmit_skb.format");

    #[test]
    fn parses_fields_of_captured_formats() {
        let kfree = Format::parse(KFREE);
        assert_eq!(kfree.name, "kfree_skb");
        let skbaddr = kfree.field("skbaddr").unwrap();
        assert_eq!(
            (skbaddr.offset, skbaddr.size, skbaddr.c_type.as_str()),
            (8, 8, "void *")
        );
        let reason = kfree.field("reason").unwrap();
        assert_eq!((reason.offset, reason.size), (36, 4));
        assert_eq!(reason.c_type, "enum skb_drop_reason");
        let retrans = Format::parse(RETRANS);
        let saddr = retrans.field("saddr").unwrap();
        assert_eq!(
            (saddr.offset, saddr.size, saddr.c_type.as_str()),
            (34, 4, "__u8 [4]")
        );
        assert_eq!(retrans.field("daddr").unwrap().offset, 38);
        assert_eq!(retrans.field("common_pid").unwrap().offset, 4);

        let mut config = Config::default();
        fill_config(&mut config, &kfree, &Format::parse(CONSUME), &retrans).unwrap();
        assert_eq!(
            (
                config.tp_kfree_skbaddr,
                config.tp_kfree_reason,
                config.tp_consume_skbaddr
            ),
            (8, 36, 8)
        );
        assert_eq!((config.tp_retrans_saddr, config.tp_retrans_daddr), (34, 38));
    }

    #[test]
    fn drop_reasons_come_from_print_fmt() {
        let reasons = Format::parse(KFREE).symbols();
        assert_eq!(reasons[&2], "NOT_SPECIFIED");
        assert_eq!(reasons[&3], "NO_SOCKET");
        assert!(reasons.values().any(|n| n == "NETFILTER_DROP"));
        assert!(reasons.len() > 100, "{}", reasons.len());
        // The consume_skb format has no symbols at all.
        assert!(Format::parse(CONSUME).symbols().is_empty());
    }

    #[test]
    fn missing_field_and_unmounted_root_say_what_to_do() {
        let kfree = Format::parse(CONSUME); // no `reason`
        let err = fill_config(&mut Config::default(), &kfree, &kfree, &kfree).unwrap_err();
        assert!(err.to_string().contains("has no field reason"), "{err}");
        let err = Tracefs::at(Path::new("/nonexistent-tracefs")).unwrap_err();
        assert!(err.to_string().contains("cargo xtask setup"));
    }

    #[test]
    fn live_tracefs_matches_when_mounted() {
        let Ok(fs) = Tracefs::system() else {
            crate::testing::print_skip("tracefs", "tracefs not mounted");
            return;
        };
        let mut config = Config::default();
        // Mounted, the layouts must read: an error here is a failure, not a skip.
        let reasons = fs.fill_config(&mut config).unwrap();
        assert!(config.tp_kfree_skbaddr >= 8 && config.tp_kfree_reason > 8);
        assert!(!reasons.is_empty());
    }
}
