//! The cloud-init user data launched nodes boot with: a minimal
//! `#cloud-config` that writes the agent's settings and starts it.
//!
//! It writes two files and runs one command:
//! - `/etc/muster/ca.pem` (0644): the coordinator's CA, when it made its
//!   own; with an operator certificate the agent uses the system roots and
//!   no CA file is written;
//! - `/etc/muster/agent.toml` (0600, it holds the join token): the
//!   coordinator URL, the CA file, the cluster and the join token, in the
//!   keys `muster-agent run` reads;
//! - `systemctl enable --now muster-agent.service`.
//!
//! The document is rendered as JSON after the `#cloud-config` line: JSON is
//! YAML, so cloud-init reads it as it is, and serde does the quoting, which
//! no value (a PEM, a token) can then break. The agent binary itself is
//! expected on the image; installing it from the coordinator and preparing
//! the data volume belong to the full bootstrap.

use std::path::Path;

use serde::Serialize;

/// Where the agent's settings go on the node.
pub const AGENT_CONFIG_PATH: &str = "/etc/muster/agent.toml";
/// Where the CA goes on the node.
pub const CA_PATH: &str = "/etc/muster/ca.pem";
/// What AWS takes as user data at most, before base64.
pub const MAX_USER_DATA_BYTES: usize = 16 * 1024;

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
}

#[derive(Serialize)]
struct AgentToml<'a> {
    coordinator_url: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    ca_file: Option<&'a str>,
    cluster: &'a str,
    join_token: &'a str,
}

#[derive(Serialize)]
struct WriteFile {
    path: String,
    permissions: &'static str,
    owner: &'static str,
    content: String,
}

#[derive(Serialize)]
struct CloudConfig {
    write_files: Vec<WriteFile>,
    runcmd: Vec<Vec<&'static str>>,
}

/// Errors rendering user data.
#[derive(Debug, thiserror::Error)]
pub enum UserDataError {
    /// A value could not be written as TOML or JSON.
    #[error("rendering user data: {0}")]
    Render(String),
    /// The result is over AWS's limit.
    #[error("the user data is {size} bytes, over EC2's limit of {MAX_USER_DATA_BYTES}")]
    TooLarge {
        /// Its size.
        size: usize,
    },
}

/// Renders the `#cloud-config` for `bootstrap`.
pub fn render(bootstrap: &AgentBootstrap<'_>) -> Result<String, UserDataError> {
    let agent = toml::to_string(&AgentToml {
        coordinator_url: bootstrap.coordinator_url,
        ca_file: bootstrap.ca_pem.map(|_| CA_PATH),
        cluster: bootstrap.cluster,
        join_token: bootstrap.join_token,
    })
    .map_err(|e| UserDataError::Render(e.to_string()))?;
    let mut write_files = Vec::new();
    if let Some(ca) = bootstrap.ca_pem {
        write_files.push(WriteFile {
            path: CA_PATH.to_owned(),
            permissions: "0644",
            owner: "root:root",
            content: ca.to_owned(),
        });
    }
    write_files.push(WriteFile {
        path: AGENT_CONFIG_PATH.to_owned(),
        permissions: "0600",
        owner: "root:root",
        content: agent,
    });
    let config = CloudConfig {
        write_files,
        runcmd: vec![vec!["systemctl", "enable", "--now", "muster-agent.service"]],
    };
    let body =
        serde_json::to_string_pretty(&config).map_err(|e| UserDataError::Render(e.to_string()))?;
    let text = format!("#cloud-config\n{body}\n");
    if text.len() > MAX_USER_DATA_BYTES {
        return Err(UserDataError::TooLarge { size: text.len() });
    }
    Ok(text)
}

/// Reads the CA a coordinator made for itself, if it made one.
pub fn read_ca(path: Option<&Path>) -> std::io::Result<Option<String>> {
    path.map(std::fs::read_to_string).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIB\"quoted\"\n-----END CERTIFICATE-----\n";

    fn parse(text: &str) -> serde_json::Value {
        let body = text.strip_prefix("#cloud-config\n").expect("header");
        serde_json::from_str(body).unwrap()
    }

    #[test]
    fn writes_the_agent_settings_and_starts_it() {
        let text = render(&AgentBootstrap {
            coordinator_url: "https://muster.example.com:7443",
            ca_pem: Some(CA),
            cluster: "web",
            join_token: "mjoin_abc",
        })
        .unwrap();
        let doc = parse(&text);
        let files = doc["write_files"].as_array().unwrap();
        assert_eq!(files[0]["path"], CA_PATH);
        assert_eq!(files[0]["content"], CA);
        assert_eq!(files[1]["path"], AGENT_CONFIG_PATH);
        assert_eq!(files[1]["permissions"], "0600");
        let agent: toml::Table = files[1]["content"].as_str().unwrap().parse().unwrap();
        assert_eq!(
            agent["coordinator_url"].as_str(),
            Some("https://muster.example.com:7443")
        );
        assert_eq!(agent["ca_file"].as_str(), Some(CA_PATH));
        assert_eq!(agent["cluster"].as_str(), Some("web"));
        assert_eq!(agent["join_token"].as_str(), Some("mjoin_abc"));
        assert_eq!(
            doc["runcmd"][0],
            serde_json::json!(["systemctl", "enable", "--now", "muster-agent.service"])
        );
    }

    #[test]
    fn no_ca_file_with_system_roots() {
        let text = render(&AgentBootstrap {
            coordinator_url: "https://muster.example.com",
            ca_pem: None,
            cluster: "web",
            join_token: "mjoin_abc",
        })
        .unwrap();
        let doc = parse(&text);
        let files = doc["write_files"].as_array().unwrap();
        assert_eq!(files.len(), 1);
        assert!(!files[0]["content"].as_str().unwrap().contains("ca_file"));
    }

    #[test]
    fn oversized_is_refused() {
        let big = "x".repeat(MAX_USER_DATA_BYTES);
        let error = render(&AgentBootstrap {
            coordinator_url: "https://muster.example.com",
            ca_pem: Some(&big),
            cluster: "web",
            join_token: "mjoin_abc",
        })
        .unwrap_err();
        assert!(matches!(error, UserDataError::TooLarge { .. }), "{error}");
    }
}
