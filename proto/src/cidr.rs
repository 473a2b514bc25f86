//! IPv4 CIDR blocks, the one type for them in the workspace: a network
//! address and a prefix length, host bits zero.
//!
//! Used wherever muster names a range: the ranges that are never public
//! ([`crate::validate::NOT_PUBLIC`]), an operator's trusted proxies and
//! allowed ranges, a launch's `admin_cidr`, and the coordinator's VPC and
//! subnet blocks. Text is read strictly (`a.b.c.d/n`, host bits zero, the
//! prefix in plain digits) and printed back the same.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// An IPv4 block: a network address and a prefix length, host bits zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ipv4Cidr {
    network: Ipv4Addr,
    prefix: u8,
}

impl Ipv4Cidr {
    /// The block of `prefix` bits that holds `address`; `None` if `prefix`
    /// is over 32.
    pub const fn new(address: Ipv4Addr, prefix: u8) -> Option<Ipv4Cidr> {
        if prefix > 32 {
            return None;
        }
        Some(Ipv4Cidr {
            network: Ipv4Addr::from_bits(address.to_bits() & mask(prefix)),
            prefix,
        })
    }

    /// The first address.
    pub const fn network(&self) -> Ipv4Addr {
        self.network
    }

    /// The prefix length.
    pub const fn prefix(&self) -> u8 {
        self.prefix
    }

    /// How many addresses the block holds.
    pub const fn size(&self) -> u64 {
        1u64 << (32 - self.prefix as u32)
    }

    /// Whether `other` lies wholly inside this block.
    pub fn contains(&self, other: &Ipv4Cidr) -> bool {
        other.prefix >= self.prefix
            && other.network.to_bits() & mask(self.prefix) == self.network.to_bits()
    }

    /// Whether `address` lies in this block.
    pub fn contains_addr(&self, address: Ipv4Addr) -> bool {
        address.to_bits() & mask(self.prefix) == self.network.to_bits()
    }

    /// Whether the two blocks share an address.
    pub fn overlaps(&self, other: &Ipv4Cidr) -> bool {
        self.contains(other) || other.contains(self)
    }
}

/// The netmask of a `prefix`-bit block (`prefix` at most 32).
const fn mask(prefix: u8) -> u32 {
    match u32::MAX.checked_shl(32 - prefix as u32) {
        Some(mask) => mask,
        None => 0,
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// Text that is not `a.b.c.d/n` with host bits zero. Its [`reason`]
/// completes a sentence about the text, e.g. for a setting's message.
///
/// [`reason`]: InvalidCidr::reason
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InvalidCidr {
    /// No `/`, or no IPv4 address before it.
    Shape(String),
    /// The prefix length is not a number from 0 to 32.
    Prefix(String),
    /// The address has bits set beyond the prefix.
    HostBits {
        /// The text.
        text: String,
        /// The block the text's address lies in.
        block: Ipv4Cidr,
    },
}

impl InvalidCidr {
    /// The text that was read.
    pub fn text(&self) -> &str {
        match self {
            InvalidCidr::Shape(text) | InvalidCidr::Prefix(text) => text,
            InvalidCidr::HostBits { text, .. } => text,
        }
    }

    /// Why it is not a block, e.g. `has host bits set; the block is
    /// 10.0.0.0/8`.
    pub fn reason(&self) -> String {
        match self {
            InvalidCidr::Shape(_) => "must be a CIDR block a.b.c.d/n".to_owned(),
            InvalidCidr::Prefix(_) => "has a prefix length beyond 0..=32".to_owned(),
            InvalidCidr::HostBits { block, .. } => {
                format!("has host bits set; the block is {block}")
            }
        }
    }
}

impl fmt::Display for InvalidCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} {}", self.text(), self.reason())
    }
}

impl std::error::Error for InvalidCidr {}

impl FromStr for Ipv4Cidr {
    type Err = InvalidCidr;

    fn from_str(text: &str) -> Result<Ipv4Cidr, InvalidCidr> {
        let (address, prefix) = text
            .split_once('/')
            .ok_or_else(|| InvalidCidr::Shape(text.to_owned()))?;
        let address: Ipv4Addr = address
            .parse()
            .map_err(|_| InvalidCidr::Shape(text.to_owned()))?;
        let block = Some(prefix)
            .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|p| p.parse::<u8>().ok())
            .and_then(|p| Ipv4Cidr::new(address, p))
            .ok_or_else(|| InvalidCidr::Prefix(text.to_owned()))?;
        if block.network != address {
            return Err(InvalidCidr::HostBits {
                text: text.to_owned(),
                block,
            });
        }
        Ok(block)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cidr(text: &str) -> Ipv4Cidr {
        text.parse().unwrap()
    }

    /// The VPC block the coordinator makes by default.
    const VPC: Ipv4Cidr = Ipv4Cidr::new(Ipv4Addr::new(10, 77, 0, 0), 16).unwrap();

    /// CIDRs parse strictly and print back the same.
    #[test]
    fn cidr_text_round_trips_and_rejects_junk() {
        for text in ["10.77.0.0/16", "0.0.0.0/0", "10.1.2.3/32", "192.168.4.0/22"] {
            assert_eq!(cidr(text).to_string(), text);
        }
        for bad in [
            "10.77.0.1/16",
            "10.77.0.0/33",
            "10.77.0.0",
            "10.77.0.0/",
            "10.77.0.0/+8",
            "x/16",
            "10.77.0/16",
            " 10.77.0.0/16",
        ] {
            assert!(bad.parse::<Ipv4Cidr>().is_err(), "{bad:?} parsed");
        }
        assert_eq!(Ipv4Cidr::new(Ipv4Addr::new(10, 77, 9, 9), 16), Some(VPC));
        assert_eq!(Ipv4Cidr::new(Ipv4Addr::new(10, 77, 9, 9), 33), None);
    }

    /// Each way of not being a block says why, as settings and the API
    /// show it.
    #[test]
    fn junk_says_why() {
        let reason = |text: &str| text.parse::<Ipv4Cidr>().unwrap_err().reason();
        assert_eq!(reason("203.0.113.7"), "must be a CIDR block a.b.c.d/n");
        assert_eq!(reason("x/16"), "must be a CIDR block a.b.c.d/n");
        assert_eq!(
            reason("203.0.113.0/33"),
            "has a prefix length beyond 0..=32"
        );
        assert_eq!(
            reason("203.0.113.7/24"),
            "has host bits set; the block is 203.0.113.0/24"
        );
        let error = "10.0.0.1/8".parse::<Ipv4Cidr>().unwrap_err();
        assert_eq!(
            error.to_string(),
            "\"10.0.0.1/8\" has host bits set; the block is 10.0.0.0/8"
        );
    }

    /// Containment and overlap compare whole blocks.
    #[test]
    fn containment() {
        let vpc = VPC;
        assert!(vpc.contains(&cidr("10.77.32.0/19")));
        assert!(vpc.contains(&vpc));
        assert!(!vpc.contains(&cidr("10.78.0.0/19")));
        assert!(!vpc.contains(&cidr("10.0.0.0/8")));
        assert!(vpc.overlaps(&cidr("10.0.0.0/8")));
        assert!(!cidr("10.77.0.0/19").overlaps(&cidr("10.77.32.0/19")));
        assert!(cidr("0.0.0.0/0").contains(&vpc));
        assert_eq!(vpc.size(), 65536);
        assert_eq!(cidr("0.0.0.0/0").size(), 1 << 32);
    }

    /// An address is in a block when its network bits match.
    #[test]
    fn address_containment() {
        let block = cidr("10.9.0.0/16");
        assert!(block.contains_addr(Ipv4Addr::new(10, 9, 0, 5)));
        assert!(block.contains_addr(Ipv4Addr::new(10, 9, 255, 255)));
        assert!(!block.contains_addr(Ipv4Addr::new(10, 10, 0, 0)));
        assert!(cidr("0.0.0.0/0").contains_addr(Ipv4Addr::new(1, 2, 3, 4)));
        assert!(cidr("192.0.2.7/32").contains_addr(Ipv4Addr::new(192, 0, 2, 7)));
        assert!(!cidr("192.0.2.7/32").contains_addr(Ipv4Addr::new(192, 0, 2, 8)));
    }

    proptest! {
        /// Any block prints as text that parses back to it.
        #[test]
        fn cidr_display_parses_back(address in any::<u32>(), prefix in 0u8..=32) {
            let block = Ipv4Cidr::new(Ipv4Addr::from_bits(address), prefix).unwrap();
            prop_assert_eq!(block.to_string().parse::<Ipv4Cidr>(), Ok(block));
        }

        /// A block holds its own network address and the address the
        /// block was made from, and an address is in a block exactly when
        /// its /32 is.
        #[test]
        fn addresses_agree_with_blocks(
            address in any::<u32>(),
            other in any::<u32>(),
            prefix in 0u8..=32,
        ) {
            let address = Ipv4Addr::from_bits(address);
            let other = Ipv4Addr::from_bits(other);
            let block = Ipv4Cidr::new(address, prefix).unwrap();
            prop_assert!(block.contains_addr(address));
            prop_assert!(block.contains_addr(block.network()));
            let single = Ipv4Cidr::new(other, 32).unwrap();
            prop_assert_eq!(block.contains_addr(other), block.contains(&single));
        }
    }
}
