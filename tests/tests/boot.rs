//! Real boots: the node side run the way an EC2 node runs it. The real
//! coordinator launches an instance into moto with `cluster create`; a
//! Debian guest under QEMU (`muster_tests::vm`) that believes it is that
//! instance boots; real cloud-init reads the user data over IMDSv2 from
//! the strict IMDS emulator at 169.254.169.254, downloads and pins the
//! agent, prepares the data volume, and real systemd starts the agent as
//! `Type=notify` under its sandbox. Then a story changes something (an
//! Elastic IP, a SIGKILL, a reboot, a stop/start) and reads back what
//! landed: the guest's own `systemctl` and `journalctl`, EC2 through the
//! SDK, DNS through a resolver asking the coordinator.
//!
//! Needs root (network namespaces), QEMU, qemu-utils, mmdebstrap and
//! cargo-deb (`scripts/setup`); the guest image is built on first use by
//! `tests/vm/build-image` (about a minute and a half, then cached). Under
//! software emulation (TCG) on two cores a story takes two to four
//! minutes; each keeps its guest's console, journal and cloud-init logs
//! in `$CARGO_TARGET_DIR/boot-logs/<story>/`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use aws_sdk_ec2::Client;
use muster_proto::{node_dns_name, node_internal_dns_name, CreateClusterResponse, NodeState};
use muster_tests::ec2::{self, TEST_AMI};
use muster_tests::procs::bin_path;
use muster_tests::vm::{self, Hardware, Machine};
use muster_tests::{wait_until, Coordinator, Imds, Moto, ZONE};

/// The cluster every story launches.
const CLUSTER: &str = "web";

/// How long a guest gets to do what a node does in a boot (under TCG a
/// first boot reaches `deployed` in about a minute and a half).
const BOOTING: Duration = Duration::from_secs(480);

/// How long a running guest gets to notice and report a change.
const SOON: Duration = Duration::from_secs(120);

/// How often the guest or DNS is asked again.
const EVERY: Duration = Duration::from_secs(2);

/// One story's world: moto, a coordinator that guests reach at
/// [`vm::coordinator_url`], an instance it launched, the IMDS serving it,
/// and the machine that is that instance.
struct Scene {
    // Dropped in this order: the guest first, moto last.
    machine: Machine,
    imds: Imds,
    coordinator: Coordinator,
    sdk: Client,
    id: String,
    _moto: Moto,
}

impl Scene {
    /// Launches one instance of cluster [`CLUSTER`] through the coordinator
    /// and makes its machine, powered off.
    async fn launch(story: &str, extra: &[&str]) -> Scene {
        let moto = Moto::start().await;
        let sdk = ec2::client(&moto.endpoint()).await;
        let coordinator = Coordinator::start_for_guests(&moto, &vm::coordinator_url(), extra).await;
        let created: CreateClusterResponse = coordinator
            .admin_json(&[
                "cluster",
                "create",
                CLUSTER,
                "--region",
                ec2::TEST_REGION,
                "--instance-type",
                "t3.micro",
                "--count",
                "1",
                "--disk-gb",
                "8",
                "--ami",
                TEST_AMI,
            ])
            .await;
        let id = created.launch.expect("a launch").launched[0].clone();
        Scene::around(story, moto, sdk, coordinator, id).await
    }

    /// The machine of instance `id`, with its IMDS.
    async fn around(
        story: &str,
        moto: Moto,
        sdk: Client,
        coordinator: Coordinator,
        id: String,
    ) -> Scene {
        let imds = Imds::start(sdk.clone(), &id).await;
        let hardware = Hardware::of(&sdk, &id).await;
        let machine = Machine::new(story, hardware, imds.addr(), coordinator.api_addr());
        Scene {
            machine,
            imds,
            coordinator,
            sdk,
            id,
            _moto: moto,
        }
    }

    /// `<id>.web.muster.test`.
    fn dns_name(&self) -> String {
        node_dns_name(&self.id, CLUSTER, ZONE)
    }

    /// Waits until the guest's agent says `deployed`; gives back its
    /// status as JSON.
    async fn deployed_in_guest(&self, within: Duration) -> serde_json::Value {
        let status = wait_until(
            within,
            EVERY,
            || async {
                let exec = self.machine.sh("muster-agent status --json").await;
                serde_json::from_str::<serde_json::Value>(&exec.stdout).unwrap_or_default()
            },
            |json| json["state"] == "deployed",
        )
        .await;
        assert_eq!(
            status["state"], "deployed",
            "the agent in the guest never said deployed: {status}\n{}",
            self.machine.sh("systemctl status muster-agent --no-pager; tail -n 40 /var/log/cloud-init-output.log").await
        );
        status
    }

    /// `node ls`: exactly one node, this instance, deployed.
    async fn one_deployed_node(&self) {
        let nodes = wait_until(
            SOON,
            EVERY,
            || self.coordinator.nodes(CLUSTER),
            |nodes| nodes.len() == 1 && nodes[0].state == NodeState::Deployed,
        )
        .await;
        assert_eq!(nodes.len(), 1, "{nodes:?}");
        assert_eq!(nodes[0].instance_id, self.id);
        assert_eq!(nodes[0].state, NodeState::Deployed, "{nodes:?}");
    }

    /// Waits until the node's name answers `ip` in the coordinator's DNS.
    async fn dns_answers(&self, ip: std::net::Ipv4Addr) {
        let answer = self
            .coordinator
            .resolver()
            .a_until(&self.dns_name(), SOON, |a| a.a == [ip])
            .await;
        assert_eq!(answer.a, [ip], "{} in DNS", self.dns_name());
    }

    /// The unit's properties, `NAME=value` a line.
    async fn unit(&self, properties: &str) -> String {
        self.machine
            .sh_ok(&format!(
                "systemctl show muster-agent.service -p {properties}"
            ))
            .await
    }
}

/// First boot: cloud-init fetches the user data over IMDSv2, writes the
/// config, downloads the agent over TLS pinned to the coordinator's CA
/// and checks its SHA-256, prepares and mounts the data volume, and
/// starts the unit; systemd has it active (READY sent), the agent says
/// deployed, and DNS answers EC2's addresses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_boot_deploys_the_node() {
    let mut scene = Scene::launch("first-boot", &[]).await;
    scene.machine.power_on().await;
    let status = scene.deployed_in_guest(BOOTING).await;
    assert_eq!(status["instance_id"], scene.id.as_str());

    // Over IMDSv2: a token first, then the user data, at the address
    // cloud-init uses by default (the emulator refuses any GET without one).
    let log = scene.imds.log();
    let token = log.iter().position(|l| l == "PUT /latest/api/token 200");
    let user_data = log.iter().position(|l| l.ends_with("/user-data 200"));
    assert!(
        matches!((token, user_data), (Some(t), Some(u)) if t < u),
        "no token before the user data: {log:?}"
    );
    let result = scene.machine.sh_ok("cat /run/cloud-init/result.json").await;
    let result: serde_json::Value = serde_json::from_str(&result).unwrap();
    assert_eq!(result["v1"]["errors"], serde_json::json!([]), "{result}");
    assert!(
        result["v1"]["datasource"]
            .as_str()
            .unwrap_or_default()
            .contains("Ec2"),
        "{result}"
    );

    // The config, private; the agent, the very binary the coordinator
    // serves, installed by the checked download.
    let config = scene
        .machine
        .sh_ok("stat -c %a /etc/muster/agent.toml && cat /etc/muster/agent.toml")
        .await;
    assert!(config.starts_with("600\n"), "{config}");
    assert!(config.contains(&format!("coordinator_url = \"{}\"", vm::coordinator_url())));
    let installed = scene.machine.sh_ok("sha256sum /usr/bin/muster-agent").await;
    let served = sha256(&bin_path("muster-agent"));
    assert!(installed.starts_with(&served), "{installed} vs {served}");
    let output = scene
        .machine
        .sh_ok("cat /var/log/cloud-init-output.log")
        .await;
    assert!(
        output.contains(&format!(
            "muster: installed /usr/bin/muster-agent ({served})"
        )),
        "{output}"
    );

    // The data volume: the NVMe disk whose serial is the EBS volume's id,
    // formatted, mounted, and in fstab.
    let (volume, _) = &scene.machine.hardware().volumes[0];
    let mounted = scene
        .machine
        .sh_ok("d=$(findmnt -n -o SOURCE /var/lib/muster-data) && echo $d && cat /sys/block/${d#/dev/}/device/serial && findmnt -n -o FSTYPE /var/lib/muster-data && grep muster-data /etc/fstab")
        .await;
    let lines: Vec<&str> = mounted.lines().map(str::trim).collect();
    assert!(lines[0].starts_with("/dev/nvme"), "{mounted}");
    assert_eq!(lines[1], vm::ebs_serial(volume), "{mounted}");
    assert_eq!(lines[2], "ext4", "{mounted}");
    assert!(lines[3].contains("nofail"), "{mounted}");

    // systemd: a notify unit, enabled, active and running.
    let unit = scene
        .unit("Type,ActiveState,SubState,UnitFileState,NRestarts")
        .await;
    for expected in [
        "Type=notify",
        "ActiveState=active",
        "SubState=running",
        "UnitFileState=enabled",
        "NRestarts=0",
    ] {
        assert!(
            unit.lines().any(|l| l == expected),
            "{expected} not in\n{unit}"
        );
    }

    // The coordinator and DNS agree with EC2.
    scene.one_deployed_node().await;
    let view = ec2::describe(&scene.sdk, &scene.id).await;
    scene
        .dns_answers(view.public_ipv4.expect("a public address on launch"))
        .await;
    let internal = node_internal_dns_name(&scene.id, CLUSTER, ZONE);
    let answer = scene.coordinator.resolver().a(&internal).await.unwrap();
    assert_eq!(answer.a, [view.private_ipv4.unwrap()]);
    // The guest has EC2's private address on its NIC.
    let addresses = scene.machine.sh_ok("ip -4 -o addr show dev eth0").await;
    assert!(
        addresses.contains(&format!("{}/", view.private_ipv4.unwrap())),
        "{addresses}"
    );
}

/// SHA-256 of a file, hex.
fn sha256(path: &Path) -> String {
    let output = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(output.status.success());
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}
