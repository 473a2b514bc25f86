//! Validation of what comes off the wire: each check names the field it
//! failed on, shows the value (cut short) and says why, in the form
//! `field="value" is not valid: why`.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use crate::cidr::Ipv4Cidr;
use crate::settings;

/// Longest DNS label (RFC 1035 §2.3.4).
pub const MAX_LABEL_LEN: usize = 63;

/// Longest DNS name in text form, without the trailing dot.
pub const MAX_NAME_LEN: usize = 253;

/// A value off the wire that failed validation, shown as
/// `field="value" is not valid: why` like a bad setting
/// ([`crate::settings::Invalid`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    /// The field, as named on the wire or in the config.
    pub field: String,
    /// The offending value, cut to 64 characters.
    pub value: String,
    /// Why it is not valid.
    pub reason: String,
}

impl ValidationError {
    /// Builds an error for `field` holding `value`.
    pub fn new(field: &str, value: &str, reason: &str) -> Self {
        ValidationError {
            field: field.to_owned(),
            value: settings::cut(value),
            reason: reason.to_owned(),
        }
    }
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        settings::write_invalid(f, &self.field, &self.value, &self.reason)
    }
}

impl std::error::Error for ValidationError {}

/// An EC2 instance id: `i-` and 8 or 17 lowercase hex digits.
pub fn instance_id(value: &str) -> Result<(), ValidationError> {
    let ok = value.strip_prefix("i-").is_some_and(|hex| {
        (hex.len() == 8 || hex.len() == 17)
            && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    });
    if ok {
        Ok(())
    } else {
        Err(ValidationError::new(
            "instance_id",
            value,
            "must be \"i-\" followed by 8 or 17 lowercase hex digits",
        ))
    }
}

/// The prefix of a bring-your-own node's id: `m-` and its machine id.
pub const BYON_ID_PREFIX: &str = "m-";

/// A machine id as systemd writes `/etc/machine-id`: 32 lowercase hex
/// digits, not all zero.
pub fn machine_id(value: &str) -> Result<(), ValidationError> {
    let ok = value.len() == 32
        && value
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        && value.bytes().any(|b| b != b'0');
    if ok {
        Ok(())
    } else {
        Err(ValidationError::new(
            "machine_id",
            value,
            "must be 32 lowercase hex digits, not all zero (/etc/machine-id)",
        ))
    }
}

/// A node's id: an EC2 instance id, or [`BYON_ID_PREFIX`] and a machine id
/// for a bring-your-own node.
pub fn node_id(value: &str) -> Result<(), ValidationError> {
    match value.strip_prefix(BYON_ID_PREFIX) {
        Some(machine) => machine_id(machine).map_err(|e| {
            ValidationError::new("instance_id", value, &format!("after \"m-\" {}", e.reason))
        }),
        None => instance_id(value),
    }
}

/// One DNS label per RFC 1123, lowercase: 1 to 63 of `a-z`, `0-9` and `-`,
/// neither starting nor ending with `-`.
pub fn dns_label(field: &str, value: &str) -> Result<(), ValidationError> {
    let reason = if value.is_empty() {
        Some("must not be empty")
    } else if value.len() > MAX_LABEL_LEN {
        Some("must be at most 63 characters")
    } else if !value
        .bytes()
        .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-'))
    {
        Some("may hold only lowercase letters, digits and '-'")
    } else if value.starts_with('-') || value.ends_with('-') {
        Some("must not start or end with '-'")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(ValidationError::new(field, value, reason)),
        None => Ok(()),
    }
}

/// The label of the zone's name server (`ns.<zone>`, the SOA's and NS
/// record's target).
pub const NAMESERVER_LABEL: &str = "ns";

/// The label of the zone's contact mailbox in its SOA
/// (`hostmaster.<zone>`).
pub const HOSTMASTER_LABEL: &str = "hostmaster";

/// The label under which the private addresses' names live
/// (`n.c.internal.<zone>`).
pub const INTERNAL_LABEL: &str = "internal";

/// Names no cluster may take, since `c.<zone>` would shadow the zone's own
/// names. (The ownership labels `_muster` and `_muster-wildcard` are no
/// DNS labels a cluster may have anyway.)
pub const RESERVED_CLUSTER_NAMES: [&str; 3] = [NAMESERVER_LABEL, HOSTMASTER_LABEL, INTERNAL_LABEL];

/// A new cluster's name: one [`dns_label`] that is none of
/// [`RESERVED_CLUSTER_NAMES`].
pub fn cluster_name(field: &str, value: &str) -> Result<(), ValidationError> {
    dns_label(field, value)?;
    if RESERVED_CLUSTER_NAMES.contains(&value) {
        return Err(ValidationError::new(
            field,
            value,
            "is reserved for the zone's own names (ns, hostmaster, internal)",
        ));
    }
    Ok(())
}

/// A DNS name of one or more RFC 1123 labels separated by dots, without a
/// trailing dot, at most 253 characters.
pub fn dns_name(field: &str, value: &str) -> Result<(), ValidationError> {
    if value.len() > MAX_NAME_LEN {
        return Err(ValidationError::new(
            field,
            value,
            "must be at most 253 characters",
        ));
    }
    for label in value.split('.') {
        dns_label(field, label).map_err(|e| {
            ValidationError::new(field, value, &format!("label {:?} {}", label, e.reason))
        })?;
    }
    Ok(())
}

/// An IPv4 address a host can be reached at: not unspecified, broadcast or
/// multicast.
pub fn host_ipv4(field: &str, addr: Ipv4Addr) -> Result<(), ValidationError> {
    let reason = if addr.is_unspecified() {
        Some("must not be the unspecified address")
    } else if addr.is_broadcast() {
        Some("must not be the broadcast address")
    } else if addr.is_multicast() {
        Some("must not be a multicast address")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(ValidationError::new(field, &addr.to_string(), reason)),
        None => Ok(()),
    }
}

/// A node's IPv6 address: a global unicast one, as EC2 gives instances.
/// Unspecified, loopback, multicast, link-local (fe80::/10), unique local
/// (fc00::/7), IPv4-mapped and documentation (2001:db8::/32) addresses
/// are refused: none of them reaches the node from elsewhere.
pub fn host_ipv6(field: &str, addr: Ipv6Addr) -> Result<(), ValidationError> {
    let first = addr.segments()[0];
    let reason = if addr.is_unspecified() {
        Some("must not be the unspecified address")
    } else if addr.is_loopback() {
        Some("must not be the loopback address")
    } else if addr.is_multicast() {
        Some("must not be a multicast address")
    } else if first & 0xffc0 == 0xfe80 {
        Some("must not be a link-local address")
    } else if first & 0xfe00 == 0xfc00 {
        Some("must not be a unique local address")
    } else if addr.to_ipv4_mapped().is_some() {
        Some("must not be an IPv4-mapped address")
    } else if first == 0x2001 && addr.segments()[1] == 0x0db8 {
        Some("must not be a documentation address (2001:db8::/32)")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(ValidationError::new(field, &addr.to_string(), reason)),
        None => Ok(()),
    }
}

/// A node's addresses: each valid ([`private_ipv4`], [`host_ipv4`],
/// [`host_ipv6`]), and a private IPv4 or an IPv6 address at least (an
/// IPv6-only instance has no IPv4 address at all).
pub fn node_addresses(
    private: Option<Ipv4Addr>,
    public: Option<Ipv4Addr>,
    ipv6: Option<Ipv6Addr>,
) -> Result<(), ValidationError> {
    if let Some(private) = private {
        private_ipv4("private_ipv4", private)?;
    }
    if let Some(public) = public {
        host_ipv4("public_ipv4", public)?;
    }
    if let Some(ipv6) = ipv6 {
        host_ipv6("ipv6", ipv6)?;
    }
    if private.is_none() && ipv6.is_none() {
        return Err(ValidationError::new(
            "private_ipv4",
            "null",
            "is required unless the node has an IPv6 address (an IPv6-only instance)",
        ));
    }
    Ok(())
}

/// A node's private address: a unicast host address ([`host_ipv4`]) that
/// is not loopback, since no other machine can reach a node there.
pub fn private_ipv4(field: &str, addr: Ipv4Addr) -> Result<(), ValidationError> {
    host_ipv4(field, addr)?;
    if addr.is_loopback() {
        return Err(ValidationError::new(
            field,
            &addr.to_string(),
            "must not be a loopback address",
        ));
    }
    Ok(())
}

/// The ranges that are never a public address on the Internet: RFC 1918
/// private, RFC 6598 shared (carrier-grade NAT), link-local, loopback,
/// "this network", the IETF protocol block, the RFC 5737 documentation
/// blocks (TEST-NET-1, -2 and -3), the RFC 2544 benchmarking block, and the
/// multicast and reserved blocks (RFC 6890's special-purpose registry,
/// less the few that are forwarded globally).
pub const NOT_PUBLIC: [Ipv4Cidr; 13] = [
    block([0, 0, 0, 0], 8),
    block([10, 0, 0, 0], 8),
    block([100, 64, 0, 0], 10),
    block([127, 0, 0, 0], 8),
    block([169, 254, 0, 0], 16),
    block([172, 16, 0, 0], 12),
    block([192, 0, 0, 0], 24),
    block([192, 0, 2, 0], 24),
    block([192, 168, 0, 0], 16),
    block([198, 18, 0, 0], 15),
    block([198, 51, 100, 0], 24),
    block([203, 0, 113, 0], 24),
    block([224, 0, 0, 0], 3),
];

/// A block written out in a constant.
const fn block([a, b, c, d]: [u8; 4], prefix: u8) -> Ipv4Cidr {
    Ipv4Cidr::new(Ipv4Addr::new(a, b, c, d), prefix).unwrap()
}

/// A public IPv4 address: not in any of [`NOT_PUBLIC`], unless it lies in
/// one of `allowed` (an operator's exception, e.g. a test network whose
/// Elastic IPs come from 127/8).
pub fn public_ipv4(
    field: &str,
    addr: Ipv4Addr,
    allowed: &[Ipv4Cidr],
) -> Result<(), ValidationError> {
    if allowed.iter().any(|net| net.contains_addr(addr)) {
        return Ok(());
    }
    match NOT_PUBLIC.iter().find(|net| net.contains_addr(addr)) {
        Some(net) => Err(ValidationError::new(
            field,
            &addr.to_string(),
            &format!("is in {net}, which is not a public range"),
        )),
        None => Ok(()),
    }
}

/// An AWS region name such as `us-east-1` or `us-gov-west-1`.
pub fn region(value: &str) -> Result<(), ValidationError> {
    if looks_like_region(value) {
        Ok(())
    } else {
        Err(ValidationError::new(
            "region",
            value,
            "must look like an AWS region, e.g. us-east-1",
        ))
    }
}

/// An availability zone name: a region followed by one or more lowercase
/// letters (`us-east-1a`), or a Local/Wavelength zone name (`us-west-2-lax-1a`).
pub fn availability_zone(value: &str) -> Result<(), ValidationError> {
    let trimmed = value.trim_end_matches(|c: char| c.is_ascii_lowercase());
    let ok = trimmed.len() < value.len()
        && value.len() <= 64
        && value
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-'))
        && looks_like_region(trimmed);
    if ok {
        Ok(())
    } else {
        Err(ValidationError::new(
            "availability_zone",
            value,
            "must look like an AWS availability zone, e.g. us-east-1a",
        ))
    }
}

fn looks_like_region(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    parts.len() >= 3
        && value.len() <= 32
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
        && parts
            .last()
            .is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()))
        && parts[0].bytes().all(|b| b.is_ascii_lowercase())
}

/// Free text: at most [`crate::MAX_TEXT_LEN`] bytes, no control characters.
pub fn text(field: &str, value: &str) -> Result<(), ValidationError> {
    if value.len() > crate::MAX_TEXT_LEN {
        Err(ValidationError::new(
            field,
            value,
            "must be at most 256 bytes",
        ))
    } else if value.chars().any(char::is_control) {
        Err(ValidationError::new(
            field,
            value,
            "must not contain control characters",
        ))
    } else {
        Ok(())
    }
}

/// An EC2 resource id: `prefix-` and 8 or 17 lowercase hex digits, e.g.
/// `vpc-0123abcd`, `subnet-…`, `sg-…`, `ami-…`.
pub fn resource_id(field: &str, prefix: &str, value: &str) -> Result<(), ValidationError> {
    let ok = value
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('-'))
        .is_some_and(|hex| {
            (hex.len() == 8 || hex.len() == 17)
                && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        });
    if ok {
        Ok(())
    } else {
        Err(ValidationError::new(
            field,
            value,
            &format!("must be \"{prefix}-\" followed by 8 or 17 lowercase hex digits"),
        ))
    }
}

/// An EC2 instance type: family and size joined by a dot, lowercase
/// letters, digits and `-`, e.g. `t3.micro` or `m7g.2xlarge`.
pub fn instance_type(value: &str) -> Result<(), ValidationError> {
    let part = |p: &str| {
        !p.is_empty()
            && p.bytes()
                .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-'))
    };
    let ok = value.len() <= 32
        && value
            .split_once('.')
            .is_some_and(|(family, size)| part(family) && part(size) && !size.contains('.'));
    if ok {
        Ok(())
    } else {
        Err(ValidationError::new(
            "instance_type",
            value,
            "must look like an EC2 instance type, e.g. t3.micro",
        ))
    }
}

/// An EC2 key pair name: 1 to 255 printable ASCII characters, not starting
/// or ending with a space.
pub fn key_name(value: &str) -> Result<(), ValidationError> {
    let ok = !value.is_empty()
        && value.len() <= 255
        && value.bytes().all(|b| (0x20..0x7f).contains(&b))
        && !value.starts_with(' ')
        && !value.ends_with(' ');
    if ok {
        Ok(())
    } else {
        Err(ValidationError::new(
            "key_name",
            value,
            "must be 1 to 255 printable ASCII characters",
        ))
    }
}

/// An IAM instance profile name: 1 to 128 of letters, digits and `+=,.@_-`.
pub fn instance_profile_name(value: &str) -> Result<(), ValidationError> {
    let ok = !value.is_empty()
        && value.len() <= 128
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ValidationError::new(
            "instance_profile_name",
            value,
            "must be 1 to 128 letters, digits or any of +=,.@_-",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Global unicast IPv6 passes; addresses that reach nothing from
    /// elsewhere are refused, each with its reason.
    #[test]
    fn ipv6_must_be_global_unicast() {
        let ok: Ipv6Addr = "2600:1f18:4f2:e100:1c5c:c4bd:60a3:d10d".parse().unwrap();
        assert!(host_ipv6("ipv6", ok).is_ok());
        for (bad, why) in [
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("ff02::1", "multicast"),
            ("fe80::1", "link-local"),
            ("fd00::1", "unique local"),
            ("::ffff:10.0.0.1", "IPv4-mapped"),
            ("2001:db8::1", "documentation"),
        ] {
            let e = host_ipv6("ipv6", bad.parse().unwrap()).unwrap_err();
            assert!(e.reason.contains(why), "{bad}: {e}");
        }
    }

    /// Real instance id shapes pass; near misses fail.
    #[test]
    fn instance_ids() {
        instance_id("i-0123456789abcdef0").unwrap();
        instance_id("i-12345678").unwrap();
        for bad in [
            "",
            "i-",
            "i-123",
            "i-0123456789ABCDEF0",
            "x-12345678",
            "i-0123456789abcdef01",
            "i-1234567g",
        ] {
            assert!(instance_id(bad).is_err(), "{bad}");
        }
    }

    /// A cluster may not take the zone's own names; the ownership labels
    /// are refused as labels already.
    #[test]
    fn reserved_cluster_names() {
        for reserved in ["ns", "hostmaster", "internal"] {
            let err = cluster_name("name", reserved).unwrap_err();
            assert!(err.to_string().contains("reserved"), "{err}");
        }
        for ownership in ["_muster", "_muster-wildcard"] {
            assert!(cluster_name("name", ownership).is_err());
        }
        cluster_name("name", "ns1").unwrap();
        cluster_name("name", "internal-web").unwrap();
    }

    /// RFC 1123 labels: the edges of the rules.
    #[test]
    fn labels() {
        for good in ["a", "web", "web-1", "1web", &"a".repeat(63)] {
            dns_label("name", good).unwrap();
        }
        for bad in [
            "",
            "-web",
            "web-",
            "Web",
            "we_b",
            "we.b",
            "wéb",
            &"a".repeat(64),
        ] {
            assert!(dns_label("name", bad).is_err(), "{bad}");
        }
    }

    /// Dotted names are checked label by label and in length.
    #[test]
    fn names() {
        dns_name("zone", "muster.internal").unwrap();
        dns_name("zone", "nodes.example.com").unwrap();
        assert!(dns_name("zone", "muster.internal.").is_err());
        assert!(dns_name("zone", "a..b").is_err());
        assert!(dns_name("zone", &format!("{}.com", "a.".repeat(130))).is_err());
    }

    /// Addresses no host can be reached at are refused.
    #[test]
    fn addresses() {
        host_ipv4("ip", Ipv4Addr::new(10, 0, 0, 1)).unwrap();
        host_ipv4("ip", Ipv4Addr::new(54, 0, 0, 1)).unwrap();
        for bad in [
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::BROADCAST,
            Ipv4Addr::new(239, 1, 1, 1),
        ] {
            assert!(host_ipv4("ip", bad).is_err(), "{bad}");
        }
        private_ipv4("ip", Ipv4Addr::new(10, 0, 0, 1)).unwrap();
        assert!(private_ipv4("ip", Ipv4Addr::LOCALHOST).is_err());
    }

    /// Public means outside every private, shared, link-local, loopback and
    /// reserved range, unless the operator allowed the range.
    #[test]
    fn public_addresses() {
        for good in [
            [54, 0, 0, 1],
            [3, 5, 7, 9],
            [172, 32, 0, 1],
            [100, 128, 0, 1],
            [198, 20, 0, 1],
            [203, 0, 114, 1],
        ] {
            public_ipv4("ip", Ipv4Addr::from(good), &[]).unwrap();
        }
        for bad in [
            [10, 1, 2, 3],
            [172, 16, 0, 1],
            [172, 31, 255, 255],
            [192, 168, 1, 1],
            [100, 64, 0, 1],
            [169, 254, 169, 254],
            [127, 0, 0, 1],
            [0, 1, 2, 3],
            [192, 0, 2, 7],
            [198, 18, 0, 1],
            [198, 19, 255, 255],
            [198, 51, 100, 7],
            [203, 0, 113, 7],
            [240, 0, 0, 1],
        ] {
            let err = public_ipv4("public_ipv4", Ipv4Addr::from(bad), &[]).unwrap_err();
            assert!(err.to_string().contains("not a public range"), "{err}");
        }
        let loopback = block([127, 0, 0, 0], 8);
        public_ipv4("ip", Ipv4Addr::new(127, 9, 8, 7), &[loopback]).unwrap();
        assert!(public_ipv4("ip", Ipv4Addr::new(10, 9, 8, 7), &[loopback]).is_err());
        assert!(block([0, 0, 0, 0], 0).contains_addr(Ipv4Addr::new(1, 2, 3, 4)));
    }

    /// Regions and zones as AWS names them.
    #[test]
    fn regions_and_zones() {
        for good in [
            "us-east-1",
            "eu-central-2",
            "us-gov-west-1",
            "ap-southeast-4",
        ] {
            region(good).unwrap();
        }
        for bad in ["", "us-east", "US-EAST-1", "us--1", "useast1", "us-east-1a"] {
            assert!(region(bad).is_err(), "{bad}");
        }
        for good in ["us-east-1a", "eu-west-3c", "us-west-2-lax-1a"] {
            availability_zone(good).unwrap();
        }
        for bad in ["", "us-east-1", "a", "us-east-1A", "-1a"] {
            assert!(availability_zone(bad).is_err(), "{bad}");
        }
    }

    /// The error message names the field and the value.
    #[test]
    fn error_display() {
        let err = dns_label("cluster", "Bad").unwrap_err();
        assert_eq!(
            err.to_string(),
            "cluster=\"Bad\" is not valid: may hold only lowercase letters, digits and '-'"
        );
    }

    #[test]
    fn node_ids() {
        assert!(node_id("i-0123456789abcdef0").is_ok());
        assert!(node_id("m-0123456789abcdef0123456789abcdef").is_ok());
        assert!(node_id("m-00000000000000000000000000000000").is_err());
        assert!(node_id("m-0123456789ABCDEF0123456789abcdef").is_err());
        assert!(node_id("m-0123").is_err());
        assert!(node_id("x-0123456789abcdef0").is_err());
    }

    #[test]
    fn launch_values() {
        assert!(resource_id("vpc_id", "vpc", "vpc-0123abcd").is_ok());
        assert!(resource_id("vpc_id", "vpc", "vpc-0123456789abcdef0").is_ok());
        assert!(resource_id("vpc_id", "vpc", "subnet-0123abcd").is_err());
        assert!(resource_id("vpc_id", "vpc", "vpc-0123ABCD").is_err());
        assert!(resource_id("vpc_id", "vpc", "vpc-0123abc").is_err());
        assert!(instance_type("t3.micro").is_ok());
        assert!(instance_type("m7g.2xlarge").is_ok());
        assert!(instance_type("t3").is_err());
        assert!(instance_type("t3.micro.x").is_err());
        assert!(instance_type("T3.micro").is_err());
        assert!(key_name("my key").is_ok());
        assert!(key_name("").is_err());
        assert!(key_name("tab\there").is_err());
        assert!(instance_profile_name("muster-nodes@x").is_ok());
        assert!(instance_profile_name("no spaces").is_err());
        let cidr = |text: &str| text.parse::<Ipv4Cidr>();
        assert_eq!(cidr("203.0.113.0/24").unwrap(), block([203, 0, 113, 0], 24));
        assert_eq!(cidr("0.0.0.0/0").unwrap(), block([0, 0, 0, 0], 0));
        let e = cidr("203.0.113.7/24").unwrap_err();
        assert!(e.reason().contains("203.0.113.0/24"), "{e}");
        assert!(cidr("203.0.113.7").is_err());
        assert!(cidr("203.0.113.7/33").is_err());
    }

    proptest! {
        /// Every label the checker accepts is a valid RFC 1123 label, and
        /// every string built from the allowed alphabet within the rules passes.
        #[test]
        fn label_checker_agrees_with_the_rule(s in "[a-z0-9-]{0,70}") {
            let rule = !s.is_empty()
                && s.len() <= 63
                && !s.starts_with('-')
                && !s.ends_with('-');
            prop_assert_eq!(dns_label("x", &s).is_ok(), rule);
        }

        /// No input makes a validator panic.
        #[test]
        fn validators_never_panic(s in ".{0,300}") {
            let _ = instance_id(&s);
            let _ = dns_label("x", &s);
            let _ = dns_name("x", &s);
            let _ = region(&s);
            let _ = availability_zone(&s);
            let _ = text("x", &s);
        }
    }
}
