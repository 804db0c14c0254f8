//! weir's conformance suite and test topologies (see issue 7).
