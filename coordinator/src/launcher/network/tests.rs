//! The network's pure parts: CIDR blocks, names, filters.

use super::*;
use proptest::prelude::*;

fn cidr(text: &str) -> Ipv4Cidr {
    text.parse().unwrap()
}

fn texts(blocks: &[Ipv4Cidr]) -> Vec<String> {
    blocks.iter().map(|b| b.to_string()).collect()
}

/// The default VPC over six AZs: eight /19s, in address order.
#[test]
fn six_zones_get_eight_nineteens() {
    let blocks = subnet_blocks(DEFAULT_VPC_CIDR, 6).unwrap();
    assert_eq!(
        texts(&blocks),
        [
            "10.77.0.0/19",
            "10.77.32.0/19",
            "10.77.64.0/19",
            "10.77.96.0/19",
            "10.77.128.0/19",
            "10.77.160.0/19",
            "10.77.192.0/19",
            "10.77.224.0/19",
        ]
    );
}

/// The block count is the power of two at or above #AZs + 1.
#[test]
fn block_count_rounds_zones_plus_one_up() {
    let vpc = cidr("10.0.0.0/16");
    let count = |zones| subnet_blocks(vpc, zones).unwrap().len();
    assert_eq!(count(0), 1);
    assert_eq!(count(1), 2);
    assert_eq!(count(2), 4);
    assert_eq!(count(3), 4);
    assert_eq!(count(4), 8);
    assert_eq!(count(7), 8);
    assert_eq!(count(8), 16);
    assert_eq!(subnet_blocks(vpc, 3).unwrap()[3], cidr("10.0.192.0/18"));
}

/// Blocks never go below /28, EC2's smallest subnet.
#[test]
fn small_vpcs_run_out_at_slash_28() {
    assert_eq!(
        texts(&subnet_blocks(cidr("10.0.0.0/26"), 3).unwrap()),
        [
            "10.0.0.0/28",
            "10.0.0.16/28",
            "10.0.0.32/28",
            "10.0.0.48/28"
        ]
    );
    assert_eq!(subnet_blocks(cidr("10.0.0.0/26"), 4), None);
    assert_eq!(subnet_blocks(cidr("10.0.0.0/28"), 1), None);
    assert_eq!(subnet_blocks(cidr("10.0.0.0/16"), usize::MAX), None);
}

/// Subnets named without a VPC must share one.
#[test]
fn given_subnets_name_one_vpc() {
    let subnet = |id: &str, vpc: &str| {
        aws_sdk_ec2::types::Subnet::builder()
            .subnet_id(id)
            .vpc_id(vpc)
            .build()
    };
    assert_eq!(
        one_vpc(&[subnet("subnet-a", "vpc-1"), subnet("subnet-b", "vpc-1")]).unwrap(),
        "vpc-1"
    );
    let error = one_vpc(&[subnet("subnet-a", "vpc-1"), subnet("subnet-b", "vpc-2")])
        .unwrap_err()
        .to_string();
    assert!(error.contains("vpc-1, vpc-2"), "{error}");
}

/// Only `Name` tags with the exact value count.
#[test]
fn names_are_exact() {
    let tag = |k: &str, v: &str| Tag::builder().key(k).value(v).build();
    assert!(has_name(
        &[tag("env", "x"), tag("Name", "muster-vpc")],
        VPC_NAME
    ));
    assert!(!has_name(&[tag("Name", "muster-vpc-2")], VPC_NAME));
    assert!(!has_name(&[tag("name", "muster-vpc")], VPC_NAME));
}

proptest! {
    /// The blocks are at least #AZs + 1, as few as can be, equal,
    /// disjoint, inside the VPC and together the whole of it.
    #[test]
    fn blocks_tile_the_vpc(
        address in any::<u32>(),
        prefix in 8u8..=28,
        zones in 0usize..100,
    ) {
        let vpc = Ipv4Cidr::new(Ipv4Addr::from_bits(address), prefix).unwrap();
        match subnet_blocks(vpc, zones) {
            None => {
                let needed = (zones + 1).next_power_of_two().trailing_zeros();
                prop_assert!(u32::from(prefix) + needed > u32::from(SMALLEST_SUBNET_PREFIX));
            }
            Some(blocks) => {
                prop_assert!(blocks.len() > zones);
                prop_assert!(blocks.len().is_power_of_two());
                prop_assert!(blocks.len() / 2 < zones + 1, "not the fewest");
                prop_assert!(blocks[0].prefix() <= SMALLEST_SUBNET_PREFIX);
                for block in &blocks {
                    prop_assert!(vpc.contains(block));
                    prop_assert_eq!(block.prefix(), blocks[0].prefix());
                }
                for (i, a) in blocks.iter().enumerate() {
                    for b in &blocks[i + 1..] {
                        prop_assert!(!a.overlaps(b), "{} overlaps {}", a, b);
                    }
                }
                for pair in blocks.windows(2) {
                    prop_assert_eq!(
                        u64::from(pair[0].network().to_bits()) + pair[0].size(),
                        u64::from(pair[1].network().to_bits())
                    );
                }
                let total: u64 = blocks.iter().map(Ipv4Cidr::size).sum();
                prop_assert_eq!(total, vpc.size());
            }
        }
    }

    /// Any block prints as text that parses back to it.
    #[test]
    fn cidr_display_parses_back(address in any::<u32>(), prefix in 0u8..=32) {
        let block = Ipv4Cidr::new(Ipv4Addr::from_bits(address), prefix).unwrap();
        prop_assert_eq!(block.to_string().parse::<Ipv4Cidr>(), Ok(block));
    }
}
