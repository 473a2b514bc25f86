//! `muster-agent prepare-volume`: makes the node's gp2 data volume ready,
//! once, from cloud-init, and changes nothing when run again.
//!
//! 1. **Find it.** `--device` names it outright. `--volume-id vol-…` finds
//!    it as Nitro instances show EBS volumes: the udev link
//!    `/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol…`, else the NVMe
//!    controller whose serial is the volume id (`/sys/class/nvme/*/serial`).
//!    With neither, it is the volume launched at `/dev/sdf`: `/dev/sdf` or
//!    `/dev/xvdf` where they exist (Xen, or Nitro images with Amazon's udev
//!    rules), else the one EBS NVMe disk (`/sys/block/nvme*n1`, model
//!    "Amazon Elastic Block Store" or serial `vol…`) with no partitions and nothing mounted
//!    from it, which on a muster node is the data volume (the root disk is
//!    partitioned and mounted). Anything else is ambiguous and refused.
//!    IMDS is not asked: its `block-device-mapping` names devices (`sdf`),
//!    not volume ids, and the launch always uses `/dev/sdf`.
//! 2. **Format only what is blank.** `blkid -p` probes the device itself
//!    (not a cache): no signature at all means blank, and only then does
//!    `mkfs.ext4` (or `mkfs.xfs`) run. A filesystem found is used as it
//!    is; a partition table, swap, LVM, RAID or LUKS signature is refused.
//!    A volume holding data is never formatted.
//! 3. **Mount** it at `--mount-point` (default `/var/lib/muster-data`,
//!    where the heartbeat reports its usage), unless it is mounted there
//!    already; something else mounted there is refused.
//! 4. **fstab**: a line `UUID=… <mount point> <type> defaults,nofail 0 2`
//!    is added unless there is one; `nofail` so a missing volume never
//!    stops a boot. The file is replaced atomically, mode 0644
//!    ([`write_durably`]). A line mounting something else at the mount
//!    point is refused, not overwritten.
//!
//! `--root DIR` puts every path above (devices, sysfs, the mount point,
//! fstab) under DIR, as `DESTDIR` does, while the fstab line names the
//! path as the node will see it; tests use it to work on a loop device
//! without touching the host's fstab.
//!
//! It shells out to `blkid`, `mkfs.*` and `mount` (util-linux, e2fsprogs),
//! as an administrator would; no AWS SDK.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use muster_proto::fsutil::write_durably;
use muster_proto::settings::Invalid;
use serde::Serialize;

/// The default mount point: where the heartbeat looks for the data volume.
pub const DEFAULT_MOUNT_POINT: &str = crate::facts::DATA_MOUNT;
/// The device name the launcher gives the data volume.
pub const LAUNCH_DEVICE: &str = "sdf";
/// The label given to filesystems made here.
pub const LABEL: &str = "muster-data";
/// The model EBS volumes show as NVMe disks.
const EBS_MODEL: &str = "Amazon Elastic Block Store";
/// Signatures that are not a filesystem to mount, and must not be touched.
const NOT_OURS: [&str; 6] = [
    "swap",
    "LVM2_member",
    "crypto_LUKS",
    "linux_raid_member",
    "zfs_member",
    "bcache",
];

/// The flags of `muster-agent prepare-volume`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct PrepareArgs {
    /// The block device (or image file) to prepare; found by itself when
    /// not given.
    #[arg(long, value_name = "PATH", conflicts_with = "volume_id")]
    pub device: Option<PathBuf>,
    /// The EBS volume id (vol-…) to find among the NVMe disks.
    #[arg(long, value_name = "VOL")]
    pub volume_id: Option<String>,
    /// Where to mount it.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_MOUNT_POINT)]
    pub mount_point: PathBuf,
    /// The filesystem made on a blank volume: ext4 or xfs.
    #[arg(long, value_name = "TYPE", default_value = "ext4")]
    pub fs_type: String,
    /// Work under this directory instead of / (devices, sysfs, the mount
    /// point and fstab), for tests and image builds.
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,
    /// Print what was done as JSON.
    #[arg(long)]
    pub json: bool,
}

/// What a run found and did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Outcome {
    /// The device used.
    pub device: PathBuf,
    /// Its filesystem.
    pub fs_type: String,
    /// Its filesystem's UUID.
    pub uuid: String,
    /// Where it is mounted, as the node sees it.
    pub mount_point: PathBuf,
    /// Whether a filesystem was made (the volume was blank).
    pub formatted: bool,
    /// Whether it was mounted now (false: it was mounted already).
    pub mounted: bool,
    /// Whether the fstab line was added now (false: it was there).
    pub fstab_added: bool,
}

/// Errors preparing the volume.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// A flag is not valid.
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// The volume could not be found, or not told apart from others.
    #[error("finding the data volume: {0}")]
    Find(String),
    /// A tool failed or could not be run.
    #[error("{command} on {target}: {reason}")]
    Tool {
        /// The command.
        command: String,
        /// What it worked on.
        target: String,
        /// Why it failed, with its output.
        reason: String,
    },
    /// The volume, the mount point or fstab holds something not ours.
    #[error("refusing to touch {target}: {reason}")]
    Refused {
        /// The device, mount point or file.
        target: String,
        /// What it holds.
        reason: String,
    },
    /// fstab could not be read or written.
    #[error("{path}: {source}")]
    Fstab {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
}

impl VolumeError {
    /// Whether this is a bad flag (exit 64) rather than a failure (exit 1).
    pub fn is_usage(&self) -> bool {
        matches!(self, VolumeError::Invalid(_))
    }
}

/// `path` (absolute, as the node sees it) under `root`.
fn under(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

/// Runs `prepare-volume` and prints what it did.
pub fn command(args: &PrepareArgs, out: &mut dyn std::io::Write) -> Result<Outcome, VolumeError> {
    let outcome = prepare(args)?;
    let text = if args.json {
        serde_json::to_string_pretty(&outcome).unwrap_or_default()
    } else {
        let mut text = format!(
            "{} ({} {}) ",
            outcome.device.display(),
            outcome.fs_type,
            outcome.uuid
        );
        let _ = write!(
            text,
            "{} at {}; {}; fstab {}",
            if outcome.mounted {
                "mounted"
            } else {
                "already mounted"
            },
            outcome.mount_point.display(),
            if outcome.formatted {
                "formatted: it was blank"
            } else {
                "kept its filesystem"
            },
            if outcome.fstab_added {
                "entry added"
            } else {
                "entry already there"
            }
        );
        text
    };
    let _ = writeln!(out, "{text}");
    Ok(outcome)
}

/// Finds, formats if blank, mounts, and records the data volume.
pub fn prepare(args: &PrepareArgs) -> Result<Outcome, VolumeError> {
    check_flags(args)?;
    let device = match (&args.device, &args.volume_id) {
        (Some(device), _) => device.clone(),
        (None, Some(id)) => find_by_volume_id(&args.root, id)?,
        (None, None) => find_launched(&args.root)?,
    };

    let mut probe = probe(&device)?;
    let mut formatted = false;
    match &probe {
        Probe::Blank => {
            make_filesystem(&device, &args.fs_type)?;
            formatted = true;
            probe = self::probe(&device)?;
        }
        Probe::Partitioned(table) => {
            return Err(VolumeError::Refused {
                target: device.display().to_string(),
                reason: format!("it holds a {table} partition table"),
            })
        }
        Probe::Signature { fs_type, .. } if NOT_OURS.contains(&fs_type.as_str()) => {
            return Err(VolumeError::Refused {
                target: device.display().to_string(),
                reason: format!("it holds a {fs_type} signature, not a filesystem to mount"),
            })
        }
        Probe::Signature { .. } => {}
    }
    let Probe::Signature { fs_type, uuid } = probe else {
        return Err(VolumeError::Tool {
            command: "blkid -p".into(),
            target: device.display().to_string(),
            reason: "finds no filesystem right after mkfs made one".into(),
        });
    };
    let uuid = uuid.ok_or_else(|| VolumeError::Refused {
        target: device.display().to_string(),
        reason: format!("its {fs_type} filesystem has no UUID to name it by in fstab"),
    })?;

    let target = under(&args.root, &args.mount_point);
    let mounted = mount(&device, &target, &fs_type, &uuid)?;
    let fstab_added = add_to_fstab(&args.root, &args.mount_point, &fs_type, &uuid)?;
    Ok(Outcome {
        device,
        fs_type,
        uuid,
        mount_point: args.mount_point.clone(),
        formatted,
        mounted,
        fstab_added,
    })
}

/// Checks the flags before anything is touched.
fn check_flags(args: &PrepareArgs) -> Result<(), Invalid> {
    if !matches!(args.fs_type.as_str(), "ext4" | "xfs") {
        return Err(Invalid::whole(
            "--fs-type",
            &args.fs_type,
            "must be ext4 or xfs",
        ));
    }
    let mount_text = args.mount_point.display().to_string();
    if !args.mount_point.is_absolute() || mount_text.chars().any(char::is_whitespace) {
        return Err(Invalid::whole(
            "--mount-point",
            &mount_text,
            "must be an absolute path without spaces",
        ));
    }
    if let Some(id) = &args.volume_id {
        let hex = id.strip_prefix("vol-").unwrap_or_default();
        if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Invalid::whole(
                "--volume-id",
                id,
                "must be an EBS volume id, vol- and hex digits",
            ));
        }
    }
    if !args.root.is_dir() {
        return Err(Invalid::whole(
            "--root",
            args.root.display().to_string(),
            "is not a directory",
        ));
    }
    Ok(())
}

/// What `blkid -p` says a device holds.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Probe {
    /// No signature at all.
    Blank,
    /// A partition table (`PTTYPE`).
    Partitioned(String),
    /// A filesystem or other signature (`TYPE`), with its UUID if any.
    Signature {
        fs_type: String,
        uuid: Option<String>,
    },
}

fn run(command: &mut Command, target: &Path) -> Result<std::process::Output, VolumeError> {
    let name = format!("{command:?}").replace('"', "");
    command
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| VolumeError::Tool {
            command: name,
            target: target.display().to_string(),
            reason: format!("cannot run it: {e}"),
        })
}

fn failed(command: &str, target: &Path, output: &std::process::Output) -> VolumeError {
    VolumeError::Tool {
        command: command.to_owned(),
        target: target.display().to_string(),
        reason: format!(
            "{}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ),
    }
}

/// Probes `device` itself with `blkid -p` (low-level, no cache).
fn probe(device: &Path) -> Result<Probe, VolumeError> {
    let output = run(
        Command::new("blkid")
            .args(["-p", "-o", "export"])
            .arg(device),
        device,
    )?;
    match output.status.code() {
        // blkid(8): 2 means no signature was found.
        Some(2) => Ok(Probe::Blank),
        Some(0) => Ok(parse_probe(&String::from_utf8_lossy(&output.stdout))),
        _ => Err(failed("blkid -p", device, &output)),
    }
}

fn parse_probe(text: &str) -> Probe {
    let value = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .map(str::to_owned)
    };
    if let Some(table) = value("PTTYPE") {
        return Probe::Partitioned(table);
    }
    Probe::Signature {
        fs_type: value("TYPE").unwrap_or_else(|| "unknown".to_owned()),
        uuid: value("UUID"),
    }
}

fn make_filesystem(device: &Path, fs_type: &str) -> Result<(), VolumeError> {
    let tool = format!("mkfs.{fs_type}");
    // No -F: mkfs itself refuses a device it finds in use or holding data.
    let output = run(
        Command::new(&tool).args(["-q", "-L", LABEL]).arg(device),
        device,
    )?;
    if !output.status.success() {
        return Err(failed(&tool, device, &output));
    }
    tracing::info!(device = %device.display(), fs_type, "made a filesystem on the blank data volume");
    Ok(())
}

/// Mounts `device` at `target` unless its filesystem is mounted there
/// already. Returns whether it mounted.
fn mount(device: &Path, target: &Path, fs_type: &str, uuid: &str) -> Result<bool, VolumeError> {
    std::fs::create_dir_all(target).map_err(|e| VolumeError::Tool {
        command: "mkdir".into(),
        target: target.display().to_string(),
        reason: e.to_string(),
    })?;
    let target = target.canonicalize().unwrap_or_else(|_| target.to_owned());
    if let Some(source) = mounted_at(&target)? {
        return match probe(Path::new(&source))? {
            Probe::Signature { uuid: Some(u), .. } if u == uuid => Ok(false),
            _ => Err(VolumeError::Refused {
                target: target.display().to_string(),
                reason: format!("{source} is mounted there, not the data volume"),
            }),
        };
    }
    let mut command = Command::new("mount");
    command.args(["-t", fs_type]);
    if device.is_file() {
        // An image file, not a block device: through a loop device.
        command.args(["-o", "loop"]);
    }
    command.arg(device).arg(&target);
    let output = run(&mut command, device)?;
    if !output.status.success() {
        return Err(failed("mount", device, &output));
    }
    Ok(true)
}

/// The source of the mount at `target`, if something is mounted there
/// (the last one, which is what shows).
fn mounted_at(target: &Path) -> Result<Option<String>, VolumeError> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| VolumeError::Tool {
        command: "reading /proc/self/mountinfo".into(),
        target: target.display().to_string(),
        reason: e.to_string(),
    })?;
    let wanted = target.display().to_string();
    Ok(text.lines().rev().find_map(|line| {
        // id parent major:minor root mount-point options… - type source super-options
        let mut fields = line.split(' ');
        let point = unescape(fields.nth(4)?);
        if point != wanted {
            return None;
        }
        let (_, after) = line.split_once(" - ")?;
        after.split(' ').nth(1).map(unescape)
    }))
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(field: &str) -> String {
    let mut out = String::new();
    let mut rest = field;
    while let Some(at) = rest.find('\\') {
        out.push_str(&rest[..at]);
        let code = rest.get(at + 1..at + 4).unwrap_or_default();
        match u8::from_str_radix(code, 8) {
            Ok(byte) if code.len() == 3 => {
                out.push(char::from(byte));
                rest = &rest[at + 4..];
            }
            _ => {
                out.push('\\');
                rest = &rest[at + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Adds the volume's fstab line unless it is there. Returns whether it
/// added it.
fn add_to_fstab(
    root: &Path,
    mount_point: &Path,
    fs_type: &str,
    uuid: &str,
) -> Result<bool, VolumeError> {
    let path = under(root, Path::new("/etc/fstab"));
    let io = |source| VolumeError::Fstab {
        path: path.display().to_string(),
        source,
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io(e)),
    };
    let source = format!("UUID={uuid}");
    let point = mount_point.display().to_string();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 2 || fields[0].starts_with('#') {
            continue;
        }
        let (their_source, their_point) = (fields[0], unescape(fields[1]));
        match (their_source == source, their_point == point) {
            (true, true) => return Ok(false),
            (false, true) => {
                return Err(VolumeError::Refused {
                    target: path.display().to_string(),
                    reason: format!("it mounts {their_source} at {point} already"),
                })
            }
            (true, false) => {
                return Err(VolumeError::Refused {
                    target: path.display().to_string(),
                    reason: format!("it mounts the data volume ({source}) at {their_point}"),
                })
            }
            (false, false) => {}
        }
    }
    let mut new = text;
    if !new.is_empty() && !new.ends_with('\n') {
        new.push('\n');
    }
    let _ = writeln!(new, "{source} {point} {fs_type} defaults,nofail 0 2");
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir).map_err(io)?;
    write_durably(&path, new.as_bytes(), 0o644).map_err(io)?;
    Ok(true)
}

/// The device of EBS volume `id`: its udev link, else the NVMe controller
/// whose serial it is.
fn find_by_volume_id(root: &Path, id: &str) -> Result<PathBuf, VolumeError> {
    // EBS shows the id without its dash: vol-0abc → vol0abc.
    let serial = id.replacen('-', "", 1);
    let link = under(
        root,
        Path::new(&format!(
            "/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_{serial}"
        )),
    );
    if link.exists() {
        return Ok(link);
    }
    let class = under(root, Path::new("/sys/class/nvme"));
    if let Ok(entries) = std::fs::read_dir(&class) {
        for entry in entries.flatten() {
            let found = std::fs::read_to_string(entry.path().join("serial"))
                .map(|s| s.trim() == serial)
                .unwrap_or(false);
            if found {
                let device = under(
                    root,
                    Path::new(&format!("/dev/{}n1", entry.file_name().to_string_lossy())),
                );
                if device.exists() {
                    return Ok(device);
                }
            }
        }
    }
    Err(VolumeError::Find(format!(
        "no disk is EBS volume {id} (no {} and no NVMe controller with serial {serial})",
        link.display()
    )))
}

/// Whether an NVMe serial is an EBS volume id without its dash
/// (`vol0abc…`), as Nitro sets it; the model name is not always
/// "Amazon Elastic Block Store" (hypervisors that cannot set it).
fn is_ebs_serial(serial: &str) -> bool {
    serial
        .strip_prefix("vol")
        .is_some_and(|hex| !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The volume launched at `/dev/sdf`, as Xen or Nitro shows it.
fn find_launched(root: &Path) -> Result<PathBuf, VolumeError> {
    for name in [
        LAUNCH_DEVICE.to_owned(),
        format!("xvd{}", &LAUNCH_DEVICE[2..]),
    ] {
        let path = under(root, Path::new("/dev").join(&name).as_path());
        if path.exists() {
            return Ok(path);
        }
    }
    let block = under(root, Path::new("/sys/block"));
    let mounts =
        std::fs::read_to_string(under(root, Path::new("/proc/self/mounts"))).unwrap_or_default();
    let mut candidates = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(&block)
        .map(|e| e.flatten().collect())
        .unwrap_or_default();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name().to_string_lossy().into_owned();
        // A hidden disk is one path of a multipath namespace
        // (`nvme0c0n1`), not a disk of its own: it has no device node.
        let hidden = std::fs::read_to_string(entry.path().join("hidden"))
            .is_ok_and(|flag| flag.trim() == "1");
        if !name.starts_with("nvme") || hidden {
            continue;
        }
        let model = std::fs::read_to_string(entry.path().join("device/model")).unwrap_or_default();
        let serial =
            std::fs::read_to_string(entry.path().join("device/serial")).unwrap_or_default();
        if model.trim() != EBS_MODEL && !is_ebs_serial(serial.trim()) {
            continue;
        }
        let partitioned = std::fs::read_dir(entry.path())
            .map(|e| {
                e.flatten()
                    .any(|p| p.file_name().to_string_lossy().starts_with(&name))
            })
            .unwrap_or(false);
        let dev = format!("/dev/{name}");
        let in_use = mounts
            .lines()
            .any(|l| l.split(' ').next() == Some(dev.as_str()));
        if !partitioned && !in_use {
            candidates.push(under(root, Path::new(&dev)));
        }
    }
    match candidates.len() {
        1 => Ok(candidates.remove(0)),
        0 => Err(VolumeError::Find(format!(
            "no /dev/{LAUNCH_DEVICE}, no /dev/xvd{}, and no unpartitioned, unmounted EBS NVMe disk",
            &LAUNCH_DEVICE[2..]
        ))),
        _ => Err(VolumeError::Find(format!(
            "several unpartitioned, unmounted EBS disks ({}): say which with --volume-id or --device",
            candidates
                .iter()
                .map(|c| c.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// blkid's export format: a filesystem, a partition table, swap.
    #[test]
    fn reads_blkid_export() {
        assert_eq!(
            parse_probe("DEVNAME=/dev/loop0\nUUID=1234-ab\nBLOCK_SIZE=4096\nTYPE=ext4\n"),
            Probe::Signature {
                fs_type: "ext4".into(),
                uuid: Some("1234-ab".into())
            }
        );
        assert_eq!(
            parse_probe("DEVNAME=/dev/nvme0n1\nPTUUID=x\nPTTYPE=gpt\n"),
            Probe::Partitioned("gpt".into())
        );
        assert!(matches!(
            parse_probe("TYPE=swap\nUUID=u\n"),
            Probe::Signature { fs_type, .. } if fs_type == "swap"
        ));
    }

    /// A fake /sys and /dev: the unpartitioned EBS disk is the data
    /// volume; the partitioned root disk and other models are not.
    #[test]
    fn finds_the_unpartitioned_ebs_disk() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let disk = |name: &str, model: &str, partitions: &[&str]| {
            let dir = r.join("sys/block").join(name);
            std::fs::create_dir_all(dir.join("device")).unwrap();
            std::fs::write(dir.join("device/model"), format!("{model}    \n")).unwrap();
            for p in partitions {
                std::fs::create_dir_all(dir.join(p)).unwrap();
            }
            std::fs::create_dir_all(r.join("dev")).unwrap();
            std::fs::write(r.join("dev").join(name), b"").unwrap();
        };
        disk("nvme0n1", EBS_MODEL, &["nvme0n1p1", "nvme0n1p14"]);
        disk("nvme1n1", "Amazon EC2 NVMe Instance Storage", &[]);
        assert!(matches!(find_launched(r), Err(VolumeError::Find(_))));
        disk("nvme2n1", EBS_MODEL, &[]);
        assert_eq!(find_launched(r).unwrap(), r.join("dev/nvme2n1"));
        disk("nvme3n1", EBS_MODEL, &[]);
        let error = find_launched(r).unwrap_err();
        assert!(error.to_string().contains("--volume-id"), "{error}");
        // A disk whose serial is a volume id is EBS whatever its model.
        disk("nvme3n1", "QEMU NVMe Ctrl", &[]);
        std::fs::remove_dir_all(r.join("sys/block/nvme2n1")).unwrap();
        assert!(matches!(find_launched(r), Err(VolumeError::Find(_))));
        std::fs::write(r.join("sys/block/nvme3n1/device/serial"), "vol0abc123  \n").unwrap();
        assert_eq!(find_launched(r).unwrap(), r.join("dev/nvme3n1"));
        // The hidden path of a multipath namespace is not a disk.
        disk("nvme3c3n1", "QEMU NVMe Ctrl", &[]);
        std::fs::write(r.join("sys/block/nvme3c3n1/device/serial"), "vol0abc123\n").unwrap();
        std::fs::write(r.join("sys/block/nvme3c3n1/hidden"), "1\n").unwrap();
        assert_eq!(find_launched(r).unwrap(), r.join("dev/nvme3n1"));
        // A Xen name wins over guessing.
        std::fs::write(r.join("dev/xvdf"), b"").unwrap();
        assert_eq!(find_launched(r).unwrap(), r.join("dev/xvdf"));
    }

    /// By volume id: the udev link, else the NVMe serial.
    #[test]
    fn finds_a_volume_by_id() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("sys/class/nvme/nvme1")).unwrap();
        std::fs::write(r.join("sys/class/nvme/nvme1/serial"), "vol0abc123\n").unwrap();
        std::fs::create_dir_all(r.join("dev")).unwrap();
        std::fs::write(r.join("dev/nvme1n1"), b"").unwrap();
        assert_eq!(
            find_by_volume_id(r, "vol-0abc123").unwrap(),
            r.join("dev/nvme1n1")
        );
        assert!(find_by_volume_id(r, "vol-0def").is_err());
        let link = r.join("dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol0def");
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        std::fs::write(&link, b"").unwrap();
        assert_eq!(find_by_volume_id(r, "vol-0def").unwrap(), link);
    }

    /// fstab: added once, kept with the rest, and a foreign line at the
    /// mount point is refused.
    #[test]
    fn fstab_lines() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("etc")).unwrap();
        std::fs::write(
            r.join("etc/fstab"),
            "# static\nLABEL=root / ext4 defaults 0 1",
        )
        .unwrap();
        let point = Path::new(DEFAULT_MOUNT_POINT);
        assert!(add_to_fstab(r, point, "ext4", "u-1").unwrap());
        let text = std::fs::read_to_string(r.join("etc/fstab")).unwrap();
        assert_eq!(
            text,
            "# static\nLABEL=root / ext4 defaults 0 1\nUUID=u-1 /var/lib/muster-data ext4 defaults,nofail 0 2\n"
        );
        assert!(!add_to_fstab(r, point, "ext4", "u-1").unwrap());
        assert_eq!(std::fs::read_to_string(r.join("etc/fstab")).unwrap(), text);
        let error = add_to_fstab(r, point, "ext4", "u-2").unwrap_err();
        assert!(matches!(error, VolumeError::Refused { .. }), "{error}");
    }

    /// Bad flags are named and nothing is touched.
    #[test]
    fn bad_flags() {
        let base = PrepareArgs {
            device: Some("/nonexistent".into()),
            mount_point: DEFAULT_MOUNT_POINT.into(),
            fs_type: "ext4".into(),
            root: "/".into(),
            ..PrepareArgs::default()
        };
        for (args, name) in [
            (
                PrepareArgs {
                    fs_type: "ntfs".into(),
                    ..base.clone()
                },
                "--fs-type",
            ),
            (
                PrepareArgs {
                    mount_point: "relative".into(),
                    ..base.clone()
                },
                "--mount-point",
            ),
            (
                PrepareArgs {
                    device: None,
                    volume_id: Some("vol-xyz".into()),
                    ..base.clone()
                },
                "--volume-id",
            ),
            (
                PrepareArgs {
                    root: "/nonexistent".into(),
                    ..base.clone()
                },
                "--root",
            ),
        ] {
            let error = prepare(&args).unwrap_err();
            assert!(error.is_usage(), "{error}");
            assert!(error.to_string().starts_with(name), "{error}");
        }
    }

    /// mountinfo's escapes are undone.
    #[test]
    fn unescapes_mountinfo() {
        assert_eq!(unescape("/mnt/a\\040b"), "/mnt/a b");
        assert_eq!(unescape("/plain"), "/plain");
    }
}
