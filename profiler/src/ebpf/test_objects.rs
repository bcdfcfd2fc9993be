//! The kernel objects only tests load: the uplink counter ([`TEST_OBJECT`]) and the netfilter
//! counter ([`NF_TEST_OBJECT`]). They are apart from [`OBJECT`](super::OBJECT) and
//! [`NF_OBJECT`](super::netfilter::NF_OBJECT) because aya creates every map of an object it
//! loads: in the agent's objects they would be test code shipped, and maps created, for nothing.

/// The object built from `profiler-ebpf`'s `profiler-test` bin target: the uplink counter's tc
/// classifiers and their map, which [`UplinkCounter`](super::UplinkCounter) loads.
pub static TEST_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/profiler-test"));

/// The object built from `profiler-ebpf`'s `profiler-nf-test` bin target: the netfilter counter
/// (`nf_count` and its map), for [`NetfilterLoader`](super::netfilter::NetfilterLoader).
pub static NF_TEST_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/profiler-nf-test"));

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use object::{Object, ObjectSection, ObjectSymbol, SymbolKind};
    use profiler_common::{counter, datapath, netfilter};

    use super::*;
    use crate::ebpf::{netfilter::NF_OBJECT, object_globals, OBJECT};

    /// The global variables of an object (symbols in a `.rodata` or `.data` section).
    fn globals(elf: &[u8]) -> BTreeSet<String> {
        let file = object::File::parse(elf).expect("an ELF object");
        file.symbols()
            .filter(|s| s.is_global())
            .filter_map(|symbol| {
                let section = file.section_by_index(symbol.section_index()?).ok()?;
                let section = section.name().ok()?;
                if !section.starts_with(".rodata") && !section.starts_with(".data") {
                    return None;
                }
                symbol.name().ok().map(str::to_owned)
            })
            .collect()
    }

    #[test]
    fn only_the_aya_object_has_globals_and_load_object_sets_them_all() {
        let set = object_globals(&datapath::Config::default()).map(|(name, _)| name);
        assert_eq!(globals(OBJECT), names(set), "globals of OBJECT");
        assert!(globals(NF_OBJECT).is_empty(), "globals of NF_OBJECT");
    }

    /// The programs (global functions outside `.text`, where only helpers such as `memcpy`
    /// live) and the maps (symbols in the `maps` section) of an object.
    fn programs_and_maps(elf: &[u8]) -> (BTreeSet<String>, BTreeSet<String>) {
        let file = object::File::parse(elf).expect("an ELF object");
        let (mut programs, mut maps) = (BTreeSet::new(), BTreeSet::new());
        for symbol in file.symbols().filter(|s| s.is_global()) {
            let Some(section) = symbol
                .section_index()
                .and_then(|index| file.section_by_index(index).ok())
            else {
                continue;
            };
            let (Ok(name), Ok(section)) = (symbol.name(), section.name()) else {
                continue;
            };
            if symbol.kind() == SymbolKind::Text && section != ".text" {
                programs.insert(name.to_owned());
            } else if section == "maps" {
                maps.insert(name.to_owned());
            }
        }
        (programs, maps)
    }

    fn names<'a>(list: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
        list.into_iter().map(str::to_owned).collect()
    }

    /// Every map a production program uses.
    fn production_maps() -> BTreeSet<String> {
        names(datapath::ALL_MAPS.into_iter().chain([
            datapath::MAP_NODE_DEVICES,
            datapath::MAP_POD_DEVICES,
            datapath::MAP_DEVICES,
            datapath::MAP_TC_ADMIT,
            datapath::MAP_NF_ADMIT,
            datapath::MAP_BACKLOG_MARKS,
            datapath::MAP_JOURNEY_LOG,
        ]))
    }

    #[test]
    fn agent_objects_hold_only_the_agents_programs_and_maps() {
        let (programs, maps) = programs_and_maps(OBJECT);
        assert_eq!(
            programs,
            names(datapath::AYA_PROGRAMS),
            "programs of OBJECT"
        );
        assert!(
            maps.is_subset(&production_maps()),
            "maps of OBJECT: {maps:?}"
        );

        let (programs, maps) = programs_and_maps(NF_OBJECT);
        assert_eq!(
            programs,
            names(datapath::NF_OBJECT_PROGRAMS),
            "programs of NF_OBJECT"
        );
        assert!(
            maps.is_subset(&production_maps()),
            "maps of NF_OBJECT: {maps:?}"
        );
    }

    #[test]
    fn test_programs_are_in_the_test_objects_only() {
        let uplink_programs = [counter::PROG_INGRESS, counter::PROG_EGRESS];
        let (programs, maps) = programs_and_maps(TEST_OBJECT);
        assert_eq!(programs, names(uplink_programs), "programs of TEST_OBJECT");
        assert_eq!(maps, names([counter::MAP_NAME]), "maps of TEST_OBJECT");

        let (programs, maps) = programs_and_maps(NF_TEST_OBJECT);
        assert_eq!(
            programs,
            names([netfilter::PROG_COUNT]),
            "programs of NF_TEST_OBJECT"
        );
        assert_eq!(maps, names([netfilter::MAP_NAME]), "maps of NF_TEST_OBJECT");

        let test_names = names(uplink_programs.into_iter().chain([
            counter::MAP_NAME,
            netfilter::PROG_COUNT,
            netfilter::MAP_NAME,
        ]));
        for (object, elf) in [("OBJECT", OBJECT), ("NF_OBJECT", NF_OBJECT)] {
            let (programs, maps) = programs_and_maps(elf);
            let found: Vec<&String> = programs
                .union(&maps)
                .filter(|n| test_names.contains(*n))
                .collect();
            assert!(
                found.is_empty(),
                "{object} holds test programs or maps: {found:?}"
            );
        }
    }
}
