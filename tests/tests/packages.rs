//! The Debian packages: `cargo deb` packs each binary with its unit, its
//! default config (a conffile) and the maintainer scripts that enable the
//! unit; `dpkg-deb` lists and unpacks them where Debian expects them.
//!
//! The tests package the binaries the test run already built (`--no-build
//! --profile dev --strip --fast`): a release build with fat LTO takes
//! minutes, and what is checked here, the layout, does not depend on the
//! profile. `scripts/package` makes the release packages with the same
//! metadata. Without cargo-deb they fail, saying that scripts/setup
//! installs it.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use muster_tests::procs::bin_path;

/// Builds the .deb of `package` into a temporary directory.
fn build_deb(package: &str) -> (tempfile::TempDir, PathBuf) {
    let has_cargo_deb = Command::new("cargo")
        .args(["deb", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        has_cargo_deb,
        "cargo-deb is not installed: scripts/setup installs it"
    );
    // bin_path is target/debug/NAME: the target dir is two levels up.
    let binary = bin_path(package);
    let target_dir = binary.parent().and_then(Path::parent).unwrap();
    let out = tempfile::tempdir().unwrap();
    let output = Command::new("cargo")
        .args(["deb", "-p", package, "--no-build", "--profile", "dev"])
        .args(["--strip", "--no-dbgsym", "--fast", "--offline", "-o"])
        .arg(out.path())
        .env("CARGO_TARGET_DIR", target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "cargo deb -p {package} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let deb = std::fs::read_dir(out.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .expect("cargo deb wrote a .deb");
    (out, deb)
}

fn dpkg_deb(args: &[&str], deb: &Path) -> String {
    let output = Command::new("dpkg-deb")
        .args(args)
        .arg(deb)
        .output()
        .unwrap();
    assert!(output.status.success(), "dpkg-deb {args:?}: {output:?}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Checks one package: what it lists, where it unpacks, its conffile and
/// its maintainer scripts.
fn check(package: &str, config: &str, config_mode: u32) {
    let (_out, deb) = build_deb(package);
    let unit = format!("{package}.service");
    let listing = dpkg_deb(&["--contents"], &deb);
    for path in [
        format!("./usr/bin/{package}"),
        format!("./lib/systemd/system/{unit}"),
        format!("./etc/muster/{config}"),
    ] {
        assert!(
            listing.lines().any(|l| l.ends_with(&path)),
            "{path} missing:\n{listing}"
        );
    }

    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let output = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(r)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let installed = r.join("usr/bin").join(package);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&installed), 0o755);
    let version = Command::new(&installed).arg("--version").output().unwrap();
    assert!(
        String::from_utf8_lossy(&version.stdout).contains(env!("CARGO_PKG_VERSION")),
        "{version:?}"
    );
    let shipped_unit = std::fs::read_to_string(r.join("lib/systemd/system").join(&unit)).unwrap();
    let repo_unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../systemd")
            .join(&unit),
    )
    .unwrap();
    assert_eq!(shipped_unit, repo_unit);
    let config_path = r.join("etc/muster").join(config);
    assert_eq!(mode(&config_path), config_mode);
    let repo_config = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../packaging")
            .join(config),
    )
    .unwrap();
    assert_eq!(std::fs::read_to_string(&config_path).unwrap(), repo_config);

    // The control part: the config is a conffile, postinst enables the
    // unit, prerm disables it.
    let control = tempfile::tempdir().unwrap();
    let output = Command::new("dpkg-deb")
        .arg("-e")
        .arg(&deb)
        .arg(control.path())
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let read = |name: &str| std::fs::read_to_string(control.path().join(name)).unwrap();
    assert_eq!(read("conffiles").trim(), format!("/etc/muster/{config}"));
    assert!(read("postinst").contains(&format!("systemctl enable {unit}")));
    assert!(read("prerm").contains(&format!("systemctl disable {unit}")));
    assert_eq!(mode(&control.path().join("postinst")), 0o755);
    println!(
        "{}: {} bytes",
        deb.file_name().unwrap().to_string_lossy(),
        std::fs::metadata(&deb).unwrap().len()
    );
}

/// The agent's package: binary, unit, a private default config.
#[test]
fn the_agent_package() {
    check("muster-agent", "agent.toml", 0o600);
}

/// The coordinator's package: binary, unit, default config.
#[test]
fn the_coordinator_package() {
    check("muster-coordinator", "coordinator.toml", 0o640);
}

/// The default configs the packages ship: everything commented out, so
/// they change nothing; uncommented, every key is one the binary knows
/// (each is then stopped by a bad flag given on purpose, after the file
/// was read).
#[test]
fn the_default_configs_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging");
    let agent: toml::Table = std::fs::read_to_string(dir.join("agent.toml"))
        .unwrap()
        .parse()
        .unwrap();
    assert!(agent.is_empty(), "every agent setting is commented out");
    let coordinator: toml::Table = std::fs::read_to_string(dir.join("coordinator.toml"))
        .unwrap()
        .parse()
        .unwrap();
    assert!(coordinator["serve"].as_table().unwrap().is_empty());
    // Uncommented, every key is one the binaries know.
    let uncomment = |text: String| -> String {
        text.lines()
            .map(|l| {
                l.strip_prefix('#')
                    .filter(|l| l.contains(" = "))
                    .unwrap_or(l)
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let tmp = tempfile::tempdir().unwrap();
    let agent_file = tmp.path().join("agent.toml");
    let text = uncomment(std::fs::read_to_string(dir.join("agent.toml")).unwrap());
    std::fs::write(&agent_file, text).unwrap();
    let output = Command::new(bin_path("muster-agent"))
        .args(["run", "--config"])
        .arg(&agent_file)
        .args(["--imds-poll-interval", "never"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    assert!(
        !stderr.contains("unknown field"),
        "the agent refuses a key of its default config: {stderr}"
    );
    let coordinator_file = tmp.path().join("coordinator.toml");
    let text = uncomment(std::fs::read_to_string(dir.join("coordinator.toml")).unwrap());
    std::fs::write(&coordinator_file, text).unwrap();
    let output = Command::new(bin_path("muster-coordinator"))
        .args(["serve", "--config"])
        .arg(&coordinator_file)
        .args(["--listen", "nowhere"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64));
    assert!(
        !stderr.contains("unknown field"),
        "the coordinator refuses a key of its default config: {stderr}"
    );
}
