//! The settings of `serve` from flags and files: defaults, precedence,
//! and every bad value naming itself.

use super::*;
use crate::endpoints::url_host;
use muster_proto::cidr::Ipv4Cidr;

fn args() -> ServeArgs {
    ServeArgs {
        config: Some(PathBuf::from("/dev/null")),
        ..ServeArgs::default()
    }
}

/// With nothing set, the documented defaults apply.
#[test]
fn defaults() {
    let s = Settings::load(&args()).unwrap();
    assert_eq!(s.listen, DEFAULT_LISTEN.parse().unwrap());
    assert_eq!(s.dns_listen, DEFAULT_DNS_LISTEN.parse().unwrap());
    assert_eq!(s.zone, "muster.internal");
    assert_eq!(s.heartbeat_interval, Duration::from_secs(10));
    assert_eq!(s.dns_ttl, 30);
    assert_eq!(s.grace, Duration::from_secs(30));
    assert_eq!(s.sweep_interval, Duration::from_secs(30));
    assert_eq!(s.ec2_cache_refresh, None);
    assert_eq!(s.unknown_sweeps, 3);
    assert_eq!(s.lease, crate::Lease::default());
    assert!(s.public_url.ends_with(":7443"));
    assert_eq!(s.store_key_file, s.data_dir.join(STORE_KEY_FILE));
}

/// The store key's file follows the data dir unless named, by the file
/// or by a flag.
#[test]
fn store_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "[serve]
store_key_file = \"/etc/muster/store-key\"\n",
    )
    .unwrap();
    let mut a = args();
    a.data_dir = Some("/srv/muster".into());
    assert_eq!(
        Settings::load(&a).unwrap().store_key_file,
        PathBuf::from("/srv/muster/store-key")
    );
    a.config = Some(path);
    assert_eq!(
        Settings::load(&a).unwrap().store_key_file,
        PathBuf::from("/etc/muster/store-key")
    );
    a.store_key_file = Some("/run/keys/muster".into());
    assert_eq!(
        Settings::load(&a).unwrap().store_key_file,
        PathBuf::from("/run/keys/muster")
    );
}

/// The store's connections: 4 unless set, and within 1 to 100.
#[test]
fn store_connections() {
    let mut a = args();
    assert_eq!(Settings::load(&a).unwrap().store_connections, 4);
    a.store_connections = Some("16".into());
    assert_eq!(Settings::load(&a).unwrap().store_connections, 16);
    for bad in ["0", "101", "many"] {
        a.store_connections = Some(bad.into());
        let error = Settings::load(&a).unwrap_err().to_string();
        assert!(error.contains("store_connections"), "{bad}: {error}");
    }
}

/// The EC2 cache is off unless asked for; `off` turns a file's cache off.
#[test]
fn ec2_cache_refresh() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, "[serve]\nec2_cache_refresh = \"2m\"\n").unwrap();
    let mut a = args();
    a.config = Some(path);
    let s = Settings::load(&a).unwrap();
    assert_eq!(s.ec2_cache_refresh, Some(Duration::from_secs(120)));
    a.ec2_cache_refresh = Some("off".into());
    assert_eq!(Settings::load(&a).unwrap().ec2_cache_refresh, None);
}

/// Flags win over the file; the file wins over defaults.
#[test]
fn precedence() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "[serve]\nzone = \"file.example\"\ndns_ttl = 60\nlisten = \"127.0.0.1:9\"\n",
    )
    .unwrap();
    let mut a = args();
    a.config = Some(path);
    a.zone = Some("Flag.Example.".into());
    let s = Settings::load(&a).unwrap();
    assert_eq!(s.zone, "flag.example");
    assert_eq!(s.dns_ttl, 60);
    assert_eq!(s.listen, "127.0.0.1:9".parse().unwrap());
}

/// Each bad value names itself.
#[test]
fn bad_values_name_themselves() {
    type Case = (&'static str, fn(&mut ServeArgs));
    let cases: Vec<Case> = vec![
        ("listen", |a| a.listen = Some("nowhere".into())),
        ("dns_listen", |a| a.dns_listen = Some("1.2.3.4".into())),
        ("zone", |a| a.zone = Some("bad_zone".into())),
        ("public_url", |a| a.public_url = Some("http://x".into())),
        ("public_url", |a| {
            a.public_url = Some("https://x:port".into())
        }),
        ("heartbeat_interval", |a| {
            a.heartbeat_interval = Some("0s".into())
        }),
        ("heartbeat_interval", |a| {
            a.heartbeat_interval = Some("soon".into())
        }),
        ("dns_ttl", |a| a.dns_ttl = Some("0".into())),
        ("grace", |a| a.grace = Some("10s".into())),
        ("grace", |a| a.grace = Some("2h".into())),
        ("sweep_interval", |a| a.sweep_interval = Some("0s".into())),
        ("lease_time", |a| a.lease_time = Some("1s".into())),
        ("lease_renew_interval", |a| {
            a.lease_renew_interval = Some("10s".into())
        }),
        ("lease_retry_interval", |a| {
            a.lease_retry_interval = Some("1m".into())
        }),
        ("ec2_cache_refresh", |a| {
            a.ec2_cache_refresh = Some("1s".into())
        }),
        ("ec2_cache_refresh", |a| {
            a.ec2_cache_refresh = Some("on".into())
        }),
        ("unknown_sweeps", |a| a.unknown_sweeps = Some("0".into())),
        ("launch_timeout", |a| a.launch_timeout = Some("0s".into())),
        ("launch_timeout", |a| a.launch_timeout = Some("2d".into())),
        ("retention", |a| a.retention = Some("30s".into())),
        ("retention", |a| a.retention = Some("forever".into())),
        ("tls_key", |a| a.tls_cert = Some("/etc/hostname".into())),
        ("config", |a| a.config = Some("/nonexistent/c.toml".into())),
        ("verify_source", |a| a.verify_source = Some("maybe".into())),
        ("trusted_proxies", |a| {
            a.trusted_proxies = Some("10.0.0.0/8,10.0.0.1/8".into())
        }),
        ("public_ipv4_allow", |a| {
            a.public_ipv4_allow = Some("127.0.0.0/33".into())
        }),
        ("agent_rate_limit", |a| {
            a.agent_rate_limit = Some("-1".into())
        }),
        ("agent_rate_limit", |a| {
            a.agent_rate_limit = Some("2000000".into())
        }),
        ("identity_certs", |a| {
            a.identity_certs = Some("/etc/hostname".into())
        }),
        ("identity_certs", |a| {
            a.identity_certs = Some("/nonexistent/aws.pem".into())
        }),
        ("identity_certs", |a| {
            a.identity_certs = Some(std::env::current_exe().unwrap());
            a.insecure_no_identity_document = Some("true".into())
        }),
        ("insecure_no_identity_document", |a| {
            a.insecure_no_identity_document = Some("maybe".into())
        }),
        ("agent_binary", |a| {
            a.agent_binary = vec!["/nonexistent/muster-agent".into()]
        }),
        ("agent_binary", |a| {
            a.agent_binary = vec!["/etc/hostname".into()]
        }),
        ("agent_deb", |a| {
            a.agent_binary = vec![std::env::current_exe().unwrap()];
            a.agent_deb = Some("/etc/hostname".into())
        }),
    ];
    for (name, mutate) in cases {
        let mut a = args();
        mutate(&mut a);
        let err = Settings::load(&a).unwrap_err();
        assert_eq!(err.name, name, "{err}");
        assert!(err.to_string().starts_with(&format!("{name}=")), "{err}");
    }
}

/// The trust settings: AWS's identity document signers and nothing else
/// by default; lists from flags or the file; the identity check off only
/// when asked in so many words.
#[test]
fn trust_settings() {
    let s = Settings::load(&args()).unwrap();
    assert_eq!(
        s.trust,
        Trust {
            agent_rate_limit: DEFAULT_AGENT_RATE_LIMIT,
            identity_certs: Some(IdentityCerts::shipped()),
            ..Trust::default()
        }
    );
    let mut insecure = args();
    insecure.insecure_no_identity_document = Some("true".into());
    assert_eq!(
        Settings::load(&insecure).unwrap().trust.identity_certs,
        None
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "[serve]\nverify_source = true\ntrusted_proxies = [\"10.1.0.0/16\", \"192.168.0.10/32\"]\n\
         agent_rate_limit = 0\ninsecure_no_identity_document = true\n",
    )
    .unwrap();
    let mut a = args();
    a.config = Some(path);
    a.public_ipv4_allow = Some("127.0.0.0/8".into());
    let s = Settings::load(&a).unwrap();
    assert!(s.trust.verify_source);
    let block =
        |a, b, c, d, prefix| Ipv4Cidr::new(std::net::Ipv4Addr::new(a, b, c, d), prefix).unwrap();
    assert_eq!(
        s.trust.trusted_proxies,
        vec![block(10, 1, 0, 0, 16), block(192, 168, 0, 10, 32)]
    );
    assert_eq!(s.trust.public_ipv4_allow, vec![block(127, 0, 0, 0, 8)]);
    assert_eq!(s.trust.agent_rate_limit, 0);
    assert_eq!(s.trust.identity_certs, None);
    a.verify_source = Some("false".into());
    assert!(!Settings::load(&a).unwrap().trust.verify_source);
}

/// An agent binary given is served, one per architecture (from the flags
/// or the file, one path or a list); a second of one architecture is
/// refused; a package is only served beside a binary.
#[test]
fn agent_files_are_checked() {
    let exe = std::env::current_exe().unwrap();
    let mut a = args();
    a.agent_binary = vec![exe.clone()];
    assert_eq!(
        Settings::load(&a).unwrap().agent,
        Some((vec![exe.clone()], None))
    );
    a.agent_binary = vec![exe.clone(), exe.clone()];
    let err = Settings::load(&a).unwrap_err();
    assert_eq!(err.name, "agent_binary");
    assert!(err.to_string().contains("one per architecture"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let arm = dir.path().join("muster-agent-aarch64");
    let mut elf = std::fs::read(&exe).unwrap()[..64].to_vec();
    elf[18..20].copy_from_slice(&183u16.to_le_bytes());
    std::fs::write(&arm, &elf).unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(
        &file,
        format!(
            "[serve]\nagent_binary = [{:?}, {:?}]\n",
            exe.display().to_string(),
            arm.display().to_string()
        ),
    )
    .unwrap();
    let mut a = args();
    a.config = Some(file);
    assert_eq!(
        Settings::load(&a).unwrap().agent,
        Some((vec![exe, arm], None))
    );
    let dir = tempfile::tempdir().unwrap();
    let deb = dir.path().join("muster-agent.deb");
    std::fs::write(&deb, b"!<arch>\ndebian-binary   1\n").unwrap();
    let mut a = args();
    a.agent_deb = Some(deb);
    if agent_files::beside_this_executable().is_none() {
        assert_eq!(Settings::load(&a).unwrap_err().name, "agent_deb");
    }
}

/// Unknown keys in the file are refused, not ignored.
#[test]
fn unknown_file_keys_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, "[serve]\nlisten_addr = \"0.0.0.0:1\"\n").unwrap();
    let mut a = args();
    a.config = Some(path);
    let err = Settings::load(&a).unwrap_err();
    assert_eq!(err.name, "config");
    assert!(err.reason.contains("unknown field"), "{err}");
}

/// A secret file with mode 0600 holding `text`.
fn secret_file(dir: &Path, text: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("tsig.key");
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

fn rfc2136_args(secret: PathBuf) -> ServeArgs {
    ServeArgs {
        dns_provider: Some("rfc2136".into()),
        rfc2136_server: Some("127.0.0.1:5353".into()),
        tsig_key_name: Some("Muster-Key.".into()),
        tsig_secret_file: Some(secret),
        zone: Some("nodes.example.com".into()),
        ..args()
    }
}

/// The RFC 2136 settings load with their defaults; a BIND key file and
/// a bare base64 secret both work.
#[test]
fn rfc2136_settings() {
    let dir = tempfile::tempdir().unwrap();
    let s = Settings::load(&rfc2136_args(secret_file(dir.path(), "c2VjcmV0\n"))).unwrap();
    assert_eq!(s.dns_reconcile_interval, Duration::from_secs(300));
    let DnsProvider::Rfc2136(r) = s.dns_provider else {
        panic!("rfc2136 expected");
    };
    assert_eq!(r.server, "127.0.0.1:5353");
    assert_eq!(r.zone, "nodes.example.com");
    assert_eq!(r.key_name, "muster-key");
    assert_eq!(r.algorithm, TsigAlgorithm::HmacSha256);
    assert_eq!(r.secret, b"secret");
    assert!(
        !format!("{r:?}").contains("secret: ["),
        "the secret is not logged"
    );

    let bind_file = secret_file(
        dir.path(),
        "key \"muster-key\" {\n\talgorithm hmac-sha512;\n\tsecret \"c2VjcmV0\";\n};\n",
    );
    let mut a = rfc2136_args(bind_file);
    a.tsig_algorithm = Some("HMAC-SHA512".into());
    a.rfc2136_zone = Some("example.com".into());
    a.dns_reconcile_interval = Some("30s".into());
    let s = Settings::load(&a).unwrap();
    assert_eq!(s.dns_reconcile_interval, Duration::from_secs(30));
    let DnsProvider::Rfc2136(r) = s.dns_provider else {
        panic!("rfc2136 expected");
    };
    assert_eq!(r.zone, "example.com");
    assert_eq!(r.algorithm, TsigAlgorithm::HmacSha512);
    assert_eq!(r.secret, b"secret");
    assert_eq!(
        Settings::load(&args()).unwrap().dns_provider,
        DnsProvider::Embedded
    );
}

/// Each bad RFC 2136 value names itself.
#[test]
fn rfc2136_bad_values_name_themselves() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let good = secret_file(dir.path(), "c2VjcmV0");
    let open = dir.path().join("open.key");
    std::fs::write(&open, "c2VjcmV0").unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
    let not_base64 = dir.path().join("junk.key");
    std::fs::write(&not_base64, "not base64!").unwrap();
    std::fs::set_permissions(&not_base64, std::fs::Permissions::from_mode(0o600)).unwrap();

    type Case = (&'static str, &'static str, Box<dyn Fn(&mut ServeArgs)>);
    let cases: Vec<Case> = vec![
        (
            "dns_provider",
            "must be",
            Box::new(|a| a.dns_provider = Some("route66".into())),
        ),
        (
            "rfc2136_server",
            "is needed",
            Box::new(|a| a.rfc2136_server = None),
        ),
        (
            "rfc2136_server",
            "HOST:PORT",
            Box::new(|a| a.rfc2136_server = Some("ns1".into())),
        ),
        (
            "rfc2136_server",
            "port",
            Box::new(|a| a.rfc2136_server = Some("ns1:0".into())),
        ),
        (
            "rfc2136_server",
            "host",
            Box::new(|a| a.rfc2136_server = Some("bad_host:53".into())),
        ),
        (
            "rfc2136_zone",
            "parent",
            Box::new(|a| a.rfc2136_zone = Some("other.example".into())),
        ),
        (
            "rfc2136_zone",
            "label",
            Box::new(|a| a.rfc2136_zone = Some("bad_zone".into())),
        ),
        (
            "tsig_key_name",
            "is needed",
            Box::new(|a| a.tsig_key_name = None),
        ),
        (
            "tsig_algorithm",
            "hmac-sha256",
            Box::new(|a| a.tsig_algorithm = Some("hmac-md5".into())),
        ),
        (
            "tsig_secret_file",
            "is needed",
            Box::new(|a| a.tsig_secret_file = None),
        ),
        ("tsig_secret_file", "chmod 600", {
            let open = open.clone();
            Box::new(move |a| a.tsig_secret_file = Some(open.clone()))
        }),
        ("tsig_secret_file", "base64", {
            let junk = not_base64.clone();
            Box::new(move |a| a.tsig_secret_file = Some(junk.clone()))
        }),
        (
            "tsig_secret_file",
            "No such file",
            Box::new(|a| a.tsig_secret_file = Some("/nonexistent/k".into())),
        ),
        (
            "dns_reconcile_interval",
            "between",
            Box::new(|a| a.dns_reconcile_interval = Some("0s".into())),
        ),
        (
            "rfc2136_server",
            "only used with",
            Box::new(|a| a.dns_provider = None),
        ),
    ];
    for (name, reason, mutate) in cases {
        let mut a = rfc2136_args(good.clone());
        mutate(&mut a);
        let err = Settings::load(&a).unwrap_err();
        assert_eq!(err.name, name, "{err}");
        assert!(err.to_string().contains(reason), "{err}");
    }
}

/// Route53 takes a hosted zone by id or by name (default: `--zone`), and
/// an owner id override with any external provider.
#[test]
fn route53_settings() {
    let route53 = |zone: Option<&str>| {
        let mut a = args();
        a.zone = Some("nodes.example.com".into());
        a.dns_provider = Some("route53".into());
        a.route53_zone = zone.map(str::to_owned);
        Settings::load(&a)
    };
    let zone_of = |s: Settings| match s.dns_provider {
        DnsProvider::Route53(r) => r.zone,
        other => panic!("route53 expected, got {other:?}"),
    };
    assert_eq!(
        zone_of(route53(None).unwrap()),
        Route53Zone::Name("nodes.example.com".into())
    );
    assert_eq!(
        zone_of(route53(Some("Example.COM.")).unwrap()),
        Route53Zone::Name("example.com".into())
    );
    assert_eq!(
        zone_of(route53(Some("/hostedzone/Z0123456789ABC")).unwrap()),
        Route53Zone::Id("Z0123456789ABC".into())
    );
    assert_eq!(
        zone_of(route53(Some("Z0123456789ABC")).unwrap()),
        Route53Zone::Id("Z0123456789ABC".into())
    );

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "[serve]\nzone = \"nodes.example.com\"\ndns_provider = \"route53\"\n\
         route53_zone = \"example.com\"\ndns_owner_id = \"coord-a\"\n",
    )
    .unwrap();
    let mut a = args();
    a.config = Some(path);
    let s = Settings::load(&a).unwrap();
    assert_eq!(s.dns_owner_id.as_deref(), Some("coord-a"));
    assert_eq!(s.dns_provider.kind(), "route53");
    assert_eq!(zone_of(s), Route53Zone::Name("example.com".into()));
}

/// Each bad Route53 or owner id value names itself.
#[test]
fn route53_bad_values_name_themselves() {
    type Case = (&'static str, &'static str, fn(&mut ServeArgs));
    let cases: Vec<Case> = vec![
        ("route53_zone", "parent", |a| {
            a.route53_zone = Some("other.example".into())
        }),
        ("route53_zone", "neither", |a| {
            a.route53_zone = Some("bad_zone".into())
        }),
        ("route53_zone", "only used with", |a| a.dns_provider = None),
        ("dns_owner_id", "only letters", |a| {
            a.dns_owner_id = Some("a,b=c".into())
        }),
        ("dns_owner_id", "1 to 64", |a| {
            a.dns_owner_id = Some(String::new())
        }),
        ("dns_owner_id", "1 to 64", |a| {
            a.dns_owner_id = Some("x".repeat(65))
        }),
        ("dns_owner_id", "only used with", |a| {
            a.dns_provider = Some("embedded".into());
            a.route53_zone = None;
            a.dns_owner_id = Some("ok".into());
        }),
        ("rfc2136_server", "only used with", |a| {
            a.rfc2136_server = Some("127.0.0.1:53".into())
        }),
        ("dns_provider", "route53", |a| {
            a.dns_provider = Some("route66".into())
        }),
    ];
    for (name, reason, mutate) in cases {
        let mut a = args();
        a.zone = Some("nodes.example.com".into());
        a.dns_provider = Some("route53".into());
        a.route53_zone = Some("example.com".into());
        mutate(&mut a);
        let err = Settings::load(&a).unwrap_err();
        assert_eq!(err.name, name, "{err}");
        assert!(err.to_string().contains(reason), "{err}");
    }
}

/// URL hosts are extracted for the certificate.
#[test]
fn url_hosts() {
    assert_eq!(
        url_host("https://coord.example:7443/x").unwrap(),
        "coord.example"
    );
    assert_eq!(url_host("https://10.0.0.1").unwrap(), "10.0.0.1");
    assert_eq!(url_host("https://[::1]:7443").unwrap(), "::1");
    assert!(url_host("https://").is_err());
    assert!(url_host("https://u@h").is_err());
}

/// The connection and DNS limits default to their documented values, and
/// the idle timeout follows a long heartbeat interval.
#[test]
fn limits_defaults() {
    let s = Settings::load(&args()).unwrap();
    assert_eq!(s.limits, Limits::default());
    assert_eq!(s.limits.max_connections, 16_384);
    assert_eq!(s.limits.max_connections_per_source, 200);
    assert_eq!(s.limits.idle_timeout, Duration::from_secs(75));
    assert_eq!(s.limits.dns_rate_limit, 20);
    let mut a = args();
    a.heartbeat_interval = Some("60s".into());
    a.grace = Some("3m".into());
    let slow = Settings::load(&a).unwrap();
    assert_eq!(slow.limits.idle_timeout, Duration::from_secs(120));
}

/// Limits come from flags or the file, and a bad one names itself.
#[test]
fn limits_set_and_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "[serve]\nmax_connections = 100\nmax_connections_per_source = 0\n\
         idle_timeout = \"30s\"\ndns_rate_limit = \"0\"\nheader_timeout = \"5s\"\n",
    )
    .unwrap();
    let mut a = args();
    a.config = Some(path);
    a.tls_handshake_timeout = Some("3s".into());
    let s = Settings::load(&a).unwrap();
    assert_eq!(s.limits.max_connections, 100);
    assert_eq!(s.limits.max_connections_per_source, 0);
    assert_eq!(s.limits.idle_timeout, Duration::from_secs(30));
    assert_eq!(s.limits.dns_rate_limit, 0);
    assert_eq!(s.limits.header_timeout, Duration::from_secs(5));
    assert_eq!(s.limits.tls_handshake_timeout, Duration::from_secs(3));

    type Mutate = fn(&mut ServeArgs);
    let cases: Vec<(&str, &str, Mutate)> = vec![
        ("max_connections", "between 16", |a| {
            a.max_connections = Some("3".into())
        }),
        ("max_connections_per_source", "between 0", |a| {
            a.max_connections_per_source = Some("2000000".into())
        }),
        ("tls_handshake_timeout", "", |a| {
            a.tls_handshake_timeout = Some("soon".into())
        }),
        ("header_timeout", "", |a| {
            a.header_timeout = Some("2h".into())
        }),
        ("idle_timeout", "twice the heartbeat interval", |a| {
            a.idle_timeout = Some("15s".into())
        }),
        ("dns_rate_limit", "between 0", |a| {
            a.dns_rate_limit = Some("2000000".into())
        }),
    ];
    for (name, reason, mutate) in cases {
        let mut a = args();
        mutate(&mut a);
        let err = Settings::load(&a).unwrap_err();
        assert_eq!(err.name, name, "{err}");
        assert!(err.to_string().contains(reason), "{err}");
    }
}
