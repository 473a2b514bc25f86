//! `muster-agent prepare-volume` on real block devices: a loop device over
//! a sparse file (or, where loop devices cannot be set up by hand, an
//! image file mounted with `-o loop`), the real `blkid`, `mkfs.ext4` and
//! `mount`, fstab written under a temporary root. A blank volume is
//! formatted once; a second run changes nothing; a volume that holds a
//! filesystem (or anything else) is never formatted. Every mount and loop
//! device made is undone when its guard drops.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use muster_tests::procs::bin_path;

/// Size of each test volume; sparse, so it costs no disk.
const VOLUME_BYTES: u64 = 64 * 1024 * 1024;

/// A volume for one test: a sparse image file, a loop device over it when
/// one can be had, and a root for fstab and the mount point. Dropping it
/// unmounts what is mounted under the root and detaches the loop device.
struct Volume {
    root: tempfile::TempDir,
    image: PathBuf,
    loop_device: Option<String>,
}

impl Volume {
    /// A blank volume, or why there can be none here.
    fn new() -> Result<Volume, String> {
        let root = tempfile::tempdir().map_err(|e| e.to_string())?;
        let image = root.path().join("volume.img");
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(VOLUME_BYTES))
            .map_err(|e| e.to_string())?;
        let output = run("losetup", &["--find", "--show", image.to_str().unwrap()]);
        let loop_device = if output.status.success() {
            Some(String::from_utf8_lossy(&output.stdout).trim().to_owned())
        } else {
            println!(
                "losetup failed ({}); using the image file with mount -o loop",
                String::from_utf8_lossy(&output.stderr).trim()
            );
            None
        };
        Ok(Volume {
            root,
            image,
            loop_device,
        })
    }

    /// What prepare-volume is pointed at.
    fn device(&self) -> String {
        self.loop_device
            .clone()
            .unwrap_or_else(|| self.image.display().to_string())
    }

    fn root(&self) -> &Path {
        self.root.path()
    }

    fn mount_point(&self) -> PathBuf {
        self.root().join("var/lib/muster-data")
    }

    fn fstab(&self) -> String {
        std::fs::read_to_string(self.root().join("etc/fstab")).unwrap_or_default()
    }

    /// Runs `muster-agent prepare-volume --root ROOT --json` with `args`.
    fn prepare(&self, args: &[&str]) -> Output {
        Command::new(bin_path("muster-agent"))
            .arg("prepare-volume")
            .arg("--root")
            .arg(self.root())
            .arg("--json")
            .args(args)
            .output()
            .expect("running muster-agent prepare-volume")
    }

    /// [`Volume::prepare`] on this volume's device, which must succeed.
    fn prepare_ok(&self) -> serde_json::Value {
        let output = self.prepare(&["--device", &self.device()]);
        assert!(
            output.status.success(),
            "prepare-volume failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).expect("prepare-volume --json prints JSON")
    }

    fn is_mounted(&self) -> bool {
        let wanted = self
            .mount_point()
            .canonicalize()
            .unwrap_or(self.mount_point());
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .any(|l| l.split(' ').nth(4) == Some(wanted.to_str().unwrap()))
    }

    /// Unmounts the mount point, retrying while it is busy for a moment
    /// (a process forked by a parallel test may hold a file of it until
    /// its exec).
    fn unmount(&self) {
        let mut attempts = 0;
        while self.is_mounted() {
            let output = run("umount", &[self.mount_point().to_str().unwrap()]);
            attempts += 1;
            if !output.status.success() {
                assert!(attempts < 50, "umount: {output:?}");
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    }

    /// The filesystem's UUID, probed from the device itself.
    fn uuid(&self) -> Option<String> {
        let output = run(
            "blkid",
            &["-p", "-s", "UUID", "-o", "value", &self.device()],
        );
        let uuid = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        (!uuid.is_empty()).then_some(uuid)
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        let mut attempts = 0;
        while self.is_mounted() {
            if !run("umount", &[self.mount_point().to_str().unwrap()])
                .status
                .success()
            {
                attempts += 1;
                if attempts >= 50 {
                    // Detach it at least; the kernel frees it once unused.
                    run("umount", &["-l", self.mount_point().to_str().unwrap()]);
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
        if let Some(device) = &self.loop_device {
            run("losetup", &["-d", device]);
        }
    }
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"))
}

/// A volume, or `None` with the reason printed when this machine allows
/// neither loop devices nor loop mounts.
fn volume() -> Option<Volume> {
    let volume = match Volume::new() {
        Ok(v) => v,
        Err(why) => {
            println!("skipped: cannot make a test volume: {why}");
            return None;
        }
    };
    // Can we mount at all? Try with a throwaway filesystem on a scratch image.
    let scratch = volume.root().join("probe.img");
    std::fs::File::create(&scratch)
        .and_then(|f| f.set_len(8 * 1024 * 1024))
        .unwrap();
    let mkfs = run("mkfs.ext4", &["-q", scratch.to_str().unwrap()]);
    let target = volume.root().join("probe");
    std::fs::create_dir_all(&target).unwrap();
    let mounted = run(
        "mount",
        &[
            "-o",
            "loop",
            scratch.to_str().unwrap(),
            target.to_str().unwrap(),
        ],
    );
    if !mkfs.status.success() || !mounted.status.success() {
        println!(
            "skipped: this machine allows no loop mounts ({}{})",
            String::from_utf8_lossy(&mkfs.stderr).trim(),
            String::from_utf8_lossy(&mounted.stderr).trim()
        );
        return None;
    }
    assert!(run("umount", &[target.to_str().unwrap()]).status.success());
    std::fs::remove_file(&scratch).unwrap();
    Some(volume)
}

/// A blank volume is formatted, mounted and put in fstab once; a second
/// run changes nothing; unmounted, a third run mounts it again without
/// formatting, and what was written to it is still there.
#[test]
fn a_blank_volume_is_formatted_once() {
    let Some(volume) = volume() else { return };
    assert_eq!(volume.uuid(), None, "the volume starts blank");

    let first = volume.prepare_ok();
    assert_eq!(first["formatted"], true, "{first}");
    assert_eq!(first["mounted"], true, "{first}");
    assert_eq!(first["fstab_added"], true, "{first}");
    assert_eq!(first["fs_type"], "ext4");
    let uuid = volume.uuid().expect("a filesystem was made");
    assert_eq!(first["uuid"], uuid.as_str());
    assert!(volume.is_mounted());
    let fstab = volume.fstab();
    assert_eq!(
        fstab,
        format!("UUID={uuid} /var/lib/muster-data ext4 defaults,nofail 0 2\n")
    );
    std::fs::write(volume.mount_point().join("kept"), "data").unwrap();

    let second = volume.prepare_ok();
    assert_eq!(second["formatted"], false, "{second}");
    assert_eq!(second["mounted"], false, "{second}");
    assert_eq!(second["fstab_added"], false, "{second}");
    assert_eq!(volume.fstab(), fstab, "fstab is unchanged");
    assert_eq!(volume.uuid().as_deref(), Some(uuid.as_str()));

    volume.unmount();
    let third = volume.prepare_ok();
    assert_eq!(third["formatted"], false, "{third}");
    assert_eq!(third["mounted"], true, "{third}");
    assert_eq!(volume.fstab(), fstab);
    assert_eq!(
        std::fs::read_to_string(volume.mount_point().join("kept")).unwrap(),
        "data"
    );
}

/// A volume that already holds a filesystem keeps it and its files; one
/// holding a swap signature is refused and left as it was.
#[test]
fn a_volume_holding_data_is_never_formatted() {
    let Some(volume) = volume() else { return };
    let content = tempfile::tempdir().unwrap();
    std::fs::write(content.path().join("precious"), "do not lose me").unwrap();
    let made = run(
        "mkfs.ext4",
        &[
            "-q",
            "-d",
            content.path().to_str().unwrap(),
            &volume.device(),
        ],
    );
    assert!(made.status.success(), "{made:?}");
    let uuid = volume.uuid().unwrap();

    let outcome = volume.prepare_ok();
    assert_eq!(outcome["formatted"], false, "{outcome}");
    assert_eq!(outcome["uuid"], uuid.as_str());
    assert_eq!(
        std::fs::read_to_string(volume.mount_point().join("precious")).unwrap(),
        "do not lose me"
    );
    volume.unmount();

    let Some(swap) = self::volume() else { return };
    let made = run("mkswap", &[&swap.device()]);
    assert!(made.status.success(), "{made:?}");
    let swap_uuid = swap.uuid();
    let output = swap.prepare(&["--device", &swap.device()]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("swap signature"),
        "{output:?}"
    );
    let probed = run(
        "blkid",
        &["-p", "-s", "TYPE", "-o", "value", &swap.device()],
    );
    assert_eq!(String::from_utf8_lossy(&probed.stdout).trim(), "swap");
    assert_eq!(swap.uuid(), swap_uuid);
    assert!(!swap.is_mounted());
    assert_eq!(swap.fstab(), "", "nothing was added to fstab");
}

/// On Nitro the volume is found by its id, through the udev link EBS
/// volumes get (here a link under the test root to the loop device).
#[test]
fn a_volume_is_found_by_its_id() {
    let Some(volume) = volume() else { return };
    if volume.loop_device.is_none() {
        println!("skipped: finding by id needs a device node, and there is no loop device");
        return;
    }
    let by_id = volume.root().join("dev/disk/by-id");
    std::fs::create_dir_all(&by_id).unwrap();
    std::os::unix::fs::symlink(
        volume.device(),
        by_id.join("nvme-Amazon_Elastic_Block_Store_vol0123456789abcdef0"),
    )
    .unwrap();
    let output = volume.prepare(&["--volume-id", "vol-0123456789abcdef0"]);
    assert!(output.status.success(), "{output:?}");
    let outcome: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(outcome["formatted"], true);
    assert!(volume.is_mounted());

    let output = volume.prepare(&["--volume-id", "vol-0fff"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no disk is EBS volume vol-0fff"));
    let output = volume.prepare(&["--volume-id", "nope"]);
    assert_eq!(output.status.code(), Some(64));
}

/// A plain image file (no loop device set up by hand) is mounted with
/// `-o loop`, and its fstab line works the same.
#[test]
fn an_image_file_is_mounted_through_a_loop_mount() {
    let Some(volume) = volume() else { return };
    let output = volume.prepare(&["--device", volume.image.to_str().unwrap()]);
    assert!(output.status.success(), "{output:?}");
    let outcome: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(outcome["formatted"], true);
    assert_eq!(outcome["mounted"], true);
    assert!(volume.is_mounted());
    let again = volume.prepare(&["--device", volume.image.to_str().unwrap()]);
    let again: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(again["mounted"], false, "{again}");
    assert_eq!(again["formatted"], false, "{again}");
}
