//! Fuzz target: the PROXY protocol header reader ([`proxy_core::proxy_protocol::parse_header`]).
//!
//! Checked on any bytes: no panic; a header never claims more bytes than it was given, and
//! reads the same from exactly its own bytes; while the bytes are "incomplete", so is every
//! shorter beginning of them (a reader that waits for more never gave up earlier). And
//! what [`encode`] writes parses back to the same addresses.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use libfuzzer_sys::fuzz_target;
use proxy_core::proxy_protocol::{Parsed, Transport, Version, encode, parse_header};

fuzz_target!(|data: &[u8]| {
    match parse_header(data) {
        Ok(Parsed::Header(h)) => {
            assert!(h.len <= data.len(), "header of {} bytes from {} bytes", h.len, data.len());
            assert_eq!(parse_header(&data[..h.len]), Ok(Parsed::Header(h.clone())));
        }
        Ok(Parsed::Incomplete) => {
            for cut in 0..data.len() {
                assert_eq!(parse_header(&data[..cut]), Ok(Parsed::Incomplete), "a beginning of an incomplete header");
            }
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }

    // Round trip: addresses taken from the input, encoded, then parsed back.
    if data.len() >= 37 {
        let port = |i: usize| u16::from_be_bytes([data[i], data[i + 1]]);
        let version = if data[0] & 1 == 0 { Version::V1 } else { Version::V2 };
        let (source, destination) = if data[0] & 2 == 0 {
            let ip = |i: usize| IpAddr::V4(Ipv4Addr::new(data[i], data[i + 1], data[i + 2], data[i + 3]));
            (SocketAddr::new(ip(1), port(9)), SocketAddr::new(ip(5), port(11)))
        } else {
            let ip = |i: usize| {
                let mut b = [0u8; 16];
                b.copy_from_slice(&data[i..i + 16]);
                IpAddr::V6(Ipv6Addr::from(b))
            };
            (SocketAddr::new(ip(1), port(33)), SocketAddr::new(ip(17), port(35)))
        };
        // Mapped IPv6 addresses are written as IPv4 on purpose, and a mixed pair is made one
        // family (see proxy_protocol's module doc): compare canonical forms of same-family pairs.
        let canonical = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
        let encoded = encode(version, Transport::Stream, source, destination);
        match parse_header(encoded.as_bytes()) {
            Ok(Parsed::Header(h)) => {
                assert_eq!(h.len, encoded.as_bytes().len());
                let a = h.addresses.expect("an encoded PROXY header names addresses");
                if canonical(source).is_ipv4() == canonical(destination).is_ipv4() {
                    assert_eq!(canonical(a.source), canonical(source));
                    assert_eq!(canonical(a.destination), canonical(destination));
                }
            }
            other => panic!("{encoded:?} does not parse back: {other:?}"),
        }
    }
});
