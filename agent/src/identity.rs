//! Where the agent learns who and where its node is: IMDS on an EC2
//! instance, or the machine itself for a bring-your-own node.
//!
//! The daemon's register, heartbeat and address watch loops only see a
//! [`Source`], so both kinds of node share them: the source gives the
//! [`Identity`] once at start and the current [`Addresses`] whenever the
//! daemon looks again (on its poll, and at once on a local address event).

use muster_proto::{ByonIdentity, RegisterRequest, SignedIdentity, PROTOCOL_VERSION};

use crate::byon::{ByonError, ByonNode};
use crate::imds::{Addresses, ImdsClient, ImdsError};

/// Who and where the node is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The node id: the EC2 instance id, or `m-` and the machine id for a
    /// bring-your-own node. The state file is bound to it.
    pub node_id: String,
    /// The availability zone; empty for a bring-your-own node.
    pub availability_zone: String,
    /// The region; empty for a bring-your-own node.
    pub region: String,
    /// How a bring-your-own node names itself; `None` on EC2.
    pub byon: Option<ByonIdentity>,
    /// The current addresses.
    pub addresses: Addresses,
    /// EC2's signed identity document, sent on every register when IMDS
    /// serves it; `None` for a bring-your-own node.
    pub signed: Option<SignedIdentity>,
}

impl Identity {
    /// The register request for this node in `cluster`, at `addresses`.
    pub fn register_request(&self, cluster: &str, addresses: Addresses) -> RegisterRequest {
        RegisterRequest {
            protocol: PROTOCOL_VERSION,
            cluster: cluster.to_owned(),
            instance_id: self.node_id.clone(),
            availability_zone: self.availability_zone.clone(),
            region: self.region.clone(),
            private_ipv4: addresses.private_ipv4,
            public_ipv4: addresses.public_ipv4,
            ipv6: addresses.ipv6,
            agent_version: crate::AGENT_VERSION.to_owned(),
            byon: self.byon.clone(),
            signed_identity: self.signed.clone(),
        }
    }
}

/// Failures reading the identity or the addresses.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// IMDS did not tell.
    #[error("cannot read from IMDS")]
    Imds(#[source] ImdsError),
    /// The machine did not tell.
    #[error("cannot read the machine's own addresses")]
    Byon(#[source] ByonError),
}

/// Where the identity and the addresses come from.
#[derive(Debug)]
pub enum Source {
    /// IMDSv2, on EC2.
    Imds(ImdsClient),
    /// The machine itself, for a bring-your-own node.
    Byon(ByonNode),
}

impl Source {
    /// What is read, for log lines: `IMDS` or `the local addresses`.
    pub fn what(&self) -> &'static str {
        match self {
            Source::Imds(_) => "IMDS",
            Source::Byon(_) => "the local addresses",
        }
    }

    /// Whether the addresses can never change, so there is nothing to
    /// watch (a bring-your-own node with `--private-ipv4`).
    pub fn fixed(&self) -> bool {
        match self {
            Source::Imds(_) => false,
            Source::Byon(node) => node.fixed(),
        }
    }

    /// Reads who and where the node is.
    pub async fn identity(&self) -> Result<Identity, SourceError> {
        match self {
            Source::Imds(imds) => {
                let identity = imds.identity().await.map_err(SourceError::Imds)?;
                Ok(Identity {
                    node_id: identity.instance_id,
                    availability_zone: identity.availability_zone,
                    region: identity.region,
                    byon: None,
                    addresses: identity.addresses,
                    signed: identity.signed,
                })
            }
            Source::Byon(node) => Ok(Identity {
                node_id: node.node_id(),
                availability_zone: String::new(),
                region: String::new(),
                byon: Some(node.identity()),
                addresses: node.addresses().await.map_err(SourceError::Byon)?,
                signed: None,
            }),
        }
    }

    /// Reads EC2's signed identity document again (IMDS may not have
    /// served it before); `None` for a bring-your-own node.
    pub async fn signed_identity(&self) -> Result<Option<SignedIdentity>, SourceError> {
        match self {
            Source::Imds(imds) => imds.signed_identity().await.map_err(SourceError::Imds),
            Source::Byon(_) => Ok(None),
        }
    }

    /// Reads the current addresses.
    pub async fn addresses(&self) -> Result<Addresses, SourceError> {
        match self {
            Source::Imds(imds) => imds.addresses().await.map_err(SourceError::Imds),
            Source::Byon(node) => node.addresses().await.map_err(SourceError::Byon),
        }
    }

    /// `known` with the public IPv4 read again: the one address that
    /// changes (an Elastic IP associated or released) without a local
    /// address event. One IMDS read instead of three; a bring-your-own
    /// node's own addresses are read whole, which costs no request.
    pub async fn public_ipv4(&self, known: Addresses) -> Result<Addresses, SourceError> {
        match self {
            Source::Imds(imds) => Ok(Addresses {
                public_ipv4: imds.public_ipv4().await.map_err(SourceError::Imds)?,
                ..known
            }),
            Source::Byon(_) => self.addresses().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    /// A bring-your-own source names the node `m-<machine id>` with no zone
    /// or region, and a register built from it passes the coordinator's
    /// checks.
    #[tokio::test]
    async fn byon_identity_makes_a_valid_register() {
        let machine_id = "0123456789abcdef0123456789abcdef";
        let source = Source::Byon(ByonNode {
            hostname: "build-7".into(),
            machine_id: machine_id.into(),
            private_ipv4: Some(Ipv4Addr::new(10, 1, 2, 3)),
            public_ipv4: None,
        });
        assert!(source.fixed());
        let identity = source.identity().await.unwrap();
        assert_eq!(identity.node_id, format!("m-{machine_id}"));
        let request = identity.register_request("web", identity.addresses);
        request.validate().unwrap();
        assert_eq!(request.instance_id, format!("m-{machine_id}"));
        assert_eq!(request.availability_zone, "");
        assert_eq!(request.region, "");
        assert_eq!(request.byon.unwrap().hostname, "build-7");
    }
}
