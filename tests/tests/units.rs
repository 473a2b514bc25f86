//! The systemd units in `systemd/`: `systemd-analyze verify` finds nothing
//! to say about either, `systemd-analyze security --offline=true` rates
//! the agent's sandbox at 2.5 or better, and every directive carries a
//! comment saying why.
//!
//! `verify` runs offline against a temporary root (`--root`) holding a copy
//! of the system's own units (it loads `sysinit.target` and the rest from
//! there), our unit in `etc/systemd/system`, and an executable where
//! `ExecStart=` points (verify checks only that it can be executed). No
//! running systemd is needed, which is as well: the test machine may be a
//! container without systemd as init.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The agent's sandbox must rate at least this well.
const MAX_AGENT_EXPOSURE: f64 = 2.5;

fn unit(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../systemd")
        .join(name)
}

fn analyze(args: &[&str]) -> Output {
    Command::new("systemd-analyze")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running systemd-analyze: {e} (scripts/setup installs systemd)"))
}

/// Where the system keeps its own units.
fn system_units() -> Option<PathBuf> {
    ["/usr/lib/systemd/system", "/lib/systemd/system"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.join("sysinit.target").exists())
}

/// A root for `verify --root`: the system's units, `text` installed as
/// `name`, and an executable at its `ExecStart=`.
fn verify_root(name: &str, text: &str, units: &Path) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let copied = Command::new("cp")
        .arg("-a")
        .arg(units)
        .arg(r.join("system-units"))
        .status()
        .unwrap();
    assert!(copied.success());
    std::fs::create_dir_all(r.join("usr/lib/systemd")).unwrap();
    std::fs::rename(r.join("system-units"), r.join("usr/lib/systemd/system")).unwrap();
    std::fs::create_dir_all(r.join("etc/systemd/system")).unwrap();
    std::fs::write(r.join("etc/systemd/system").join(name), text).unwrap();
    let exec = text
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .and_then(|l| l.split_whitespace().next())
        .expect("the unit has an ExecStart");
    let binary = r.join(exec.trim_start_matches('/'));
    std::fs::create_dir_all(binary.parent().unwrap()).unwrap();
    std::fs::write(&binary, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
    root
}

/// `systemd-analyze verify --root` of `text` as unit `name`: whether it
/// passed, and what it said.
fn verify(name: &str, text: &str, units: &Path) -> (bool, String) {
    let root = verify_root(name, text, units);
    let output = analyze(&["verify", &format!("--root={}", root.path().display()), name]);
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

/// Both units verify without a word; the same check does speak up about a
/// misspelt directive, so its silence means something.
#[test]
fn units_pass_systemd_analyze_verify() {
    let Some(units) = system_units() else {
        println!(
            "skipped: no sysinit.target under /usr/lib/systemd/system or /lib/systemd/system, \
             so verify has no system units to load ours against"
        );
        return;
    };
    for name in ["muster-agent.service", "muster-coordinator.service"] {
        let text = std::fs::read_to_string(unit(name)).unwrap();
        let (ok, said) = verify(name, &text, &units);
        assert!(ok && said.trim().is_empty(), "{name}:\n{said}");
        println!("{name}: systemd-analyze verify is silent");

        let misspelt = text.replace("WantedBy=", "WantedByy=");
        let (_, said) = verify(name, &misspelt, &units);
        assert!(said.contains("WantedByy"), "verify missed a typo:\n{said}");
    }
}

/// The exposure level `systemd-analyze security --offline=true` gives.
fn exposure(path: &Path) -> f64 {
    let output = analyze(&["security", "--offline=true", path.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .find_map(|l| l.split("Overall exposure level for ").nth(1))
        .and_then(|l| l.split(": ").nth(1))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no exposure level in:\n{text}{}",
                String::from_utf8_lossy(&output.stderr)
            )
        })
}

/// The agent's sandbox rates 2.5 or better; the coordinator's is rated
/// and printed too. An unsandboxed copy rates far worse, so the score
/// reflects the directives.
#[test]
fn the_agent_unit_is_well_sandboxed() {
    let agent = exposure(&unit("muster-agent.service"));
    let coordinator = exposure(&unit("muster-coordinator.service"));
    println!("systemd-analyze security: muster-agent.service {agent}, muster-coordinator.service {coordinator}");
    assert!(
        agent <= MAX_AGENT_EXPOSURE,
        "muster-agent.service is rated {agent}, over {MAX_AGENT_EXPOSURE}"
    );

    let dir = tempfile::tempdir().unwrap();
    let bare = dir.path().join("muster-agent.service");
    let text = std::fs::read_to_string(unit("muster-agent.service")).unwrap();
    let kept: Vec<&str> = text
        .lines()
        .take_while(|l| !l.starts_with("UMask="))
        .collect();
    std::fs::write(&bare, kept.join("\n") + "\n").unwrap();
    let unsandboxed = exposure(&bare);
    println!("without its sandbox: {unsandboxed}");
    assert!(unsandboxed > agent + 5.0, "{unsandboxed} vs {agent}");
}

/// Every directive is preceded by a comment saying why (or, for a
/// directive given twice, by its first line).
#[test]
fn every_directive_says_why() {
    for name in ["muster-agent.service", "muster-coordinator.service"] {
        let text = std::fs::read_to_string(unit(name)).unwrap();
        let mut previous = "";
        for line in text.lines() {
            if let Some((key, _)) = line.split_once('=') {
                if !line.starts_with('#') && !key.contains(' ') {
                    let same_key = previous.split_once('=').is_some_and(|(k, _)| k == key);
                    assert!(
                        previous.starts_with('#') || same_key,
                        "{name}: {line:?} has no comment"
                    );
                }
            }
            if !line.trim().is_empty() {
                previous = line;
            }
        }
        for needed in [
            "Type=notify",
            "WatchdogSec=",
            "Restart=always",
            "StartLimitBurst=",
            "ProtectSystem=strict",
            "NoNewPrivileges=yes",
            "SystemCallFilter=@system-service",
            "After=network-online.target",
        ] {
            assert!(
                text.contains(needed) || (needed == "WatchdogSec=" && name.contains("coordinator")),
                "{name} lacks {needed}"
            );
        }
    }
}
