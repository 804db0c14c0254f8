//! Header access with the bounds checks the verifier wants.

use core::mem::size_of;

use aya_ebpf::programs::TcContext;

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_ARP: u16 = 0x0806;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub proto_be: u16,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv4Hdr {
    pub vihl: u8,
    pub tos: u8,
    pub tot_len_be: u16,
    pub id_be: u16,
    pub frag_off_be: u16,
    pub ttl: u8,
    pub proto: u8,
    pub check_be: u16,
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
}

/// A pointer to a `T` at `offset` into the packet, if the packet is long
/// enough to hold it.
#[inline(always)]
pub fn ptr_at<T>(ctx: &TcContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// The ifindex of the device the program runs on.
#[inline(always)]
pub fn ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: the context pointer is valid for the program's whole run.
    unsafe { (*ctx.skb.skb).ifindex }
}

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;
/// Offset of the IPv4 source and destination addresses in the frame.
pub const IPV4_SADDR_OFF: usize = ETH_HLEN + 12;
pub const IPV4_DADDR_OFF: usize = ETH_HLEN + 16;
pub const IPV4_CSUM_OFF: usize = ETH_HLEN + 10;

/// The transport header of a TCP or UDP packet (first fragment only).
#[derive(Clone, Copy)]
pub struct L4 {
    /// Offset of the transport header in the frame.
    pub off: usize,
    pub proto: u8,
    pub sport_be: u16,
    pub dport_be: u16,
    /// TCP flags (0 for UDP).
    pub tcp_flags: u8,
}

impl L4 {
    /// Offset of the transport checksum in the frame.
    #[inline(always)]
    pub fn csum_off(&self) -> usize {
        if self.proto == IPPROTO_TCP {
            self.off + 16
        } else {
            self.off + 6
        }
    }
}

/// The IPv4 header length in bytes.
#[inline(always)]
pub fn ihl_bytes(ip: &Ipv4Hdr) -> usize {
    ((ip.vihl & 0x0f) as usize) * 4
}

/// Parses the TCP/UDP header that follows `ip`, when there is one to parse
/// (not another protocol, not a non-first fragment).
#[inline(always)]
pub fn l4(ctx: &TcContext, ip: &Ipv4Hdr) -> Option<L4> {
    if ip.proto != IPPROTO_TCP && ip.proto != IPPROTO_UDP {
        return None;
    }
    if u16::from_be(ip.frag_off_be) & 0x1fff != 0 {
        return None;
    }
    let ihl = ihl_bytes(ip);
    if ihl < 20 {
        return None;
    }
    let off = ETH_HLEN + ihl;
    let ports: [u16; 2] = ctx.load(off).ok()?;
    let tcp_flags = if ip.proto == IPPROTO_TCP {
        ctx.load::<u8>(off + 13).ok()?
    } else {
        0
    };
    Some(L4 {
        off,
        proto: ip.proto,
        sport_be: ports[0],
        dport_be: ports[1],
        tcp_flags,
    })
}
