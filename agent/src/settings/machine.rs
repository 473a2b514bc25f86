//! The settings of a bring-your-own node (`--byon`), where there is no
//! IMDS: the machine id, the node name and the addresses it is known by,
//! read and checked at start so that a machine that cannot name itself
//! stops at once with exit 64.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use muster_proto::settings::Invalid;

use super::sources::{
    Key, Origin, Sources, BYON, HOSTNAME, MACHINE_ID_FILE, PRIVATE_IPV4, PUBLIC_IPV4,
};
use super::DEFAULT_MACHINE_ID_FILE;
use crate::byon::{self, ByonError, ByonNode};

/// The node, named from the machine, if the agent runs as a
/// bring-your-own node; without `--byon` its keys are refused rather than
/// ignored, since IMDS names an EC2 node.
pub(super) fn resolve(src: &Sources<'_>) -> Result<Option<ByonNode>, Invalid> {
    let (args, file) = (src.args, &src.file);
    let machine_id_file = src.pick(
        &MACHINE_ID_FILE,
        &args.machine_id_file,
        &file.machine_id_file,
    );
    let hostname = src.pick(&HOSTNAME, &args.hostname, &file.hostname);
    let private_ipv4 = src.pick(&PRIVATE_IPV4, &args.private_ipv4, &file.private_ipv4);
    let public_ipv4 = src.pick(&PUBLIC_IPV4, &args.public_ipv4, &file.public_ipv4);
    if src.byon() {
        return Ok(Some(ByonNode {
            machine_id: machine_id(machine_id_file)?,
            hostname: node_hostname(hostname, byon::system_hostname)?,
            private_ipv4: private_ipv4
                .map(|(text, origin)| parse_ipv4(&PRIVATE_IPV4, origin, &text))
                .transpose()?,
            public_ipv4: public_ipv4
                .map(|(text, origin)| parse_ipv4(&PUBLIC_IPV4, origin, &text))
                .transpose()?,
        }));
    }
    let stray = [
        machine_id_file.map(|(p, o)| (MACHINE_ID_FILE, o, p.display().to_string())),
        hostname.map(|(v, o)| (HOSTNAME, o, v)),
        private_ipv4.map(|(v, o)| (PRIVATE_IPV4, o, v)),
        public_ipv4.map(|(v, o)| (PUBLIC_IPV4, o, v)),
    ];
    match stray.into_iter().flatten().next() {
        Some((key, origin, value)) => Err(key.invalid(
            origin,
            &value,
            format!(
                "applies only to a bring-your-own node; set {}, {} or {} = true in the settings file",
                BYON.flag, BYON.env, BYON.id
            ),
        )),
        None => Ok(None),
    }
}

/// Reads and checks the machine id of a bring-your-own node from the file
/// given, or from [`DEFAULT_MACHINE_ID_FILE`].
fn machine_id(given: Option<(PathBuf, Origin<'_>)>) -> Result<String, Invalid> {
    let (path, origin) =
        given.unwrap_or_else(|| (PathBuf::from(DEFAULT_MACHINE_ID_FILE), Origin::Default));
    let shown = path.display().to_string();
    byon::read_machine_id(&path).map_err(|e| {
        let why = match &e {
            ByonError::ReadMachineId { source, .. } => format!("cannot read it: {source}"),
            ByonError::InvalidMachineId { source, .. } => {
                format!("holds {:?}, which {}", source.value, source.reason)
            }
            other => crate::error_chain(other),
        };
        MACHINE_ID_FILE.invalid(origin, &shown, why)
    })
}

/// The node name of a bring-your-own node: the one given, which must be a
/// DNS label as it is, else the first label of the system hostname
/// (`system`), lowercased, which must then be one.
pub(super) fn node_hostname(
    given: Option<(String, Origin<'_>)>,
    system: impl FnOnce() -> Result<String, ByonError>,
) -> Result<String, Invalid> {
    if let Some((name, origin)) = given {
        let name = name.trim().to_owned();
        muster_proto::validate::dns_label(HOSTNAME.id, &name)
            .map_err(|e| HOSTNAME.invalid(origin, &name, e.reason))?;
        return Ok(name);
    }
    let fix = format!(
        "; set {}, {} or {} in the settings file",
        HOSTNAME.flag, HOSTNAME.env, HOSTNAME.id
    );
    let full = system()
        .map_err(|e| HOSTNAME.invalid(Origin::Default, "", crate::error_chain(&e) + &fix))?;
    let name = byon::node_name(&full);
    muster_proto::validate::dns_label(HOSTNAME.id, &name).map_err(|e| {
        HOSTNAME.invalid(
            Origin::Default,
            &name,
            format!(
                "is the system hostname {full:?} made a node name, which {}{fix}",
                e.reason
            ),
        )
    })?;
    Ok(name)
}

/// Parses an IPv4 a node can be reached at (not loopback, unspecified,
/// broadcast or multicast).
fn parse_ipv4(key: &Key, origin: Origin<'_>, text: &str) -> Result<Ipv4Addr, Invalid> {
    let addr: Ipv4Addr = text
        .trim()
        .parse()
        .map_err(|_| key.invalid(origin, text, "is not an IPv4 address, e.g. 192.168.1.20"))?;
    if addr.is_loopback() {
        return Err(key.invalid(
            origin,
            text,
            "is a loopback address, which neighbours cannot reach",
        ));
    }
    muster_proto::validate::host_ipv4(key.id, addr)
        .map_err(|e| key.invalid(origin, text, e.reason))?;
    Ok(addr)
}
