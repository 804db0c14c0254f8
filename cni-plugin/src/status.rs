//! STATUS: ready when node.json is valid, the pins are there and the pool
//! can serve an ADD; otherwise code 50 with the reason.

use weir_datapath::loader;

use crate::{
    common,
    config::NetConf,
    error::{Error, Result},
};

pub fn run(conf: &NetConf) -> Result<()> {
    let not_available = |reason: String| Error::NotAvailable { reason };
    let node = common::node_info(conf).map_err(|e| not_available(e.to_string()))?;
    loader::check_pins(&common::layout(conf)).map_err(|e| not_available(e.to_string()))?;
    let pool = common::pool(conf, Some(&node))?;
    let status = common::open_ipam(conf, pool)?.status()?;
    if !status.can_allocate() {
        let full: Vec<String> = status
            .sets
            .iter()
            .filter(|s| s.allocated >= s.capacity)
            .map(|s| {
                format!(
                    "{}: {} of {} allocated",
                    s.description, s.allocated, s.capacity
                )
            })
            .collect();
        return Err(not_available(format!(
            "the address pool is exhausted ({})",
            full.join("; ")
        )));
    }
    Ok(())
}
