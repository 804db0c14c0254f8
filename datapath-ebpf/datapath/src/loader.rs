//! Loading the object and pinning it (weir-node's job).
//!
//! Maps are pinned by name under `<root>/maps`; when a pin exists the loader
//! reuses it, so maps keep their contents across daemon restarts. Programs are
//! loaded fresh, pinned to a staging name and renamed over the old pin (bpffs
//! renames atomically); then every pod link is moved to the new program with a
//! link update, so no packet sees an interface without a program.

use std::{fs, io, path::Path};

use aya::{
    EbpfLoader,
    maps::{Array, MapData, MapInfo},
    programs::{ProgramInfo, SchedClassifier},
};
use weir_common::{ABI_VERSION, Meta, map_names, program_names};

use crate::{Error, PinLayout, Result, attach, bpffs};

/// What [`load`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadReport {
    /// Maps whose pins already existed and were reused.
    pub reused_maps: Vec<&'static str>,
    /// Maps created (and pinned) by this load.
    pub created_maps: Vec<&'static str>,
    /// The loaded programs with their kernel ids.
    pub programs: Vec<LoadedProgram>,
    /// The digest of the object that was pinned before, if any.
    pub previous_digest: Option<[u8; 16]>,
    /// Pod interfaces whose links were moved to the new programs.
    pub relinked_interfaces: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedProgram {
    pub name: &'static str,
    pub id: u32,
    pub verified_instructions: Option<u32>,
}

/// Loads `object` and pins it under `layout`, reusing existing map pins.
/// Refuses pins of another ABI version.
pub fn load(layout: &PinLayout, object: &[u8]) -> Result<LoadReport> {
    bpffs::check_on_bpffs(layout.root())?;
    for dir in [
        layout.root().to_owned(),
        layout.maps_dir(),
        layout.progs_dir(),
        layout.links_dir(),
    ] {
        fs::create_dir_all(&dir).map_err(Error::io(&dir))?;
    }
    let previous = read_meta(layout)?;
    if let Some(meta) = previous
        && meta.abi_version != 0
        && meta.abi_version != ABI_VERSION
    {
        return Err(Error::AbiMismatch {
            root: layout.root().to_owned(),
            found: meta.abi_version,
            expected: ABI_VERSION,
        });
    }

    let mut reused_maps = Vec::new();
    let mut created_maps = Vec::new();
    let mut loader = EbpfLoader::new();
    for name in map_names::ALL {
        let path = layout.map(name);
        if path.exists() {
            reused_maps.push(name);
        } else {
            created_maps.push(name);
        }
        loader.map_pin_path(name, path);
    }
    let mut ebpf = loader.load(object).map_err(|e| Error::Load {
        source: Box::new(e),
    })?;
    for name in map_names::ALL {
        check_map_layout(layout, name)?;
    }

    let mut programs = Vec::new();
    for name in program_names::ALL {
        let prog: &mut SchedClassifier = ebpf
            .program_mut(name)
            .ok_or_else(|| Error::MissingProgram { name: name.into() })?
            .try_into()
            .map_err(|e| program_error(name, e))?;
        prog.load().map_err(|e| program_error(name, e))?;
        let info = prog.info().map_err(|e| program_error(name, e))?;
        let staging = layout.program_staging(name);
        remove_if_exists(&staging)?;
        prog.pin(&staging).map_err(|e| Error::Pin {
            path: staging.clone(),
            source: Box::new(e),
        })?;
        let dst = layout.program(name);
        fs::rename(&staging, &dst).map_err(Error::io(&dst))?;
        programs.push(LoadedProgram {
            name,
            id: info.id(),
            verified_instructions: info.verified_instruction_count(),
        });
    }

    let relinked_interfaces = attach::relink_all(layout)?;

    write_meta(
        layout,
        Meta {
            abi_version: ABI_VERSION,
            _pad: 0,
            object_digest: crate::object::digest_of(object),
        },
    )?;

    Ok(LoadReport {
        reused_maps,
        created_maps,
        programs,
        previous_digest: previous
            .filter(|m| m.abi_version != 0)
            .map(|m| m.object_digest),
        relinked_interfaces,
    })
}

/// Checks that the pins under `layout` exist and speak this build's ABI. This
/// is what a user of the pins (the CNI) calls before touching them.
pub fn check_pins(layout: &PinLayout) -> Result<Meta> {
    if !layout.is_loaded() {
        return Err(Error::NotLoaded {
            root: layout.root().to_owned(),
        });
    }
    match read_meta(layout)? {
        Some(meta) if meta.abi_version == ABI_VERSION => Ok(meta),
        Some(meta) if meta.abi_version != 0 => Err(Error::AbiMismatch {
            root: layout.root().to_owned(),
            found: meta.abi_version,
            expected: ABI_VERSION,
        }),
        // Maps exist but the loader never finished: not ready yet.
        _ => Err(Error::NotLoaded {
            root: layout.root().to_owned(),
        }),
    }
}

/// The kernel ids of the pinned programs, by name.
pub fn pinned_program_ids(layout: &PinLayout) -> Result<Vec<(&'static str, u32)>> {
    program_names::ALL
        .iter()
        .map(|&name| {
            let info =
                ProgramInfo::from_pin(layout.program(name)).map_err(|e| program_error(name, e))?;
            Ok((name, info.id()))
        })
        .collect()
}

/// Removes every pin under the layout's root, and the root itself. Links
/// pinned there are detached as their pins go.
pub fn unpin_all(layout: &PinLayout) -> Result<()> {
    match fs::remove_dir_all(layout.root()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(layout.root())(e)),
    }
}

fn program_error(name: &str, e: aya::programs::ProgramError) -> Error {
    Error::Program {
        name: name.into(),
        source: Box::new(e),
    }
}

/// Expected (key size, value size) of each map, from the `common` types.
pub fn expected_layout(name: &str) -> Option<(u32, u32)> {
    use core::mem::size_of;
    use weir_common::*;
    let sizes = match name {
        map_names::ENDPOINTS => (size_of::<IpKey>(), size_of::<Endpoint>()),
        map_names::NODES => (NODES_KEY_SIZE, size_of::<RemoteNode>()),
        map_names::TRAFFIC => (size_of::<u32>(), size_of::<Traffic>()),
        map_names::DROPS => (size_of::<DropKey>(), size_of::<u64>()),
        map_names::META => (size_of::<u32>(), size_of::<Meta>()),
        map_names::SERVICES => (size_of::<ServiceKey>(), size_of::<Service>()),
        map_names::BACKENDS => (size_of::<BackendKey>(), size_of::<Backend>()),
        map_names::CONNTRACK => (size_of::<FlowKey>(), size_of::<CtEntry>()),
        map_names::REVNAT => (size_of::<FlowKey>(), size_of::<RevNatEntry>()),
        map_names::AFFINITY => (size_of::<AffinityKey>(), size_of::<AffinityEntry>()),
        _ => return None,
    };
    Some((sizes.0 as u32, sizes.1 as u32))
}

fn check_map_layout(layout: &PinLayout, name: &'static str) -> Result<()> {
    let path = layout.map(name);
    let info = MapInfo::from_pin(&path).map_err(|e| Error::OpenMap {
        name,
        path: path.clone(),
        source: Box::new(e),
    })?;
    let (expected_key, expected_value) =
        expected_layout(name).ok_or_else(|| Error::MissingMap { name: name.into() })?;
    if info.key_size() != expected_key || info.value_size() != expected_value {
        return Err(Error::MapLayout {
            name,
            key_size: info.key_size(),
            value_size: info.value_size(),
            expected_key,
            expected_value,
        });
    }
    Ok(())
}

fn meta_map(layout: &PinLayout) -> Result<Option<Array<MapData, Meta>>> {
    let path = layout.map(map_names::META);
    if !path.exists() {
        return Ok(None);
    }
    let open_err = |e| Error::OpenMap {
        name: map_names::META,
        path: path.clone(),
        source: Box::new(e),
    };
    let data = MapData::from_pin(&path).map_err(open_err)?;
    let map = aya::maps::Map::from_map_data(data).map_err(open_err)?;
    Array::try_from(map).map(Some).map_err(open_err)
}

fn read_meta(layout: &PinLayout) -> Result<Option<Meta>> {
    let Some(map) = meta_map(layout)? else {
        return Ok(None);
    };
    map.get(&0, 0).map(Some).map_err(|e| Error::Map {
        name: map_names::META,
        source: Box::new(e),
    })
}

fn write_meta(layout: &PinLayout, meta: Meta) -> Result<()> {
    let mut map = meta_map(layout)?.ok_or_else(|| Error::NotLoaded {
        root: layout.root().to_owned(),
    })?;
    map.set(0, meta, 0).map_err(|e| Error::Map {
        name: map_names::META,
        source: Box::new(e),
    })
}

fn remove_if_exists(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(path)(e)),
    }
}
