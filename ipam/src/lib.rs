//! weir's address allocator (see issue 3; filled in by the IPAM work).
