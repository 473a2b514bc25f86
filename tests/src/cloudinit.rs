//! User data as cloud-init sees it: unpacked (gzip or text), checked with
//! the real `cloud-init schema`, and applied to a temporary root the way
//! cloud-init would apply it to `/`.
//!
//! [`Boot`] is a small interpreter of the two modules our user data uses:
//! - `write_files`: each file lands under the root with its permissions,
//!   its content decoded as its `encoding` says (`b64`, `gzip`, `gz+b64`,
//!   or text);
//! - `runcmd`: each command runs as cloud-init runs it, except that every
//!   argument that is an absolute path is moved under the root, and that
//!   `systemctl` and `prepare-volume` are recorded rather than run (there
//!   is no systemd and no data volume here; the unit files and
//!   `prepare-volume` have tests of their own).
//!
//! Nothing of the user data is re-created: the files and commands run are
//! the ones the coordinator rendered.

use std::io::Read as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::Engine as _;

/// The magic bytes of gzip.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// User data as cloud-init reads it: gunzipped when it is gzip.
pub fn unpack(bytes: &[u8]) -> String {
    if bytes.starts_with(&GZIP_MAGIC) {
        let mut text = String::new();
        flate2::read::GzDecoder::new(bytes)
            .read_to_string(&mut text)
            .expect("gzipped user data unpacks to text");
        text
    } else {
        String::from_utf8(bytes.to_vec()).expect("user data is UTF-8")
    }
}

/// The `#cloud-config` document: JSON after the header line, read as JSON,
/// the strictest YAML read there is.
pub fn document(text: &str) -> serde_json::Value {
    let body = text
        .strip_prefix("#cloud-config\n")
        .unwrap_or_else(|| panic!("user data is not a #cloud-config:\n{text}"));
    serde_json::from_str(body).expect("the cloud-config parses")
}

/// Runs `cloud-init schema --config-file` on the text; panics with its
/// words unless it says the document is valid.
pub fn assert_schema_valid(text: &str) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("user-data");
    std::fs::write(&path, text).expect("writing the user data");
    let output = Command::new("cloud-init")
        .args(["schema", "--config-file"])
        .arg(&path)
        .output()
        .unwrap_or_else(|e| {
            panic!("running cloud-init schema: {e} (scripts/setup installs cloud-init)")
        });
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && said.contains("Valid cloud-config"),
        "cloud-init schema refused the user data ({}):\n{said}\n{text}",
        output.status
    );
}

/// What applying user data did.
#[derive(Debug, Default)]
pub struct Boot {
    /// Files written, as paths on the node.
    pub written: Vec<String>,
    /// Commands run, as written in the user data, with how they ended.
    pub ran: Vec<(Vec<String>, Output)>,
    /// Commands recorded, not run (`systemctl`, `prepare-volume`).
    pub recorded: Vec<Vec<String>>,
}

impl Boot {
    /// Whether every command run succeeded.
    pub fn all_succeeded(&self) -> bool {
        self.ran.iter().all(|(_, output)| output.status.success())
    }

    /// Everything the commands printed, for failure messages.
    pub fn outputs(&self) -> String {
        self.ran
            .iter()
            .map(|(argv, output)| {
                format!(
                    "$ {}\n[{}]\n{}{}",
                    argv.first().map(String::as_str).unwrap_or_default(),
                    output.status,
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                )
            })
            .collect()
    }
}

/// `path` (absolute, as the node sees it) under `root`.
pub fn under(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

/// Applies the `write_files` of `doc` under `root`.
pub fn write_files(doc: &serde_json::Value, root: &Path, boot: &mut Boot) {
    for file in doc["write_files"].as_array().expect("write_files") {
        let path = file["path"].as_str().expect("a file has a path");
        let content = file["content"].as_str().unwrap_or_default();
        let bytes = match file["encoding"].as_str().unwrap_or("text/plain") {
            "b64" | "base64" => base64::engine::general_purpose::STANDARD
                .decode(content)
                .expect("b64 content"),
            "gz" | "gzip" => unpack(content.as_bytes()).into_bytes(),
            "gz+b64" | "gzip+base64" | "gz+base64" | "gzip+b64" => unpack(
                &base64::engine::general_purpose::STANDARD
                    .decode(content)
                    .expect("b64 content"),
            )
            .into_bytes(),
            "text/plain" => content.as_bytes().to_vec(),
            other => panic!("unknown write_files encoding {other}"),
        };
        let target = under(root, path);
        std::fs::create_dir_all(target.parent().expect("a file has a directory"))
            .expect("creating the file's directory");
        std::fs::write(&target, bytes).expect("writing a file");
        // cloud-init's default is 0644.
        let mode = u32::from_str_radix(file["permissions"].as_str().unwrap_or("0644"), 8)
            .expect("permissions are octal");
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode))
            .expect("setting permissions");
        boot.written.push(path.to_owned());
    }
}

/// Runs the `runcmd` of `doc` with absolute paths moved under `root`;
/// `systemctl` and `prepare-volume` are recorded, not run.
pub fn run_commands(doc: &serde_json::Value, root: &Path, boot: &mut Boot) {
    run_commands_on(doc, root, boot, None);
}

/// [`run_commands`] on a machine whose `uname -m` says `arch`, when given
/// (a `uname` of the test's own first on `PATH`).
fn run_commands_on(doc: &serde_json::Value, root: &Path, boot: &mut Boot, arch: Option<&str>) {
    let path = arch.map(|arch| {
        let shim = root.join(".uname");
        std::fs::create_dir_all(&shim).expect("making the uname shim's directory");
        let uname = shim.join("uname");
        std::fs::write(&uname, format!("#!/bin/sh\necho {arch}\n")).expect("writing uname");
        std::fs::set_permissions(&uname, std::fs::Permissions::from_mode(0o755))
            .expect("making uname executable");
        format!(
            "{}:{}",
            shim.display(),
            std::env::var("PATH").unwrap_or_default()
        )
    });
    for command in doc["runcmd"].as_array().expect("runcmd") {
        let argv: Vec<String> = command
            .as_array()
            .expect("every command is an argument list")
            .iter()
            .map(|a| a.as_str().expect("arguments are strings").to_owned())
            .collect();
        if argv[0] == "systemctl" || argv.get(1).is_some_and(|a| a == "prepare-volume") {
            boot.recorded.push(argv);
            continue;
        }
        let rooted: Vec<String> = argv
            .iter()
            .map(|a| {
                if a.starts_with('/') {
                    under(root, a).display().to_string()
                } else {
                    a.clone()
                }
            })
            .collect();
        let mut command = Command::new(&rooted[0]);
        command.args(&rooted[1..]);
        if let Some(path) = &path {
            command.env("PATH", path);
        }
        let output = command
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", rooted[0]));
        boot.ran.push((argv, output));
    }
}

/// Applies all of `doc` under `root`: files first, then commands, as
/// cloud-init's stages do.
pub fn apply(doc: &serde_json::Value, root: &Path) -> Boot {
    let mut boot = Boot::default();
    write_files(doc, root, &mut boot);
    run_commands(doc, root, &mut boot);
    boot
}

/// [`apply`] as on a machine of architecture `arch` (what `uname -m`
/// prints there).
pub fn apply_on(doc: &serde_json::Value, root: &Path, arch: &str) -> Boot {
    let mut boot = Boot::default();
    write_files(doc, root, &mut boot);
    run_commands_on(doc, root, &mut boot, Some(arch));
    boot
}
