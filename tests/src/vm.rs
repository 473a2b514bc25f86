//! Real boots: a Debian guest under QEMU that believes it is an EC2
//! instance of moto's, for the stories in `tests/tests/boot.rs`.
//!
//! A [`Machine`] is one instance's hardware, kept across power cycles:
//! - a network namespace holding only loopback, 169.254.169.254 (a
//!   forwarder to the test's [`crate::Imds`], on port 80, where cloud-init
//!   and the agent look by default) and [`COORDINATOR_IP`] (a forwarder to
//!   the coordinator's API, on [`COORDINATOR_PORT`]);
//! - QEMU run inside it with user-mode networking on the instance's
//!   subnet: DHCP hands the guest EC2's private address, `.1` is the
//!   router and `.2` the resolver, as in a VPC, and the NIC has the MAC
//!   IMDS serves;
//! - SMBIOS strings that say "Amazon EC2" (a system UUID and serial that
//!   start with `ec2`, which is how cloud-init's ds-identify knows AWS);
//! - NVMe disks as on Nitro: the root (a copy-on-write overlay of the
//!   image from `tests/vm/build-image`) and, for each EBS volume moto
//!   attached, a blank disk whose serial is the volume id without its dash.
//!   QEMU's NVMe model cannot be set, so only the serial says "EBS";
//! - a `qemu-guest-agent` socket ([`crate::qga`]) for commands and files;
//! - a serial console log, `console.log`, in the story's log directory
//!   `$CARGO_TARGET_DIR/boot-logs/<story>/`, where [`Machine::save_logs`]
//!   also puts the guest's journal and cloud-init's logs.
//!
//! KVM is used only when a probe boot under it prints the kernel's banner
//! (a `/dev/kvm` may exist and still not run a stock kernel); otherwise
//! TCG, software emulation, where a first boot to a deployed agent takes
//! about a minute and a half. QEMU is stopped by pid when the machine
//! drops (after saving the logs if the story is failing), and the
//! namespace is deleted.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::Context;
use aws_sdk_ec2::Client;

use crate::netns::{Forward, Netns};
use crate::procs::{bin_path, tail, Process};
use crate::qga::{Exec, Qga};

/// The address guests reach the coordinator at (TEST-NET-1: outside any
/// VPC, routed nowhere, present only inside each machine's namespace).
pub const COORDINATOR_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);

/// The port guests reach the coordinator on: its default.
pub const COORDINATOR_PORT: u16 = 7443;

/// Where EC2's instance metadata service lives.
pub const IMDS_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);

/// How long a guest gets from power-on until its guest agent answers.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(600);

/// How long a command in the guest may run.
pub const EXEC_TIMEOUT: Duration = Duration::from_secs(300);

/// The guest's memory.
const MEMORY_MIB: u32 = 1024;

/// `https://192.0.2.10:7443`: the coordinator's `--public-url` for guests.
pub fn coordinator_url() -> String {
    format!("https://{COORDINATOR_IP}:{COORDINATOR_PORT}")
}

/// The built guest image ([`image`]).
#[derive(Debug, Clone)]
pub struct Image {
    /// The root disk, qcow2.
    pub disk: PathBuf,
    /// The kernel.
    pub kernel: PathBuf,
    /// Its initramfs.
    pub initrd: PathBuf,
    /// The kernel command line.
    pub cmdline: String,
}

/// The guest image, built by `tests/vm/build-image` on first use (it
/// caches it; a changed recipe builds anew). Panics with the script's
/// words if it cannot be built.
pub fn image() -> Image {
    static IMAGE: OnceLock<Image> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("vm/build-image");
            let output = Command::new(&script)
                .output()
                .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
            assert!(
                output.status.success(),
                "{} failed ({}):\n{}",
                script.display(),
                output.status,
                tail(&String::from_utf8_lossy(&output.stderr), 16 * 1024)
            );
            let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
            let cmdline = std::fs::read_to_string(dir.join("cmdline"))
                .unwrap_or_else(|e| panic!("{}/cmdline: {e}", dir.display()));
            Image {
                disk: dir.join("disk.qcow2"),
                kernel: dir.join("vmlinuz"),
                initrd: dir.join("initrd.img"),
                cmdline: cmdline.trim().to_owned(),
            }
        })
        .clone()
}

/// Whether guests run under KVM: only if a probe boot under it prints the
/// kernel's banner within 30 s. Decided once per test process.
pub fn use_kvm() -> bool {
    static KVM: OnceLock<bool> = OnceLock::new();
    *KVM.get_or_init(|| {
        let kvm = Path::new("/dev/kvm").exists() && probe_kvm(&image());
        eprintln!(
            "boot: guests run under {}",
            if kvm {
                "KVM"
            } else {
                "TCG (software emulation)"
            }
        );
        kvm
    })
}

fn probe_kvm(image: &Image) -> bool {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let console = dir.path().join("console");
    let mut command = Command::new("qemu-system-x86_64");
    command
        .args(["-accel", "kvm", "-cpu", "host", "-m", "256", "-no-reboot"])
        .args(["-display", "none", "-monitor", "none"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-kernel")
        .arg(&image.kernel)
        .args(["-append", "console=ttyS0 panic=-1"]);
    let mut probe = Process::spawn("qemu-kvm-probe", command);
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && probe.try_exit().is_none() {
        if std::fs::read_to_string(&console).is_ok_and(|t| t.contains("Linux version")) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    std::fs::read_to_string(&console).is_ok_and(|t| t.contains("Linux version"))
}

/// `$CARGO_TARGET_DIR/boot-logs/<story>/`, emptied.
pub fn log_dir(story: &str) -> PathBuf {
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => bin_path("muster-agent")
            .parent()
            .and_then(Path::parent)
            .expect("binaries live in target/<profile>/")
            .to_path_buf(),
    };
    let dir = target.join("boot-logs").join(story);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    dir
}

/// What the machine is, as EC2 describes the instance.
#[derive(Debug, Clone)]
pub struct Hardware {
    /// The instance id.
    pub instance_id: String,
    /// The instance type: the SMBIOS product name.
    pub instance_type: String,
    /// The primary NIC's MAC.
    pub mac: String,
    /// The subnet's CIDR, the user-mode network's.
    pub subnet_cidr: String,
    /// The private address DHCP hands out.
    pub private_ipv4: Ipv4Addr,
    /// The EBS volumes attached (ids), each an NVMe disk of `size_gib`.
    pub volumes: Vec<(String, u32)>,
}

impl Hardware {
    /// The instance's hardware, read from moto.
    pub async fn of(ec2: &Client, instance_id: &str) -> Hardware {
        let nic = crate::imds_tree::nic(ec2, instance_id)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        let view = crate::ec2::describe(ec2, instance_id).await;
        let volumes = ec2
            .describe_volumes()
            .filters(
                aws_sdk_ec2::types::Filter::builder()
                    .name("attachment.instance-id")
                    .values(instance_id)
                    .build(),
            )
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "DescribeVolumes: {}",
                    aws_sdk_ec2::error::DisplayErrorContext(&e)
                )
            });
        let private_ipv4 = view.private_ipv4.expect("moto gives a private address");
        let (network, bits) = cidr(&nic.subnet_cidr);
        let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
        assert_eq!(
            u32::from(private_ipv4) & mask,
            u32::from(network),
            "{instance_id}'s private address {private_ipv4} is outside its subnet {} \
             (moto's default VPC does that): launch it into a subnet of your own",
            nic.subnet_cidr
        );
        Hardware {
            instance_id: instance_id.to_owned(),
            instance_type: view.instance_type,
            mac: nic.mac,
            subnet_cidr: nic.subnet_cidr,
            private_ipv4,
            volumes: volumes
                .volumes()
                .iter()
                .map(|v| {
                    let size = v.size().unwrap_or(8);
                    (
                        v.volume_id().unwrap_or_default().to_owned(),
                        u32::try_from(size).unwrap_or(8),
                    )
                })
                .collect(),
        }
    }

    /// `ec2xxxxx-…`: the SMBIOS system UUID (and serial) of this instance,
    /// made from its id.
    pub fn system_uuid(&self) -> String {
        let hex: String = self
            .instance_id
            .trim_start_matches("i-")
            .chars()
            .chain(std::iter::repeat('0'))
            .take(29)
            .collect();
        format!(
            "ec2{}-{}-{}-{}-{}",
            &hex[0..5],
            &hex[5..9],
            &hex[9..13],
            &hex[13..17],
            &hex[17..29]
        )
    }
}

/// The NVMe serial EBS gives a volume: its id without the dash.
pub fn ebs_serial(volume_id: &str) -> String {
    volume_id.replacen('-', "", 1)
}

/// One instance's machine: disks, network namespace, console, and QEMU
/// while it is powered on.
#[derive(Debug)]
pub struct Machine {
    hardware: Hardware,
    logs: PathBuf,
    disks: tempfile::TempDir,
    qga: Qga,
    qemu: Option<Process>,
    _forwards: Vec<Forward>,
    netns: Netns,
}

impl Machine {
    /// Makes the machine of `hardware` for `story`: fresh disks (root from
    /// the image, blank EBS volumes), its namespace with IMDS at
    /// 169.254.169.254:80 relayed to `imds` and the coordinator at
    /// [`COORDINATOR_IP`] relayed to `coordinator`. Powered off.
    pub fn new(
        story: &str,
        hardware: Hardware,
        imds: SocketAddr,
        coordinator: SocketAddr,
    ) -> Machine {
        let image = image();
        let disks = tempfile::Builder::new()
            .prefix("muster-boot-disks-")
            .tempdir()
            .expect("a directory for the disks");
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            &image.disk.display().to_string(),
            &disks.path().join("root.qcow2").display().to_string(),
        ]);
        for (id, size) in &hardware.volumes {
            let path = disks.path().join(format!("{id}.qcow2"));
            qemu_img(&[
                "create",
                "-q",
                "-f",
                "qcow2",
                &path.display().to_string(),
                &format!("{size}G"),
            ]);
        }
        let netns = Netns::create();
        netns.add_address(IMDS_IP);
        netns.add_address(COORDINATOR_IP);
        let forwards = vec![
            netns.forward(SocketAddr::from((IMDS_IP, 80)), imds),
            netns.forward(
                SocketAddr::from((COORDINATOR_IP, COORDINATOR_PORT)),
                coordinator,
            ),
        ];
        Machine {
            qga: Qga::new(disks.path().join("qga.sock")),
            hardware,
            logs: log_dir(story),
            disks,
            qemu: None,
            _forwards: forwards,
            netns,
        }
    }

    /// The story's log directory.
    pub fn logs(&self) -> &Path {
        &self.logs
    }

    /// The instance this machine is.
    pub fn hardware(&self) -> &Hardware {
        &self.hardware
    }

    /// Powers the machine on and waits until its guest agent answers.
    pub async fn power_on(&mut self) {
        assert!(self.qemu.is_none(), "the machine is already on");
        let process = Process::spawn("qemu", self.qemu_command());
        self.qemu = Some(process);
        self.wait_for_agent().await;
    }

    fn qemu_command(&self) -> Command {
        let image = image();
        let hw = &self.hardware;
        let mut command = self.netns.command("qemu-system-x86_64");
        if use_kvm() {
            command.args(["-accel", "kvm", "-cpu", "host"]);
        } else {
            command.args(["-accel", "tcg", "-cpu", "max"]);
        }
        let uuid = hw.system_uuid();
        command
            .args([
                "-machine",
                "q35",
                "-smp",
                "1",
                "-m",
                &MEMORY_MIB.to_string(),
            ])
            .args(["-display", "none", "-monitor", "none", "-nodefaults"])
            .args(["-uuid", &uuid])
            .arg("-smbios")
            .arg(format!(
                "type=1,manufacturer=Amazon EC2,product={},serial={uuid},uuid={uuid}",
                hw.instance_type
            ))
            .args(["-smbios", "type=3,manufacturer=Amazon EC2"])
            .arg("-kernel")
            .arg(&image.kernel)
            .arg("-initrd")
            .arg(&image.initrd)
            .args(["-append", &image.cmdline])
            .arg("-chardev")
            .arg(format!(
                "file,id=console,append=on,path={}",
                self.logs.join("console.log").display()
            ))
            .args(["-serial", "chardev:console"])
            .args(["-device", "virtio-rng-pci"])
            .arg("-netdev")
            .arg(format!(
                "user,id=net0,net={},host={},dns={},dhcpstart={}",
                hw.subnet_cidr,
                subnet_host(&hw.subnet_cidr, 1),
                subnet_host(&hw.subnet_cidr, 2),
                hw.private_ipv4
            ))
            .arg("-device")
            .arg(format!("virtio-net-pci,netdev=net0,mac={}", hw.mac))
            .arg("-chardev")
            .arg(format!(
                "socket,id=qga,server=on,wait=off,path={}",
                self.disks.path().join("qga.sock").display()
            ))
            .args(["-device", "virtio-serial-pci"])
            .args([
                "-device",
                "virtserialport,chardev=qga,name=org.qemu.guest_agent.0",
            ]);
        // The root disk stands for the root EBS volume moto does not make:
        // its serial is made from the instance id.
        let root_serial = format!("vol{}", hw.instance_id.trim_start_matches("i-"));
        let disks = std::iter::once(("root.qcow2".to_owned(), root_serial)).chain(
            hw.volumes
                .iter()
                .map(|(id, _)| (format!("{id}.qcow2"), ebs_serial(id))),
        );
        for (n, (file, serial)) in disks.enumerate() {
            command.arg("-drive").arg(format!(
                "file={},if=none,id=disk{n},format=qcow2,cache=unsafe",
                self.disks.path().join(file).display()
            ));
            command.arg("-device").arg(format!(
                "nvme,serial={},drive=disk{n}",
                &serial[..serial.len().min(20)]
            ));
        }
        command
    }

    async fn wait_for_agent(&mut self) {
        let deadline = Instant::now() + BOOT_TIMEOUT;
        loop {
            let qga = self.qga.clone();
            if tokio::task::spawn_blocking(move || qga.ping())
                .await
                .unwrap_or(false)
            {
                return;
            }
            let qemu = self.qemu.as_mut().expect("powered on");
            if let Some(status) = qemu.try_exit() {
                panic!(
                    "QEMU exited ({status}) before the guest agent answered\n{}\nconsole: {}",
                    tail(&qemu.logs(), 8 * 1024),
                    self.logs.join("console.log").display()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the guest agent did not answer within {BOOT_TIMEOUT:?}; console: {}",
                self.logs.join("console.log").display()
            );
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }

    /// Runs `script` with `sh -c` in the guest, as root.
    pub async fn sh(&self, script: &str) -> Exec {
        let qga = self.qga.clone();
        let owned = script.to_owned();
        tokio::task::spawn_blocking(move || qga.exec("/bin/sh", &["-c", &owned], EXEC_TIMEOUT))
            .await
            .expect("the guest agent call")
            .unwrap_or_else(|e| panic!("running {script:?} in the guest: {e:#}"))
    }

    /// Runs `script` and insists that it succeeds; gives back its stdout.
    pub async fn sh_ok(&self, script: &str) -> String {
        let exec = self.sh(script).await;
        assert!(exec.success(), "{script:?} failed in the guest: {exec}");
        exec.stdout
    }

    /// Writes `bytes` to `path` in the guest.
    pub async fn write_file(&self, path: &str, bytes: &[u8]) {
        let qga = self.qga.clone();
        let (path, bytes) = (path.to_owned(), bytes.to_vec());
        tokio::task::spawn_blocking(move || qga.write_file(&path, &bytes))
            .await
            .expect("the guest agent call")
            .unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// The guest's boot id, new at every boot.
    pub async fn boot_id(&self) -> String {
        self.sh_ok("cat /proc/sys/kernel/random/boot_id")
            .await
            .trim()
            .to_owned()
    }

    /// Reboots the guest (`systemctl reboot`) and waits until it is back.
    pub async fn reboot(&mut self) {
        let before = self.boot_id().await;
        self.sh_ok("systemctl reboot --no-block").await;
        let deadline = Instant::now() + BOOT_TIMEOUT;
        loop {
            tokio::time::sleep(Duration::from_secs(3)).await;
            let qga = self.qga.clone();
            let now = tokio::task::spawn_blocking(move || {
                qga.exec(
                    "/bin/cat",
                    &["/proc/sys/kernel/random/boot_id"],
                    Duration::from_secs(10),
                )
            })
            .await
            .expect("the guest agent call");
            if let Ok(exec) = now {
                if exec.success() && exec.stdout.trim() != before {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the guest did not come back within {BOOT_TIMEOUT:?}"
            );
        }
    }

    /// Powers the guest off (`systemctl poweroff`) and waits for QEMU to
    /// exit.
    pub async fn power_off(&mut self) {
        self.save_logs().await;
        self.sh_ok("systemctl poweroff --no-block").await;
        let qemu = self.qemu.as_mut().expect("powered on");
        let deadline = Instant::now() + Duration::from_secs(180);
        while qemu.try_exit().is_none() {
            assert!(
                Instant::now() < deadline,
                "the guest did not power off within 3 minutes"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        self.qemu = None;
    }

    /// Copies the guest's journal (all of it, and the agent's unit's, of
    /// every boot) and cloud-init's logs into the log directory.
    pub async fn save_logs(&self) {
        let qga = self.qga.clone();
        let dir = self.logs.clone();
        let _ = tokio::task::spawn_blocking(move || save_logs(&qga, &dir)).await;
    }
}

/// What [`Machine::save_logs`] copies, file by file.
const GUEST_LOGS: [(&str, &str); 4] = [
    (
        "journal-muster-agent.txt",
        "journalctl --no-pager -o short-monotonic -u muster-agent.service",
    ),
    ("journal.txt", "journalctl --no-pager -o short-monotonic"),
    (
        "cloud-init-output.log",
        "cat /var/log/cloud-init-output.log",
    ),
    ("cloud-init.log", "cat /var/log/cloud-init.log"),
];

fn save_logs(qga: &Qga, dir: &Path) -> anyhow::Result<()> {
    for (file, script) in GUEST_LOGS {
        let exec = qga.exec("/bin/sh", &["-c", script], Duration::from_secs(60))?;
        std::fs::write(dir.join(file), format!("{}{}", exec.stdout, exec.stderr))
            .with_context(|| format!("writing {file}"))?;
    }
    Ok(())
}

impl Drop for Machine {
    fn drop(&mut self) {
        let running = self.qemu.as_mut().is_some_and(|q| q.try_exit().is_none());
        if running {
            let _ = save_logs(&self.qga, &self.logs);
        }
        if std::thread::panicking() {
            eprintln!(
                "boot logs of this story (console, journal, cloud-init): {}",
                self.logs.display()
            );
        }
        if let Some(mut qemu) = self.qemu.take() {
            qemu.stop();
            let _ = std::fs::write(self.logs.join("qemu.txt"), qemu.logs());
        }
    }
}

/// The `n`th address of `cidr` (`10.77.1.0/24`, 1 → `10.77.1.1`).
pub fn subnet_host(cidr: &str, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(self::cidr(cidr).0) + n)
}

/// A CIDR block's network address and prefix length.
fn cidr(text: &str) -> (Ipv4Addr, u32) {
    text.split_once('/')
        .and_then(|(ip, bits)| Some((ip.parse().ok()?, bits.parse().ok()?)))
        .filter(|(_, bits)| *bits <= 32)
        .unwrap_or_else(|| panic!("{text:?} is not a CIDR block"))
}

fn qemu_img(args: &[&str]) {
    let output = Command::new("qemu-img")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running qemu-img: {e} (scripts/setup installs qemu-utils)"));
    assert!(
        output.status.success(),
        "qemu-img {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hardware(instance_id: &str) -> Hardware {
        Hardware {
            instance_id: instance_id.to_owned(),
            instance_type: "t3.micro".into(),
            mac: "02:00:00:00:00:01".into(),
            subnet_cidr: "10.77.1.0/24".into(),
            private_ipv4: Ipv4Addr::new(10, 77, 1, 4),
            volumes: Vec::new(),
        }
    }

    /// The SMBIOS UUID starts with `ec2`, is a well-formed UUID, and is the
    /// same for the same instance.
    #[test]
    fn system_uuids_look_like_ec2s() {
        let uuid = hardware("i-53ada2ff96073d463").system_uuid();
        assert_eq!(uuid, "ec253ada-2ff9-6073-d463-000000000000");
        assert!(uuid.split('-').map(str::len).eq([8, 4, 4, 4, 12]));
        assert_eq!(hardware("i-1").system_uuid(), hardware("i-1").system_uuid());
    }

    /// EBS serials drop the dash; subnets give their router and resolver.
    #[test]
    fn serials_and_subnet_hosts() {
        assert_eq!(ebs_serial("vol-d805c27e52ca6397f"), "vold805c27e52ca6397f");
        assert_eq!(subnet_host("10.77.1.0/24", 1), Ipv4Addr::new(10, 77, 1, 1));
        assert_eq!(
            subnet_host("172.31.16.0/20", 2),
            Ipv4Addr::new(172, 31, 16, 2)
        );
        assert_eq!(cidr("10.0.0.0/8"), (Ipv4Addr::new(10, 0, 0, 0), 8));
    }
}
