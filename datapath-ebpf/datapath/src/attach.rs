//! Attaching the pinned programs to a pod's host-side veth.
//!
//! TCX (Linux 6.6+): each program gets a BPF link, pinned at
//! `<root>/links/<ifname>/<program>`; the link lives as long as its pin (or
//! the interface). An upgrade updates the link in place.
//!
//! clsact (older kernels, or when asked for): a direct-action cls_bpf filter
//! at weir's fixed priority and handle; `<root>/links/<ifname>/clsact` (an
//! empty bpffs directory) records that the interface is attached this way. An
//! upgrade replaces the filter in place (same priority and handle).

use std::{fs, io};

use aya::{
    programs::{
        LinkOrder, SchedClassifier, TcAttachType,
        links::{FdLink, PinnedLink},
        tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle},
    },
    util::KernelVersion,
};
use weir_common::program_names;

use crate::{Error, PinLayout, Result};

/// Priority of weir's cls_bpf filters in clsact mode.
pub const TC_PRIORITY: u16 = 1;
/// Handle of weir's cls_bpf filters in clsact mode.
pub const TC_HANDLE: u32 = 0x5752; // "WR"
const CLSACT_MARKER: &str = "clsact";

/// How programs are attached to interfaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// TCX links (Linux 6.6+), pinned.
    Tcx,
    /// cls_bpf filters on a clsact qdisc.
    Clsact,
}

impl AttachMode {
    /// TCX where the kernel has it, clsact otherwise.
    pub fn detect() -> AttachMode {
        if KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0)) {
            AttachMode::Tcx
        } else {
            AttachMode::Clsact
        }
    }

    pub fn parse(s: &str) -> Option<Option<AttachMode>> {
        match s {
            "auto" => Some(None),
            "tcx" => Some(Some(AttachMode::Tcx)),
            "clsact" | "tc" => Some(Some(AttachMode::Clsact)),
            _ => None,
        }
    }
}

fn hook(program: &str) -> TcAttachType {
    if program == program_names::TO_POD {
        TcAttachType::Egress
    } else {
        TcAttachType::Ingress
    }
}

fn attach_error(ifname: &str) -> impl Fn(aya::programs::ProgramError) -> Error + '_ {
    move |e| Error::Attach {
        ifname: ifname.into(),
        source: Box::new(e),
    }
}

/// Attaches `from_pod` (ingress) and `to_pod` (egress) from their pins to
/// `ifname`. On failure, whatever this call attached is detached again.
pub fn attach_interface(layout: &PinLayout, ifname: &str, mode: AttachMode) -> Result<()> {
    attach_programs(layout, ifname, mode, &program_names::POD)
}

/// Attaches `from_netdev` (ingress) to the node's uplink `ifname`: NodePort
/// traffic from outside the cluster and the replies of its SNATed flows.
pub fn attach_netdev(layout: &PinLayout, ifname: &str, mode: AttachMode) -> Result<()> {
    attach_programs(layout, ifname, mode, &[program_names::FROM_NETDEV])
}

fn attach_programs(
    layout: &PinLayout,
    ifname: &str,
    mode: AttachMode,
    programs: &[&'static str],
) -> Result<()> {
    crate::loader::check_pins(layout)?;
    let dir = layout.interface_links(ifname);
    fs::create_dir_all(&dir).map_err(Error::io(&dir))?;
    let result = match mode {
        AttachMode::Tcx => attach_tcx(layout, ifname, programs),
        AttachMode::Clsact => attach_clsact(layout, ifname, programs),
    };
    if result.is_err() {
        let _ = detach_interface(layout, ifname);
    }
    result
}

fn attach_tcx(layout: &PinLayout, ifname: &str, programs: &[&'static str]) -> Result<()> {
    for &name in programs {
        let mut prog =
            SchedClassifier::from_pin(layout.program(name)).map_err(attach_error(ifname))?;
        let id = prog
            .attach_with_options(
                ifname,
                hook(name),
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
            .map_err(attach_error(ifname))?;
        let link = prog.take_link(id).map_err(attach_error(ifname))?;
        let fd: FdLink = link.try_into().map_err(|e| Error::Link {
            path: layout.link(ifname, name),
            source: Box::new(e),
        })?;
        let path = layout.link(ifname, name);
        fd.pin(&path).map_err(|e| Error::Pin {
            path: path.clone(),
            source: Box::new(e),
        })?;
    }
    Ok(())
}

fn attach_clsact(layout: &PinLayout, ifname: &str, programs: &[&'static str]) -> Result<()> {
    match tc::qdisc_add_clsact(ifname) {
        Ok(()) => {}
        Err(tc::TcError::IoError(e)) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(Error::Attach {
                ifname: ifname.into(),
                source: Box::new(e.into()),
            });
        }
    }
    for &name in programs {
        let marker = clsact_marker(layout, ifname, name);
        fs::create_dir_all(&marker).map_err(Error::io(&marker))?;
        let mut prog =
            SchedClassifier::from_pin(layout.program(name)).map_err(attach_error(ifname))?;
        let options = NlOptions {
            priority: TC_PRIORITY,
            handle: TcHandle::from(TC_HANDLE),
            ..NlOptions::default()
        };
        let id = prog
            .attach_with_options(ifname, hook(name), TcAttachOptions::Netlink(options))
            .map_err(attach_error(ifname))?;
        let link = prog.take_link(id).map_err(attach_error(ifname))?;
        // The filter must outlive this process: dropping the link would detach
        // it. It goes away with the interface or with detach_interface.
        std::mem::forget(link);
    }
    Ok(())
}

/// Detaches weir's programs from `ifname` and removes its link pins. Succeeds
/// when nothing is attached or the interface is gone.
pub fn detach_interface(layout: &PinLayout, ifname: &str) -> Result<()> {
    let dir = layout.interface_links(ifname);
    for name in program_names::ALL {
        if clsact_marker(layout, ifname, name).exists() {
            // The interface may be gone already, taking its filters with it.
            if let Ok(link) = SchedClassifierLink::attached(
                ifname,
                hook(name),
                TC_PRIORITY,
                TcHandle::from(TC_HANDLE),
                None,
            ) {
                drop(link); // dropping an attached link detaches it
            }
        }
    }
    match fs::remove_dir_all(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(&dir)(e)),
    }
}

/// Whether weir's programs are attached to `ifname` as [`attach_interface`]
/// left them: in TCX mode both link pins exist and the kernel lists the
/// pinned programs on their hooks; in clsact mode both filters are there.
pub fn is_attached(layout: &PinLayout, ifname: &str) -> Result<bool> {
    if clsact_marker(layout, ifname, program_names::FROM_POD).exists() {
        for name in program_names::POD {
            match SchedClassifierLink::attached(
                ifname,
                hook(name),
                TC_PRIORITY,
                TcHandle::from(TC_HANDLE),
                None,
            ) {
                // Dropping the handle would detach the filter: keep it.
                Ok(link) => std::mem::forget(link),
                Err(_) => return Ok(false),
            }
        }
        return Ok(true);
    }
    if !program_names::POD
        .iter()
        .all(|name| layout.link(ifname, name).exists())
    {
        return Ok(false);
    }
    let pinned = crate::loader::pinned_program_ids(layout)?;
    let (ingress, egress) = attached_program_ids(ifname)?;
    Ok(pinned
        .iter()
        .filter(|(name, _)| program_names::POD.contains(name))
        .all(|(name, id)| {
            if hook(name) == TcAttachType::Ingress {
                ingress.contains(id)
            } else {
                egress.contains(id)
            }
        }))
}

/// Interfaces that have a link directory under the layout.
pub fn linked_interfaces(layout: &PinLayout) -> Result<Vec<String>> {
    let dir = layout.links_dir();
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(&dir)(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(Error::io(&dir))?;
        if let Some(name) = entry.file_name().to_str() {
            out.push(name.to_owned());
        }
    }
    out.sort();
    Ok(out)
}

/// The ids of the programs weir attached to `ifname`, per hook, as the kernel
/// reports them (TCX only; clsact filters are checked by presence).
pub fn attached_program_ids(ifname: &str) -> Result<(Vec<u32>, Vec<u32>)> {
    let ids = |hook| -> Result<Vec<u32>> {
        let (_, progs) = SchedClassifier::query_tcx(ifname, hook).map_err(attach_error(ifname))?;
        Ok(progs.iter().map(|p| p.id()).collect())
    };
    Ok((ids(TcAttachType::Ingress)?, ids(TcAttachType::Egress)?))
}

/// Moves every pod link under the layout to the currently pinned programs,
/// atomically per link. Interfaces that no longer exist lose their pins.
/// Returns the interfaces that were relinked.
pub(crate) fn relink_all(layout: &PinLayout) -> Result<Vec<String>> {
    let mut relinked = Vec::new();
    for ifname in linked_interfaces(layout)? {
        if !interface_exists(&ifname) {
            detach_interface(layout, &ifname)?;
            continue;
        }
        for name in program_names::ALL {
            let clsact = clsact_marker(layout, &ifname, name).exists();
            if !clsact && !layout.link(&ifname, name).exists() {
                continue; // not attached here
            }
            let mut prog =
                SchedClassifier::from_pin(layout.program(name)).map_err(attach_error(&ifname))?;
            let link = if clsact {
                SchedClassifierLink::attached(
                    &ifname,
                    hook(name),
                    TC_PRIORITY,
                    TcHandle::from(TC_HANDLE),
                    None,
                )
                .map_err(|e| Error::Attach {
                    ifname: ifname.clone(),
                    source: Box::new(e.into()),
                })?
            } else {
                let path = layout.link(&ifname, name);
                let pinned = match PinnedLink::from_pin(&path) {
                    Ok(p) => p,
                    Err(_) if !path.exists() => continue,
                    Err(e) => {
                        return Err(Error::Link {
                            path,
                            source: Box::new(e),
                        });
                    }
                };
                SchedClassifierLink::try_from(FdLink::from(pinned)).map_err(|e| Error::Link {
                    path: path.clone(),
                    source: Box::new(e),
                })?
            };
            let id = prog.attach_to_link(link).map_err(attach_error(&ifname))?;
            let link = prog.take_link(id).map_err(attach_error(&ifname))?;
            if clsact {
                std::mem::forget(link);
            } else {
                // The pin holds the (updated) link; closing our fd keeps it.
                let _: FdLink = link.try_into().map_err(|e| Error::Link {
                    path: layout.link(&ifname, name),
                    source: Box::new(e),
                })?;
            }
        }
        relinked.push(ifname);
    }
    Ok(relinked)
}

/// The directory recording that `program` is attached to `ifname` as a
/// cls_bpf filter (bpffs holds no regular files).
fn clsact_marker(layout: &PinLayout, ifname: &str, program: &str) -> std::path::PathBuf {
    layout
        .interface_links(ifname)
        .join(CLSACT_MARKER)
        .join(program)
}

/// Whether `ifname` exists in this thread's network namespace.
fn interface_exists(ifname: &str) -> bool {
    nix::net::if_::if_nametoindex(ifname).is_ok()
}
