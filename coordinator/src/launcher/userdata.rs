//! The cloud-init user data launched nodes boot with: a `#cloud-config`
//! that installs the agent, prepares the data volume and starts the agent.
//! `muster-coordinator userdata CLUSTER` prints the same document.
//!
//! It writes, in cloud-init's early `write_files` stage:
//! - `/etc/muster/ca.pem` (0644): the coordinator's CA, when it made its
//!   own; with an operator certificate the agent uses the system roots and
//!   no CA file is written;
//! - `/etc/muster/join-token` (0600): the join token, alone, which the
//!   agent reads with `join_token_file` (so it is on no command line and
//!   in no file anyone else may read);
//! - `/etc/muster/agent.toml` (0644): the coordinator URL, the CA file,
//!   the cluster, the token file and the drain wait (the records' TTL, at
//!   most a minute), in the keys `muster-agent run` reads;
//! - `/etc/systemd/system/muster-agent.service` (0644), the unit of
//!   `systemd/`, when the agent is installed from the coordinator;
//!
//! and then runs, in order (`runcmd`, once per instance):
//! 1. when the coordinator serves the agent: the binary for the node's
//!    architecture (`uname -m`; the document pins one URL and SHA-256 per
//!    architecture served), downloaded with curl (retried, TLS pinned to
//!    the CA file), a `sha256sum -c` of what came against that SHA-256,
//!    and only then an `install` to `/usr/bin/muster-agent`; a node of an
//!    architecture with no agent stops there and says so in its
//!    cloud-init log. Without an agent to serve, the image must carry it;
//! 2. `muster-agent prepare-volume`: finds the gp2 data volume, makes a
//!    filesystem only if it holds none, mounts it and adds it to fstab;
//! 3. `systemctl daemon-reload` and `systemctl enable --now --no-block
//!    muster-agent.service` (not waiting: the agent reports READY only once
//!    it has registered).
//!
//! cloud-init runs each step whatever the one before did; the install step
//! leaves nothing behind when its check fails, so the unit then has no
//! binary to start, and nothing unverified ever runs.
//!
//! The document is rendered as JSON after the `#cloud-config` line: JSON is
//! YAML, so cloud-init reads it as it is, and serde does the quoting, which
//! no value (a PEM, a token) can then break. Values reach the install
//! script as its arguments, never spliced into its text.
//!
//! EC2 takes at most 16 KiB of user data before base64. A document over
//! that is gzipped (cloud-init recognises gzip by its magic bytes and
//! unpacks it); one that is still too big is refused.

use std::io::Write as _;
use std::path::Path;

use muster_proto::AgentDownload;
use serde::Serialize;

/// Where the agent's settings go on the node.
pub const AGENT_CONFIG_PATH: &str = "/etc/muster/agent.toml";
/// Where the join token goes on the node.
pub const JOIN_TOKEN_PATH: &str = "/etc/muster/join-token";
/// Where the CA goes on the node.
pub const CA_PATH: &str = "/etc/muster/ca.pem";
/// Where the agent binary is installed on the node (the unit's ExecStart).
pub const AGENT_BINARY_PATH: &str = "/usr/bin/muster-agent";
/// Where the agent's unit is written on the node.
pub const AGENT_UNIT_PATH: &str = "/etc/systemd/system/muster-agent.service";
/// What AWS takes as user data at most, before base64.
pub const MAX_USER_DATA_BYTES: usize = 16 * 1024;

/// The agent's systemd unit, as shipped in `systemd/`.
pub const AGENT_UNIT: &str = include_str!("../../../systemd/muster-agent.service");

/// The install step: pick this node's architecture, download, check,
/// install. Its arguments, in order: where to install, the CA file (empty
/// for the system roots), then for each architecture served its name (as
/// `uname -m` prints it), URL and SHA-256. Anything failing stops it
/// before `install`, and the download directory goes with the shell.
pub const INSTALL_SCRIPT: &str = r#"set -eu
dest="$1" ca="$2"
shift 2
arch=$(uname -m) url="" sum="" served=""
while [ $# -ge 3 ]; do
  served="$served $1"
  if [ "$1" = "$arch" ]; then url="$2" sum="$3"; fi
  shift 3
done
if [ -z "$url" ]; then
  echo "muster: this node is $arch, but the coordinator serves the agent for$served only" >&2
  exit 1
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if [ -n "$ca" ]; then set -- --cacert "$ca"; else set --; fi
curl -fsS --retry 10 --retry-connrefused --retry-delay 3 --max-time 600 "$@" -o "$tmp/muster-agent" "$url"
if ! echo "$sum  $tmp/muster-agent" | sha256sum -c --strict --status -; then
  echo "muster: $url does not match SHA-256 $sum; not installing it" >&2
  exit 1
fi
install -D -m 0755 "$tmp/muster-agent" "$dest"
echo "muster: installed $dest for $arch ($sum)"
"#;

/// What the user data tells the agent.
#[derive(Debug, Clone)]
pub struct AgentBootstrap<'a> {
    /// The coordinator's URL as agents reach it (`--public-url`).
    pub coordinator_url: &'a str,
    /// The CA to pin, PEM; `None` when the coordinator's certificate chains
    /// to the system roots.
    pub ca_pem: Option<&'a str>,
    /// The cluster to join.
    pub cluster: &'a str,
    /// The join token to present.
    pub join_token: &'a str,
    /// The agent to fetch from the coordinator, one per architecture;
    /// none when the image carries it.
    pub agents: &'a [AgentDownload],
    /// How long a stopping agent waits, once its node is out of the round
    /// robin, for resolvers to forget it: the records' TTL, at most
    /// [`MAX_DRAIN_WAIT_SECS`].
    pub drain_wait_secs: u32,
}

/// The longest drain wait user data sets: the unit's `TimeoutStopSec`
/// (90 s) must cover it.
pub const MAX_DRAIN_WAIT_SECS: u32 = 60;

/// Rendered user data, as EC2 takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserData {
    /// The bytes: the `#cloud-config` text, or it gzipped.
    pub bytes: Vec<u8>,
    /// Whether `bytes` is gzipped.
    pub gzip: bool,
}

impl UserData {
    /// The text, when it is not gzipped.
    pub fn text(&self) -> Option<&str> {
        if self.gzip {
            None
        } else {
            std::str::from_utf8(&self.bytes).ok()
        }
    }
}

#[derive(Serialize)]
struct AgentToml<'a> {
    coordinator_url: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    ca_file: Option<&'a str>,
    cluster: &'a str,
    join_token_file: &'a str,
    drain_wait: String,
}

#[derive(Serialize)]
struct WriteFile {
    path: &'static str,
    permissions: &'static str,
    owner: &'static str,
    content: String,
}

#[derive(Serialize)]
struct CloudConfig {
    write_files: Vec<WriteFile>,
    runcmd: Vec<Vec<String>>,
}

/// Errors rendering user data.
#[derive(Debug, thiserror::Error)]
pub enum UserDataError {
    /// A value could not be written as TOML or JSON, or the text could not
    /// be compressed.
    #[error("rendering user data: {0}")]
    Render(String),
    /// The agent to install is described wrongly.
    #[error("the agent download {field}={value:?} is not valid: {reason}")]
    Agent {
        /// The field.
        field: &'static str,
        /// Its value.
        value: String,
        /// Why.
        reason: &'static str,
    },
    /// The result is over AWS's limit even gzipped.
    #[error(
        "the user data is {size} bytes ({gzipped} gzipped), over EC2's limit of \
         {MAX_USER_DATA_BYTES}; a smaller CA bundle would fit"
    )]
    TooLarge {
        /// Its size as text.
        size: usize,
        /// Its size gzipped.
        gzipped: usize,
    },
}

/// Renders the `#cloud-config` text for `bootstrap`, whatever its size.
pub fn render_text(bootstrap: &AgentBootstrap<'_>) -> Result<String, UserDataError> {
    let agent = toml::to_string(&AgentToml {
        coordinator_url: bootstrap.coordinator_url,
        ca_file: bootstrap.ca_pem.map(|_| CA_PATH),
        cluster: bootstrap.cluster,
        join_token_file: JOIN_TOKEN_PATH,
        drain_wait: format!("{}s", bootstrap.drain_wait_secs.min(MAX_DRAIN_WAIT_SECS)),
    })
    .map_err(|e| UserDataError::Render(e.to_string()))?;
    let mut write_files = Vec::new();
    if let Some(ca) = bootstrap.ca_pem {
        write_files.push(WriteFile {
            path: CA_PATH,
            permissions: "0644",
            owner: "root:root",
            content: ca.to_owned(),
        });
    }
    write_files.push(WriteFile {
        path: JOIN_TOKEN_PATH,
        permissions: "0600",
        owner: "root:root",
        content: format!("{}\n", bootstrap.join_token),
    });
    write_files.push(WriteFile {
        path: AGENT_CONFIG_PATH,
        permissions: "0644",
        owner: "root:root",
        content: agent,
    });
    let mut runcmd = Vec::new();
    if !bootstrap.agents.is_empty() {
        write_files.push(WriteFile {
            path: AGENT_UNIT_PATH,
            permissions: "0644",
            owner: "root:root",
            content: AGENT_UNIT.to_owned(),
        });
        let mut install: Vec<String> = [
            "sh",
            "-c",
            INSTALL_SCRIPT,
            "muster-install-agent",
            AGENT_BINARY_PATH,
            bootstrap.ca_pem.map_or("", |_| CA_PATH),
        ]
        .map(str::to_owned)
        .to_vec();
        for download in bootstrap.agents {
            check_download(download)?;
            install.extend([
                download.arch.clone(),
                download.url.clone(),
                download.sha256.clone(),
            ]);
        }
        runcmd.push(install);
    }
    for command in [
        &[AGENT_BINARY_PATH, "prepare-volume"][..],
        &["systemctl", "daemon-reload"],
        &[
            "systemctl",
            "enable",
            "--now",
            "--no-block",
            "muster-agent.service",
        ],
    ] {
        runcmd.push(command.iter().map(|s| (*s).to_owned()).collect());
    }
    let config = CloudConfig {
        write_files,
        runcmd,
    };
    let body =
        serde_json::to_string_pretty(&config).map_err(|e| UserDataError::Render(e.to_string()))?;
    Ok(format!("#cloud-config\n{body}\n"))
}

/// Renders the user data for `bootstrap`, gzipped if it does not fit
/// EC2's limit as text; refuses it if it does not fit even so.
pub fn render(bootstrap: &AgentBootstrap<'_>) -> Result<UserData, UserDataError> {
    fit(render_text(bootstrap)?)
}

/// `text` as EC2 takes it: as it is, or gzipped when it is too big.
pub fn fit(text: String) -> Result<UserData, UserDataError> {
    if text.len() <= MAX_USER_DATA_BYTES {
        return Ok(UserData {
            bytes: text.into_bytes(),
            gzip: false,
        });
    }
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder
        .write_all(text.as_bytes())
        .map_err(|e| UserDataError::Render(format!("gzip: {e}")))?;
    let gzipped = encoder
        .finish()
        .map_err(|e| UserDataError::Render(format!("gzip: {e}")))?;
    if gzipped.len() > MAX_USER_DATA_BYTES {
        return Err(UserDataError::TooLarge {
            size: text.len(),
            gzipped: gzipped.len(),
        });
    }
    Ok(UserData {
        bytes: gzipped,
        gzip: true,
    })
}

fn check_download(download: &AgentDownload) -> Result<(), UserDataError> {
    let bad = |field, value: &str, reason| UserDataError::Agent {
        field,
        value: value.to_owned(),
        reason,
    };
    if download.sha256.len() != 64 || !download.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad("sha256", &download.sha256, "must be 64 hex digits"));
    }
    if !download.url.starts_with("https://") {
        return Err(bad("url", &download.url, "must start with https://"));
    }
    if download.arch.is_empty()
        || !download
            .arch
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return Err(bad("arch", &download.arch, "must be a uname -m name"));
    }
    Ok(())
}

/// Reads the CA a coordinator made for itself, if it made one.
pub fn read_ca(path: Option<&Path>) -> std::io::Result<Option<String>> {
    path.map(std::fs::read_to_string).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIB\"quoted\"\n-----END CERTIFICATE-----\n";

    fn download() -> AgentDownload {
        AgentDownload {
            url: "https://muster.example.com:7443/v1/agent/linux/x86_64/muster-agent".into(),
            arch: "x86_64".into(),
            sha256: "ab".repeat(32),
        }
    }

    fn parse(text: &str) -> serde_json::Value {
        let body = text.strip_prefix("#cloud-config\n").expect("header");
        serde_json::from_str(body).unwrap()
    }

    fn bootstrap<'a>(ca: Option<&'a str>, agent: Option<&'a AgentDownload>) -> AgentBootstrap<'a> {
        AgentBootstrap {
            coordinator_url: "https://muster.example.com:7443",
            ca_pem: ca,
            cluster: "web",
            join_token: "mjoin_abc",
            agents: agent.map(std::slice::from_ref).unwrap_or_default(),
            drain_wait_secs: 300,
        }
    }

    /// The settings, the CA and the unit are written; the agent is
    /// downloaded, checked and installed before the volume and the unit.
    #[test]
    fn installs_configures_and_starts_the_agent() {
        let agent = download();
        let user_data = render(&bootstrap(Some(CA), Some(&agent))).unwrap();
        assert!(!user_data.gzip);
        let doc = parse(user_data.text().unwrap());
        let files = doc["write_files"].as_array().unwrap();
        assert_eq!(files[0]["path"], CA_PATH);
        assert_eq!(files[0]["content"], CA);
        assert_eq!(files[1]["path"], JOIN_TOKEN_PATH);
        assert_eq!(files[1]["permissions"], "0600");
        assert_eq!(files[1]["content"], "mjoin_abc\n");
        assert_eq!(files[2]["path"], AGENT_CONFIG_PATH);
        assert_eq!(files[2]["permissions"], "0644");
        assert_eq!(files[3]["path"], AGENT_UNIT_PATH);
        assert!(files[3]["content"]
            .as_str()
            .unwrap()
            .contains("ExecStart=/usr/bin/muster-agent run"));
        let agent_toml: toml::Table = files[2]["content"].as_str().unwrap().parse().unwrap();
        assert_eq!(
            agent_toml["coordinator_url"].as_str(),
            Some("https://muster.example.com:7443")
        );
        assert_eq!(agent_toml["ca_file"].as_str(), Some(CA_PATH));
        assert_eq!(agent_toml["cluster"].as_str(), Some("web"));
        assert_eq!(
            agent_toml["join_token_file"].as_str(),
            Some(JOIN_TOKEN_PATH)
        );
        assert!(agent_toml.get("join_token").is_none());
        // The TTL, within what the unit's stop timeout covers.
        assert_eq!(agent_toml["drain_wait"].as_str(), Some("60s"));
        let runcmd = doc["runcmd"].as_array().unwrap();
        assert_eq!(runcmd.len(), 4);
        assert_eq!(
            runcmd[0].as_array().unwrap()[3..],
            [
                "muster-install-agent",
                AGENT_BINARY_PATH,
                CA_PATH,
                "x86_64",
                &agent.url,
                &agent.sha256,
            ]
            .map(serde_json::Value::from)
        );
        assert_eq!(
            runcmd[1],
            serde_json::json!([AGENT_BINARY_PATH, "prepare-volume"])
        );
        assert_eq!(
            runcmd[3],
            serde_json::json!([
                "systemctl",
                "enable",
                "--now",
                "--no-block",
                "muster-agent.service"
            ])
        );
    }

    /// With the system roots no CA is written or pinned; without an agent
    /// to serve, the image's is used.
    #[test]
    fn no_ca_file_with_system_roots_and_no_install_without_an_agent() {
        let agent = download();
        let doc = parse(
            render(&bootstrap(None, Some(&agent)))
                .unwrap()
                .text()
                .unwrap(),
        );
        let files = doc["write_files"].as_array().unwrap();
        assert_eq!(files.len(), 3);
        assert_eq!(files[1]["path"], AGENT_CONFIG_PATH);
        assert!(!files[1]["content"].as_str().unwrap().contains("ca_file"));
        assert_eq!(doc["runcmd"][0][5], "", "curl uses the system roots");

        let doc = parse(render(&bootstrap(Some(CA), None)).unwrap().text().unwrap());
        assert_eq!(doc["write_files"].as_array().unwrap().len(), 3);
        assert_eq!(doc["runcmd"].as_array().unwrap().len(), 3);
        assert_eq!(doc["runcmd"][0][1], "prepare-volume");
    }

    /// Over 16 KiB as text, it is gzipped, and unpacks to the text.
    #[test]
    fn big_is_gzipped() {
        use std::io::Read as _;
        let bundle = CA.repeat(MAX_USER_DATA_BYTES / CA.len() + 1);
        let b = bootstrap(Some(&bundle), None);
        let user_data = render(&b).unwrap();
        assert!(user_data.gzip);
        assert!(user_data.text().is_none());
        assert!(user_data.bytes.len() <= MAX_USER_DATA_BYTES);
        assert_eq!(&user_data.bytes[..2], b"\x1f\x8b", "gzip magic");
        let mut text = String::new();
        flate2::read::GzDecoder::new(&user_data.bytes[..])
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, render_text(&b).unwrap());
    }

    /// What does not fit even gzipped is refused.
    #[test]
    fn oversized_is_refused() {
        use rand::Rng as _;
        // Random text does not compress much below its size.
        let mut rng = rand::thread_rng();
        let noise: String = (0..3 * MAX_USER_DATA_BYTES)
            .map(|_| char::from(rng.gen_range(b'!'..=b'~')))
            .collect();
        let error = render(&bootstrap(Some(&noise), None)).unwrap_err();
        assert!(matches!(error, UserDataError::TooLarge { .. }), "{error}");
        assert!(error.to_string().contains("gzipped"), "{error}");
    }

    /// A download described wrongly is refused before anything is rendered.
    #[test]
    fn bad_download_is_refused() {
        let mut agent = download();
        agent.sha256 = "xyz".into();
        let error = render(&bootstrap(Some(CA), Some(&agent))).unwrap_err();
        assert!(error.to_string().contains("sha256"), "{error}");
        let mut agent = download();
        agent.url = "http://plain".into();
        assert!(render(&bootstrap(Some(CA), Some(&agent))).is_err());
    }

    /// Two architectures: the install step carries each one's URL and
    /// SHA-256, in the order served.
    #[test]
    fn one_install_step_carries_every_architecture() {
        let x86 = download();
        let arm = AgentDownload {
            url: "https://muster.example.com:7443/v1/agent/linux/aarch64/muster-agent".into(),
            arch: "aarch64".into(),
            sha256: "cd".repeat(32),
        };
        let agents = [x86.clone(), arm.clone()];
        let b = AgentBootstrap {
            agents: &agents,
            ..bootstrap(Some(CA), None)
        };
        let doc = parse(render(&b).unwrap().text().unwrap());
        let install = doc["runcmd"][0].as_array().unwrap();
        assert_eq!(
            install[6..],
            [
                "x86_64",
                &x86.url,
                &x86.sha256,
                "aarch64",
                &arm.url,
                &arm.sha256
            ]
            .map(serde_json::Value::from)
        );
    }
}
