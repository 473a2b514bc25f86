//! The RFC 2136 provider: dynamic updates, signed with TSIG (RFC 8945), to
//! an existing primary server (BIND, Knot, PowerDNS).
//!
//! # Guarded updates
//! Every name muster writes has an ownership record beside it
//! ([`super::ownership`]). Every update carries prerequisites (RFC 2136 §2.4), so the server itself
//! refuses to let muster touch what it does not own, with no race between a
//! read and a write:
//! - owned update: "the ownership TXT RRset is exactly ours", then delete the
//!   name's A and CNAME RRsets and add the new ones;
//! - create: "the name is not in use" and "its ownership name is not in
//!   use", then add both;
//! - delete: "the ownership TXT RRset is exactly ours", then delete the
//!   name's records and the ownership TXT. If that prerequisite fails, a
//!   message with only "the name is not in use" tells whether the name is
//!   gone (done) or someone else's (a conflict, left alone).
//!
//! A name whose owned update fails (no ownership record) and whose create
//! fails (the name is in use) belongs to someone else: that is a conflict,
//! reported and left alone.
//!
//! # Transport
//! One TCP connection per batch, messages in turn, each signed with
//! hickory's [`TSigner`] and its answer verified. The DNS framing over TCP
//! (a two-byte length) is done here rather than through hickory's
//! multiplexer, because the answer to a request with a wrong key is an
//! unsigned NOTAUTH: hickory's verifier turns it into a misleading error
//! about truncated MACs, while seeing the raw answer lets us say what is
//! wrong.
//!
//! Owned updates of names the reconciler believes it owns are sent many to a
//! message; if the server refuses such a batch on a prerequisite, its names
//! are retried one by one to find the one at fault.

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hickory_proto::dnssec::rdata::tsig::TsigAlgorithm as HickoryTsigAlgorithm;
use hickory_proto::dnssec::tsig::TSigner;
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode, UpdateMessage};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::ownership::{owner_value, ownership_name};
use super::provider::{Applied, Change, DnsProvider, Outcome, ProviderError};
use super::RecordData;
use crate::config::{Rfc2136Settings, TsigAlgorithm};

/// How long one connect or one exchange may take.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);

/// How far apart the clocks of muster and the server may be (RFC 8945's
/// recommended fudge).
const TSIG_FUDGE: u16 = 300;

/// Most names in one batched update message.
const BATCH_NAMES: usize = 32;

/// Errors talking to the primary.
#[derive(Debug, thiserror::Error)]
pub enum Rfc2136Error {
    /// The TSIG key could not be made.
    #[error("TSIG key {key_name:?}: {reason}")]
    Key {
        /// The key's name.
        key_name: String,
        /// Why.
        reason: String,
    },
    /// A name could not be formed or a message encoded or decoded.
    #[error("DNS message for {server}: {source}")]
    Message {
        /// The server.
        server: String,
        /// The cause.
        source: hickory_proto::ProtoError,
    },
    /// The server could not be reached.
    #[error("connecting to {server}: {source}")]
    Connect {
        /// The server.
        server: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Sending or receiving failed.
    #[error("talking to {server}: {source}")]
    Io {
        /// The server.
        server: String,
        /// The cause.
        source: std::io::Error,
    },
    /// No answer in time.
    #[error("{server} did not answer within {EXCHANGE_TIMEOUT:?}")]
    Timeout {
        /// The server.
        server: String,
    },
    /// The server did not accept the TSIG signature.
    #[error(
        "{server} refused the TSIG signature of key {key_name:?} ({algorithm}) with NOTAUTH: \
         the key name, secret or algorithm differ from the server's, or the clocks are more \
         than {TSIG_FUDGE} s apart"
    )]
    TsigRefused {
        /// The server.
        server: String,
        /// The key's name.
        key_name: String,
        /// The algorithm.
        algorithm: &'static str,
    },
    /// The answer was not signed, or its signature is not valid.
    #[error("the answer from {server} failed TSIG verification: {reason}")]
    Unverified {
        /// The server.
        server: String,
        /// Why.
        reason: String,
    },
    /// The server does not allow this key to update the zone.
    #[error(
        "{server} REFUSED the update of zone {zone}: it does not allow updates with key \
         {key_name:?} (see allow-update or update-policy)"
    )]
    Refused {
        /// The server.
        server: String,
        /// The zone.
        zone: String,
        /// The key's name.
        key_name: String,
    },
    /// The server is not the primary of the zone.
    #[error("{server} is not authoritative for zone {zone} ({rcode})")]
    NotAuthoritative {
        /// The server.
        server: String,
        /// The zone.
        zone: String,
        /// NOTAUTH or NOTZONE.
        rcode: ResponseCode,
    },
    /// Any other failure answer.
    #[error("{server} answered {rcode} to the update of {name}")]
    Failed {
        /// The server.
        server: String,
        /// The first name in the message.
        name: String,
        /// The answer's code.
        rcode: ResponseCode,
    },
}

/// Writes the zone's records to one primary with signed dynamic updates.
#[derive(Clone)]
pub struct Rfc2136 {
    server: String,
    zone: Name,
    key_name: String,
    algorithm: TsigAlgorithm,
    signer: TSigner,
    ttl: u32,
    owner_value: String,
}

impl std::fmt::Debug for Rfc2136 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rfc2136")
            .field("server", &self.server)
            .field("zone", &self.zone)
            .field("key_name", &self.key_name)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

/// What one message did.
enum Reply {
    /// NOERROR.
    Done,
    /// A prerequisite did not hold (YXDOMAIN, NXRRSET, YXRRSET, NXDOMAIN).
    Prerequisite(ResponseCode),
}

impl Rfc2136 {
    /// A provider for `settings`, writing records with `ttl` and marking them
    /// as owned by `owner`.
    pub fn new(settings: &Rfc2136Settings, owner: &str, ttl: u32) -> Result<Rfc2136, Rfc2136Error> {
        let message = |source| Rfc2136Error::Message {
            server: settings.server.clone(),
            source,
        };
        let mut zone = Name::from_ascii(&settings.zone).map_err(message)?;
        zone.set_fqdn(true);
        let key = Name::from_ascii(&settings.key_name).map_err(message)?;
        let algorithm = match settings.algorithm {
            TsigAlgorithm::HmacSha256 => HickoryTsigAlgorithm::HmacSha256,
            TsigAlgorithm::HmacSha384 => HickoryTsigAlgorithm::HmacSha384,
            TsigAlgorithm::HmacSha512 => HickoryTsigAlgorithm::HmacSha512,
        };
        let signer =
            TSigner::new(settings.secret.clone(), algorithm, key, TSIG_FUDGE).map_err(|e| {
                Rfc2136Error::Key {
                    key_name: settings.key_name.clone(),
                    reason: e.to_string(),
                }
            })?;
        Ok(Rfc2136 {
            server: settings.server.clone(),
            zone,
            key_name: settings.key_name.clone(),
            algorithm: settings.algorithm,
            signer,
            ttl,
            owner_value: owner_value(owner),
        })
    }

    fn message_error(&self, source: hickory_proto::ProtoError) -> Rfc2136Error {
        Rfc2136Error::Message {
            server: self.server.clone(),
            source,
        }
    }

    /// An empty update message for the zone.
    fn update(&self) -> Message {
        let mut zone = Query::new();
        zone.set_name(self.zone.clone())
            .set_query_class(DNSClass::IN)
            .set_query_type(RecordType::SOA);
        let mut message = Message::new();
        message
            .set_message_type(MessageType::Query)
            .set_op_code(OpCode::Update)
            .set_recursion_desired(false);
        message.add_zone(zone);
        message
    }

    fn owner_txt(&self, owner: Name, ttl: u32) -> Record {
        Record::from_rdata(
            owner,
            ttl,
            RData::TXT(TXT::new(vec![self.owner_value.clone()])),
        )
    }

    /// "The RRset `name` `kind` is gone": an update record.
    fn delete_rrset(name: Name, kind: RecordType) -> Record {
        let mut record = Record::update0(name, 0, kind).into_record_of_rdata();
        record.set_dns_class(DNSClass::ANY);
        record
    }

    /// "No record of any type at `name`": a prerequisite.
    fn not_in_use(name: Name) -> Record {
        let mut record = Record::update0(name, 0, RecordType::ANY).into_record_of_rdata();
        record.set_dns_class(DNSClass::NONE);
        record
    }

    fn records(&self, name: &Name, data: &RecordData) -> Result<Vec<Record>, Rfc2136Error> {
        Ok(match data {
            RecordData::Addresses(ips) => ips
                .iter()
                .map(|ip| {
                    let rdata = match ip {
                        IpAddr::V4(v4) => RData::A(A(*v4)),
                        IpAddr::V6(v6) => RData::AAAA(AAAA(*v6)),
                    };
                    Record::from_rdata(name.clone(), self.ttl, rdata)
                })
                .collect(),
            RecordData::Cname(target) => {
                let target = Name::from_ascii(target).map_err(|e| self.message_error(e))?;
                vec![Record::from_rdata(
                    name.clone(),
                    self.ttl,
                    RData::CNAME(CNAME(target)),
                )]
            }
        })
    }

    /// Adds "replace `name`'s records, if ours" to `message`.
    fn add_owned_upsert(
        &self,
        message: &mut Message,
        name: &Name,
        data: &RecordData,
    ) -> Result<(), Rfc2136Error> {
        let owner = ownership_name(name).map_err(|e| self.message_error(e))?;
        message.add_pre_requisite(self.owner_txt(owner, 0));
        message.add_update(Self::delete_rrset(name.clone(), RecordType::A));
        message.add_update(Self::delete_rrset(name.clone(), RecordType::AAAA));
        message.add_update(Self::delete_rrset(name.clone(), RecordType::CNAME));
        message.add_updates(self.records(name, data)?);
        Ok(())
    }

    /// A message "create `name` and its ownership record, if both are free".
    fn create(&self, name: &Name, data: &RecordData) -> Result<Message, Rfc2136Error> {
        let owner = ownership_name(name).map_err(|e| self.message_error(e))?;
        let mut message = self.update();
        message.add_pre_requisite(Self::not_in_use(name.clone()));
        message.add_pre_requisite(Self::not_in_use(owner.clone()));
        message.add_update(self.owner_txt(owner, self.ttl));
        message.add_updates(self.records(name, data)?);
        Ok(message)
    }

    /// A message that changes nothing and holds only if `name` is not in
    /// use: asks whether a name is free.
    fn free(&self, name: &Name) -> Message {
        let mut message = self.update();
        message.add_pre_requisite(Self::not_in_use(name.clone()));
        message
    }

    /// A message "delete `name` and its ownership record, if ours".
    fn owned_delete(&self, name: &Name) -> Result<Message, Rfc2136Error> {
        let owner = ownership_name(name).map_err(|e| self.message_error(e))?;
        let mut message = self.update();
        message.add_pre_requisite(self.owner_txt(owner.clone(), 0));
        message.add_update(Self::delete_rrset(name.clone(), RecordType::A));
        message.add_update(Self::delete_rrset(name.clone(), RecordType::AAAA));
        message.add_update(Self::delete_rrset(name.clone(), RecordType::CNAME));
        message.add_update(Self::delete_rrset(owner, RecordType::TXT));
        Ok(message)
    }

    async fn connect(&self) -> Result<TcpStream, Rfc2136Error> {
        match tokio::time::timeout(EXCHANGE_TIMEOUT, TcpStream::connect(&self.server)).await {
            Err(_) => Err(Rfc2136Error::Timeout {
                server: self.server.clone(),
            }),
            Ok(Err(source)) => Err(Rfc2136Error::Connect {
                server: self.server.clone(),
                source,
            }),
            Ok(Ok(stream)) => Ok(stream),
        }
    }

    /// Signs `message`, sends it, and checks the answer's signature and code.
    async fn exchange(
        &self,
        stream: &mut TcpStream,
        mut message: Message,
    ) -> Result<Reply, Rfc2136Error> {
        let first_name = message
            .updates()
            .first()
            .map(|r| r.name().to_ascii())
            .unwrap_or_else(|| self.zone.to_ascii());
        message.set_id(rand::random());
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or_default();
        let verifier = message
            .finalize(&self.signer, now)
            .map_err(|e| self.message_error(e))?;
        let bytes = message.to_vec().map_err(|e| self.message_error(e))?;
        let length = u16::try_from(bytes.len()).map_err(|_| {
            self.message_error(hickory_proto::ProtoError::from(
                "the update message is longer than 65535 bytes",
            ))
        })?;
        let answer = self.round_trip(stream, length, &bytes).await?;
        let response = Message::from_vec(&answer).map_err(|e| self.message_error(e))?;
        if response.id() != message.id() {
            return Err(self.message_error(hickory_proto::ProtoError::from(
                "the answer does not match the request's id",
            )));
        }
        let verified = match (response.signature().is_empty(), verifier) {
            (true, _) => Err("the answer carries no TSIG record".to_owned()),
            (false, None) => Err("no verifier for a signed request".to_owned()),
            (false, Some(mut verify)) => verify(&answer).map(|_| ()).map_err(|e| e.to_string()),
        };
        self.judge(response.response_code(), verified, first_name)
    }

    /// Sends one framed message (`length` then `bytes`) and reads the
    /// framed answer, within [`EXCHANGE_TIMEOUT`].
    async fn round_trip(
        &self,
        stream: &mut TcpStream,
        length: u16,
        bytes: &[u8],
    ) -> Result<Vec<u8>, Rfc2136Error> {
        let io = |source| Rfc2136Error::Io {
            server: self.server.clone(),
            source,
        };
        tokio::time::timeout(EXCHANGE_TIMEOUT, async {
            stream.write_all(&length.to_be_bytes()).await?;
            stream.write_all(bytes).await?;
            let length = stream.read_u16().await?;
            let mut answer = vec![0; usize::from(length)];
            stream.read_exact(&mut answer).await?;
            Ok(answer)
        })
        .await
        .map_err(|_| Rfc2136Error::Timeout {
            server: self.server.clone(),
        })?
        .map_err(io)
    }

    /// What an answer with `rcode` means, given whether its signature
    /// `verified` (and why not); `first_name` names the message's first
    /// update in an error.
    fn judge(
        &self,
        rcode: ResponseCode,
        verified: Result<(), String>,
        first_name: String,
    ) -> Result<Reply, Rfc2136Error> {
        match (rcode, verified) {
            // A request with a bad key, signature or time gets an answer the
            // server could not sign with our key.
            (ResponseCode::NotAuth, Err(_)) => Err(Rfc2136Error::TsigRefused {
                server: self.server.clone(),
                key_name: self.key_name.clone(),
                algorithm: self.algorithm.as_str(),
            }),
            (_, Err(reason)) => Err(Rfc2136Error::Unverified {
                server: self.server.clone(),
                reason,
            }),
            (ResponseCode::NoError, Ok(())) => Ok(Reply::Done),
            (
                ResponseCode::YXDomain
                | ResponseCode::YXRRSet
                | ResponseCode::NXRRSet
                | ResponseCode::NXDomain,
                Ok(()),
            ) => Ok(Reply::Prerequisite(rcode)),
            (ResponseCode::Refused, Ok(())) => Err(Rfc2136Error::Refused {
                server: self.server.clone(),
                zone: self.zone.to_ascii(),
                key_name: self.key_name.clone(),
            }),
            (ResponseCode::NotAuth | ResponseCode::NotZone, Ok(())) => {
                Err(Rfc2136Error::NotAuthoritative {
                    server: self.server.clone(),
                    zone: self.zone.to_ascii(),
                    rcode,
                })
            }
            (rcode, Ok(())) => Err(Rfc2136Error::Failed {
                server: self.server.clone(),
                name: first_name,
                rcode,
            }),
        }
    }

    /// Writes one name: owned update first when we believe we own it,
    /// create first otherwise, the other one as the fallback.
    async fn upsert_one(
        &self,
        stream: &mut TcpStream,
        name: &Name,
        data: &RecordData,
        believed_owned: bool,
    ) -> Result<Outcome, Rfc2136Error> {
        let owned = || -> Result<Message, Rfc2136Error> {
            let mut message = self.update();
            self.add_owned_upsert(&mut message, name, data)?;
            Ok(message)
        };
        let (first, second) = if believed_owned {
            (owned()?, self.create(name, data)?)
        } else {
            (self.create(name, data)?, owned()?)
        };
        if let Reply::Done = self.exchange(stream, first).await? {
            return Ok(Outcome::Applied);
        }
        match self.exchange(stream, second).await? {
            Reply::Done => Ok(Outcome::Applied),
            Reply::Prerequisite(rcode) => Ok(Outcome::Conflict(format!(
                "{} exists in zone {} without muster's ownership record at {} ({rcode}); \
                 it is left alone",
                name.to_ascii(),
                self.zone.to_ascii(),
                ownership_name(name)
                    .map(|n| n.to_ascii())
                    .unwrap_or_default(),
            ))),
        }
    }

    async fn apply_on(
        &self,
        stream: &mut TcpStream,
        changes: &[Change],
        outcomes: &mut Vec<Outcome>,
    ) -> Result<(), Rfc2136Error> {
        let mut at = 0;
        while at < changes.len() {
            // A run of owned upserts goes in one message.
            let run = changes[at..]
                .iter()
                .take(BATCH_NAMES)
                .take_while(|c| matches!(c, Change::Upsert { owned: true, .. }))
                .count();
            if run > 1 {
                let mut message = self.update();
                for change in &changes[at..at + run] {
                    if let Change::Upsert { name, data, .. } = change {
                        self.add_owned_upsert(&mut message, name, data)?;
                    }
                }
                if let Reply::Done = self.exchange(stream, message).await? {
                    outcomes.extend((0..run).map(|_| Outcome::Applied));
                    at += run;
                    continue;
                }
                // One of them is not ours any more: one by one below.
            }
            let end = at + run.max(1);
            for change in &changes[at..end] {
                let outcome = match change {
                    Change::Upsert { name, data, owned } => {
                        self.upsert_one(stream, name, data, *owned).await?
                    }
                    Change::Delete { name } => {
                        match self.exchange(stream, self.owned_delete(name)?).await? {
                            Reply::Done => Outcome::Applied,
                            // Not ours (any more): gone already, or someone
                            // else's now.
                            Reply::Prerequisite(rcode) => {
                                match self.exchange(stream, self.free(name)).await? {
                                    Reply::Done => Outcome::Applied,
                                    Reply::Prerequisite(_) => Outcome::Conflict(format!(
                                        "{} is to be deleted but carries no ownership record of \
                                         muster's at {} ({rcode}); it is left alone",
                                        name.to_ascii(),
                                        ownership_name(name)
                                            .map(|n| n.to_ascii())
                                            .unwrap_or_default(),
                                    )),
                                }
                            }
                        }
                    }
                };
                outcomes.push(outcome);
            }
            at = end;
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl DnsProvider for Rfc2136 {
    fn kind(&self) -> &'static str {
        "rfc2136"
    }

    fn target(&self) -> String {
        format!("{} zone {}", self.server, self.zone.to_ascii())
    }

    async fn apply(&self, changes: &[Change]) -> Applied {
        let mut outcomes = Vec::with_capacity(changes.len());
        let result = match self.connect().await {
            Ok(mut stream) => self.apply_on(&mut stream, changes, &mut outcomes).await,
            Err(error) => Err(error),
        };
        Applied {
            outcomes,
            error: result.err().map(ProviderError::from),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn provider() -> Rfc2136 {
        Rfc2136::new(
            &Rfc2136Settings {
                server: "127.0.0.1:53".into(),
                zone: "muster.test".into(),
                key_name: "muster-key".into(),
                algorithm: TsigAlgorithm::HmacSha256,
                secret: vec![7; 32],
            },
            "c0ffee",
            30,
        )
        .unwrap()
    }

    /// An owned update is guarded by the exact ownership TXT and replaces
    /// the A, AAAA and CNAME RRsets (an address of each family becomes its
    /// record); a create is guarded by "not in use".
    #[test]
    fn prerequisites_guard_every_update() {
        let p = provider();
        let name = Name::from_str("n1.web.muster.test.").unwrap();
        let v6: std::net::Ipv6Addr = "2600:1f18::1".parse().unwrap();
        let data = RecordData::Addresses(vec![
            IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1)),
            IpAddr::V6(v6),
        ]);
        let mut owned = p.update();
        p.add_owned_upsert(&mut owned, &name, &data).unwrap();
        let prereqs = owned.prerequisites();
        assert_eq!(prereqs.len(), 1);
        assert_eq!(prereqs[0].record_type(), RecordType::TXT);
        assert_eq!(prereqs[0].dns_class(), DNSClass::IN);
        assert_eq!(prereqs[0].name().to_ascii(), "_muster.n1.web.muster.test.");
        let updates = owned.updates();
        assert_eq!(updates.len(), 5);
        assert!(updates[..3].iter().all(|u| u.dns_class() == DNSClass::ANY));
        let deleted: Vec<RecordType> = updates[..3].iter().map(|u| u.record_type()).collect();
        assert_eq!(
            deleted,
            vec![RecordType::A, RecordType::AAAA, RecordType::CNAME]
        );
        assert!(
            matches!(updates[3].data(), RData::A(a) if a.0 == std::net::Ipv4Addr::new(192, 0, 2, 1))
        );
        assert!(matches!(updates[4].data(), RData::AAAA(a) if a.0 == v6));

        let create = p.create(&name, &data).unwrap();
        assert!(create
            .prerequisites()
            .iter()
            .all(|r| r.dns_class() == DNSClass::NONE && r.record_type() == RecordType::ANY));
        assert_eq!(create.prerequisites().len(), 2);
        assert!(create.updates().iter().any(
            |r| matches!(r.data(), RData::TXT(t) if t.to_string().contains("muster/owner=c0ffee"))
        ));

        let delete = p.owned_delete(&name).unwrap();
        assert_eq!(delete.prerequisites()[0].record_type(), RecordType::TXT);
        assert!(delete
            .updates()
            .iter()
            .all(|r| r.dns_class() == DNSClass::ANY));
    }
}
