//! The views the admin API reads: clusters, nodes and their events, from
//! the store, with what only memory knows (last heard, host facts, checks
//! and EC2's warnings).

use muster_proto::{
    validate, ClusterView, EventPage, NodeDetail, NodeEvent, NodeState, NodeView, ValidationError,
};

use super::{cluster_launch, rfc3339_ms, Registry, RegistryError};
use crate::store::{Cluster, Node};

fn event_view(e: crate::store::Event) -> NodeEvent {
    NodeEvent {
        seq: e.seq,
        at: rfc3339_ms(e.at),
        from: e.from,
        to: e.to,
        reason: e.reason,
        source: e.source,
    }
}

impl Registry {
    pub(super) fn cluster_view(&self, cluster: &Cluster, nodes: &[Node]) -> ClusterView {
        let mine = || nodes.iter().filter(|n| n.cluster == cluster.name);
        ClusterView {
            name: cluster.name.clone(),
            dns_name: muster_proto::cluster_dns_name(&cluster.name, &self.zone_name),
            created_at: rfc3339_ms(cluster.created_at),
            nodes: mine().count() as u64,
            deployed: mine().filter(|n| n.state == NodeState::Deployed).count() as u64,
            states: mine().fold(Default::default(), |mut states, n| {
                *states.entry(n.state).or_default() += 1;
                states
            }),
            state: cluster.state,
            launch: match cluster_launch(cluster) {
                Ok(launch) => launch.map(|l| l.view()),
                Err(error) => {
                    tracing::error!(cluster = %cluster.name, %error, "stored launch unreadable");
                    None
                }
            },
            expires_at: cluster.expires_at.map(rfc3339_ms),
        }
    }

    /// Every cluster.
    pub fn clusters(&self) -> Result<Vec<ClusterView>, RegistryError> {
        let nodes = self.store.nodes(None)?;
        Ok(self
            .store
            .clusters()?
            .iter()
            .map(|c| self.cluster_view(c, &nodes))
            .collect())
    }

    /// One cluster.
    pub fn cluster(&self, name: &str) -> Result<ClusterView, RegistryError> {
        validate::dns_label("cluster", name)?;
        let cluster = self
            .store
            .cluster(name)?
            .ok_or_else(|| RegistryError::NotFound(format!("no cluster {name:?}")))?;
        let nodes = self.store.nodes(Some(name))?;
        Ok(self.cluster_view(&cluster, &nodes))
    }

    pub(super) fn node_view(&self, node: &Node) -> NodeView {
        let live = self.live();
        let extra = live.nodes.get(&node.id);
        let report = extra.and_then(|e| e.report.as_deref());
        NodeView {
            name: node.name.clone(),
            cluster: node.cluster.clone(),
            instance_id: node.instance_id.clone(),
            byon: node.byon,
            state: node.state,
            availability_zone: node.availability_zone.clone(),
            region: node.region.clone(),
            private_ipv4: node.private_ipv4,
            public_ipv4: node.public_ipv4,
            ipv6: node.ipv6,
            dns_name: muster_proto::node_dns_name(&node.name, &node.cluster, &self.zone_name),
            internal_dns_name: muster_proto::node_internal_dns_name(
                &node.name,
                &node.cluster,
                &self.zone_name,
            ),
            created_at: rfc3339_ms(node.created_at),
            updated_at: rfc3339_ms(node.updated_at),
            last_seen_at: extra
                .and_then(|e| e.last_seen)
                .map(|t| humantime::format_rfc3339_millis(t).to_string()),
            facts: extra.and_then(|e| e.facts.as_deref().cloned()),
            checks: report.map(|r| r.checks.clone()).unwrap_or_default(),
            notices: report.map(|r| r.notices.clone()).unwrap_or_default(),
            drained: node.drained,
            agent_version: report.and_then(|r| r.agent_version.clone()),
        }
    }

    /// Every node, optionally of one cluster.
    pub fn nodes(&self, cluster: Option<&str>) -> Result<Vec<NodeView>, RegistryError> {
        if let Some(cluster) = cluster {
            validate::dns_label("cluster", cluster)?;
            if self.store.cluster(cluster)?.is_none() {
                return Err(RegistryError::NotFound(format!("no cluster {cluster:?}")));
            }
        }
        Ok(self
            .store
            .nodes(cluster)?
            .iter()
            .map(|n| self.node_view(n))
            .collect())
    }

    /// One node with its events.
    pub fn node(&self, cluster: &str, name: &str) -> Result<NodeDetail, RegistryError> {
        let node = self.stored_node(cluster, name)?;
        let events = self
            .store
            .latest_events(node.id, muster_proto::EVENTS_IN_DETAIL)?
            .into_iter()
            .map(event_view)
            .collect();
        Ok(NodeDetail {
            node: self.node_view(&node),
            events,
            events_total: self.store.events_total(node.id)?,
        })
    }

    /// What a node's names answer on the embedded DNS server now: its
    /// public and internal names, a name under its wildcard, and its
    /// cluster's round robin; A, AAAA, or the wildcard's CNAME.
    pub fn node_names(
        &self,
        cluster: &str,
        name: &str,
    ) -> Result<muster_proto::status::NodeNames, RegistryError> {
        use hickory_proto::rr::{LowerName, Name, RData, RecordType};
        let node = self.stored_node(cluster, name)?;
        let zone = &self.zone_name;
        let public = muster_proto::node_dns_name(&node.name, &node.cluster, zone);
        let names = [
            public.clone(),
            muster_proto::node_internal_dns_name(&node.name, &node.cluster, zone),
            format!("www.{public}"),
            muster_proto::cluster_dns_name(&node.cluster, zone),
        ];
        let snapshot = self.zone().snapshot();
        let mut answers = Vec::new();
        for asked in names {
            let Ok(qname) = Name::from_ascii(format!("{asked}.")) else {
                continue;
            };
            let qname = LowerName::from(&qname);
            let mut found = Vec::new();
            for qtype in [RecordType::A, RecordType::AAAA] {
                for record in snapshot.lookup(&qname, qtype).answers {
                    let (kind, text) = match record.data() {
                        RData::A(a) => ("A", a.to_string()),
                        RData::AAAA(aaaa) => ("AAAA", aaaa.to_string()),
                        RData::CNAME(cname) => ("CNAME", cname.0.to_ascii()),
                        _ => continue,
                    };
                    let entry = match found.iter_mut().find(|(k, _)| *k == kind) {
                        Some(entry) => entry,
                        None => {
                            found.push((kind, Vec::new()));
                            found.last_mut().expect("just pushed")
                        }
                    };
                    if !entry.1.contains(&text) {
                        entry.1.push(text);
                    }
                }
            }
            if found.is_empty() {
                found.push(("A", Vec::new()));
            }
            answers.extend(found.into_iter().map(|(kind, found)| {
                muster_proto::status::NameAnswer {
                    name: asked.clone(),
                    kind: kind.to_owned(),
                    answers: found,
                }
            }));
        }
        Ok(muster_proto::status::NodeNames { names: answers })
    }

    /// One page of a node's events: up to `limit` after sequence `after`.
    pub fn node_events(
        &self,
        cluster: &str,
        name: &str,
        after: i64,
        limit: usize,
    ) -> Result<EventPage, RegistryError> {
        if after < 0 {
            return Err(
                ValidationError::new("after", &after.to_string(), "must not be negative").into(),
            );
        }
        if !(1..=muster_proto::MAX_EVENTS_PER_PAGE).contains(&limit) {
            return Err(ValidationError::new(
                "limit",
                &limit.to_string(),
                "must be between 1 and 1000",
            )
            .into());
        }
        let node = self.stored_node(cluster, name)?;
        // One more than asked tells whether another page follows.
        let mut events = self.store.events_after(node.id, after, limit + 1)?;
        let more = events.len() > limit;
        events.truncate(limit);
        let next_after = if more {
            events.last().map(|e| e.seq)
        } else {
            None
        };
        Ok(EventPage {
            events: events.into_iter().map(event_view).collect(),
            next_after,
        })
    }

    pub(super) fn stored_node(&self, cluster: &str, name: &str) -> Result<Node, RegistryError> {
        validate::dns_label("cluster", cluster)?;
        validate::dns_label("node", name)?;
        self.store.node(cluster, name)?.ok_or_else(|| {
            RegistryError::NotFound(format!("no node {name:?} in cluster {cluster:?}"))
        })
    }
}
