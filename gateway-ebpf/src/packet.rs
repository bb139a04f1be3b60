//! Packet parsing shared by the XDP and TC programs: Ethernet (one optional
//! 802.1Q/802.1ad tag), IPv4/IPv6 (with extension headers) and TCP/UDP.
//!
//! Every read of packet memory goes through [`load`], which checks the bounds first.

use core::mem;

use aya_ebpf::programs::{TcContext, XdpContext};
use gateway_common::{FlowKey, FAMILY_IPV4, FAMILY_IPV6, IPPROTO_TCP, IPPROTO_UDP};

const ETH_HLEN: usize = 14;
const VLAN_HLEN: usize = 4;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
const IPV4_MIN_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;
const TCP_MIN_HLEN: usize = 20;
const UDP_HLEN: usize = 8;
/// IPv6 extension headers walked before giving up on finding the L4 header.
const IPV6_MAX_EXT_HEADERS: usize = 4;
const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_DSTOPTS: u8 = 60;

/// Packet memory of a program context: `[start, end)`.
pub trait Packet {
    fn start(&self) -> usize;
    fn end(&self) -> usize;
}

impl Packet for XdpContext {
    #[inline(always)]
    fn start(&self) -> usize {
        self.data()
    }
    #[inline(always)]
    fn end(&self) -> usize {
        self.data_end()
    }
}

impl Packet for TcContext {
    #[inline(always)]
    fn start(&self) -> usize {
        self.data()
    }
    #[inline(always)]
    fn end(&self) -> usize {
        self.data_end()
    }
}

/// Why a packet produced no flow.
pub enum Skip {
    /// A header was cut short or is inconsistent (counted as a parse failure).
    Malformed,
    /// Not IPv4 or IPv6 (counted as non-IP).
    NonIp,
}

#[derive(Default)]
pub struct Parsed {
    pub key: FlowKey,
    /// L3 bytes from the IP length fields.
    pub l3_bytes: u64,
    /// IP headers (with IPv6 extension headers) plus the TCP/UDP header: what every
    /// segment of a GSO packet repeats.
    pub header_bytes: u64,
    pub tcp_flags: u8,
    /// The transport header was read: the ports in `key` are real.
    pub has_ports: bool,
}

/// A pointer to a `T` at `offset` bytes into the packet, or `Malformed` when the packet is
/// too short. Every packet read goes through here.
#[inline(always)]
fn ptr_at<C: Packet, T>(ctx: &C, offset: usize) -> Result<*const T, Skip> {
    let start = ctx.start();
    let end = ctx.end();
    if start + offset + mem::size_of::<T>() > end {
        return Err(Skip::Malformed);
    }
    Ok((start + offset) as *const T)
}

#[inline(always)]
pub fn load<C: Packet, T: Copy>(ctx: &C, offset: usize) -> Result<T, Skip> {
    let ptr = ptr_at::<C, T>(ctx, offset)?;
    // SAFETY: `ptr_at` checked that size_of::<T>() bytes at `ptr` lie inside the packet;
    // packet data has no alignment guarantee, hence the unaligned read.
    Ok(unsafe { core::ptr::read_unaligned(ptr) })
}

#[inline(always)]
fn load_be16<C: Packet>(ctx: &C, offset: usize) -> Result<u16, Skip> {
    Ok(u16::from_be_bytes(load::<C, [u8; 2]>(ctx, offset)?))
}

/// Parses the packet into `out` (which the caller zeroes). A separate BPF function (not
/// inlined) so that its temporaries get their own stack frame.
#[inline(always)]
pub fn parse<C: Packet>(ctx: &C, out: &mut Parsed) -> Result<(), Skip> {
    let mut ether_type = load_be16(ctx, 12)?;
    let mut l3 = ETH_HLEN;
    if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        ether_type = load_be16(ctx, ETH_HLEN + 2)?;
        l3 += VLAN_HLEN;
    }
    match ether_type {
        ETH_P_IPV4 => parse_ipv4(ctx, l3, out),
        ETH_P_IPV6 => parse_ipv6(ctx, l3, out),
        _ => Err(Skip::NonIp),
    }
}

#[inline(always)]
fn parse_ipv4<C: Packet>(ctx: &C, l3: usize, out: &mut Parsed) -> Result<(), Skip> {
    let header: [u8; IPV4_MIN_HLEN] = load(ctx, l3)?;
    if header[0] >> 4 != 4 {
        return Err(Skip::Malformed);
    }
    let ihl = ((header[0] & 0x0f) as usize) * 4;
    if ihl < IPV4_MIN_HLEN {
        return Err(Skip::Malformed);
    }
    let total_len = u16::from_be_bytes([header[2], header[3]]) as usize;
    if total_len < ihl {
        return Err(Skip::Malformed);
    }
    let fragment_offset = u16::from_be_bytes([header[6], header[7]]) & 0x1fff;
    let protocol = header[9];

    out.key.protocol = protocol;
    out.key.family = FAMILY_IPV4;
    out.key.src_addr[..4].copy_from_slice(&header[12..16]);
    out.key.dst_addr[..4].copy_from_slice(&header[16..20]);
    out.l3_bytes = total_len as u64;
    out.header_bytes = ihl as u64;
    // Only the first fragment carries the L4 header.
    if fragment_offset == 0 {
        parse_l4(ctx, l3 + ihl, protocol, out)?;
    }
    Ok(())
}

#[inline(always)]
fn parse_ipv6<C: Packet>(ctx: &C, l3: usize, out: &mut Parsed) -> Result<(), Skip> {
    let fixed: [u8; 8] = load(ctx, l3)?;
    if fixed[0] >> 4 != 6 {
        return Err(Skip::Malformed);
    }
    let payload_len = u16::from_be_bytes([fixed[4], fixed[5]]) as u64;
    let mut next_header = fixed[6];
    out.key.family = FAMILY_IPV6;
    out.key.src_addr = load(ctx, l3 + 8)?;
    out.key.dst_addr = load(ctx, l3 + 24)?;

    let mut l4_offset = l3 + IPV6_HLEN;
    let mut has_l4_header = true;
    for _ in 0..IPV6_MAX_EXT_HEADERS {
        let ext_len = match next_header {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                let ext: [u8; 2] = load(ctx, l4_offset)?;
                next_header = ext[0];
                (ext[1] as usize + 1) * 8
            }
            IPPROTO_AH => {
                let ext: [u8; 2] = load(ctx, l4_offset)?;
                next_header = ext[0];
                (ext[1] as usize + 2) * 4
            }
            IPPROTO_FRAGMENT => {
                let ext: [u8; 4] = load(ctx, l4_offset)?;
                next_header = ext[0];
                if u16::from_be_bytes([ext[2], ext[3]]) & 0xfff8 != 0 {
                    has_l4_header = false;
                }
                8
            }
            _ => break,
        };
        l4_offset += ext_len;
    }
    out.key.protocol = next_header;
    out.l3_bytes = payload_len + IPV6_HLEN as u64;
    out.header_bytes = (l4_offset - l3) as u64;
    if has_l4_header {
        parse_l4(ctx, l4_offset, next_header, out)?;
    }
    Ok(())
}

/// Fills the ports and TCP flags for TCP and UDP, and adds the transport header to
/// `header_bytes`.
#[inline(always)]
fn parse_l4<C: Packet>(ctx: &C, l4: usize, protocol: u8, out: &mut Parsed) -> Result<(), Skip> {
    match protocol {
        IPPROTO_TCP => {
            let tcp: [u8; TCP_MIN_HLEN] = load(ctx, l4)?;
            out.key.src_port = u16::from_be_bytes([tcp[0], tcp[1]]);
            out.key.dst_port = u16::from_be_bytes([tcp[2], tcp[3]]);
            out.tcp_flags = tcp[13];
            out.header_bytes += ((tcp[12] >> 4) as u64) * 4;
            out.has_ports = true;
        }
        IPPROTO_UDP => {
            let udp: [u8; UDP_HLEN] = load(ctx, l4)?;
            out.key.src_port = u16::from_be_bytes([udp[0], udp[1]]);
            out.key.dst_port = u16::from_be_bytes([udp[2], udp[3]]);
            out.header_bytes += UDP_HLEN as u64;
            out.has_ports = true;
        }
        _ => {}
    }
    Ok(())
}
