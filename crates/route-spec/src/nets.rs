//! Lists of IP addresses and CIDR networks, as the `allow`, `deny` and `trusted` fields
//! write them. Judging a client against them is proxy-core's `Acl`.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

/// An entry of an address list that is neither an IP address nor a CIDR network, or a
/// network written with host bits set (`127.0.0.5/8`), which is refused rather than widened
/// silently to the network it would mean.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetParseError {
    /// The entry as written.
    pub entry: String,
    /// For a network with host bits set, the network it would mean (`127.0.0.0/8`).
    pub network: Option<IpNet>,
}

impl fmt::Display for NetParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.network {
            Some(net) => write!(
                f,
                "{:?} has host bits set: it would mean the network {net}; write {net}, or the address alone for \
                 one host",
                self.entry
            ),
            None => write!(
                f,
                "{:?} is not an IP address or CIDR network (e.g. 10.0.0.0/8, 192.168.1.7, fd00::/8)",
                self.entry
            ),
        }
    }
}

impl std::error::Error for NetParseError {}

/// Parses a list of IP addresses and CIDR networks separated by commas and/or whitespace
/// (`10.0.0.0/8, 192.168.1.7 fd00::/8`). A bare address is a single host (/32 or /128);
/// IPv6 addresses may be bracketed (`[::1]`). An empty text is an empty list.
pub fn parse_nets(text: &str) -> Result<Vec<IpNet>, NetParseError> {
    text.split(|c: char| c == ',' || c.is_whitespace()).filter(|s| !s.is_empty()).map(parse_net).collect()
}

/// Parses one entry of [`parse_nets`].
fn parse_net(entry: &str) -> Result<IpNet, NetParseError> {
    if let Ok(net) = entry.parse::<IpNet>() {
        if net.trunc() != net {
            return Err(NetParseError { entry: entry.to_string(), network: Some(net.trunc()) });
        }
        return Ok(net);
    }
    let bare = entry.strip_prefix('[').and_then(|s| s.strip_suffix(']')).unwrap_or(entry);
    bare.parse::<IpAddr>().map(IpNet::from).map_err(|_| NetParseError { entry: entry.to_string(), network: None })
}

/// Writes a list as [`parse_nets`] reads it: `10.0.0.0/8,192.168.1.7/32`.
pub fn display_nets(nets: &[IpNet]) -> String {
    nets.iter().map(IpNet::to_string).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_take_commas_spaces_bare_addresses_and_brackets() {
        let nets = parse_nets(" 10.0.0.0/8, 192.168.1.7  fd00::/8,[::1]\t::2 ").unwrap();
        let want = ["10.0.0.0/8", "192.168.1.7/32", "fd00::/8", "::1/128", "::2/128"];
        assert_eq!(nets, want.map(|s| s.parse::<IpNet>().unwrap()));
        assert_eq!(parse_nets("").unwrap(), vec![]);
        assert_eq!(parse_nets(" , ").unwrap(), vec![]);
        for bad in ["10.0.0.300", "10.0.0.0/33", "example.com", "10.0.0.0/", "1.2.3.4/8x", "[10.0.0.1]/8"] {
            let e = parse_nets(&format!("10.0.0.1,{bad}")).unwrap_err();
            assert_eq!(e.entry, bad);
            assert!(e.to_string().starts_with(&format!("{bad:?} is not an IP address or CIDR network")), "{e}");
        }
    }

    #[test]
    fn a_network_with_host_bits_is_refused_naming_the_network_it_would_mean() {
        let e = parse_nets("10.0.0.0/8, 127.0.0.5/8").unwrap_err();
        assert_eq!(e.network, Some("127.0.0.0/8".parse().unwrap()));
        assert_eq!(
            e.to_string(),
            "\"127.0.0.5/8\" has host bits set: it would mean the network 127.0.0.0/8; write 127.0.0.0/8, or the \
             address alone for one host"
        );
        assert!(parse_nets("fd00::1/8").unwrap_err().to_string().contains("the network fd00::/8"));
        assert!(parse_nets("127.0.0.5/32, ::1/128, 0.0.0.0/0").is_ok(), "a host or a clean network is fine");
    }
}
