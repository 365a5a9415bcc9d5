//! The outbound address policy shared by every request Spool makes on a
//! user's behalf (`http` jobs, webhooks): which destinations are refused.
//!
//! Checks run on resolved addresses, never on names alone: a name can
//! resolve to anything, and checking it once then connecting after a second
//! lookup is how DNS rebinding gets through. Callers resolve once, check
//! every address here, and connect only to the checked ones.

mod client;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::IpNet;

pub use client::{Lookup, MAX_REDIRECTS, Outbound, OutboundError, StaticLookup, SystemLookup};

/// Destinations let through despite the private-address rule
/// (`SPOOL_OUTBOUND_ALLOW`: host names or CIDRs, comma-separated).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutboundAllow {
    hosts: Vec<String>,
    nets: Vec<IpNet>,
}

/// Why a destination is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{address} is {kind}; outbound requests may not reach it (SPOOL_OUTBOUND_ALLOW opens it)")]
pub struct Refused {
    pub address: IpAddr,
    pub kind: &'static str,
}

impl FromStr for OutboundAllow {
    type Err = String;

    /// `"hooks.internal, 10.1.0.0/16, 192.168.1.7"`; a bare address is a /32
    /// (or /128). Empty means nothing is opened.
    fn from_str(text: &str) -> Result<Self, String> {
        let mut allow = OutboundAllow::default();
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            if let Ok(net) = entry.parse::<IpNet>() {
                allow.nets.push(net);
            } else if let Ok(address) = entry.parse::<IpAddr>() {
                allow.nets.push(IpNet::from(address));
            } else if is_host_name(entry.trim_end_matches('.')) {
                allow
                    .hosts
                    .push(entry.trim_end_matches('.').to_ascii_lowercase());
            } else {
                return Err(format!(
                    "`{entry}` is neither a host name nor an address or CIDR"
                ));
            }
        }
        Ok(allow)
    }
}

fn is_host_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 253
        && text.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

impl OutboundAllow {
    /// Whether `host` (as written in the URL) was opened by name.
    pub fn allows_host(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.hosts.contains(&host)
    }

    /// Checks one resolved address of `host`: refused kinds of address are
    /// let through only when the host or the address was opened.
    pub fn check(&self, host: &str, address: IpAddr) -> Result<(), Refused> {
        match refused_kind(address) {
            None => Ok(()),
            Some(_) if self.allows_host(host) => Ok(()),
            Some(_) if self.nets.iter().any(|net| net.contains(&address)) => Ok(()),
            Some(kind) => Err(Refused { address, kind }),
        }
    }
}

/// What kind of non-public address this is, or `None` for a public one.
pub fn refused_kind(address: IpAddr) -> Option<&'static str> {
    match address {
        IpAddr::V4(v4) => refused_v4(v4),
        IpAddr::V6(v6) => refused_v6(v6),
    }
}

fn refused_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match () {
        _ if ip.is_unspecified() || a == 0 => "an unspecified (\"this network\") address",
        _ if ip.is_loopback() => "a loopback address",
        _ if ip == Ipv4Addr::new(169, 254, 169, 254) => "the cloud metadata address",
        _ if ip.is_link_local() => "a link-local address",
        _ if ip.is_private() => "a private address",
        _ if a == 100 && (64..128).contains(&b) => "a carrier-grade NAT address",
        _ if ip.is_multicast() => "a multicast address",
        _ if ip.is_broadcast() || a >= 240 => "a reserved address",
        _ if a == 192 && b == 0 && c == 0 => "an IETF protocol assignment address",
        _ if a == 198 && (18..20).contains(&b) => "a benchmarking address",
        _ if ip.is_documentation() => "a documentation address",
        _ => return None,
    })
}

fn refused_v6(ip: Ipv6Addr) -> Option<&'static str> {
    // Addresses that carry an IPv4 address are judged by it:
    // IPv4-mapped (::ffff:a.b.c.d), NAT64 (64:ff9b::/96) and 6to4 (2002::/16).
    if let Some(v4) = ip.to_ipv4_mapped() {
        return refused_v4(v4);
    }
    let segments = ip.segments();
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return refused_v4(embedded_v4(segments[6], segments[7]));
    }
    if segments[0] == 0x2002 {
        return refused_v4(embedded_v4(segments[1], segments[2]));
    }
    Some(match () {
        _ if ip.is_unspecified() => "an unspecified address",
        _ if ip.is_loopback() => "a loopback address",
        // Deprecated IPv4-compatible addresses (::a.b.c.d).
        _ if segments[..6] == [0; 6] => "an IPv4-compatible address",
        _ if ip == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) => {
            "the cloud metadata address"
        }
        _ if ip.is_unicast_link_local() => "a link-local address",
        _ if ip.is_unique_local() => "a private (unique local) address",
        _ if ip.is_multicast() => "a multicast address",
        _ if segments[0] == 0x2001 && segments[1] == 0xdb8 => "a documentation address",
        _ => return None,
    })
}

fn embedded_v4(high: u16, low: u16) -> Ipv4Addr {
    let [a, b] = high.to_be_bytes();
    let [c, d] = low.to_be_bytes();
    Ipv4Addr::new(a, b, c, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn every_non_public_kind_of_address_is_refused() {
        for address in [
            "127.0.0.1",
            "127.1.2.3",
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "169.254.1.1",
            "100.64.0.1",
            "100.127.255.255",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "192.0.0.8",
            "198.18.0.1",
            "192.0.2.1",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::7f00:1",
            "2002:7f00:1::",
            "2002:a00:1::1",
            "fe80::1",
            "fc00::1",
            "fd00:ec2::254",
            "ff02::1",
            "2001:db8::1",
        ] {
            assert!(
                refused_kind(ip(address)).is_some(),
                "{address} should be refused"
            );
        }
    }

    #[test]
    fn public_addresses_pass() {
        for address in [
            "1.1.1.1",
            "8.8.8.8",
            "93.184.216.34",
            "100.63.255.255",
            "100.128.0.1",
            "172.32.0.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::",
        ] {
            assert_eq!(refused_kind(ip(address)), None, "{address} is public");
        }
    }

    #[test]
    fn urls_that_hide_loopback_are_seen_through_once_parsed() {
        // The URL parser normalises these to addresses; the check then runs
        // on the address, like on a resolved one.
        for url in [
            "http://2130706433/",
            "http://0x7f000001/",
            "http://0177.0.0.1/",
            "http://127.1/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::1]/",
        ] {
            let parsed = url::Url::parse(url).unwrap();
            let address = match parsed.host() {
                Some(url::Host::Ipv4(v4)) => IpAddr::V4(v4),
                Some(url::Host::Ipv6(v6)) => IpAddr::V6(v6),
                other => panic!("{url} parsed to {other:?}"),
            };
            assert_eq!(refused_kind(address), Some("a loopback address"), "{url}");
        }
    }

    #[test]
    fn allowed_hosts_and_networks_open_only_themselves() {
        let allow: OutboundAllow = "hooks.internal., 10.1.0.0/16, 192.168.1.7".parse().unwrap();
        assert!(allow.check("HOOKS.internal", ip("10.9.9.9")).is_ok());
        assert!(allow.check("other.internal", ip("10.1.2.3")).is_ok());
        assert!(allow.check("other.internal", ip("192.168.1.7")).is_ok());
        let refused = allow.check("other.internal", ip("10.2.0.1")).unwrap_err();
        assert_eq!(refused.kind, "a private address");
        assert!(allow.check("other.internal", ip("192.168.1.8")).is_err());
        assert!(allow.check("anything", ip("8.8.8.8")).is_ok());
        assert!("".parse::<OutboundAllow>().unwrap() == OutboundAllow::default());
        assert!("not a host!".parse::<OutboundAllow>().is_err());
        assert!("10.0.0.0/33".parse::<OutboundAllow>().is_err());
    }
}
