//! The agent API: what an agent sends on register and heartbeat (who the
//! node is, where it can be reached, how the host is doing) and what the
//! coordinator answers, each with the checks the coordinator applies.

use std::net::{Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use crate::condition::{self, CheckReport, Ec2Notice};
use crate::validate::{self, ValidationError};
use crate::{NodeState, NodeView, MAX_DISKS, PROTOCOL_VERSION};

/// `POST /v1/agent/register`: an agent says who it is and where it can be
/// reached. Authorised by `Authorization: Bearer <join token | node credential>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// [`PROTOCOL_VERSION`] of the agent.
    pub protocol: u32,
    /// The cluster the agent was told to join.
    pub cluster: String,
    /// EC2 instance id from IMDS; for a bring-your-own node, `m-` and its
    /// machine id ([`byon_node_id`]).
    pub instance_id: String,
    /// Availability zone from IMDS; empty for a bring-your-own node.
    pub availability_zone: String,
    /// Region from IMDS; empty for a bring-your-own node.
    pub region: String,
    /// Primary private IPv4 from IMDS; none on an IPv6-only instance,
    /// which must then name its IPv6 address.
    pub private_ipv4: Option<Ipv4Addr>,
    /// Public IPv4 from IMDS, if the instance has one.
    pub public_ipv4: Option<Ipv4Addr>,
    /// The first IPv6 address of the primary network interface, from IMDS
    /// (`network/interfaces/macs/<mac>/ipv6s`), if the instance has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Addr>,
    /// Agent build version, for the operator's eyes.
    pub agent_version: String,
    /// Present when the agent runs where there is no IMDS: a machine that
    /// joins with a bring-your-own token and names itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub byon: Option<ByonIdentity>,
    /// The instance identity document and its PKCS7 signature, as IMDS
    /// gives them; absent on a bring-your-own node. A coordinator
    /// configured with AWS's certificates requires and checks them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_identity: Option<SignedIdentity>,
}

/// Largest instance identity document or PKCS7 signature accepted, in
/// bytes (EC2's are under 2 KiB).
pub const MAX_IDENTITY_BYTES: usize = 4096;

/// EC2's instance identity document, as IMDS serves it at
/// `dynamic/instance-identity/document`, with the signature it serves at
/// `dynamic/instance-identity/pkcs7`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedIdentity {
    /// The JSON document, byte for byte as IMDS gave it: the signature
    /// covers these bytes.
    pub document: String,
    /// The PKCS7 signature: base64 of its DER, without PEM armour.
    pub pkcs7: String,
}

impl SignedIdentity {
    /// Checks sizes and that the signature is base64 text.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.document.is_empty() || self.document.len() > MAX_IDENTITY_BYTES {
            return Err(ValidationError::new(
                "signed_identity.document",
                &self.document,
                "must be 1 to 4096 bytes",
            ));
        }
        let base64 =
            |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'\n' | b'\r');
        if self.pkcs7.is_empty()
            || self.pkcs7.len() > MAX_IDENTITY_BYTES
            || !self.pkcs7.bytes().all(base64)
        {
            return Err(ValidationError::new(
                "signed_identity.pkcs7",
                &self.pkcs7,
                "must be 1 to 4096 bytes of base64",
            ));
        }
        Ok(())
    }
}

/// How a bring-your-own node names itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ByonIdentity {
    /// The node name: the first label of the machine's hostname, lowercase.
    pub hostname: String,
    /// `/etc/machine-id`: what makes it the same node across restarts.
    pub machine_id: String,
}

/// The node id of a bring-your-own node with `machine_id`.
pub fn byon_node_id(machine_id: &str) -> String {
    format!("{}{machine_id}", validate::BYON_ID_PREFIX)
}

impl RegisterRequest {
    /// Checks every field as the coordinator will.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.protocol != PROTOCOL_VERSION {
            return Err(ValidationError::new(
                "protocol",
                &self.protocol.to_string(),
                "is not a protocol version this coordinator speaks",
            ));
        }
        validate::dns_label("cluster", &self.cluster)?;
        match &self.byon {
            None => {
                validate::instance_id(&self.instance_id)?;
                validate::availability_zone(&self.availability_zone)?;
                validate::region(&self.region)?;
                if let Some(signed) = &self.signed_identity {
                    signed.validate()?;
                }
            }
            Some(byon) => {
                if self.signed_identity.is_some() {
                    return Err(ValidationError::new(
                        "signed_identity",
                        "present",
                        "must be absent for a bring-your-own node",
                    ));
                }
                validate::dns_label("hostname", &byon.hostname)?;
                validate::machine_id(&byon.machine_id)?;
                if self.instance_id != byon_node_id(&byon.machine_id) {
                    return Err(ValidationError::new(
                        "instance_id",
                        &self.instance_id,
                        "must be \"m-\" and the machine id for a bring-your-own node",
                    ));
                }
                for (field, value) in [
                    ("availability_zone", &self.availability_zone),
                    ("region", &self.region),
                ] {
                    if !value.is_empty() {
                        return Err(ValidationError::new(
                            field,
                            value,
                            "must be empty for a bring-your-own node",
                        ));
                    }
                }
            }
        }
        validate::node_addresses(self.private_ipv4, self.public_ipv4, self.ipv6)?;
        validate::text("agent_version", &self.agent_version)?;
        Ok(())
    }
}

/// What the coordinator answers to a successful register.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterResponse {
    /// The node this instance is, now and for its whole life.
    pub node: NodeView,
    /// The node credential to present from now on. Each register rotates it.
    pub credential: String,
    /// How often to heartbeat, in milliseconds.
    pub heartbeat_interval_ms: u64,
    /// Up to this many milliseconds of random delay to add to each interval.
    pub heartbeat_jitter_ms: u64,
}

/// `POST /v1/agent/heartbeat`: the agent is alive, here is where it is and
/// how the host is doing. Authorised by `Authorization: Bearer <node credential>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatRequest {
    /// EC2 instance id (or a bring-your-own node's `m-…` id); must be the
    /// one the credential is bound to.
    pub instance_id: String,
    /// Current primary private IPv4 (none on an IPv6-only instance).
    pub private_ipv4: Option<Ipv4Addr>,
    /// Current public IPv4, if any.
    pub public_ipv4: Option<Ipv4Addr>,
    /// Current IPv6 address, if any (see [`RegisterRequest::ipv6`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Addr>,
    /// Host facts gathered by the agent.
    pub facts: HostFacts,
    /// The node's health checks, if it has any: one not passing makes the
    /// node `unhealthy`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<CheckReport>,
    /// The warnings EC2 gives the instance, as IMDS shows them now.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notices: Vec<Ec2Notice>,
    /// Set when the node is leaving (its agent stopping, a Spot
    /// interruption): why. The node is then `draining`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leaving: Option<String>,
    /// The agent's version, as in its register: an agent upgraded in place
    /// keeps its credential and does not register again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
}

impl HeartbeatRequest {
    /// Checks every field as the coordinator will.
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate::node_id(&self.instance_id)?;
        if let Some(version) = &self.agent_version {
            validate::text("agent_version", version)?;
        }
        validate::node_addresses(self.private_ipv4, self.public_ipv4, self.ipv6)?;
        self.facts.validate()?;
        condition::validate(&self.checks, &self.notices, self.leaving.as_deref())
    }
}

/// What the coordinator answers to a heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatResponse {
    /// The node's state after this heartbeat.
    pub state: NodeState,
    /// How often to heartbeat, in milliseconds.
    pub heartbeat_interval_ms: u64,
    /// Up to this many milliseconds of random delay to add to each interval.
    pub heartbeat_jitter_ms: u64,
}

/// Facts about the host, from the agent's view of it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostFacts {
    /// Logical CPUs.
    pub cpus: u32,
    /// Load averages over 1, 5 and 15 minutes.
    pub load_average: [f64; 3],
    /// Total memory in bytes.
    pub memory_total_bytes: u64,
    /// Used memory in bytes.
    pub memory_used_bytes: u64,
    /// Disk usage of `/` and of the data volume mount, if present.
    pub disks: Vec<DiskUsage>,
    /// Seconds since boot.
    pub uptime_secs: u64,
    /// OS name and version, e.g. "Debian GNU/Linux 12".
    pub os: String,
    /// Kernel release.
    pub kernel: String,
}

impl HostFacts {
    /// Bounds every field.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.cpus > 4096 {
            return Err(ValidationError::new(
                "facts.cpus",
                &self.cpus.to_string(),
                "is more than 4096",
            ));
        }
        for load in self.load_average {
            if !load.is_finite() || !(0.0..=1e6).contains(&load) {
                return Err(ValidationError::new(
                    "facts.load_average",
                    &load.to_string(),
                    "must be a finite number between 0 and 1e6",
                ));
            }
        }
        if self.memory_used_bytes > self.memory_total_bytes {
            return Err(ValidationError::new(
                "facts.memory_used_bytes",
                &self.memory_used_bytes.to_string(),
                "is more than memory_total_bytes",
            ));
        }
        if self.disks.len() > MAX_DISKS {
            return Err(ValidationError::new(
                "facts.disks",
                &self.disks.len().to_string(),
                "lists more than 16 disks",
            ));
        }
        for disk in &self.disks {
            validate::text("facts.disks.mount", &disk.mount)?;
            if disk.used_bytes > disk.total_bytes {
                return Err(ValidationError::new(
                    "facts.disks.used_bytes",
                    &disk.used_bytes.to_string(),
                    "is more than total_bytes",
                ));
            }
        }
        validate::text("facts.os", &self.os)?;
        validate::text("facts.kernel", &self.kernel)?;
        Ok(())
    }
}

/// Usage of one mounted filesystem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskUsage {
    /// Mount point, e.g. `/` or `/var/lib/muster-data`.
    pub mount: String,
    /// Size in bytes.
    pub total_bytes: u64,
    /// Used bytes.
    pub used_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn register() -> RegisterRequest {
        RegisterRequest {
            protocol: PROTOCOL_VERSION,
            cluster: "web".into(),
            instance_id: "i-0123456789abcdef0".into(),
            availability_zone: "us-east-1a".into(),
            region: "us-east-1".into(),
            private_ipv4: Some(Ipv4Addr::new(10, 0, 0, 5)),
            public_ipv4: Some(Ipv4Addr::new(54, 1, 2, 3)),
            agent_version: "0.1.0".into(),
            byon: None,
            signed_identity: None,
            ipv6: None,
        }
    }

    /// A register request survives JSON both ways and validates.
    #[test]
    fn register_round_trips() {
        let req = register();
        let json = serde_json::to_string(&req).unwrap();
        let back: RegisterRequest = serde_json::from_str(&json).unwrap();
        assert_eq!(back, req);
        back.validate().unwrap();
    }

    /// Unknown JSON fields are refused, not ignored.
    #[test]
    fn unknown_fields_are_refused() {
        let mut value = serde_json::to_value(register()).unwrap();
        value["admin"] = serde_json::Value::Bool(true);
        let err = serde_json::from_value::<RegisterRequest>(value).unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    /// A protocol version from the future is refused by name.
    #[test]
    fn wrong_protocol_is_refused() {
        let mut req = register();
        req.protocol = 99;
        let err = req.validate().unwrap_err();
        assert_eq!(err.field, "protocol");
    }

    /// Each bad field of a register names itself.
    #[test]
    fn bad_register_fields_name_themselves() {
        type Case = (&'static str, fn(&mut RegisterRequest));
        let cases: Vec<Case> = vec![
            ("cluster", |r| r.cluster = "Web_1".into()),
            ("instance_id", |r| r.instance_id = "i-xyz".into()),
            ("availability_zone", |r| {
                r.availability_zone = "nowhere".into()
            }),
            ("region", |r| r.region = "US East".into()),
            ("private_ipv4", |r| {
                r.private_ipv4 = Some(Ipv4Addr::UNSPECIFIED)
            }),
            ("private_ipv4", |r| r.private_ipv4 = None),
            ("ipv6", |r| r.ipv6 = Some("fe80::1".parse().unwrap())),
            ("public_ipv4", |r| {
                r.public_ipv4 = Some(Ipv4Addr::new(224, 0, 0, 1))
            }),
        ];
        for (field, mutate) in cases {
            let mut req = register();
            mutate(&mut req);
            let err = req.validate().unwrap_err();
            assert_eq!(err.field, field, "{err}");
        }
    }

    /// Facts with impossible numbers are refused.
    #[test]
    fn bad_facts_are_refused() {
        let mut facts = HostFacts {
            memory_total_bytes: 10,
            memory_used_bytes: 11,
            ..HostFacts::default()
        };
        assert!(facts.validate().is_err());
        facts.memory_used_bytes = 5;
        facts.validate().unwrap();
        facts.load_average = [f64::NAN, 0.0, 0.0];
        assert!(facts.validate().is_err());
        facts.load_average = [0.0; 3];
        facts.disks = vec![
            DiskUsage {
                mount: "/".into(),
                total_bytes: 1,
                used_bytes: 0
            };
            MAX_DISKS + 1
        ];
        assert!(facts.validate().is_err());
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    fn ipv4() -> impl Strategy<Value = Ipv4Addr> {
        any::<u32>().prop_map(Ipv4Addr::from)
    }

    fn facts() -> impl Strategy<Value = HostFacts> {
        (
            0u32..512,
            // Loads as multiples of 1/64: exact in binary and in short
            // decimal, so the JSON round trip is exact without relying on
            // the float parser's last-bit rounding.
            prop::array::uniform3((0u32..6400).prop_map(|n| f64::from(n) / 64.0)),
            0u64..(1 << 40),
            prop::collection::vec(("/[a-z]{0,12}", 0u64..(1 << 40)), 0..4),
            any::<u64>(),
            "[ -~]{0,40}",
            "[ -~]{0,40}",
        )
            .prop_map(|(cpus, load, mem, disks, uptime, os, kernel)| HostFacts {
                cpus,
                load_average: load,
                memory_total_bytes: mem,
                memory_used_bytes: mem / 2,
                disks: disks
                    .into_iter()
                    .map(|(mount, total)| DiskUsage {
                        mount,
                        total_bytes: total,
                        used_bytes: total / 3,
                    })
                    .collect(),
                uptime_secs: uptime,
                os,
                kernel,
            })
    }

    proptest! {
        /// Any heartbeat survives JSON both ways unchanged.
        #[test]
        fn heartbeat_round_trips(
            hex in "[0-9a-f]{17}",
            private in ipv4(),
            public in proptest::option::of(ipv4()),
            facts in facts(),
        ) {
            let req = HeartbeatRequest {
                instance_id: format!("i-{hex}"),
                private_ipv4: Some(private),
                public_ipv4: public,
                facts,
                checks: Vec::new(),
                notices: Vec::new(),
                leaving: None,
                agent_version: None,
                ipv6: None,
            };
            let json = serde_json::to_vec(&req).unwrap();
            let back: HeartbeatRequest = serde_json::from_slice(&json).unwrap();
            prop_assert_eq!(back, req);
        }

        /// Arbitrary bytes never panic the decoder or the validator.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(req) = serde_json::from_slice::<RegisterRequest>(&bytes) {
                let _ = req.validate();
            }
            if let Ok(req) = serde_json::from_slice::<HeartbeatRequest>(&bytes) {
                let _ = req.validate();
            }
        }
    }
}
