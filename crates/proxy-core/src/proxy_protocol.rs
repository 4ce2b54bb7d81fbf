//! The PROXY protocol (HAProxy's `proxy-protocol.txt`), both ways.
//!
//! # Sending (`proxy_protocol: v1|v2`)
//!
//! - TCP: right after connecting to the target, before any client byte, dockward writes one
//!   header naming the client (or the client named by an accepted header, see below) as the
//!   source and the address the client connected to as the destination.
//! - UDP (v2 only): **dockward sends a PROXY v2 header with DGRAM (UDP) transport in front
//!   of each datagram; replies are expected without header.** Each client datagram becomes
//!   one upstream datagram `header ‖ payload`, so the target can tell clients apart on a
//!   datagram-by-datagram basis (no peer defines session state for UDP). The destination
//!   is the route's bound address (the wildcard `0.0.0.0`/`::` when bound to one, since
//!   the listening socket does not ask the kernel for each datagram's destination). A
//!   payload near the 65,507-byte maximum no longer fits once the header is added; such a
//!   datagram is dropped and counted.
//!
//! Source and destination always share one family in a header: IPv4-mapped addresses are
//! written as IPv4; when one side is IPv4 and the other IPv6, a wildcard side takes the
//! other's family, else the IPv4 side is written IPv4-mapped.
//!
//! # Accepting (`accept_proxy_protocol: required|optional`, TCP only)
//!
//! Only peers in the route's `trusted` networks are asked for a header; from them a v1 or
//! v2 header (detected from its first bytes) must arrive within `proxy_protocol_timeout`
//! (5 s). `required`: a missing, invalid or late header closes the connection. `optional`:
//! bytes that do not start a header are the client's data, and so is silence (after the
//! timeout the connection goes on without a header, so protocols where the server speaks
//! first still work, after that wait). From an untrusted peer nothing is parsed:
//! `required` closes the connection, `optional` forwards its bytes untouched.
//!
//! The address in an accepted header (a `PROXY` command with TCP/UDP over IPv4/IPv6) is
//! then the client for the ACL, logs, hooks and any header sent on; `LOCAL` headers, v1
//! `UNKNOWN` and other families keep the connection's own address, as the spec says.
//! Bytes that arrived after the header are forwarded before the zero-copy path takes over.
//!
//! # Parsing
//!
//! [`parse_header`] is pure and total: any input gives a header, "need more bytes" or an
//! error, never a panic (a fuzz target calls it). The address fields are decoded by the
//! `ppp` crate; the framing around it (which version, where a header ends, when to stop
//! waiting) is done here so that a header split anywhere across reads is never mistaken for
//! a bad one.

use std::fmt;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::time::Duration;

use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant;

/// The 12 bytes every v2 header starts with.
pub(crate) const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// What every v1 header starts with.
pub(crate) const V1_PREFIX: &[u8; 6] = b"PROXY ";
/// The longest v1 header, CRLF included.
pub(crate) const V1_MAX_LEN: usize = 107;
/// The fixed part of a v2 header: signature, version/command, family/transport, length.
pub(crate) const V2_FIXED_LEN: usize = 16;
pub use route_spec::proxy_protocol::{Accept, DEFAULT_TIMEOUT, Version};

/// The transport a header declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// TCP (v1 `TCP4`/`TCP6`, v2 `STREAM`).
    Stream,
    /// UDP (v2 `DGRAM`).
    Datagram,
    /// Not said (v1 `UNKNOWN`, v2 `UNSPEC`).
    Unspecified,
}

/// The endpoints a header names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Addresses {
    /// The original client.
    pub source: SocketAddr,
    /// The address the client connected to.
    pub destination: SocketAddr,
}

/// A header read from the front of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// v1 or v2.
    pub version: Version,
    /// How many bytes the header took; what follows is the client's data.
    pub len: usize,
    /// The declared transport.
    pub transport: Transport,
    /// The client and destination it names; `None` for a v2 `LOCAL` command, v1 `UNKNOWN`,
    /// and families without IP addresses: the connection's own addresses apply.
    pub addresses: Option<Addresses>,
}

/// What [`parse_header`] made of the bytes so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// A whole header.
    Header(Header),
    /// A header may yet follow: read more bytes and parse again from the start.
    Incomplete,
}

/// Bytes that are not, or cannot become, a valid header.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParseError {
    /// The bytes start neither with `PROXY ` nor with the v2 signature.
    #[error("not a PROXY protocol header (it starts neither with \"PROXY \" nor with the v2 signature)")]
    NotAHeader,
    /// No CRLF within the 107 bytes a v1 header may take.
    #[error("PROXY v1 header without CRLF within {V1_MAX_LEN} bytes")]
    V1TooLong,
    /// A complete v1 line that is malformed.
    #[error("bad PROXY v1 header: {0}")]
    V1(String),
    /// A v2 header that is malformed.
    #[error("bad PROXY v2 header: {0}")]
    V2(String),
}

/// What is wrong with a v2 header, in the terms of the specification (byte 13 is version and
/// command, byte 14 family and transport) rather than ppp's (which prints nibbles as shifted
/// hex: "version 10" for version 1).
fn v2_reason(e: &ppp::v2::ParseError) -> String {
    use ppp::v2::ParseError as E;
    match *e {
        E::Version(v) => format!("version {} in byte 13; expected 2", v >> 4),
        E::Command(c) => format!("command {c} in byte 13; expected 0 (LOCAL) or 1 (PROXY)"),
        E::AddressFamily(a) => {
            format!("address family {} in byte 14; expected 0 (UNSPEC), 1 (INET), 2 (INET6) or 3 (UNIX)", a >> 4)
        }
        E::Protocol(p) => format!("transport protocol {p} in byte 14; expected 0 (UNSPEC), 1 (STREAM) or 2 (DGRAM)"),
        E::InvalidAddresses(len, need) => {
            format!("its length field says {len} bytes, fewer than the {need} its address family needs")
        }
        E::InvalidTLV(kind, len) => format!("TLV 0x{kind:02X} of {len} bytes runs past the end of the header"),
        E::Leftovers(n) => format!("{n} bytes after the addresses do not form a whole TLV"),
        // Not reached (the signature is checked first and short input is "incomplete"), but
        // ppp's own text is still better than nothing should that change.
        _ => e.to_string(),
    }
}

/// Parses a PROXY header (v1 or v2, detected) at the start of `buf`.
///
/// Returns [`Parsed::Incomplete`] while `buf` is a proper beginning of a header (including
/// empty), [`ParseError::NotAHeader`] as soon as it cannot be one, and another error for a
/// header that is malformed. Never panics, whatever `buf` holds.
pub fn parse_header(buf: &[u8]) -> Result<Parsed, ParseError> {
    if buf.is_empty() {
        return Ok(Parsed::Incomplete);
    }
    let v2 = buf.len().min(V2_SIGNATURE.len());
    if buf[..v2] == V2_SIGNATURE[..v2] {
        return parse_v2(buf);
    }
    let v1 = buf.len().min(V1_PREFIX.len());
    if buf[..v1] == V1_PREFIX[..v1] {
        return parse_v1(buf);
    }
    Err(ParseError::NotAHeader)
}

/// True while `buf` is a strict beginning of one of the two signatures: too short to tell a
/// header from data.
pub fn is_undecided(buf: &[u8]) -> bool {
    (buf.len() < V2_SIGNATURE.len() && V2_SIGNATURE.starts_with(buf))
        || (buf.len() < V1_PREFIX.len() && V1_PREFIX.starts_with(buf))
}

/// A v1 header: a line of at most 107 bytes ending in CRLF.
fn parse_v1(buf: &[u8]) -> Result<Parsed, ParseError> {
    let window = &buf[..buf.len().min(V1_MAX_LEN)];
    let Some(end) = window.iter().position(|&b| b == b'\r' || b == b'\n') else {
        return if buf.len() >= V1_MAX_LEN { Err(ParseError::V1TooLong) } else { Ok(Parsed::Incomplete) };
    };
    if window[end] == b'\n' {
        return Err(ParseError::V1("the line ends in LF without CR".into()));
    }
    match buf.get(end + 1) {
        None if end + 2 > V1_MAX_LEN => return Err(ParseError::V1TooLong),
        None => return Ok(Parsed::Incomplete),
        Some(b'\n') if end + 2 > V1_MAX_LEN => return Err(ParseError::V1TooLong),
        Some(b'\n') => {}
        Some(_) => return Err(ParseError::V1("CR not followed by LF".into())),
    }
    let line = &buf[..end + 2];
    let header = ppp::v1::Header::try_from(line).map_err(|e| ParseError::V1(e.to_string()))?;
    let (transport, addresses) = match header.addresses {
        ppp::v1::Addresses::Tcp4(a) => (
            Transport::Stream,
            Some(Addresses {
                source: SocketAddr::V4(SocketAddrV4::new(a.source_address, a.source_port)),
                destination: SocketAddr::V4(SocketAddrV4::new(a.destination_address, a.destination_port)),
            }),
        ),
        ppp::v1::Addresses::Tcp6(a) => (
            Transport::Stream,
            Some(Addresses {
                source: SocketAddr::V6(SocketAddrV6::new(a.source_address, a.source_port, 0, 0)),
                destination: SocketAddr::V6(SocketAddrV6::new(a.destination_address, a.destination_port, 0, 0)),
            }),
        ),
        ppp::v1::Addresses::Unknown => (Transport::Unspecified, None),
    };
    Ok(Parsed::Header(Header { version: Version::V1, len: line.len(), transport, addresses }))
}

/// A v2 header: the fixed 16 bytes, then as many as its length field says.
fn parse_v2(buf: &[u8]) -> Result<Parsed, ParseError> {
    if buf.len() < V2_FIXED_LEN {
        return Ok(Parsed::Incomplete);
    }
    // ppp checks version, command, family and transport before the length, so a bad fixed
    // part is refused at once instead of after waiting for a body that may never come.
    let header = match ppp::v2::Header::try_from(buf) {
        Ok(header) => header,
        Err(ppp::v2::ParseError::Partial(..) | ppp::v2::ParseError::Incomplete(..)) => return Ok(Parsed::Incomplete),
        Err(e) => return Err(ParseError::V2(v2_reason(&e))),
    };
    // TLVs are not used, but a header whose TLVs overrun its length is malformed (HAProxy
    // refuses it too). A LOCAL or AF_UNSPEC header's body is to be ignored whatever it holds.
    let addressed =
        header.command == ppp::v2::Command::Proxy && !matches!(header.addresses, ppp::v2::Addresses::Unspecified);
    let mut tlv_bytes = 0usize;
    for tlv in header.tlvs().take_while(|_| addressed) {
        match tlv {
            Ok(tlv) => tlv_bytes += 3 + tlv.value.len(),
            Err(ppp::v2::ParseError::InvalidTLV(kind, len)) => {
                return Err(ParseError::V2(format!(
                    "TLV 0x{kind:02X} says {len} bytes, more than the header has left"
                )));
            }
            Err(_) => {
                let left = header.tlv_bytes().len().saturating_sub(tlv_bytes);
                return Err(ParseError::V2(format!(
                    "{left} bytes after the addresses and TLVs, too few for a TLV (3 bytes at least)"
                )));
            }
        }
    }
    let transport = match header.protocol {
        ppp::v2::Protocol::Stream => Transport::Stream,
        ppp::v2::Protocol::Datagram => Transport::Datagram,
        ppp::v2::Protocol::Unspecified => Transport::Unspecified,
    };
    let addresses = match (header.command, header.addresses) {
        (ppp::v2::Command::Local, _) => None,
        (ppp::v2::Command::Proxy, ppp::v2::Addresses::IPv4(a)) => Some(Addresses {
            source: SocketAddr::V4(SocketAddrV4::new(a.source_address, a.source_port)),
            destination: SocketAddr::V4(SocketAddrV4::new(a.destination_address, a.destination_port)),
        }),
        (ppp::v2::Command::Proxy, ppp::v2::Addresses::IPv6(a)) => Some(Addresses {
            source: SocketAddr::V6(SocketAddrV6::new(a.source_address, a.source_port, 0, 0)),
            destination: SocketAddr::V6(SocketAddrV6::new(a.destination_address, a.destination_port, 0, 0)),
        }),
        (ppp::v2::Command::Proxy, ppp::v2::Addresses::Unix(_) | ppp::v2::Addresses::Unspecified) => None,
    };
    Ok(Parsed::Header(Header { version: Version::V2, len: header.len(), transport, addresses }))
}

/// An encoded header, held inline (no allocation): at most 107 bytes (v1 with two full
/// IPv6 addresses is 104; v2 with IPv6 is 52).
#[derive(Clone, Copy)]
pub struct Encoded {
    /// The bytes; only the first `len` are the header.
    buf: [u8; V1_MAX_LEN],
    /// The header's length.
    len: u8,
}

impl Encoded {
    /// The header's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }
}

impl fmt::Debug for Encoded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Encoded({:?})", String::from_utf8_lossy(self.as_bytes()))
    }
}

/// Encodes a `PROXY` header naming `source` and `destination`; see the module doc for how
/// mixed families are written. v1 only knows TCP: `transport` is ignored there.
pub fn encode(version: Version, transport: Transport, source: SocketAddr, destination: SocketAddr) -> Encoded {
    let (source, destination) = same_family(source, destination);
    let mut out = Encoded { buf: [0; V1_MAX_LEN], len: 0 };
    let len = match version {
        Version::V1 => encode_v1(&mut out.buf, source, destination),
        Version::V2 => encode_v2(&mut out.buf, transport, source, destination),
    };
    // Both encoders write at most 104 bytes into a 107-byte buffer.
    out.len = u8::try_from(len).unwrap_or(0);
    out
}

/// Writes `PROXY TCP4|TCP6 src dst sport dport\r\n`; returns its length.
fn encode_v1(buf: &mut [u8; V1_MAX_LEN], source: SocketAddr, destination: SocketAddr) -> usize {
    let family = if source.is_ipv4() { "TCP4" } else { "TCP6" };
    let mut cursor = io::Cursor::new(&mut buf[..]);
    let written = write!(
        cursor,
        "PROXY {family} {} {} {} {}\r\n",
        source.ip(),
        destination.ip(),
        source.port(),
        destination.port()
    );
    match written {
        Ok(()) => usize::try_from(cursor.position()).unwrap_or(0),
        // Unreachable (104 bytes at most); an empty header is safer than a truncated one.
        Err(_) => 0,
    }
}

/// Writes a v2 `PROXY` header; returns its length (28 for IPv4, 52 for IPv6).
fn encode_v2(buf: &mut [u8; V1_MAX_LEN], transport: Transport, source: SocketAddr, destination: SocketAddr) -> usize {
    buf[..12].copy_from_slice(&V2_SIGNATURE);
    // Version 2, command PROXY.
    buf[12] = 0x21;
    let transport = match transport {
        Transport::Stream => 0x1,
        Transport::Datagram => 0x2,
        Transport::Unspecified => 0x0,
    };
    let mut at = V2_FIXED_LEN;
    let mut put = |bytes: &[u8]| {
        buf[at..at + bytes.len()].copy_from_slice(bytes);
        at += bytes.len();
    };
    let family = match (source.ip(), destination.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            put(&s.octets());
            put(&d.octets());
            0x10
        }
        (s, d) => {
            put(&v6(s).octets());
            put(&v6(d).octets());
            0x20
        }
    };
    put(&source.port().to_be_bytes());
    put(&destination.port().to_be_bytes());
    let body = u16::try_from(at - V2_FIXED_LEN).unwrap_or(0);
    buf[13] = family | transport;
    buf[14..16].copy_from_slice(&body.to_be_bytes());
    at
}

/// `ip` as IPv6 (IPv4 mapped).
fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(ip) => ip.to_ipv6_mapped(),
        IpAddr::V6(ip) => ip,
    }
}

/// The two endpoints in one family: mapped addresses as IPv4; a wildcard takes the other
/// side's family; else the IPv4 side is mapped into IPv6.
fn same_family(source: SocketAddr, destination: SocketAddr) -> (SocketAddr, SocketAddr) {
    let canon = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
    let (s, d) = (canon(source), canon(destination));
    let unspecified_like = |ip: IpAddr| -> IpAddr {
        if ip.is_ipv4() { IpAddr::V4(Ipv4Addr::UNSPECIFIED) } else { IpAddr::V6(Ipv6Addr::UNSPECIFIED) }
    };
    match (s.ip(), d.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => (s, d),
        (si, di) if di.is_unspecified() => (s, SocketAddr::new(unspecified_like(si), d.port())),
        (si, di) if si.is_unspecified() => (SocketAddr::new(unspecified_like(di), s.port()), d),
        (si, di) => (SocketAddr::new(IpAddr::V6(v6(si)), s.port()), SocketAddr::new(IpAddr::V6(v6(di)), d.port())),
    }
}

/// What reading the front of an accepted stream gave.
#[derive(Debug)]
pub(crate) struct Received {
    /// The header, if one was sent.
    pub header: Option<Header>,
    /// Bytes read past the header (or every byte read, when there was none): the client's
    /// data, to be forwarded before anything else.
    pub rest: Vec<u8>,
}

/// Why no usable header came from a trusted peer.
#[derive(Debug, Error)]
pub(crate) enum ReadError {
    /// The bytes are not a valid header.
    #[error("{0}")]
    Invalid(ParseError),
    /// The peer closed the connection before a whole header arrived.
    #[error("the peer closed the connection before a whole PROXY header arrived")]
    Closed,
    /// No whole header within the timeout.
    #[error("no whole PROXY header within {0:?}")]
    TimedOut(Duration),
    /// Reading failed.
    #[error("reading the PROXY header: {0}")]
    Io(#[from] io::Error),
}

/// Reads a header from the front of `stream`, within `timeout`; see the module doc for how
/// `required` and `optional` treat missing headers.
///
/// Reads as few bytes as it can (the fixed part, then exactly the declared length for v2;
/// small reads for v1), so little client data is held when the header ends.
pub(crate) async fn read_header<R: AsyncRead + Unpin>(
    stream: &mut R,
    mode: Accept,
    timeout: Duration,
) -> Result<Received, ReadError> {
    let deadline = Instant::now() + timeout;
    let mut buf: Vec<u8> = Vec::with_capacity(128);
    loop {
        match parse_header(&buf) {
            Ok(Parsed::Header(header)) => {
                let rest = buf.split_off(header.len);
                return Ok(Received { header: Some(header), rest });
            }
            Ok(Parsed::Incomplete) => {}
            Err(ParseError::NotAHeader) if mode == Accept::Optional => return Ok(Received { header: None, rest: buf }),
            Err(e) => return Err(ReadError::Invalid(e)),
        }
        let want = next_read(&buf);
        buf.reserve(want);
        let read = {
            let mut limited = (&mut *stream).take(want as u64);
            tokio::time::timeout_at(deadline, limited.read_buf(&mut buf)).await
        };
        let no_header = |buf: Vec<u8>| {
            if mode == Accept::Optional && is_undecided(&buf) {
                Ok(Received { header: None, rest: buf })
            } else {
                Err(buf)
            }
        };
        match read {
            Ok(Ok(0)) => return no_header(buf).map_err(|_| ReadError::Closed),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(ReadError::Io(e)),
            Err(_) => return no_header(buf).map_err(|_| ReadError::TimedOut(timeout)),
        }
    }
}

/// How many bytes to read next while a header is incomplete: what the v2 length field says
/// is missing, else enough to reach the fixed part or the end of the longest v1 line.
fn next_read(buf: &[u8]) -> usize {
    if buf.len() >= V2_FIXED_LEN && buf.starts_with(&V2_SIGNATURE) {
        let body = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
        return (V2_FIXED_LEN + body).saturating_sub(buf.len()).max(1);
    }
    if buf.starts_with(V1_PREFIX) {
        return V1_MAX_LEN.saturating_sub(buf.len()).max(1);
    }
    V2_FIXED_LEN.saturating_sub(buf.len()).max(1)
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn header(buf: &[u8]) -> Header {
        match parse_header(buf) {
            Ok(Parsed::Header(h)) => h,
            other => panic!("expected a header from {buf:?}, got {other:?}"),
        }
    }

    #[test]
    fn v1_tcp4_tcp6_and_unknown() {
        let h = header(b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\nGET /");
        assert_eq!((h.version, h.len, h.transport), (Version::V1, 45, Transport::Stream));
        assert_eq!(h.addresses, Some(Addresses { source: sa("192.0.2.1:56324"), destination: sa("198.51.100.2:443") }));
        let h = header(b"PROXY TCP6 2001:db8::1 ::1 1 2\r\n");
        assert_eq!(h.addresses, Some(Addresses { source: sa("[2001:db8::1]:1"), destination: sa("[::1]:2") }));
        let h = header(b"PROXY UNKNOWN\r\n");
        assert_eq!((h.len, h.transport, h.addresses), (15, Transport::Unspecified, None));
    }

    #[test]
    fn v1_errors_name_the_problem() {
        let cases: &[(&[u8], &str)] = &[
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "LF without CR"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX", "CR not followed by LF"),
            (b"PROXY TCP4 1.2.3.4\r\n", "bad PROXY v1 header"),
            (b"PROXY TCP4 ::1 ::1 1 2\r\n", "bad PROXY v1 header"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", "bad PROXY v1 header"),
            (b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", "bad PROXY v1 header"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", "bad PROXY v1 header"),
        ];
        for (input, want) in cases {
            let e = parse_header(input).unwrap_err().to_string();
            assert!(e.contains(want), "{:?}: {e}", String::from_utf8_lossy(input));
        }
        let long = [b"PROXY ".as_slice(), &[b'x'; 101]].concat();
        assert_eq!(parse_header(&long), Err(ParseError::V1TooLong));
        assert_eq!(parse_header(&long[..106]), Ok(Parsed::Incomplete));
    }

    #[test]
    fn anything_else_is_not_a_header_and_beginnings_are_undecided() {
        for data in [b"GET / HTTP/1.1\r\n".as_slice(), b"SSH-2.0-OpenSSH\r\n", b"\r\n\r\nX", b"PROXX", b"\0"] {
            assert_eq!(parse_header(data), Err(ParseError::NotAHeader), "{data:?}");
        }
        for beginning in [b"".as_slice(), b"P", b"PROX", b"\r\n", b"\r\n\r\n\0\r\nQUI"] {
            assert_eq!(parse_header(beginning), Ok(Parsed::Incomplete), "{beginning:?}");
            assert!(is_undecided(beginning));
        }
        assert!(!is_undecided(b"PROXY "));
        assert!(!is_undecided(&V2_SIGNATURE));
        assert!(!is_undecided(b"GET"));
    }

    #[test]
    fn v2_stream_datagram_local_and_tlvs() {
        let enc = encode(Version::V2, Transport::Stream, sa("192.0.2.1:56324"), sa("198.51.100.2:443"));
        let h = header(enc.as_bytes());
        assert_eq!((h.version, h.len, h.transport), (Version::V2, 28, Transport::Stream));
        assert_eq!(h.addresses.map(|a| a.source), Some(sa("192.0.2.1:56324")));

        let enc = encode(Version::V2, Transport::Datagram, sa("[2001:db8::7]:53"), sa("[::]:5353"));
        let h = header(enc.as_bytes());
        assert_eq!((h.len, h.transport), (52, Transport::Datagram));
        assert_eq!(h.addresses, Some(Addresses { source: sa("[2001:db8::7]:53"), destination: sa("[::]:5353") }));

        // LOCAL (health checks): no addresses; TLVs after the addresses are skipped.
        let mut local = V2_SIGNATURE.to_vec();
        local.extend([0x20, 0x00, 0, 0]);
        assert_eq!(header(&local).addresses, None);
        // A LOCAL header's body is ignored, even bytes that are not TLVs.
        let mut local_junk = V2_SIGNATURE.to_vec();
        local_junk.extend([0x20, 0x11, 0, 14, 10, 0, 0, 1, 10, 0, 0, 2, 0, 1, 0, 2, 0xFF, 0xFF]);
        assert_eq!((header(&local_junk).len, header(&local_junk).addresses), (30, None));
        let mut tlv = V2_SIGNATURE.to_vec();
        tlv.extend([0x21, 0x11, 0, 12 + 5]);
        tlv.extend([10, 0, 0, 1, 10, 0, 0, 2, 0, 1, 0, 2]);
        tlv.extend([0x04, 0, 2, 0xAB, 0xCD]);
        tlv.extend(b"data");
        let h = header(&tlv);
        assert_eq!((h.len, h.addresses.map(|a| a.source)), (33, Some(sa("10.0.0.1:1"))));
    }

    #[test]
    fn v2_errors_come_from_the_fixed_part_without_waiting_for_the_body() {
        let mut bad_version = V2_SIGNATURE.to_vec();
        bad_version.extend([0x11, 0x11, 0xFF, 0xFF]);
        assert!(matches!(parse_header(&bad_version), Err(ParseError::V2(_))));
        let mut bad_command = V2_SIGNATURE.to_vec();
        bad_command.extend([0x2F, 0x11, 0, 12]);
        assert!(matches!(parse_header(&bad_command), Err(ParseError::V2(_))));
        let mut short_body = V2_SIGNATURE.to_vec();
        short_body.extend([0x21, 0x11, 0, 4, 1, 2, 3, 4]);
        assert!(matches!(parse_header(&short_body), Err(ParseError::V2(_))), "IPv4 needs 12 bytes");
        let mut big = V2_SIGNATURE.to_vec();
        big.extend([0x21, 0x11, 0xFF, 0xFF]);
        assert_eq!(parse_header(&big), Ok(Parsed::Incomplete));
        assert_eq!(next_read(&big), 65535);
    }

    #[test]
    fn every_split_point_is_incomplete_until_the_last_byte() {
        let v1 = encode(Version::V1, Transport::Stream, sa("[2001:db8::1]:65535"), sa("[2001:db8::2]:1"));
        let v2 = encode(Version::V2, Transport::Stream, sa("10.1.2.3:4"), sa("10.4.3.2:1"));
        for enc in [v1, v2] {
            let bytes = enc.as_bytes();
            for cut in 0..bytes.len() {
                assert_eq!(parse_header(&bytes[..cut]), Ok(Parsed::Incomplete), "{enc:?} cut at {cut}");
            }
            assert_eq!(header(bytes).len, bytes.len());
        }
    }

    #[test]
    fn encodings_match_ppp_and_the_spec() {
        let (s, d) = (sa("192.0.2.1:56324"), sa("198.51.100.2:443"));
        assert_eq!(
            encode(Version::V1, Transport::Stream, s, d).as_bytes(),
            b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n"
        );
        let want = ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Proxy,
            ppp::v2::Protocol::Datagram,
            (s, d),
        )
        .build()
        .unwrap();
        assert_eq!(encode(Version::V2, Transport::Datagram, s, d).as_bytes(), want.as_slice());
        let (s6, d6) = (sa("[2001:db8::1]:1"), sa("[2001:db8::2]:2"));
        let want = ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Proxy,
            ppp::v2::Protocol::Stream,
            (s6, d6),
        )
        .build()
        .unwrap();
        assert_eq!(encode(Version::V2, Transport::Stream, s6, d6).as_bytes(), want.as_slice());
        let longest = encode(
            Version::V1,
            Transport::Stream,
            sa("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe]:65535"),
            sa("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe]:65535"),
        );
        assert_eq!(longest.as_bytes().len(), 104);
        assert!(matches!(parse_header(longest.as_bytes()), Ok(Parsed::Header(_))));
    }

    #[test]
    fn mixed_families_are_written_in_one() {
        let a = |s: SocketAddr, d: SocketAddr| {
            let h = header(encode(Version::V2, Transport::Stream, s, d).as_bytes());
            h.addresses.map(|a| (a.source, a.destination))
        };
        assert_eq!(a(sa("[::ffff:10.0.0.1]:5"), sa("[::ffff:10.0.0.2]:6")), Some((sa("10.0.0.1:5"), sa("10.0.0.2:6"))));
        assert_eq!(a(sa("[::ffff:10.0.0.1]:5"), sa("[::]:6")), Some((sa("10.0.0.1:5"), sa("0.0.0.0:6"))));
        assert_eq!(
            a(sa("10.0.0.1:5"), sa("[2001:db8::1]:6")),
            Some((sa("[::ffff:10.0.0.1]:5"), sa("[2001:db8::1]:6")))
        );
        assert_eq!(a(sa("[2001:db8::1]:5"), sa("0.0.0.0:6")), Some((sa("[2001:db8::1]:5"), sa("[::]:6"))));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap stand-in for the fuzz target: every prefix of a few thousand xorshift
        // streams seeded with both signatures and plain noise.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..3000 {
            let mut buf: Vec<u8> = match round % 3 {
                0 => V2_SIGNATURE.to_vec(),
                1 => V1_PREFIX.to_vec(),
                _ => Vec::new(),
            };
            let len = (next() % 120) as usize;
            for _ in 0..len {
                let r = next();
                // Mostly protocol-ish bytes, so parsing goes deep.
                buf.push(match r % 4 {
                    0 => {
                        let alphabet = b"TCP46UNKOW .:0123456789abcdef\r\n";
                        alphabet[(r >> 8) as usize % alphabet.len()]
                    }
                    _ => (r >> 16) as u8,
                });
            }
            for cut in 0..=buf.len() {
                let _ = parse_header(&buf[..cut]);
                let _ = next_read(&buf[..cut]);
            }
        }
    }

    /// A reader that hands out one chunk per read, to split a header anywhere.
    struct Chunks(std::collections::VecDeque<Vec<u8>>);

    impl AsyncRead for Chunks {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            out: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if let Some(mut chunk) = self.0.pop_front() {
                let n = chunk.len().min(out.remaining());
                out.put_slice(&chunk[..n]);
                if n < chunk.len() {
                    self.0.push_front(chunk.split_off(n));
                }
            }
            Poll::Ready(Ok(()))
        }
    }

    fn chunks(parts: &[&[u8]]) -> Chunks {
        Chunks(parts.iter().map(|p| p.to_vec()).collect())
    }

    #[tokio::test]
    async fn a_header_split_across_reads_is_read_whole_and_the_rest_kept() {
        let v2 = encode(Version::V2, Transport::Stream, sa("10.1.2.3:4"), sa("10.4.3.2:1"));
        let b = v2.as_bytes();
        let mut reader = chunks(&[&b[..3], &b[3..14], &b[14..20], &[&b[20..], b"hello".as_slice()].concat()]);
        let got = read_header(&mut reader, Accept::Required, DEFAULT_TIMEOUT).await.unwrap();
        assert_eq!(got.header.and_then(|h| h.addresses).map(|a| a.source), Some(sa("10.1.2.3:4")));
        let mut rest = got.rest;
        reader.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"hello");

        let line = b"PROXY TCP4 10.9.8.7 10.0.0.1 1234 80\r\n";
        let mut reader = chunks(&[&line[..3], &line[3..15], &line[15..37], &[&line[37..], b"ab".as_slice()].concat()]);
        let got = read_header(&mut reader, Accept::Optional, DEFAULT_TIMEOUT).await.unwrap();
        assert_eq!(got.header.and_then(|h| h.addresses).map(|a| a.source), Some(sa("10.9.8.7:1234")));
        assert_eq!(got.rest, b"ab");
    }

    #[tokio::test]
    async fn optional_keeps_plain_data_and_required_refuses_it() {
        let got = read_header(&mut chunks(&[b"PR", b"OBE"]), Accept::Optional, DEFAULT_TIMEOUT).await.unwrap();
        assert_eq!((got.header, got.rest), (None, b"PROBE".to_vec()), "decided once a byte differs, nothing lost");
        let e = read_header(&mut chunks(&[b"GET /"]), Accept::Required, DEFAULT_TIMEOUT).await.unwrap_err();
        assert!(matches!(e, ReadError::Invalid(ParseError::NotAHeader)), "{e}");
        // End of stream: nothing or an undecided beginning is data when optional...
        let got = read_header(&mut chunks(&[b"PRO"]), Accept::Optional, DEFAULT_TIMEOUT).await.unwrap();
        assert_eq!((got.header, got.rest), (None, b"PRO".to_vec()));
        // ...but a header cut short is an error either way.
        let e = read_header(&mut chunks(&[b"PROXY TCP4"]), Accept::Optional, DEFAULT_TIMEOUT).await.unwrap_err();
        assert!(matches!(e, ReadError::Closed), "{e}");
        let e = read_header(&mut chunks(&[]), Accept::Required, DEFAULT_TIMEOUT).await.unwrap_err();
        assert!(matches!(e, ReadError::Closed), "{e}");
    }

    #[tokio::test(start_paused = true)]
    async fn silence_times_out_required_and_is_no_header_when_optional() {
        let (mut quiet, _keep) = tokio::io::duplex(64);
        let started = Instant::now();
        let e = read_header(&mut quiet, Accept::Required, DEFAULT_TIMEOUT).await.unwrap_err();
        assert!(matches!(e, ReadError::TimedOut(t) if t == DEFAULT_TIMEOUT), "{e}");
        assert_eq!(started.elapsed(), DEFAULT_TIMEOUT);
        let got = read_header(&mut quiet, Accept::Optional, DEFAULT_TIMEOUT).await.unwrap();
        assert_eq!((got.header, got.rest), (None, vec![]));

        let (mut half, mut writer) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut writer, b"PROXY TCP4 1.2").await.unwrap();
        let e = read_header(&mut half, Accept::Optional, DEFAULT_TIMEOUT).await.unwrap_err();
        assert!(matches!(e, ReadError::TimedOut(_)), "a header begun and not finished is late, not data: {e}");
    }
}
