//! Choice of a free per-session subnet.

use ipnet::Ipv4Net;

/// Returns the first `/prefix_len` subnet of `range` that overlaps none of `used`.
pub fn pick_free_subnet(range: Ipv4Net, prefix_len: u8, used: &[Ipv4Net]) -> Option<Ipv4Net> {
    range
        .subnets(prefix_len)
        .ok()?
        .find(|candidate| !used.iter().any(|taken| overlaps(*candidate, *taken)))
}

/// True when two subnets share at least one address.
pub fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(text: &str) -> Ipv4Net {
        text.parse().unwrap()
    }

    #[test]
    fn first_subnet_when_nothing_used() {
        assert_eq!(
            pick_free_subnet(net("172.21.0.0/16"), 28, &[]),
            Some(net("172.21.0.0/28"))
        );
    }

    #[test]
    fn skips_used_and_overlapping_subnets() {
        let used = [
            net("172.21.0.0/28"),
            net("172.21.0.16/29"),
            net("10.0.0.0/8"),
        ];
        assert_eq!(
            pick_free_subnet(net("172.21.0.0/16"), 28, &used),
            Some(net("172.21.0.32/28"))
        );
    }

    #[test]
    fn larger_network_covering_range_leaves_nothing() {
        assert_eq!(
            pick_free_subnet(net("172.21.0.0/16"), 28, &[net("172.16.0.0/12")]),
            None
        );
    }

    #[test]
    fn full_range_returns_none() {
        let range = net("192.0.2.0/28");
        let used: Vec<_> = range.subnets(29).unwrap().collect();
        assert_eq!(pick_free_subnet(range, 29, &used), None);
    }
}
