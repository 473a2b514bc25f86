//! The settings of `muster-agent run` from flags, variables and files:
//! defaults, precedence, and every bad value named after where it was set.

use super::machine::node_hostname;
use super::*;
use clap::{CommandFactory, FromArgMatches, Parser};
use std::net::Ipv4Addr;

const JOIN: &str = "mjoin_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

#[derive(Debug, Parser)]
struct Wrapper {
    #[command(flatten)]
    args: RunArgs,
}

fn ca_file(dir: &Path) -> PathBuf {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let path = dir.join("ca.pem");
    std::fs::write(&path, cert.cert.pem()).unwrap();
    path
}

fn load(argv: &[&str]) -> Result<Settings, Invalid> {
    let matches = Wrapper::command().try_get_matches_from(argv).unwrap();
    let wrapper = Wrapper::from_arg_matches(&matches).unwrap();
    Settings::load_with(&wrapper.args, Some(&matches), None)
}

fn error_text(result: Result<Settings, Invalid>) -> String {
    result.unwrap_err().to_string()
}

/// Flags alone make complete settings, with the documented defaults.
#[test]
fn flags_make_settings() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca_file(dir.path());
    let config = dir.path().join("none.toml");
    std::fs::write(&config, "").unwrap();
    let settings = load(&[
        "x",
        "--config",
        config.to_str().unwrap(),
        "--coordinator-url",
        "https://127.0.0.1:7443/",
        "--ca-file",
        ca.to_str().unwrap(),
        "--cluster",
        "web",
        "--join-token",
        JOIN,
        "--dns-server",
        "127.0.0.1:5353",
    ])
    .unwrap();
    assert_eq!(settings.coordinator_url, "https://127.0.0.1:7443");
    assert_eq!(settings.cluster, "web");
    assert_eq!(settings.join_token.as_ref().map(Secret::expose), Some(JOIN));
    assert_eq!(settings.state_dir, Path::new(DEFAULT_STATE_DIR));
    assert_eq!(settings.socket, Path::new(DEFAULT_SOCKET));
    assert_eq!(settings.imds_poll_interval, DEFAULT_IMDS_POLL_INTERVAL);
    assert_eq!(settings.dns_server, Some("127.0.0.1:5353".parse().unwrap()));
    assert_eq!(settings.imds_endpoint, DEFAULT_IMDS_ENDPOINT);
    assert!(
        !format!("{settings:?}").contains(JOIN),
        "the token leaked into Debug"
    );
}

/// The file fills what the flags leave out, and a flag wins over it.
#[test]
fn file_and_flags_merge() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca_file(dir.path());
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "coordinator_url = \"https://coord.example.com\"\nca_file = {:?}\ncluster = \"db\"\n\
             join_token = \"{JOIN}\"\nimds_poll_interval = \"250ms\"\nstate_dir = \"/tmp/x\"\n",
            ca.to_str().unwrap()
        ),
    )
    .unwrap();
    let settings = load(&[
        "x",
        "--config",
        config.to_str().unwrap(),
        "--cluster",
        "web",
    ])
    .unwrap();
    assert_eq!(settings.coordinator_url, "https://coord.example.com");
    assert_eq!(settings.cluster, "web");
    assert_eq!(settings.imds_poll_interval, Duration::from_millis(250));
    assert_eq!(settings.state_dir, Path::new("/tmp/x"));
    assert_eq!(settings.config_file.as_deref(), Some(config.as_path()));
}

/// Bad values are named after their flag or file key and say why.
#[test]
fn bad_values_name_themselves() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca_file(dir.path());
    let ca = ca.to_str().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, "cluster = \"Web\"\n").unwrap();
    let config = config.to_str().unwrap();
    let base = |extra: &[&'static str]| -> Vec<String> {
        let mut argv: Vec<String> = [
            "x",
            "--config",
            config,
            "--coordinator-url",
            "https://c.example.com",
            "--ca-file",
            ca,
            "--join-token",
            JOIN,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        argv.extend(extra.iter().map(|s| s.to_string()));
        argv
    };
    let run = |extra: &[&'static str]| {
        let argv = base(extra);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        error_text(load(&argv))
    };

    let text = run(&[]);
    assert!(
        text.starts_with("cluster=\"Web\" is not valid: may hold only lowercase"),
        "{text}"
    );
    assert!(text.contains(config), "{text}");

    let text = run(&["--cluster", "web", "--imds-poll-interval", "10ms"]);
    assert_eq!(
        text,
        "--imds-poll-interval=\"10ms\" is not valid: must be between 100ms and 60s"
    );
    let text = run(&["--cluster", "web", "--dns-server", "localhost"]);
    assert!(
        text.starts_with("--dns-server=\"localhost\" is not valid"),
        "{text}"
    );
}

/// A plain-http or malformed coordinator URL is refused.
#[test]
fn coordinator_url_must_be_https() {
    assert!(parse_base_url("http://c.example.com", &["https"]).is_err());
    assert!(parse_base_url("c.example.com", &["https"]).is_err());
    assert!(parse_base_url("https://u:p@c.example.com", &["https"]).is_err());
    assert_eq!(
        parse_base_url("https://c.example.com:7443/", &["https"]).unwrap(),
        "https://c.example.com:7443"
    );
}

/// A wrong kind of secret is refused without echoing it.
#[test]
fn join_token_shape_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca_file(dir.path());
    let config = dir.path().join("empty.toml");
    std::fs::write(&config, "").unwrap();
    let node = JOIN.replace("mjoin_", "mnode_");
    let text = error_text(load(&[
        "x",
        "--config",
        config.to_str().unwrap(),
        "--coordinator-url",
        "https://c.example.com",
        "--ca-file",
        ca.to_str().unwrap(),
        "--cluster",
        "web",
        "--join-token",
        &node,
    ]));
    assert_eq!(
        text,
        "--join-token=\"mnode_…\" is not valid: is a node credential, not a join token"
    );
}

/// Without a join token and without a stored credential the agent could
/// never register, so the settings are refused.
#[test]
fn join_token_needed_without_credential() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca_file(dir.path());
    let config = dir.path().join("empty.toml");
    std::fs::write(&config, "").unwrap();
    let state = dir.path().join("state");
    let text = error_text(load(&[
        "x",
        "--config",
        config.to_str().unwrap(),
        "--coordinator-url",
        "https://c.example.com",
        "--ca-file",
        ca.to_str().unwrap(),
        "--cluster",
        "web",
        "--state-dir",
        state.to_str().unwrap(),
    ]));
    assert!(
        text.starts_with("join_token=\"\" is not valid: is required"),
        "{text}"
    );
}

/// The join token may come from a file only its owner can read, which
/// keeps it off the command line: read and trimmed when 0600, refused
/// when others may read it, and refused beside a token given itself.
#[test]
fn join_token_from_a_file() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let ca = ca_file(dir.path());
    let token_file = dir.path().join("join-token");
    std::fs::write(&token_file, format!("{JOIN}\n")).unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!("join_token_file = {:?}\n", token_file.display().to_string()),
    )
    .unwrap();
    let args = |extra: &[&str]| {
        let mut args = vec![
            "x",
            "--config",
            config.to_str().unwrap(),
            "--coordinator-url",
            "https://c.example.com",
            "--ca-file",
            ca.to_str().unwrap(),
            "--cluster",
            "web",
        ];
        args.extend_from_slice(extra);
        args.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let load_args = |extra: &[&str]| {
        let owned = args(extra);
        load(&owned.iter().map(String::as_str).collect::<Vec<_>>())
    };

    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let settings = load_args(&[]).unwrap();
    assert_eq!(settings.join_token.as_ref().map(Secret::expose), Some(JOIN));

    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let text = error_text(load_args(&[]));
    assert!(
        text.starts_with("join_token_file=") && text.contains("chmod 600"),
        "{text}"
    );
    assert!(!text.contains(JOIN), "{text}");

    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let text = error_text(load_args(&["--join-token", JOIN]));
    assert!(text.contains("given twice"), "{text}");
    assert!(!text.contains(JOIN), "{text}");
}

/// A given settings file must exist; a CA file must hold a certificate.
#[test]
fn files_must_be_usable() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.toml");
    let text = error_text(load(&["x", "--config", missing.to_str().unwrap()]));
    assert!(text.starts_with("--config="), "{text}");
    assert!(text.contains("cannot read it"), "{text}");

    let config = dir.path().join("empty.toml");
    std::fs::write(&config, "").unwrap();
    let not_pem = dir.path().join("ca.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    let text = error_text(load(&[
        "x",
        "--config",
        config.to_str().unwrap(),
        "--coordinator-url",
        "https://c.example.com",
        "--ca-file",
        not_pem.to_str().unwrap(),
    ]));
    assert!(text.starts_with("--ca-file="), "{text}");
    assert!(text.ends_with("holds no PEM certificate"), "{text}");
}

/// Unknown keys in the file are refused, so typos do not pass silently.
#[test]
fn unknown_file_keys_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, "coordinator = \"https://x\"\n").unwrap();
    let text = error_text(load(&["x", "--config", config.to_str().unwrap()]));
    assert!(text.contains("unknown field"), "{text}");
}

const MACHINE_ID: &str = "0123456789abcdef0123456789abcdef";

/// Flags for a complete bring-your-own agent in `dir` (with a good
/// machine-id file unless `extra` names one), then `extra`.
fn byon_argv(dir: &Path, extra: &[&str]) -> Vec<String> {
    let ca = ca_file(dir);
    let config = dir.join("empty.toml");
    std::fs::write(&config, "").unwrap();
    let machine_id = dir.join("machine-id");
    if !machine_id.exists() {
        std::fs::write(&machine_id, format!("{MACHINE_ID}\n")).unwrap();
    }
    let mut argv: Vec<String> = [
        "x",
        "--config",
        config.to_str().unwrap(),
        "--coordinator-url",
        "https://c.example.com",
        "--ca-file",
        ca.to_str().unwrap(),
        "--cluster",
        "web",
        "--join-token",
        JOIN,
        "--byon",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if !extra.contains(&"--machine-id-file") {
        argv.extend([
            "--machine-id-file".to_owned(),
            machine_id.display().to_string(),
        ]);
    }
    argv.extend(extra.iter().map(|s| s.to_string()));
    argv
}

fn load_byon(dir: &Path, extra: &[&str]) -> Result<Settings, Invalid> {
    let argv = byon_argv(dir, extra);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    load(&argv)
}

/// `--byon` reads the machine id (trimmed) and takes the given hostname
/// and addresses; a bad IMDS variable is none of its business.
#[test]
fn byon_flags_make_settings() {
    let dir = tempfile::tempdir().unwrap();
    let argv = byon_argv(
        dir.path(),
        &[
            "--hostname",
            "build-7",
            "--private-ipv4",
            "192.168.1.20",
            "--public-ipv4",
            "203.0.113.7",
        ],
    );
    let matches = Wrapper::command().try_get_matches_from(&argv).unwrap();
    let wrapper = Wrapper::from_arg_matches(&matches).unwrap();
    let settings =
        Settings::load_with(&wrapper.args, Some(&matches), Some("not a url".into())).unwrap();
    let node = settings.byon.expect("bring-your-own");
    assert_eq!(node.machine_id, MACHINE_ID);
    assert_eq!(node.node_id(), format!("m-{MACHINE_ID}"));
    assert_eq!(node.hostname, "build-7");
    assert_eq!(node.private_ipv4, Some(Ipv4Addr::new(192, 168, 1, 20)));
    assert_eq!(node.public_ipv4, Some(Ipv4Addr::new(203, 0, 113, 7)));

    // Without --private-ipv4 the address is read from the machine as
    // the agent runs.
    let settings = load_byon(dir.path(), &["--hostname", "build-7"]).unwrap();
    assert_eq!(settings.byon.unwrap().private_ipv4, None);
}

/// `byon = true` in the file turns the mode on, with its keys; without
/// it the agent is an EC2 agent.
#[test]
fn byon_from_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca_file(dir.path());
    let machine_id = dir.path().join("machine-id");
    std::fs::write(&machine_id, MACHINE_ID).unwrap();
    let config = dir.path().join("agent.toml");
    let common = format!(
        "coordinator_url = \"https://c.example.com\"\nca_file = {:?}\ncluster = \"web\"\n\
         join_token = \"{JOIN}\"\nmachine_id_file = {:?}\nhostname = \"db-2\"\n",
        ca.to_str().unwrap(),
        machine_id.to_str().unwrap()
    );
    std::fs::write(&config, format!("{common}byon = true\n")).unwrap();
    let settings = load(&["x", "--config", config.to_str().unwrap()]).unwrap();
    assert_eq!(settings.byon.unwrap().hostname, "db-2");

    // The keys alone, without byon = true, are refused by name.
    std::fs::write(&config, &common).unwrap();
    let text = error_text(load(&["x", "--config", config.to_str().unwrap()]));
    assert!(
        text.starts_with("machine_id_file=") && text.contains("only to a bring-your-own node"),
        "{text}"
    );
    assert!(text.contains(config.to_str().unwrap()), "{text}");
}

/// Every bring-your-own value is checked and named: an unreadable or
/// malformed machine-id file, a hostname that is not a DNS label,
/// addresses that are not usable IPv4s.
#[test]
fn bad_byon_values_name_themselves() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let text = error_text(load_byon(
        dir.path(),
        &[
            "--hostname",
            "h",
            "--machine-id-file",
            missing.to_str().unwrap(),
        ],
    ));
    assert!(
        text.starts_with(&format!(
            "--machine-id-file={:?} is not valid: cannot read it:",
            missing.to_str().unwrap()
        )),
        "{text}"
    );

    let bad = dir.path().join("bad-id");
    std::fs::write(&bad, "not-a-machine-id\n").unwrap();
    let text = error_text(load_byon(
        dir.path(),
        &[
            "--hostname",
            "h",
            "--machine-id-file",
            bad.to_str().unwrap(),
        ],
    ));
    assert_eq!(
        text,
        format!(
            "--machine-id-file={:?} is not valid: holds \"not-a-machine-id\", which must be \
             32 lowercase hex digits, not all zero (/etc/machine-id)",
            bad.to_str().unwrap()
        )
    );

    let cases: [(&[&str], &str); 5] = [
        (
            &["--hostname", "Build_7"],
            "--hostname=\"Build_7\" is not valid: may hold only lowercase letters, digits and '-'",
        ),
        (
            &["--hostname", "a.b"],
            "--hostname=\"a.b\" is not valid: may hold only lowercase letters, digits and '-'",
        ),
        (
            &["--hostname", "h", "--private-ipv4", "10.0.0"],
            "--private-ipv4=\"10.0.0\" is not valid: is not an IPv4 address, e.g. 192.168.1.20",
        ),
        (
            &["--hostname", "h", "--private-ipv4", "127.0.0.1"],
            "--private-ipv4=\"127.0.0.1\" is not valid: is a loopback address, which neighbours cannot reach",
        ),
        (
            &["--hostname", "h", "--public-ipv4", "0.0.0.0"],
            "--public-ipv4=\"0.0.0.0\" is not valid: must not be the unspecified address",
        ),
    ];
    for (extra, want) in cases {
        assert_eq!(error_text(load_byon(dir.path(), extra)), want, "{extra:?}");
    }
}

/// Without `--byon`, a flag that only a bring-your-own node uses is
/// refused rather than ignored.
#[test]
fn byon_flags_need_byon() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca_file(dir.path());
    let config = dir.path().join("empty.toml");
    std::fs::write(&config, "").unwrap();
    let text = error_text(load(&[
        "x",
        "--config",
        config.to_str().unwrap(),
        "--coordinator-url",
        "https://c.example.com",
        "--ca-file",
        ca.to_str().unwrap(),
        "--cluster",
        "web",
        "--join-token",
        JOIN,
        "--private-ipv4",
        "10.1.2.3",
    ]));
    assert_eq!(
        text,
        "--private-ipv4=\"10.1.2.3\" is not valid: applies only to a bring-your-own node; \
         set --byon, MUSTER_AGENT_BYON or byon = true in the settings file"
    );
}

/// The default node name is the system hostname's first label,
/// lowercased; one that cannot be a DNS label is refused, asking for
/// --hostname.
#[test]
fn hostname_defaults_to_the_system_one() {
    let name = node_hostname(None, || Ok("Build-7.corp.example.com".into())).unwrap();
    assert_eq!(name, "build-7");
    let text = node_hostname(None, || Ok("my_box.lan".into()))
        .unwrap_err()
        .to_string();
    assert!(
        text.starts_with("hostname=\"my_box\" is not valid: is the system hostname \"my_box.lan\""),
        "{text}"
    );
    assert!(text.contains("set --hostname"), "{text}");
    let text = node_hostname(None, || Ok(String::new()))
        .unwrap_err()
        .to_string();
    assert!(text.contains("must not be empty"), "{text}");
}

/// The IMDS endpoint variable is checked like any other setting.
#[test]
fn imds_endpoint_is_checked() {
    assert_eq!(
        parse_base_url("http://127.0.0.1:1338/", &["http", "https"]).unwrap(),
        "http://127.0.0.1:1338"
    );
    assert!(parse_base_url("ftp://127.0.0.1", &["http", "https"]).is_err());
}

/// Loads complete settings from a file that ends with `checks`, the text
/// of some `[[check]]` tables. An error is returned as text, without the
/// ` (set in FILE)` it must end with.
fn load_checks(checks: &str) -> Result<Settings, String> {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "coordinator_url = \"https://c.example.com\"\ncluster = \"web\"\n\
             join_token = \"{JOIN}\"\n{checks}"
        ),
    )
    .unwrap();
    load(&["x", "--config", config.to_str().unwrap()]).map_err(|e| {
        let text = e.to_string();
        let set_in = format!(" (set in {})", config.display());
        text.strip_suffix(&set_in)
            .unwrap_or_else(|| panic!("{text:?} does not name the file"))
            .to_owned()
    })
}

/// The three kinds of check, in the file's order, with the defaults
/// filled in; a file without checks has none.
#[test]
fn checks_from_the_file() {
    use crate::checks::{
        Probe, DEFAULT_FAILURES, DEFAULT_INTERVAL, DEFAULT_SUCCESSES, DEFAULT_TIMEOUT,
    };
    let settings = load_checks(
        r#"
[[check]]
name = "web"
http = "https://127.0.0.1:8443/healthz?full=1"
expect_body = "ok"
interval = "5s"
timeout = "500ms"
failures = 2
successes = 4

[[check]]
name = "db"
tcp = "db.internal:5432"

[[check]]
name = "disk"
command = ["/usr/local/bin/check-disk", "--min", "10%"]
interval = "1s"

[[check]]
name = "v6"
tcp = "[::1]:6379"
"#,
    )
    .unwrap();
    let checks = &settings.checks;
    assert_eq!(checks.len(), 4);
    assert_eq!(
        checks[0],
        Check {
            name: "web".to_owned(),
            probe: Probe::Http {
                url: reqwest::Url::parse("https://127.0.0.1:8443/healthz?full=1").unwrap(),
                expect_body: Some("ok".to_owned()),
            },
            interval: Duration::from_secs(5),
            timeout: Duration::from_millis(500),
            failures: 2,
            successes: 4,
        }
    );
    assert_eq!(
        checks[1],
        Check {
            name: "db".to_owned(),
            probe: Probe::Tcp {
                host: "db.internal".to_owned(),
                port: 5432,
            },
            interval: DEFAULT_INTERVAL,
            timeout: DEFAULT_TIMEOUT,
            failures: DEFAULT_FAILURES,
            successes: DEFAULT_SUCCESSES,
        }
    );
    assert_eq!(
        checks[2].probe,
        Probe::Command {
            argv: vec![
                "/usr/local/bin/check-disk".to_owned(),
                "--min".to_owned(),
                "10%".to_owned(),
            ],
        }
    );
    // The default timeout is never longer than the interval.
    assert_eq!(checks[2].interval, Duration::from_secs(1));
    assert_eq!(checks[2].timeout, Duration::from_secs(1));
    assert_eq!(
        checks[3].probe,
        Probe::Tcp {
            host: "::1".to_owned(),
            port: 6379,
        }
    );

    assert!(load_checks("").unwrap().checks.is_empty());
}

/// Every bad check is refused, named after its check and key.
#[test]
fn bad_checks_name_themselves() {
    let cases: &[(&str, &str)] = &[
        (
            "[[check]]\nname = \"web\"\nhttp = \"http://127.0.0.1/\"\ntcp = \"127.0.0.1:80\"\n",
            "check \"web\": tcp=\"127.0.0.1:80\" is not valid: is given beside http; \
             a check does exactly one of http, tcp or command",
        ),
        (
            "[[check]]\nname = \"web\"\ninterval = \"5s\"\n",
            "check \"web\": http=\"\" is not valid: a check needs one of http, tcp or command",
        ),
        (
            "[[check]]\nname = \"a\"\ntcp = \"127.0.0.1:80\"\n\
             [[check]]\nname = \"a\"\ntcp = \"127.0.0.1:81\"\n",
            "check #2: name=\"a\" is not valid: is the name of check #1 too; \
             each check needs a name of its own",
        ),
        (
            "[[check]]\nname = \"Web_1\"\ntcp = \"127.0.0.1:80\"\n",
            "check #1: name=\"Web_1\" is not valid: may hold only lowercase letters, digits and '-'",
        ),
        (
            "[[check]]\ntcp = \"127.0.0.1:80\"\n",
            "check #1: name=\"\" is not valid: is required: a DNS label, unique among the checks",
        ),
        (
            "[[check]]\nname = \"web\"\nhttp = \"http://127.0.0.1/\"\ninterval = \"5s\"\ntimeout = \"10s\"\n",
            "check \"web\": timeout=\"10s\" is not valid: must not be longer than the interval, 5s",
        ),
        (
            "[[check]]\nname = \"web\"\nhttp = \"http://127.0.0.1/\"\ninterval = \"0s\"\n",
            "check \"web\": interval=\"0s\" is not valid: must be between 1s and 1h",
        ),
        (
            "[[check]]\nname = \"web\"\nhttp = \"http://127.0.0.1/\"\ntimeout = \"soon\"\n",
            "check \"web\": timeout=\"soon\" is not valid: is not a duration such as \"10s\" \
             or \"500ms\": expected number at 0",
        ),
        (
            "[[check]]\nname = \"web\"\nhttp = \"ftp://127.0.0.1/\"\n",
            "check \"web\": http=\"ftp://127.0.0.1/\" is not valid: must be an http or https URL",
        ),
        (
            "[[check]]\nname = \"web\"\nhttp = \"http://u:p@127.0.0.1/\"\n",
            "check \"web\": http=\"http://u:p@127.0.0.1/\" is not valid: \
             must not carry a user name or password",
        ),
        (
            "[[check]]\nname = \"disk\"\ncommand = [\"check-disk\", \"--min\", \"10%\"]\n",
            "check \"disk\": command[0]=\"check-disk\" is not valid: must be an absolute path, \
             such as /usr/local/bin/check-disk: the command runs without a shell or a PATH search",
        ),
        (
            "[[check]]\nname = \"disk\"\ncommand = []\n",
            "check \"disk\": command=\"[]\" is not valid: \
             must name a program (an absolute path), then its arguments",
        ),
        (
            "[[check]]\nname = \"db\"\ntcp = \"127.0.0.1:5432\"\nexpect_body = \"ok\"\n",
            "check \"db\": expect_body=\"ok\" is not valid: applies only to an http check",
        ),
        (
            "[[check]]\nname = \"web\"\nhttp = \"http://127.0.0.1/\"\nexpect_body = \"\"\n",
            "check \"web\": expect_body=\"\" is not valid: \
             must not be empty; leave it out to accept any body",
        ),
        (
            "[[check]]\nname = \"db\"\ntcp = \"db.internal\"\n",
            "check \"db\": tcp=\"db.internal\" is not valid: must be host:port or ip:port, \
             such as 127.0.0.1:5432, db.internal:5432 or [::1]:5432",
        ),
        (
            "[[check]]\nname = \"db\"\ntcp = \"::1:5432\"\n",
            "check \"db\": tcp=\"::1:5432\" is not valid: must be host:port or ip:port, \
             such as 127.0.0.1:5432, db.internal:5432 or [::1]:5432",
        ),
        (
            "[[check]]\nname = \"db\"\ntcp = \"127.0.0.1:0\"\n",
            "check \"db\": tcp=\"127.0.0.1:0\" is not valid: must name a port other than 0",
        ),
        (
            "[[check]]\nname = \"db\"\ntcp = \"127.0.0.1:5432\"\nfailures = 0\n",
            "check \"db\": failures=\"0\" is not valid: must be a count of runs in a row, 1 to 100",
        ),
        (
            "[[check]]\nname = \"db\"\ntcp = \"127.0.0.1:5432\"\nsuccesses = 101\n",
            "check \"db\": successes=\"101\" is not valid: must be a count of runs in a row, 1 to 100",
        ),
    ];
    for (checks, want) in cases {
        assert_eq!(load_checks(checks).unwrap_err(), *want, "{checks}");
    }

    // A key no check knows is refused with the file.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, "[[check]]\nname = \"web\"\nurl = \"http://x/\"\n").unwrap();
    let text = error_text(load(&["x", "--config", config.to_str().unwrap()]));
    assert!(text.contains("unknown field `url`"), "{text}");
}

/// More checks than a heartbeat may carry are refused.
#[test]
fn too_many_checks_are_refused() {
    let max = muster_proto::condition::MAX_CHECKS;
    let tables = |n: usize| -> String {
        (0..n)
            .map(|i| {
                format!(
                    "[[check]]\nname = \"c{i}\"\ntcp = \"127.0.0.1:{}\"\n",
                    1000 + i
                )
            })
            .collect()
    };
    assert_eq!(load_checks(&tables(max)).unwrap().checks.len(), max);
    assert_eq!(
        load_checks(&tables(max + 1)).unwrap_err(),
        format!(
            "check=\"{} tables\" is not valid: a node may have at most {max} checks",
            max + 1
        )
    );
}
