//! The zone: the record model of docs/dns.md, and the live snapshot the
//! embedded server answers from.
//!
//! For node `n` in cluster `c` under zone `z`:
//! - `n.c.z` A → public IPv4, AAAA → IPv6 (no name when it has neither);
//! - `n.c.internal.z` A → private IPv4;
//! - `*.n.c.z` CNAME → `n.c.z` (synthesised for any name beneath `n.c.z`);
//! - `c.z` A and AAAA → the public IPv4 and IPv6 of every `deployed` node
//!   of the cluster;
//! - `c.internal.z` A → the private IPv4 of every `deployed` node.
//!
//! EC2's IPv6 addresses are global unicast, reachable from anywhere the
//! network allows, so they stand beside the public IPv4 (an IPv6-only
//! node's public name has AAAA only).
//!
//! Private addresses are answered only under `internal`: a name outside it
//! never points into a private network, so the zone cannot be used to
//! rebind a public name onto someone's internal services, and a resolver
//! that drops private answers for public names (dnsmasq's
//! `stop-dns-rebind`, unbound's `private-address`) loses nothing.
//!
//! The zone apex answers SOA and NS. Names that exist only as parents of
//! others (`internal.z`, a cluster with no deployed node's `c.internal.z`)
//! answer NOERROR with no data; any other name under the zone is NXDOMAIN;
//! names outside it are REFUSED.
//!
//! The answers come from a [`ZoneData`] snapshot that [`Zone::publish`]
//! swaps in whole each time the store changes, so a query never sees half an
//! update and answers change as soon as the store does.
//!
//! The record model is one pure function, [`desired_records`]:
//! [`Zone::subscribe`] hands its set to the providers that write to another
//! server ([`super::reconcile`]), and the embedded server's snapshot is
//! built from that set. There the wildcard is an explicit `*.n.c.z` CNAME
//! record; here it is synthesised by [`ZoneData::lookup`]. The set is made
//! for subscribers only: with the embedded server alone it would be made
//! and dropped at every rebuild (millions of small allocations at 100k
//! nodes), so until the first subscriber comes [`ZoneData::build`] makes
//! the same snapshot straight from the nodes (a unit test holds the two
//! ways to the same answers), and the first subscriber gets the set
//! rebuilt from the snapshot ([`ZoneData::desired`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, SOA};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};
use muster_proto::{validate, NodeState};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::DnsError;

/// Label under which internal (private address) names live.
pub const INTERNAL_LABEL: &str = muster_proto::validate::INTERNAL_LABEL;

/// What the DNS model needs to know about one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecordSource {
    /// Cluster name.
    pub cluster: String,
    /// Node name.
    pub name: String,
    /// Node state.
    pub state: NodeState,
    /// Private IPv4.
    pub private_ipv4: Option<Ipv4Addr>,
    /// Public IPv4.
    pub public_ipv4: Option<Ipv4Addr>,
    /// IPv6 address.
    pub ipv6: Option<Ipv6Addr>,
}

impl NodeRecordSource {
    /// What its public name answers: the public IPv4, then the IPv6.
    fn public_addresses(&self) -> Vec<IpAddr> {
        self.public_ipv4
            .map(IpAddr::V4)
            .into_iter()
            .chain(self.ipv6.map(IpAddr::V6))
            .collect()
    }

    /// Whether the node keeps its own names in this state.
    fn has_own_names(&self) -> bool {
        matches!(
            self.state,
            NodeState::Deployed
                | NodeState::Unhealthy
                | NodeState::Draining
                | NodeState::Unreachable
                | NodeState::Stopped
        )
    }
}

/// The data of one name muster writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordData {
    /// A and AAAA records, sorted (IPv4 first), without duplicates. (Named
    /// `a` where it is written down, as when it held IPv4 alone.)
    #[serde(rename = "a")]
    Addresses(Vec<IpAddr>),
    /// One CNAME to this name (fully qualified, trailing dot).
    Cname(String),
}

impl RecordData {
    /// A records alone: `ips`, as IPv4 addresses.
    pub fn a(ips: Vec<Ipv4Addr>) -> RecordData {
        RecordData::Addresses(ips.into_iter().map(IpAddr::V4).collect())
    }
}

/// Every record muster wants in the zone, by owner name.
pub type DesiredRecords = BTreeMap<Name, RecordData>;

/// The records of docs/dns.md for `nodes` under `zone`: the one definition
/// both the embedded server and the update providers use. The wildcard
/// `*.n.c.zone` appears as an explicit CNAME to `n.c.zone`.
pub fn desired_records(
    zone: &Name,
    nodes: &[NodeRecordSource],
) -> Result<DesiredRecords, hickory_proto::ProtoError> {
    let mut records = Vec::with_capacity(3 * nodes.len());
    // Each cluster's round robins: public and internal.
    let mut clusters: BTreeMap<&str, (Vec<IpAddr>, Vec<IpAddr>)> = BTreeMap::new();
    for node in nodes.iter().filter(|n| n.has_own_names()) {
        let cluster = zone.prepend_label(node.cluster.as_str())?;
        let public_name = cluster.prepend_label(node.name.as_str())?;
        let deployed = node.state == NodeState::Deployed;
        let public = node.public_addresses();
        if !public.is_empty() {
            records.push((
                public_name.prepend_label("*")?,
                RecordData::Cname(public_name.to_ascii()),
            ));
            if deployed {
                clusters
                    .entry(node.cluster.as_str())
                    .or_default()
                    .0
                    .extend(&public);
            }
            records.push((public_name, RecordData::Addresses(public)));
        }
        if let Some(ip) = node.private_ipv4 {
            let internal = zone
                .prepend_label(INTERNAL_LABEL)?
                .prepend_label(node.cluster.as_str())?
                .prepend_label(node.name.as_str())?;
            records.push((internal, RecordData::Addresses(vec![IpAddr::V4(ip)])));
            if deployed {
                clusters
                    .entry(node.cluster.as_str())
                    .or_default()
                    .1
                    .push(IpAddr::V4(ip));
            }
        }
    }
    for (cluster, (public, private)) in clusters {
        let names = [
            zone.prepend_label(cluster)?,
            zone.prepend_label(INTERNAL_LABEL)?.prepend_label(cluster)?,
        ];
        for (name, mut ips) in names.into_iter().zip([public, private]) {
            if ips.is_empty() {
                continue;
            }
            ips.sort();
            ips.dedup();
            records.push((name, RecordData::Addresses(ips)));
        }
    }
    Ok(collect_records(records))
}

/// `records` as a map, as inserting them in turn would make it (a later
/// record of a name replaces an earlier one), with few `Name` comparisons:
/// each builds every label anew, so tens of thousands of inserts, a dozen
/// comparisons each, took seconds. The records are put in order by
/// [`canonical_key`], computed once per name, and the map is built from
/// them in that order, which is `Name`'s.
fn collect_records(records: Vec<(Name, RecordData)>) -> DesiredRecords {
    let mut keyed: Vec<_> = records
        .into_iter()
        .map(|(name, data)| (canonical_key(&name), name, data))
        .collect();
    // Stable: records of one name stay in the order they came.
    keyed.sort_by(|a, b| a.0.cmp(&b.0));
    let mut sorted: Vec<(Name, RecordData)> = Vec::with_capacity(keyed.len());
    let mut previous: Option<Vec<Vec<u8>>> = None;
    for (key, name, data) in keyed {
        match sorted.last_mut() {
            Some(last) if previous.as_ref() == Some(&key) => *last = (name, data),
            _ => sorted.push((name, data)),
        }
        previous = Some(key);
    }
    sorted.into_iter().collect()
}

/// A key that orders names as `Name` does (the canonical order of RFC 4034
/// §6.1): label by label from the root, each compared as lower-case bytes,
/// a name before the names beneath it.
fn canonical_key(name: &Name) -> Vec<Vec<u8>> {
    name.iter().rev().map(<[u8]>::to_ascii_lowercase).collect()
}

/// One immutable view of the zone's records.
#[derive(Debug)]
pub struct ZoneData {
    origin: LowerName,
    soa: Record,
    ns: Record,
    ttl: u32,
    /// Every name with A or AAAA records, with them; a public node name is marked
    /// as a wildcard target (anything beneath it is a CNAME to it), so
    /// that its name is held once.
    a: HashMap<LowerName, Owned>,
    /// The names that exist without records of their own (the apex and
    /// empty non-terminals): a name exists if it is here or in `a`. Kept
    /// apart so that no node's name is held twice.
    names: HashSet<LowerName>,
}

/// What one name of the snapshot holds.
#[derive(Debug, PartialEq)]
struct Owned {
    /// Its A and AAAA records; empty only for a wildcard target without
    /// any.
    ips: Box<[IpAddr]>,
    /// Whether `*.name` is a CNAME to the name.
    wildcard_target: bool,
}

/// The answer to one question.
#[derive(Debug, Default, PartialEq)]
pub struct Answer {
    /// Response code.
    pub code: ResponseCode,
    /// Answer section.
    pub answers: Vec<Record>,
    /// Authority section: NS records.
    pub name_servers: Vec<Record>,
    /// Authority section: the SOA of a negative answer.
    pub soa: Vec<Record>,
    /// The answer cannot fit the size it was asked within: no records were
    /// made, and the server sends it with TC set.
    pub truncated: bool,
}

impl Answer {
    /// An answer too big for the size asked within.
    fn truncated() -> Answer {
        Answer {
            code: ResponseCode::NoError,
            truncated: true,
            ..Answer::default()
        }
    }
}

/// The fewest bytes a message answering `qname` with its records of type
/// `qtype` among `ips` takes: the header, the question, and per record a
/// compressed name (a 2-byte pointer), type, class, TTL and length (10)
/// and the address (4 or 16). Counted, not encoded.
fn address_floor(qname: &LowerName, ips: &[IpAddr], qtype: RecordType) -> usize {
    let records: usize = ips
        .iter()
        .map(|ip| match (ip, qtype) {
            (IpAddr::V4(_), RecordType::A | RecordType::ANY) => 2 + 10 + 4,
            (IpAddr::V6(_), RecordType::AAAA | RecordType::ANY) => 2 + 10 + 16,
            _ => 0,
        })
        .sum();
    12 + qname.len() + 4 + records
}

impl ZoneData {
    /// Builds the records of `nodes` under `zone`: the snapshot
    /// [`ZoneData::from_desired`] builds from [`desired_records`], made
    /// straight from the nodes. A rebuild of a big zone then makes no
    /// record set, ordered map and sort keys only to throw them away: at
    /// 100k nodes those came to millions of small allocations per rebuild.
    /// A unit test holds the two ways to the same snapshot.
    pub fn build(
        zone: &Name,
        serial: u32,
        ttl: u32,
        nodes: &[NodeRecordSource],
    ) -> Result<ZoneData, hickory_proto::ProtoError> {
        let internal = zone.prepend_label(INTERNAL_LABEL)?;
        // Each cluster's public and internal parent names, made once, and
        // whether a name was put under each.
        let mut parents: HashMap<&str, (Name, Name, bool, bool)> = HashMap::new();
        // Each cluster's round robins: public and internal.
        let mut clusters: BTreeMap<&str, (Vec<IpAddr>, Vec<IpAddr>)> = BTreeMap::new();
        let mut a: HashMap<LowerName, Owned> = HashMap::with_capacity(2 * nodes.len());
        for node in nodes.iter().filter(|n| n.has_own_names()) {
            let (public, private, public_used, private_used) =
                match parents.get_mut(node.cluster.as_str()) {
                    Some(names) => names,
                    None => {
                        let names = (
                            zone.prepend_label(node.cluster.as_str())?,
                            internal.prepend_label(node.cluster.as_str())?,
                            false,
                            false,
                        );
                        parents.entry(node.cluster.as_str()).or_insert(names)
                    }
                };
            let deployed = node.state == NodeState::Deployed;
            // As in the model, a later record of a name replaces an
            // earlier one.
            let addresses = node.public_addresses();
            if !addresses.is_empty() {
                *public_used = true;
                let name = public.prepend_label(node.name.as_str())?;
                if deployed {
                    clusters
                        .entry(node.cluster.as_str())
                        .or_default()
                        .0
                        .extend(&addresses);
                }
                a.insert(
                    LowerName::from(name),
                    Owned {
                        ips: addresses.into(),
                        wildcard_target: true,
                    },
                );
            }
            if let Some(ip) = node.private_ipv4 {
                *private_used = true;
                let name = private.prepend_label(node.name.as_str())?;
                a.insert(
                    LowerName::from(name),
                    Owned {
                        ips: Box::new([IpAddr::V4(ip)]),
                        wildcard_target: false,
                    },
                );
                if deployed {
                    clusters
                        .entry(node.cluster.as_str())
                        .or_default()
                        .1
                        .push(IpAddr::V4(ip));
                }
            }
        }
        for (cluster, (public, private)) in clusters {
            let names = [
                zone.prepend_label(cluster)?,
                internal.prepend_label(cluster)?,
            ];
            for (name, mut ips) in names.into_iter().zip([public, private]) {
                if ips.is_empty() {
                    continue;
                }
                ips.sort();
                ips.dedup();
                a.insert(
                    LowerName::from(name),
                    Owned {
                        ips: ips.into(),
                        wildcard_target: false,
                    },
                );
            }
        }
        // The parent of a node's name is its cluster's; of a cluster's
        // name, the zone.
        let used = parents.into_values().flat_map(|(public, private, p, i)| {
            [(public, p), (private, i)]
                .into_iter()
                .filter_map(|(name, used)| used.then(|| LowerName::from(name)))
        });
        let parents: Vec<LowerName> = used.chain([LowerName::from(zone)]).collect();
        ZoneData::assemble(zone, serial, ttl, a, parents)
    }

    /// Builds the snapshot that answers `records` under `zone`.
    pub fn from_desired(
        zone: &Name,
        serial: u32,
        ttl: u32,
        records: &DesiredRecords,
    ) -> Result<ZoneData, hickory_proto::ProtoError> {
        let with_a = records
            .values()
            .filter(|r| matches!(r, RecordData::Addresses(_)))
            .count();
        let mut a: HashMap<LowerName, Owned> = HashMap::with_capacity(with_a);
        fn owned(a: &mut HashMap<LowerName, Owned>, name: LowerName) -> &mut Owned {
            a.entry(name).or_insert_with(|| Owned {
                ips: Box::default(),
                wildcard_target: false,
            })
        }
        for (name, data) in records {
            match data {
                RecordData::Addresses(ips) => {
                    owned(&mut a, LowerName::from(name)).ips = ips.as_slice().into()
                }
                // The wildcard is synthesised in `lookup`: what matters here
                // is the name it points at.
                RecordData::Cname(_) if name.is_wildcard() => {
                    owned(&mut a, LowerName::from(&name.base_name())).wildcard_target = true;
                }
                RecordData::Cname(_) => {}
            }
        }
        let parents: HashSet<LowerName> = a.keys().map(LowerName::base_name).collect();
        ZoneData::assemble(zone, serial, ttl, a, parents)
    }

    /// The snapshot of the names `a` under `zone`: its apex records and
    /// the names that exist without records of their own, found by
    /// walking up from `parents`, which must hold the parent of every
    /// name in `a` (once is enough: most names share theirs).
    fn assemble(
        zone: &Name,
        serial: u32,
        ttl: u32,
        a: HashMap<LowerName, Owned>,
        parents: impl IntoIterator<Item = LowerName>,
    ) -> Result<ZoneData, hickory_proto::ProtoError> {
        let origin = zone.clone();
        let soa_rdata = SOA::new(
            origin.prepend_label(validate::NAMESERVER_LABEL)?,
            origin.prepend_label(validate::HOSTMASTER_LABEL)?,
            serial,
            3600,
            600,
            86400,
            ttl,
        );
        let soa = Record::from_rdata(origin.clone(), ttl, RData::SOA(soa_rdata));
        let ns = Record::from_rdata(
            origin.clone(),
            ttl,
            RData::NS(NS(origin.prepend_label(validate::NAMESERVER_LABEL)?)),
        );
        let origin = LowerName::from(&origin);
        let mut names = HashSet::new();
        for mut name in parents {
            // Up to the apex: every name above a record exists. One with
            // records of its own is a key of `a` (a cluster's round robin,
            // say) and is not held twice; the walk stops at a name already
            // known, whose own parents were added with it.
            while origin.zone_of(&name) {
                if !a.contains_key(&name) && !names.insert(name.clone()) {
                    break;
                }
                if name == origin {
                    break;
                }
                name = name.base_name();
            }
        }
        names.insert(origin.clone());
        Ok(ZoneData {
            origin,
            soa,
            ns,
            ttl,
            a,
            names,
        })
    }

    /// Answers one question.
    pub fn lookup(&self, qname: &LowerName, qtype: RecordType) -> Answer {
        self.lookup_within(qname, qtype, usize::MAX)
    }

    /// Answers one question in a message of at most `limit` bytes: an
    /// address set that cannot fit (a big cluster's round robin over UDP)
    /// is answered [`Answer::truncated`] from its size alone, without
    /// making its records. Otherwise as [`ZoneData::lookup`]; the server
    /// still checks the size of what it sends.
    pub fn lookup_within(&self, qname: &LowerName, qtype: RecordType, limit: usize) -> Answer {
        if !self.origin.zone_of(qname) {
            return Answer {
                code: ResponseCode::Refused,
                ..Answer::default()
            };
        }
        if *qname == self.origin {
            let answers = match qtype {
                RecordType::SOA => vec![self.soa.clone()],
                RecordType::NS => vec![self.ns.clone()],
                RecordType::ANY => vec![self.soa.clone(), self.ns.clone()],
                _ => Vec::new(),
            };
            return self.positive_or_nodata(answers);
        }
        if let Some(owned) = self.a.get(qname) {
            if address_floor(qname, &owned.ips, qtype) > limit {
                return Answer::truncated();
            }
            let answers = self.address_records(&Name::from(qname), &owned.ips, qtype);
            return self.positive_or_nodata(answers);
        }
        if self.names.contains(qname) {
            return self.positive_or_nodata(Vec::new());
        }
        // Wildcard: the closest existing ancestor decides. If it is a public
        // node name, the answer is a CNAME to it (RFC 4592 synthesis).
        let mut ancestor = qname.base_name();
        while self.origin.zone_of(&ancestor) {
            let owned = self.a.get(&ancestor);
            if owned.is_some_and(|o| o.wildcard_target) {
                let ips = owned.map_or(&[][..], |o| &o.ips[..]);
                // The CNAME's own record: at least a pointer, its fixed
                // fields and a pointer to its target.
                if address_floor(qname, ips, qtype) + 2 + 10 + 2 > limit {
                    return Answer::truncated();
                }
                let target = Name::from(&ancestor);
                let mut answers = vec![Record::from_rdata(
                    Name::from(qname),
                    self.ttl,
                    RData::CNAME(CNAME(target.clone())),
                )];
                if let Some(owned) = owned {
                    answers.extend(self.address_records(&target, &owned.ips, qtype));
                }
                return Answer {
                    code: ResponseCode::NoError,
                    answers,
                    ..Answer::default()
                };
            }
            if owned.is_some() || self.names.contains(&ancestor) {
                break;
            }
            ancestor = ancestor.base_name();
        }
        Answer {
            code: ResponseCode::NXDomain,
            soa: vec![self.soa.clone()],
            ..Answer::default()
        }
    }

    /// The records this snapshot answers, as [`desired_records`] gave
    /// them: every A record, and the wildcard CNAME of every public node
    /// name. Names are kept in lower case, as the model makes them.
    pub fn desired(&self) -> DesiredRecords {
        let mut records: Vec<(Name, RecordData)> = Vec::with_capacity(2 * self.a.len());
        for (name, owned) in &self.a {
            let name = Name::from(name);
            if owned.wildcard_target {
                match name.prepend_label("*") {
                    Ok(wildcard) => records.push((wildcard, RecordData::Cname(name.to_ascii()))),
                    // It was built by prepending "*" to this very name.
                    Err(error) => tracing::error!(%name, %error, "wildcard name lost"),
                }
            }
            if !owned.ips.is_empty() {
                records.push((name, RecordData::Addresses(owned.ips.to_vec())));
            }
        }
        collect_records(records)
    }

    /// `name`'s records of type `qtype` among `ips`: A for IPv4, AAAA
    /// for IPv6, both for ANY, none for any other type. ([`address_floor`]
    /// bounds their size from below.)
    fn address_records(&self, name: &Name, ips: &[IpAddr], qtype: RecordType) -> Vec<Record> {
        ips.iter()
            .filter_map(|ip| match (ip, qtype) {
                (IpAddr::V4(v4), RecordType::A | RecordType::ANY) => Some(RData::A(A(*v4))),
                (IpAddr::V6(v6), RecordType::AAAA | RecordType::ANY) => {
                    Some(RData::AAAA(AAAA(*v6)))
                }
                _ => None,
            })
            .map(|rdata| Record::from_rdata(name.clone(), self.ttl, rdata))
            .collect()
    }

    fn positive_or_nodata(&self, answers: Vec<Record>) -> Answer {
        if answers.is_empty() {
            Answer {
                code: ResponseCode::NoError,
                soa: vec![self.soa.clone()],
                ..Answer::default()
            }
        } else {
            Answer {
                code: ResponseCode::NoError,
                answers,
                name_servers: vec![self.ns.clone()],
                ..Answer::default()
            }
        }
    }
}

/// What the embedded server did besides answering in full, counted.
#[derive(Debug, Default)]
pub struct ServerCounters {
    /// UDP answers too big for the client's buffer, sent with TC set.
    pub truncated: AtomicU64,
    /// UDP answers over the rate limit sent short, with TC set.
    pub slipped: AtomicU64,
    /// UDP answers over the rate limit dropped.
    pub dropped: AtomicU64,
    /// TCP connections closed at once, past the per-source or total bound.
    pub tcp_refused: AtomicU64,
}

/// The live zone: the current snapshot, swapped whole on every change.
#[derive(Debug)]
pub struct Zone {
    name: Name,
    ttl: u32,
    serial: AtomicU32,
    current: RwLock<Arc<ZoneData>>,
    queries: AtomicU64,
    server: ServerCounters,
    desired: watch::Sender<Arc<DesiredRecords>>,
    /// Whether anyone subscribed to `desired`; until then it stays empty.
    /// Changed only under `current`'s write lock.
    desired_wanted: AtomicBool,
}

impl Zone {
    /// An empty zone named `zone` (no trailing dot needed) with record TTL `ttl`.
    pub fn new(zone: &str, ttl: u32) -> Result<Zone, DnsError> {
        let name = Name::from_str(zone)
            .map(|mut n| {
                n.set_fqdn(true);
                n
            })
            .map_err(|source| DnsError::Zone {
                zone: zone.to_owned(),
                source,
            })?;
        // Serials start at the current Unix time so they keep growing across
        // restarts, as secondaries expect.
        let serial = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or(1);
        let data = ZoneData::build(&name, serial, ttl, &[]).map_err(|source| DnsError::Zone {
            zone: zone.to_owned(),
            source,
        })?;
        Ok(Zone {
            name,
            ttl,
            serial: AtomicU32::new(serial),
            current: RwLock::new(Arc::new(data)),
            queries: AtomicU64::new(0),
            server: ServerCounters::default(),
            desired: watch::Sender::new(Arc::new(DesiredRecords::new())),
            desired_wanted: AtomicBool::new(false),
        })
    }

    /// Replaces the records with those of `nodes`, and hands the new set
    /// to every [`Zone::subscribe`]r.
    pub fn publish(&self, nodes: &[NodeRecordSource]) {
        let started = std::time::Instant::now();
        let serial = self.serial.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        // Without a subscriber, no record set is made at all.
        let built = if self.desired_wanted.load(Ordering::Relaxed) {
            desired_records(&self.name, nodes).and_then(|desired| {
                ZoneData::from_desired(&self.name, serial, self.ttl, &desired)
                    .map(|data| (Some(desired), data))
            })
        } else {
            ZoneData::build(&self.name, serial, self.ttl, nodes).map(|data| (None, data))
        };
        match built {
            Ok((desired, data)) => {
                let records = data.a.len();
                let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
                if self.desired_wanted.load(Ordering::Relaxed) {
                    // A first subscriber may have come while this was built.
                    let desired = desired.unwrap_or_else(|| data.desired());
                    self.desired.send_replace(Arc::new(desired));
                }
                *current = Arc::new(data);
                drop(current);
                tracing::debug!(
                    serial,
                    records,
                    took_ms = started.elapsed().as_millis() as u64,
                    "dns zone published"
                );
            }
            // Every label was validated on the way in; a failure here is a bug,
            // and keeping the previous answers is the safest reaction.
            Err(error) => {
                tracing::error!(%error, "dns zone could not be built; keeping the previous one")
            }
        }
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<ZoneData> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Queries answered since start.
    pub fn queries(&self) -> u64 {
        self.queries.load(Ordering::Relaxed)
    }

    /// Counts one query answered.
    pub(super) fn count_query(&self) {
        self.queries.fetch_add(1, Ordering::Relaxed);
    }

    /// What the embedded server truncated, slipped and dropped.
    pub fn server_counters(&self) -> &ServerCounters {
        &self.server
    }

    /// The zone's name, fully qualified.
    pub fn name(&self) -> &Name {
        &self.name
    }

    /// The TTL of every record.
    pub fn ttl(&self) -> u32 {
        self.ttl
    }

    /// The latest desired record set, now and after every publish. The
    /// receiver sees only the newest set: sets published while it was busy
    /// are skipped, which is what a reconciler wants (the last one wins).
    pub fn subscribe(&self) -> watch::Receiver<Arc<DesiredRecords>> {
        // Under the write lock, so that no publish slips between the
        // snapshot read here and the set sent.
        let current = self.current.write().unwrap_or_else(|p| p.into_inner());
        if !self.desired_wanted.swap(true, Ordering::Relaxed) {
            self.desired.send_replace(Arc::new(current.desired()));
        }
        let receiver = self.desired.subscribe();
        drop(current);
        receiver
    }
}

/// A name as the key of the maps kept by name: its text in lower case,
/// with the trailing dot of a fully qualified name (`n1.web.example.com.`).
/// Two names are equal (ignoring case, as `Name`'s own comparison does)
/// exactly when their keys are, and the key parses back to the name.
pub fn name_key(name: &Name) -> String {
    let mut key = name.to_ascii();
    key.make_ascii_lowercase();
    key
}

#[cfg(test)]
mod tests;
