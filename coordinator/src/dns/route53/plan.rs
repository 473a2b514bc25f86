//! Deciding what to send: who holds each name (from a listing or a fresh
//! read), and the changes that bring a name to its wanted records without
//! touching what muster does not own.

use std::collections::BTreeMap;

use aws_sdk_route53::types::{
    Change as Route53Change, ChangeAction, ResourceRecord, ResourceRecordSet, RrType,
};
use hickory_proto::rr::Name;
use tokio::time::Instant;

use super::limits::change_cost;
use super::{Route53, Route53Error};
use crate::dns::ownership::ownership_name;
use crate::dns::provider::Change;
use crate::dns::{name_key, RecordData};

/// One record set as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RrSet {
    pub(super) ttl: Option<i64>,
    pub(super) values: Vec<String>,
    /// Plain (no alias, weight or other routing): one muster could write.
    pub(super) simple: bool,
}

/// The hosted zone's record sets by [`name_key`], then type (with the set
/// identifier, if any).
pub(super) type Sets = BTreeMap<String, BTreeMap<String, RrSet>>;

#[derive(Debug)]
pub(super) struct Listing {
    pub(super) taken: Instant,
    pub(super) sets: Sets,
}

/// Who holds a name.
pub(super) enum Holder {
    Us,
    Nobody,
    Other(String),
}

/// One record set to put or take away once a request succeeded, by
/// [`name_key`] and type.
pub(super) enum Effect {
    Put(String, String, RrSet),
    Remove(String, String),
}

/// The Route53 changes one muster change needs.
#[derive(Default)]
pub(super) struct Group {
    pub(super) changes: Vec<Route53Change>,
    pub(super) effects: Vec<Effect>,
    pub(super) records: usize,
    pub(super) chars: usize,
}

/// The record types muster writes at a name (beside its ownership TXT).
const KINDS: [&str; 3] = ["A", "AAAA", "CNAME"];

/// What one muster change comes to.
pub(super) enum Plan {
    /// Nothing to send: done already, or nothing of ours there.
    Done,
    /// Left alone, with why.
    Conflict(String),
    /// Send these.
    Write(Group),
}

impl Route53 {
    pub(super) fn holder(&self, sets: &Sets, owner: &str) -> Holder {
        match sets.get(owner).and_then(|types| types.get("TXT")) {
            None => Holder::Nobody,
            Some(txt) if txt.values.len() == 1 && txt.values[0] == self.owner_txt => Holder::Us,
            Some(txt) => Holder::Other(txt.values.join(" ")),
        }
    }

    /// The record sets `data` comes to, by type: A and AAAA (each only if
    /// it holds an address), or one CNAME.
    pub(super) fn wanted(&self, data: &RecordData) -> Vec<(&'static str, RrSet)> {
        let set = |values: Vec<String>| RrSet {
            ttl: Some(i64::from(self.ttl)),
            values,
            simple: true,
        };
        match data {
            RecordData::Addresses(ips) => {
                let of = |v6: bool| -> Vec<String> {
                    ips.iter()
                        .filter(|ip| ip.is_ipv6() == v6)
                        .map(|ip| ip.to_string())
                        .collect()
                };
                [("A", of(false)), ("AAAA", of(true))]
                    .into_iter()
                    .filter(|(_, values)| !values.is_empty())
                    .map(|(kind, values)| (kind, set(values)))
                    .collect()
            }
            RecordData::Cname(target) => vec![("CNAME", set(vec![target.clone()]))],
        }
    }

    /// Decides what one change needs, from the listing.
    pub(super) fn plan(&self, sets: &Sets, change: &Change) -> Result<Plan, Route53Error> {
        let name = match change {
            Change::Upsert { name, .. } | Change::Delete { name } => name,
        };
        let owner = ownership_name(name).map_err(|e| Route53Error::Build {
            name: name.to_ascii(),
            reason: e.to_string(),
        })?;
        let owner_key = name_key(&owner);
        let here = sets.get(&name_key(name));
        let in_use = here.is_some_and(|types| !types.is_empty());
        let mut group = Group::default();
        match (change, self.holder(sets, &owner_key)) {
            (_, Holder::Other(value)) => Ok(Plan::Conflict(format!(
                "the ownership record {} names another owner ({value}); {} is left alone",
                owner.to_ascii(),
                name.to_ascii()
            ))),
            (Change::Upsert { data, .. }, Holder::Us) => {
                let wanted = self.wanted(data);
                // Types of ours the name should no longer have go first.
                for kind in KINDS {
                    if wanted.iter().all(|(k, _)| *k != kind) {
                        if let Some(old) = here.and_then(|types| types.get(kind)) {
                            self.add(&mut group, ChangeAction::Delete, name, kind, old.clone())?;
                        }
                    }
                }
                for (kind, set) in wanted {
                    if here.and_then(|types| types.get(kind)) != Some(&set) {
                        self.add(&mut group, ChangeAction::Upsert, name, kind, set)?;
                    }
                }
                if group.changes.is_empty() {
                    return Ok(Plan::Done);
                }
                Ok(Plan::Write(group))
            }
            (Change::Upsert { data, .. }, Holder::Nobody) => {
                if in_use {
                    return Ok(Plan::Conflict(format!(
                        "{} exists in the hosted zone without muster's ownership record at {}; \
                         it is left alone",
                        name.to_ascii(),
                        owner.to_ascii()
                    )));
                }
                let txt = RrSet {
                    ttl: Some(i64::from(self.ttl)),
                    values: vec![self.owner_txt.clone()],
                    simple: true,
                };
                self.add(&mut group, ChangeAction::Create, &owner, "TXT", txt)?;
                for (kind, set) in self.wanted(data) {
                    self.add(&mut group, ChangeAction::Create, name, kind, set)?;
                }
                Ok(Plan::Write(group))
            }
            (Change::Delete { .. }, Holder::Us) => {
                for kind in KINDS {
                    if let Some(old) = here.and_then(|types| types.get(kind)) {
                        self.add(&mut group, ChangeAction::Delete, name, kind, old.clone())?;
                    }
                }
                if let Some(txt) = sets.get(&owner_key).and_then(|types| types.get("TXT")) {
                    self.add(&mut group, ChangeAction::Delete, &owner, "TXT", txt.clone())?;
                }
                Ok(Plan::Write(group))
            }
            (Change::Delete { .. }, Holder::Nobody) if in_use => Ok(Plan::Conflict(format!(
                "{} is to be deleted but carries no ownership record of muster's at {}; \
                 it is left alone",
                name.to_ascii(),
                owner.to_ascii()
            ))),
            (Change::Delete { .. }, Holder::Nobody) => Ok(Plan::Done),
        }
    }

    /// Adds one Route53 change to `group`.
    pub(super) fn add(
        &self,
        group: &mut Group,
        action: ChangeAction,
        name: &Name,
        kind: &str,
        set: RrSet,
    ) -> Result<(), Route53Error> {
        let build = |e: aws_sdk_route53::error::BuildError| Route53Error::Build {
            name: name.to_ascii(),
            reason: e.to_string(),
        };
        let plain = name.to_ascii();
        // `name_key(name)`, from the text made already.
        let key = plain.to_ascii_lowercase();
        let records = set
            .values
            .iter()
            .map(|v| ResourceRecord::builder().value(v).build().map_err(build))
            .collect::<Result<Vec<_>, _>>()?;
        let record_set = ResourceRecordSet::builder()
            .name(plain.trim_end_matches('.'))
            .r#type(RrType::from(kind))
            .set_ttl(set.ttl)
            .set_resource_records(Some(records))
            .build()
            .map_err(build)?;
        let (records, chars) = change_cost(&action, &set.values);
        group.records += records;
        group.chars += chars;
        group.effects.push(match action {
            ChangeAction::Delete => Effect::Remove(key, kind.to_owned()),
            _ => Effect::Put(key, kind.to_owned(), set),
        });
        group.changes.push(
            Route53Change::builder()
                .action(action)
                .resource_record_set(record_set)
                .build()
                .map_err(build)?,
        );
        Ok(())
    }
}
