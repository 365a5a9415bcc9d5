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
        // RFC 7526 deprecated the anycast prefix; what answers there is a relay.
        _ if a == 192 && b == 88 && c == 99 => "a deprecated 6to4 relay anycast address",
        _ if a == 198 && (18..20).contains(&b) => "a benchmarking address",
        _ if ip.is_documentation() => "a documentation address",
        _ => return None,
    })
}

fn refused_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let segments = ip.segments();
    // Addresses that carry an IPv4 address are judged by it, since a
    // translator or the host's own stack may deliver them to it:
    // IPv4-mapped (::ffff:a.b.c.d), IPv4-translated for SIIT
    // (::ffff:0:a.b.c.d, RFC 2765), the well-known NAT64 prefix
    // (64:ff9b::/96, RFC 6052) and 6to4 (2002::/16, RFC 3056).
    if let Some(v4) = ip.to_ipv4_mapped() {
        return refused_v4(v4);
    }
    if segments[..6] == [0, 0, 0, 0, 0xffff, 0] {
        return refused_v4(embedded_v4(segments[6], segments[7]));
    }
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
        // Local-use NAT64 (RFC 8215): the translator is the operator's own,
        // and where its prefix ends (so which IPv4 address is meant) is
        // known only to it.
        _ if segments[..3] == [0x64, 0xff9b, 1] => "a local-use NAT64 address",
        _ if segments[..4] == [0x100, 0, 0, 0] => "a discard-only address",
        _ if ip == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) => {
            "the cloud metadata address"
        }
        _ if ip.is_unicast_link_local() => "a link-local address",
        _ if segments[0] & 0xffc0 == 0xfec0 => "a site-local address",
        _ if ip.is_unique_local() => "a private (unique local) address",
        _ if ip.is_multicast() => "a multicast address",
        _ if segments[0] == 0x5f00 => "an SRv6 segment identifier",
        _ if segments[..2] == [0x2001, 0] => "a Teredo address",
        _ if segments[0] == 0x2001 && segments[1] == 0xdb8 => "a documentation address",
        _ if segments[0] == 0x3fff && segments[1] < 0x1000 => "a documentation address",
        _ if segments[..3] == [0x2001, 2, 0] => "a benchmarking address",
        _ if segments[0] == 0x2001 && segments[1] < 0x200 && !globally_reachable_ietf(ip) => {
            "an IETF protocol assignment address"
        }
        // Everything public is global unicast (2000::/3) today; the rest of
        // the space is reserved, and a future assignment there gets a look
        // before it is let through.
        _ if segments[0] & 0xe000 != 0x2000 => "a reserved address",
        _ => return None,
    })
}

/// The parts of 2001::/23 (IETF protocol assignments) that the IANA
/// registry marks globally reachable.
fn globally_reachable_ietf(ip: Ipv6Addr) -> bool {
    let segments = ip.segments();
    // PCP, TURN and DNS-SD SRP anycast (2001:1::1, ::2, ::3).
    (segments[..7] == [0x2001, 1, 0, 0, 0, 0, 0] && (1..=3).contains(&segments[7]))
        // AMT (2001:3::/32).
        || segments[1] == 3
        // AS112-v6 (2001:4:112::/48).
        || segments[1..3] == [4, 0x112]
        // ORCHIDv2 (2001:20::/28) and drone remote ID tags (2001:30::/28).
        || (0x20..0x40).contains(&segments[1])
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
    fn every_special_purpose_address_is_refused_with_its_kind() {
        const UNSPECIFIED_V4: &str = "an unspecified (\"this network\") address";
        const LOOPBACK: &str = "a loopback address";
        const PRIVATE: &str = "a private address";
        const METADATA: &str = "the cloud metadata address";
        const LINK_LOCAL: &str = "a link-local address";
        const CGNAT: &str = "a carrier-grade NAT address";
        const MULTICAST: &str = "a multicast address";
        const RESERVED: &str = "a reserved address";
        const DOCUMENTATION: &str = "a documentation address";
        const BENCHMARKING: &str = "a benchmarking address";
        const IETF: &str = "an IETF protocol assignment address";
        for (address, kind) in [
            // IPv4
            ("0.0.0.0", UNSPECIFIED_V4),
            ("0.1.2.3", UNSPECIFIED_V4),
            ("127.0.0.1", LOOPBACK),
            ("127.1.2.3", LOOPBACK),
            ("10.0.0.1", PRIVATE),
            ("172.16.0.1", PRIVATE),
            ("172.31.255.255", PRIVATE),
            ("192.168.1.1", PRIVATE),
            ("169.254.169.254", METADATA),
            ("169.254.1.1", LINK_LOCAL),
            ("100.64.0.1", CGNAT),
            ("100.127.255.255", CGNAT),
            ("224.0.0.1", MULTICAST),
            ("239.255.255.250", MULTICAST),
            ("240.0.0.1", RESERVED),
            ("255.255.255.254", RESERVED),
            ("255.255.255.255", RESERVED),
            ("192.0.0.8", IETF),
            ("192.0.0.170", IETF),
            ("192.88.99.1", "a deprecated 6to4 relay anycast address"),
            ("198.18.0.1", BENCHMARKING),
            ("198.19.255.255", BENCHMARKING),
            ("192.0.2.1", DOCUMENTATION),
            ("198.51.100.7", DOCUMENTATION),
            ("203.0.113.9", DOCUMENTATION),
            // IPv6
            ("::", "an unspecified address"),
            ("::1", LOOPBACK),
            ("::127.0.0.1", "an IPv4-compatible address"),
            ("::8.8.8.8", "an IPv4-compatible address"),
            // IPv4-mapped, judged by the IPv4 address
            ("::ffff:127.0.0.1", LOOPBACK),
            ("::ffff:10.0.0.1", PRIVATE),
            ("::ffff:169.254.169.254", METADATA),
            // IPv4-translated (SIIT), judged by the IPv4 address
            ("::ffff:0:7f00:1", LOOPBACK),
            ("::ffff:0:10.0.0.1", PRIVATE),
            ("::ffff:0:a9fe:a9fe", METADATA),
            // Well-known NAT64, judged by the IPv4 address
            ("64:ff9b::7f00:1", LOOPBACK),
            ("64:ff9b::a00:1", PRIVATE),
            // Local-use NAT64, whatever it embeds
            ("64:ff9b:1::7f00:1", "a local-use NAT64 address"),
            ("64:ff9b:1:ffff::808:808", "a local-use NAT64 address"),
            // 6to4, judged by the IPv4 address
            ("2002:7f00:1::", LOOPBACK),
            ("2002:a00:1::1", PRIVATE),
            ("100::1", "a discard-only address"),
            ("100::ffff:ffff:ffff:ffff", "a discard-only address"),
            ("fe80::1", LINK_LOCAL),
            ("febf::1", LINK_LOCAL),
            ("fec0::1", "a site-local address"),
            ("feff::1", "a site-local address"),
            ("fc00::1", "a private (unique local) address"),
            ("fdff::1", "a private (unique local) address"),
            ("fd00:ec2::254", METADATA),
            ("ff02::1", MULTICAST),
            ("ff0e::1", MULTICAST),
            ("5f00::1", "an SRv6 segment identifier"),
            ("5f00:ffff::1", "an SRv6 segment identifier"),
            ("2001::1", "a Teredo address"),
            ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "a Teredo address"),
            ("2001:db8::1", DOCUMENTATION),
            ("3fff::1", DOCUMENTATION),
            ("3fff:fff::1", DOCUMENTATION),
            ("2001:2::1", BENCHMARKING),
            ("2001:1::4", IETF),
            ("2001:10::1", IETF),
            ("2001:1ff::1", IETF),
            // Outside global unicast (2000::/3): not assigned to anyone
            ("64:ff9b:2::1", RESERVED),
            ("200::1", RESERVED),
            ("4000::1", RESERVED),
            ("e000::1", RESERVED),
        ] {
            assert_eq!(refused_kind(ip(address)), Some(kind), "{address}");
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
            "192.0.1.1",
            "192.88.98.1",
            "198.17.255.255",
            "198.20.0.1",
            "223.255.255.255",
            "2606:4700:4700::1111",
            "2a00:1450:4001:80b::200e",
            "::ffff:8.8.8.8",
            "::ffff:0:808:808",
            "64:ff9b::808:808",
            "2002:808:808::",
            "2001:1::1",
            "2001:3::1",
            "2001:4:112::1",
            "2001:200::1",
            "2001:db7:ffff::1",
            "3ffe:ffff::1",
            "3fff:1000::1",
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
