//! Which subnet each launched node goes to, and which nodes go first when a
//! cluster shrinks: the high-availability spread Tutum used.
//!
//! [`place`] puts every new node, one at a time, in the least populated
//! usable subnet, ties going to the subnet listed first. Over six empty
//! subnets, seven nodes land 2/1/1/1/1/1. The answer is a count per subnet
//! for the whole wave, so the launcher makes one RunInstances per subnet
//! with MinCount = MaxCount = count.
//!
//! When EC2 refuses a subnet in the middle of a wave (say
//! `InsufficientInstanceCapacity` or `Unsupported`), the launcher adds what
//! did launch to `existing`, drops that subnet from `usable`, and asks
//! [`place`] again for the nodes still missing: they land in the remaining
//! subnets, least populated first.
//!
//! [`scale_down`] undoes it: every node removed comes from the most
//! populated subnet, the newest node there first; among equally populated
//! subnets, the one whose newest node is newest. Shrinking a cluster that
//! [`place`] grew from nothing retraces its steps.
//!
//! Both are pure functions over subnet and node ids, so the launcher's
//! bookkeeping stays out of them and property tests can walk them freely.

use std::collections::BTreeMap;

/// How many of `n` new nodes go to each subnet of `usable`, given how many
/// nodes each subnet holds already (`existing`; subnets missing count as
/// empty, subnets not in `usable` are ignored). Subnets that get none are
/// absent from the answer. Nothing is placed when `usable` is empty.
pub fn place<S: Ord + Clone>(
    existing: &BTreeMap<S, usize>,
    usable: &[S],
    n: usize,
) -> BTreeMap<S, usize> {
    let mut subnets: Vec<&S> = Vec::with_capacity(usable.len());
    for subnet in usable {
        if !subnets.contains(&subnet) {
            subnets.push(subnet);
        }
    }
    let mut totals: Vec<usize> = subnets
        .iter()
        .map(|s| existing.get(*s).copied().unwrap_or(0))
        .collect();
    let mut wave = BTreeMap::new();
    if subnets.is_empty() {
        return wave;
    }
    for _ in 0..n {
        // `min_by_key` keeps the first of equal minima: the order of
        // `usable` breaks ties.
        let (at, _) = totals
            .iter()
            .enumerate()
            .min_by_key(|(_, total)| **total)
            .expect("usable is not empty");
        totals[at] += 1;
        *wave.entry(subnets[at].clone()).or_insert(0) += 1;
    }
    wave
}

/// Which `remove` nodes to take out of a cluster whose nodes are
/// `(subnet, node, created_at)`, in the order to remove them: each from the
/// most populated subnet, the newest node there first. Among equally
/// populated subnets, the one whose newest node is newest goes first; among
/// nodes created at the same time, the one listed later counts as newer.
/// Asking for more than there are removes them all.
pub fn scale_down<S: Ord, N: Clone, T: Ord>(nodes: &[(S, N, T)], remove: usize) -> Vec<N> {
    // Per subnet, indices into `nodes`, oldest first, so the newest is last.
    let mut by_subnet: BTreeMap<&S, Vec<usize>> = BTreeMap::new();
    for (i, (subnet, _, _)) in nodes.iter().enumerate() {
        by_subnet.entry(subnet).or_default().push(i);
    }
    let age = |i: usize| (&nodes[i].2, i);
    for indices in by_subnet.values_mut() {
        indices.sort_by_key(|&i| age(i));
    }

    let mut removed = Vec::with_capacity(remove.min(nodes.len()));
    for _ in 0..remove.min(nodes.len()) {
        let from = by_subnet
            .values_mut()
            .filter(|indices| !indices.is_empty())
            .max_by(|a, b| (a.len(), age(a[a.len() - 1])).cmp(&(b.len(), age(b[b.len() - 1]))))
            .expect("a node is left to remove");
        let newest = from.pop().expect("the subnet is not empty");
        removed.push(nodes[newest].1.clone());
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn counts(pairs: &[(&'static str, usize)]) -> BTreeMap<&'static str, usize> {
        pairs.iter().copied().collect()
    }

    const SIX: [&str; 6] = ["a", "b", "c", "d", "e", "f"];

    /// Seven nodes over six empty subnets: 2/1/1/1/1/1, the extra one in
    /// the subnet listed first.
    #[test]
    fn seven_over_six() {
        assert_eq!(
            place(&BTreeMap::new(), &SIX, 7),
            counts(&[("a", 2), ("b", 1), ("c", 1), ("d", 1), ("e", 1), ("f", 1)])
        );
    }

    /// New nodes fill the emptiest subnets first, and only those.
    #[test]
    fn fills_the_gaps_first() {
        let existing = counts(&[("a", 3), ("b", 1)]);
        assert_eq!(
            place(&existing, &["a", "b", "c"], 3),
            counts(&[("b", 1), ("c", 2)])
        );
        assert_eq!(
            place(&existing, &["a", "b", "c"], 7),
            counts(&[("a", 1), ("b", 3), ("c", 3)])
        );
    }

    /// The order of `usable` breaks ties, not the subnets' names.
    #[test]
    fn usable_order_breaks_ties() {
        assert_eq!(place(&BTreeMap::new(), &["z", "a"], 1), counts(&[("z", 1)]));
        assert_eq!(place(&BTreeMap::new(), &["a", "z"], 1), counts(&[("a", 1)]));
    }

    /// Nodes in subnets no longer usable are not counted, and nothing is
    /// placed without a usable subnet or a node to place.
    #[test]
    fn unusable_subnets_are_ignored() {
        let existing = counts(&[("gone", 9), ("a", 1)]);
        assert_eq!(place(&existing, &["a", "b"], 1), counts(&[("b", 1)]));
        assert!(place(&existing, &[], 5).is_empty());
        assert!(place(&existing, &["a", "b"], 0).is_empty());
        assert_eq!(place(&existing, &["b", "b"], 2), counts(&[("b", 2)]));
    }

    /// A subnet refused mid-wave (InsufficientInstanceCapacity): asked
    /// again without it, its node goes to the least populated of the rest.
    #[test]
    fn a_refused_subnet_is_placed_around() {
        let wave = place(&BTreeMap::new(), &SIX, 7);
        assert_eq!(wave.get("c"), Some(&1));

        // Every subnet launched its share but c.
        let mut existing = wave.clone();
        let missing = existing.remove("c").unwrap();
        let usable: Vec<&str> = SIX.iter().copied().filter(|s| *s != "c").collect();
        let retry = place(&existing, &usable, missing);
        assert_eq!(
            retry,
            counts(&[("b", 1)]),
            "b is the first of the least populated"
        );

        // Two more refused at once go to two different subnets.
        let retry = place(&existing, &usable, 2);
        assert_eq!(retry, counts(&[("b", 1), ("d", 1)]));
    }

    /// Shrinking takes from the fullest subnet, newest first.
    #[test]
    fn scale_down_takes_the_newest_of_the_fullest() {
        let nodes = [
            ("a", "n1", 1),
            ("a", "n2", 5),
            ("a", "n3", 3),
            ("b", "n4", 2),
            ("b", "n5", 9),
            ("c", "n6", 4),
        ];
        assert_eq!(scale_down(&nodes, 1), ["n2"]);
        // Then a and b hold two each: b's newest (9) is newer than a's (3).
        assert_eq!(scale_down(&nodes, 3), ["n2", "n5", "n3"]);
        assert_eq!(scale_down(&nodes, 6).len(), 6);
        assert_eq!(scale_down(&nodes, 60).len(), 6);
        assert!(scale_down(&nodes, 0).is_empty());
        assert!(scale_down::<&str, &str, u8>(&[], 3).is_empty());
    }

    /// Nodes created at the same time: the one listed later goes first.
    #[test]
    fn scale_down_ties_go_to_the_later_listed() {
        let nodes = [
            ("a", "n1", 0),
            ("a", "n2", 0),
            ("b", "n3", 0),
            ("b", "n4", 0),
        ];
        assert_eq!(scale_down(&nodes, 4), ["n4", "n2", "n3", "n1"]);
    }

    fn existing_counts() -> impl Strategy<Value = BTreeMap<u8, usize>> {
        prop::collection::btree_map(0u8..10, 0usize..20, 0..10)
    }

    fn usable_subnets() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(0u8..10, 0..10)
    }

    proptest! {
        /// Every node is placed, only in usable subnets, and a subnet gets a
        /// node only while it is among the least populated: afterwards it
        /// holds at most one more than any other usable subnet.
        #[test]
        fn place_levels(existing in existing_counts(), usable in usable_subnets(), n in 0usize..50) {
            let wave = place(&existing, &usable, n);
            let placed: usize = wave.values().sum();
            prop_assert_eq!(placed, if usable.is_empty() { 0 } else { n });
            for (subnet, count) in &wave {
                prop_assert!(usable.contains(subnet));
                prop_assert!(*count > 0);
            }
            let total = |s: &u8| existing.get(s).unwrap_or(&0) + wave.get(s).unwrap_or(&0);
            for a in wave.keys() {
                for b in &usable {
                    prop_assert!(total(a) <= total(b) + 1, "{} got a node while {} had fewer", a, b);
                }
            }
        }

        /// A wave of n is the same as n waves of one.
        #[test]
        fn a_wave_is_its_nodes_one_by_one(existing in existing_counts(), usable in usable_subnets(), n in 0usize..30) {
            let mut state = existing.clone();
            let mut one_by_one = BTreeMap::new();
            for _ in 0..n {
                for (subnet, count) in place(&state, &usable, 1) {
                    *state.entry(subnet).or_insert(0) += count;
                    *one_by_one.entry(subnet).or_insert(0) += count;
                }
            }
            prop_assert_eq!(place(&existing, &usable, n), one_by_one);
        }

        /// Removal takes distinct nodes, the newest of their subnet, from a
        /// subnet that was (one of) the most populated.
        #[test]
        fn scale_down_levels(
            subnets in prop::collection::vec((0u8..5, 0u32..20), 0..30),
            remove in 0usize..40,
        ) {
            let nodes: Vec<(u8, usize, u32)> = subnets
                .iter()
                .enumerate()
                .map(|(id, (subnet, created_at))| (*subnet, id, *created_at))
                .collect();
            let removed = scale_down(&nodes, remove);
            prop_assert_eq!(removed.len(), remove.min(nodes.len()));

            let mut left: Vec<(u8, usize, u32)> = nodes.clone();
            for id in &removed {
                let at = left.iter().position(|(_, n, _)| n == id);
                prop_assert!(at.is_some(), "node {} removed twice or unknown", id);
                let (subnet, _, created_at) = left.remove(at.unwrap());
                let count = |s: u8| left.iter().filter(|(x, _, _)| *x == s).count();
                for (other, _, _) in &left {
                    prop_assert!(count(subnet) + 1 >= count(*other), "took from {} while {} was fuller", subnet, other);
                }
                for (other_subnet, other_id, other_created) in &left {
                    if *other_subnet == subnet {
                        prop_assert!(
                            (other_created, other_id) < (&created_at, id),
                            "took {} while {} in the same subnet is newer", id, other_id
                        );
                    }
                }
            }
        }

        /// Growing from nothing one node at a time and then shrinking by k
        /// leaves what growing to n - k would have.
        #[test]
        fn scale_down_retraces_place(usable in prop::collection::btree_set(0u8..10, 1..8), n in 0usize..40, k in 0usize..40) {
            let usable: Vec<u8> = usable.into_iter().collect();
            let mut nodes = Vec::new();
            let mut state = BTreeMap::new();
            for created_at in 0..n {
                let (subnet, _) = place(&state, &usable, 1).into_iter().next().unwrap();
                *state.entry(subnet).or_insert(0) += 1;
                nodes.push((subnet, created_at, created_at));
            }
            let removed = scale_down(&nodes, k);
            let mut left: BTreeMap<u8, usize> = BTreeMap::new();
            for (subnet, id, _) in &nodes {
                if !removed.contains(id) {
                    *left.entry(*subnet).or_insert(0) += 1;
                }
            }
            prop_assert_eq!(left, place(&BTreeMap::new(), &usable, n.saturating_sub(k)));
        }
    }
}
