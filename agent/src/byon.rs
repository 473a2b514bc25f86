//! Who and where a bring-your-own (BYON) node is, from the machine itself.
//!
//! A BYON node is a machine muster did not launch: there may be no IMDS at
//! all, so nothing is asked of it. The node is named after the machine:
//!
//! - its id is `m-` and the machine id ([`muster_proto::byon_node_id`]),
//!   read from `/etc/machine-id` (or `--machine-id-file`): what makes it the
//!   same node across restarts, and what the state file is bound to;
//! - its name is the first label of the system hostname, lowercased (or
//!   `--hostname`), which must be a DNS label;
//! - its private IPv4 is `--private-ipv4` if given, else the source address
//!   the kernel picks for the default route ([`primary_ipv4`]); its public
//!   IPv4 is `--public-ipv4`, or none.
//!
//! The identity is read and checked once, with the settings
//! ([`crate::settings`]): a bad machine id or hostname stops the agent with
//! exit 64. The private address is read again whenever the daemon looks for
//! address changes, unless it was given.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use muster_proto::{validate, ByonIdentity};

use crate::imds::Addresses;

/// An address in TEST-NET-1 (RFC 5737): never routed anywhere, so that
/// asking for a route to it finds the default route. Connecting a UDP
/// socket sends nothing.
const PROBE: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 9);

/// Failures learning who or where the machine is.
#[derive(Debug, thiserror::Error)]
pub enum ByonError {
    /// The machine-id file could not be read.
    #[error("cannot read {path}")]
    ReadMachineId {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The machine-id file does not hold a machine id.
    #[error("{path} does not hold a machine id")]
    InvalidMachineId {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: validate::ValidationError,
    },
    /// The system hostname could not be read.
    #[error("cannot read the system hostname")]
    ReadHostname(#[source] nix::Error),
    /// The system hostname is not text.
    #[error("the system hostname {hostname:?} is not UTF-8")]
    HostnameNotText {
        /// The hostname, lossily.
        hostname: String,
    },
    /// No route to pick a source address from.
    #[error(
        "cannot find the machine's primary IPv4 (no default route?); \
         pass --private-ipv4"
    )]
    NoRoute(#[source] io::Error),
    /// The kernel would send from an address neighbours cannot reach.
    #[error(
        "the machine's primary IPv4 would be {address}, which neighbours cannot reach; \
         pass --private-ipv4"
    )]
    Unusable {
        /// The address the kernel would use.
        address: IpAddr,
    },
}

/// Reads the machine id from `path`: trimmed, and checked to be 32
/// lowercase hex digits, not all zero.
pub fn read_machine_id(path: &Path) -> Result<String, ByonError> {
    let text = std::fs::read_to_string(path).map_err(|source| ByonError::ReadMachineId {
        path: path.to_path_buf(),
        source,
    })?;
    let id = text.trim();
    validate::machine_id(id).map_err(|source| ByonError::InvalidMachineId {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(id.to_owned())
}

/// The system hostname, as the kernel has it (`gethostname(2)`).
pub fn system_hostname() -> Result<String, ByonError> {
    let name = nix::unistd::gethostname().map_err(ByonError::ReadHostname)?;
    name.into_string()
        .map_err(|name| ByonError::HostnameNotText {
            hostname: name.to_string_lossy().into_owned(),
        })
}

/// The node name a hostname gives: its first label, lowercased. The result
/// still has to pass [`validate::dns_label`].
pub fn node_name(hostname: &str) -> String {
    hostname
        .trim()
        .split('.')
        .next()
        .unwrap_or_default()
        .to_lowercase()
}

/// The IPv4 the kernel would send from on the default route: the machine's
/// primary address. Loopback, unspecified and other unusable addresses are
/// refused, asking for `--private-ipv4`.
pub async fn primary_ipv4() -> Result<Ipv4Addr, ByonError> {
    let socket = tokio::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
        .await
        .map_err(ByonError::NoRoute)?;
    socket.connect(PROBE).await.map_err(ByonError::NoRoute)?;
    let local = socket.local_addr().map_err(ByonError::NoRoute)?;
    usable_private(local.ip())
}

/// Checks that `address` is one a neighbour could reach the node at.
fn usable_private(address: IpAddr) -> Result<Ipv4Addr, ByonError> {
    match address {
        IpAddr::V4(v4) if !v4.is_loopback() && validate::host_ipv4("private_ipv4", v4).is_ok() => {
            Ok(v4)
        }
        _ => Err(ByonError::Unusable { address }),
    }
}

/// A bring-your-own node as the settings describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ByonNode {
    /// The node name (a DNS label).
    pub hostname: String,
    /// The machine id (32 lowercase hex digits).
    pub machine_id: String,
    /// The private IPv4, if given; else it is read from the machine.
    pub private_ipv4: Option<Ipv4Addr>,
    /// The public IPv4, if given.
    pub public_ipv4: Option<Ipv4Addr>,
}

impl ByonNode {
    /// The node id: `m-` and the machine id.
    pub fn node_id(&self) -> String {
        muster_proto::byon_node_id(&self.machine_id)
    }

    /// What the register request carries about the machine.
    pub fn identity(&self) -> ByonIdentity {
        ByonIdentity {
            hostname: self.hostname.clone(),
            machine_id: self.machine_id.clone(),
        }
    }

    /// Whether the addresses were all given, so that there is nothing to
    /// watch.
    pub fn fixed(&self) -> bool {
        self.private_ipv4.is_some()
    }

    /// The current addresses: the given private IPv4, else the machine's
    /// primary one; the given public IPv4, if any.
    pub async fn addresses(&self) -> Result<Addresses, ByonError> {
        let private_ipv4 = match self.private_ipv4 {
            Some(address) => address,
            None => primary_ipv4().await?,
        };
        Ok(Addresses {
            private_ipv4: Some(private_ipv4),
            public_ipv4: self.public_ipv4,
            ipv6: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef";

    /// A machine-id file is trimmed and checked; a missing, empty, short,
    /// uppercase or all-zero one is refused, naming the file.
    #[test]
    fn machine_id_is_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("machine-id");
        std::fs::write(&path, format!("{ID}\n")).unwrap();
        assert_eq!(read_machine_id(&path).unwrap(), ID);

        for bad in [
            "",
            "uninitialized\n",
            &ID[1..],
            &ID.to_uppercase(),
            &"0".repeat(32),
        ] {
            std::fs::write(&path, bad).unwrap();
            let err = read_machine_id(&path).unwrap_err();
            assert!(
                matches!(err, ByonError::InvalidMachineId { .. }),
                "{bad:?}: {err:?}"
            );
            assert!(crate::error_chain(&err).contains("machine-id"), "{err}");
        }
        let err = read_machine_id(&dir.path().join("missing")).unwrap_err();
        assert!(matches!(err, ByonError::ReadMachineId { .. }), "{err:?}");
    }

    /// A hostname gives its first label, lowercased.
    #[test]
    fn node_name_is_the_first_label() {
        assert_eq!(node_name("Build-7.corp.example.com"), "build-7");
        assert_eq!(node_name("db1\n"), "db1");
        assert_eq!(node_name(""), "");
        assert!(validate::dns_label("hostname", &node_name("my_host.lan")).is_err());
    }

    /// Loopback, unspecified and IPv6 source addresses are refused, asking
    /// for --private-ipv4; an ordinary address is taken.
    #[test]
    fn unusable_primary_addresses_are_refused() {
        for bad in ["127.0.0.1", "0.0.0.0", "::1", "224.0.0.1"] {
            let err = usable_private(bad.parse().unwrap()).unwrap_err();
            assert!(err.to_string().contains("pass --private-ipv4"), "{err}");
        }
        assert_eq!(
            usable_private("10.1.2.3".parse().unwrap()).unwrap(),
            Ipv4Addr::new(10, 1, 2, 3)
        );
    }

    /// Given addresses are used as they are, and the node id is `m-` and the
    /// machine id.
    #[tokio::test]
    async fn given_addresses_are_fixed() {
        let node = ByonNode {
            hostname: "build-7".into(),
            machine_id: ID.into(),
            private_ipv4: Some(Ipv4Addr::new(10, 1, 2, 3)),
            public_ipv4: Some(Ipv4Addr::new(203, 0, 113, 7)),
        };
        assert!(node.fixed());
        assert_eq!(node.node_id(), format!("m-{ID}"));
        assert_eq!(
            node.addresses().await.unwrap(),
            Addresses {
                private_ipv4: Some(Ipv4Addr::new(10, 1, 2, 3)),
                public_ipv4: Some(Ipv4Addr::new(203, 0, 113, 7)),
                ipv6: None,
            }
        );
    }

    /// Reading the primary address either finds a usable one or says to
    /// pass --private-ipv4: never loopback.
    #[tokio::test]
    async fn primary_ipv4_is_usable_or_explained() {
        match primary_ipv4().await {
            Ok(address) => assert!(!address.is_loopback() && !address.is_unspecified()),
            Err(e) => assert!(e.to_string().contains("pass --private-ipv4"), "{e}"),
        }
    }
}
