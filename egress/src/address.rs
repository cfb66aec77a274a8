//! Classification of destination addresses the proxy may connect to.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Serialize;

/// Special-purpose class of an address that is not public unicast.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AddressClass {
    /// `0.0.0.0/8` or `::`. Connecting to `0.0.0.0` reaches the local host on Linux.
    Unspecified,
    /// `127.0.0.0/8` or `::1`.
    Loopback,
    /// `10/8`, `172.16/12`, `192.168/16` or `fc00::/7` (unique local, which includes the
    /// `fd00:ec2::254` metadata address).
    Private,
    /// `169.254/16` (includes the `169.254.169.254` metadata address) or `fe80::/10`.
    LinkLocal,
    /// `100.64.0.0/10`, carrier-grade NAT.
    SharedAddressSpace,
    /// `224/4` or `ff00::/8`.
    Multicast,
    /// `255.255.255.255`.
    Broadcast,
    /// `192.0.2/24`, `198.51.100/24`, `203.0.113/24`, `2001:db8::/32` or `3fff::/20`.
    Documentation,
    /// Any other special-purpose block: `192.0.0/24`, `192.88.99/24`, `198.18/15`,
    /// `240/4`, IPv6 outside `2000::/3`, `2001::/23`, `2002::/16` (6to4), `fec0::/10`.
    Reserved,
}

impl AddressClass {
    /// Returns whether no site policy may allow this class, because connecting to it
    /// reaches the local host or many hosts at once.
    pub fn is_never_allowed(self) -> bool {
        matches!(self, Self::Unspecified | Self::Multicast | Self::Broadcast)
    }
}

/// Returns `None` for a public unicast address, otherwise its special-purpose class.
/// IPv4-mapped (`::ffff:a.b.c.d`) and IPv4-compatible (`::a.b.c.d`) IPv6 addresses are
/// classified by the IPv4 address they carry, so `::ffff:127.0.0.1` is loopback.
pub fn classify(ip: IpAddr) -> Option<AddressClass> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return classify_v4(v4);
            }
            classify_v6(v6)
        }
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<AddressClass> {
    let [a, b, c, _] = ip.octets();
    let class = match (a, b, c) {
        (0, _, _) => AddressClass::Unspecified,
        (127, _, _) => AddressClass::Loopback,
        (10, _, _) => AddressClass::Private,
        (172, 16..=31, _) => AddressClass::Private,
        (192, 168, _) => AddressClass::Private,
        (169, 254, _) => AddressClass::LinkLocal,
        (100, 64..=127, _) => AddressClass::SharedAddressSpace,
        (224..=239, _, _) => AddressClass::Multicast,
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => AddressClass::Documentation,
        (192, 0, 0) | (192, 88, 99) | (198, 18..=19, _) => AddressClass::Reserved,
        _ if ip.is_broadcast() => AddressClass::Broadcast,
        (240..=255, _, _) => AddressClass::Reserved,
        _ => return None,
    };
    Some(class)
}

fn classify_v6(ip: Ipv6Addr) -> Option<AddressClass> {
    let segments = ip.segments();
    if ip.is_unspecified() {
        return Some(AddressClass::Unspecified);
    }
    if ip.is_loopback() {
        return Some(AddressClass::Loopback);
    }
    // `::a.b.c.d`, the deprecated IPv4-compatible form: judge the embedded address, and
    // treat it as reserved when that address is public, since nothing routes it.
    if segments[..6] == [0; 6] {
        let embedded = Ipv4Addr::from_bits(ip.to_bits() as u32);
        return Some(classify_v4(embedded).unwrap_or(AddressClass::Reserved));
    }

    let first = segments[0];
    let class = if first & 0xfe00 == 0xfc00 {
        AddressClass::Private
    } else if first & 0xffc0 == 0xfe80 {
        AddressClass::LinkLocal
    } else if first & 0xff00 == 0xff00 {
        AddressClass::Multicast
    } else if (first, segments[1]) == (0x2001, 0x0db8) || first & 0xfff0 == 0x3ff0 {
        AddressClass::Documentation
    } else if first & 0xe000 != 0x2000 {
        // Outside global unicast 2000::/3: NAT64 64:ff9b::/96, discard 100::/64,
        // site-local fec0::/10 and everything unassigned.
        AddressClass::Reserved
    } else if first == 0x2001 && segments[1] < 0x0200 {
        // 2001::/23, IETF protocol assignments (Teredo, ORCHID, benchmarking).
        AddressClass::Reserved
    } else if first == 0x2002 {
        // 6to4 embeds an IPv4 address that relays would reach.
        AddressClass::Reserved
    } else {
        return None;
    };
    Some(class)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(text: &str) -> Option<AddressClass> {
        classify(text.parse().unwrap())
    }

    #[test]
    fn special_ipv4_addresses_are_classified() {
        let cases = [
            ("0.0.0.0", AddressClass::Unspecified),
            ("0.1.2.3", AddressClass::Unspecified),
            ("127.0.0.1", AddressClass::Loopback),
            ("127.255.0.9", AddressClass::Loopback),
            ("10.1.2.3", AddressClass::Private),
            ("172.16.0.1", AddressClass::Private),
            ("172.31.255.255", AddressClass::Private),
            ("192.168.1.1", AddressClass::Private),
            ("169.254.169.254", AddressClass::LinkLocal),
            ("100.64.0.1", AddressClass::SharedAddressSpace),
            ("100.127.255.254", AddressClass::SharedAddressSpace),
            ("224.0.0.1", AddressClass::Multicast),
            ("255.255.255.255", AddressClass::Broadcast),
            ("240.0.0.1", AddressClass::Reserved),
            ("192.0.2.10", AddressClass::Documentation),
            ("198.51.100.1", AddressClass::Documentation),
            ("203.0.113.5", AddressClass::Documentation),
            ("198.18.0.1", AddressClass::Reserved),
        ];
        for (address, expected) in cases {
            assert_eq!(class(address), Some(expected), "{address}");
        }
    }

    #[test]
    fn special_ipv6_addresses_are_classified() {
        let cases = [
            ("::", AddressClass::Unspecified),
            ("::1", AddressClass::Loopback),
            ("::ffff:127.0.0.1", AddressClass::Loopback),
            ("::ffff:169.254.169.254", AddressClass::LinkLocal),
            ("::127.0.0.1", AddressClass::Loopback),
            ("::8.8.8.8", AddressClass::Reserved),
            ("fd00:ec2::254", AddressClass::Private),
            ("fc00::1", AddressClass::Private),
            ("fe80::1", AddressClass::LinkLocal),
            ("febf::1", AddressClass::LinkLocal),
            ("fec0::1", AddressClass::Reserved),
            ("ff02::1", AddressClass::Multicast),
            ("2001:db8::1", AddressClass::Documentation),
            ("3fff::1", AddressClass::Documentation),
            ("64:ff9b::7f00:1", AddressClass::Reserved),
            ("100::1", AddressClass::Reserved),
            ("2001::1", AddressClass::Reserved),
            ("2002:7f00:1::1", AddressClass::Reserved),
        ];
        for (address, expected) in cases {
            assert_eq!(class(address), Some(expected), "{address}");
        }
    }

    #[test]
    fn public_addresses_are_unclassified() {
        for address in [
            "1.1.1.1",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "2a00:1450::1",
            "::ffff:1.1.1.1",
            "2001:200::1",
        ] {
            assert_eq!(class(address), None, "{address}");
        }
    }
}
