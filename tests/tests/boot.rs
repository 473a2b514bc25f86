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
//! software emulation (TCG) on two cores, two stories at a time, a story
//! takes one and a half to three minutes (a first boot to `deployed`
//! about 70 s of guest time, a reboot about 60 s) and all seven about
//! nine; each keeps its guest's console, journal and cloud-init logs
//! in `$CARGO_TARGET_DIR/boot-logs/<story>/`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use aws_sdk_ec2::Client;
use muster_proto::{node_dns_name, node_internal_dns_name, EventSource, NodeState};
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
        let created = coordinator.launch_cluster(CLUSTER, 1, 8, &[]).await;
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

    // The token, private, and the settings naming it; the agent, the very
    // binary the coordinator serves, installed by the checked download.
    let token = scene
        .machine
        .sh_ok("stat -c '%a %U' /etc/muster/join-token")
        .await;
    assert_eq!(token.trim(), "600 root", "{token}");
    let config = scene
        .machine
        .sh_ok("stat -c %a /etc/muster/agent.toml && cat /etc/muster/agent.toml")
        .await;
    assert!(config.starts_with("644\n"), "{config}");
    assert!(
        config.contains("join_token_file = \"/etc/muster/join-token\""),
        "{config}"
    );
    assert!(!config.contains("mjoin_"), "{config}");
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
            "muster: installed /usr/bin/muster-agent for {} ({served})",
            std::env::consts::ARCH
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

/// An Elastic IP associated in moto while the guest runs: the agent reads
/// it from IMDS and DNS follows, with no restart of the agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_elastic_ip_reaches_dns_without_a_restart() {
    let mut scene = Scene::launch("elastic-ip", &[]).await;
    scene.machine.power_on().await;
    scene.deployed_in_guest(BOOTING).await;
    let before = scene.unit("MainPID,NRestarts").await;

    let eip = ec2::associate_new_eip(&scene.sdk, &scene.id).await;
    scene.dns_answers(eip).await;
    let journal = scene
        .machine
        .sh_ok("journalctl -u muster-agent.service --no-pager -o cat")
        .await;
    assert!(
        journal
            .lines()
            .any(|l| l.contains("the coordinator accepted the new addresses")
                && l.contains(&format!("public_ipv4={eip}"))),
        "{journal}"
    );
    assert_eq!(
        scene.unit("MainPID,NRestarts").await,
        before,
        "the agent was not restarted"
    );
    scene.one_deployed_node().await;
}

/// The agent killed with SIGKILL: systemd starts it again (`Restart=always`),
/// it comes back as the same node, and DNS never loses the name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_is_restarted_by_systemd() {
    let mut scene = Scene::launch("sigkill", &[]).await;
    scene.machine.power_on().await;
    scene.deployed_in_guest(BOOTING).await;
    let pid = main_pid(&scene).await;
    let node = scene.coordinator.node(CLUSTER, &scene.id).await;

    scene.machine.sh_ok(&format!("kill -KILL {pid}")).await;
    let restarted = wait_until(
        SOON,
        EVERY,
        || scene.unit("MainPID,ActiveState,NRestarts"),
        |unit| {
            unit.contains("ActiveState=active")
                && unit.contains("NRestarts=1")
                && !unit.contains(&format!("MainPID={pid}\n"))
        },
    )
    .await;
    assert!(restarted.contains("NRestarts=1"), "{restarted}");
    assert!(restarted.contains("ActiveState=active"), "{restarted}");
    let status = scene.deployed_in_guest(SOON).await;
    assert_eq!(status["node"], node.node.name.as_str(), "the same node");
    let journal = scene
        .machine
        .sh_ok("journalctl -u muster-agent.service --no-pager -o cat")
        .await;
    assert!(journal.contains("status=9/KILL"), "{journal}");
    assert!(
        journal.contains("node credential loaded"),
        "it re-registered with its credential:\n{journal}"
    );
    scene.one_deployed_node().await;
    let view = ec2::describe(&scene.sdk, &scene.id).await;
    scene.dns_answers(view.public_ipv4.unwrap()).await;
}

/// A reboot: systemd's SIGTERM makes the agent drain the node (out of the
/// round robin, then a wait of the records' TTL) before it goes; the agent
/// starts again on its own, the same node is deployed, and the data volume
/// is mounted again with what was written before, never formatted twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reboot_keeps_the_node_and_its_volume() {
    // A 5 s TTL: the user data sets the agent's drain wait to it.
    let mut scene = Scene::launch("reboot", &["--dns-ttl", "5"]).await;
    scene.machine.power_on().await;
    scene.deployed_in_guest(BOOTING).await;
    let filesystem = "findmnt -n -o UUID /var/lib/muster-data && tune2fs -l $(findmnt -n -o SOURCE /var/lib/muster-data) | grep 'Filesystem created'";
    let before = scene.machine.sh_ok(filesystem).await;
    scene
        .machine
        .sh_ok("echo written-before-the-reboot > /var/lib/muster-data/marker && sync")
        .await;

    scene.machine.reboot().await;
    scene.deployed_in_guest(BOOTING).await;
    assert_eq!(
        scene.machine.sh_ok(filesystem).await,
        before,
        "the same filesystem"
    );
    assert_eq!(
        scene.machine.sh_ok("cat /var/lib/muster-data/marker").await,
        "written-before-the-reboot\n"
    );
    let output = scene
        .machine
        .sh_ok("cat /var/log/cloud-init-output.log")
        .await;
    assert_eq!(
        output.matches("formatted: it was blank").count(),
        1,
        "{output}"
    );
    assert_eq!(
        output.matches("muster: installed").count(),
        1,
        "installed once:\n{output}"
    );
    let boots = scene
        .machine
        .sh_ok("journalctl --list-boots --no-pager | grep -cE '[0-9a-f]{32}'")
        .await;
    assert_eq!(boots.trim(), "2", "two boots in the journal");
    let stopping = scene
        .machine
        .sh_ok("journalctl -b -1 -u muster-agent --no-pager -o cat")
        .await;
    assert!(
        stopping.contains("SIGTERM received")
            && stopping.contains("the coordinator took the node out of its round robin")
            && stopping.contains("wait=5s"),
        "the agent drained on the way down:\n{stopping}"
    );
    let events = scene.coordinator.node(CLUSTER, &scene.id).await.events;
    assert!(
        events.iter().any(|e| e.to == NodeState::Draining
            && e.reason == "leaving: the agent is stopping"
            && e.source == EventSource::Agent),
        "{events:#?}"
    );
    scene.one_deployed_node().await;
    let view = ec2::describe(&scene.sdk, &scene.id).await;
    scene.dns_answers(view.public_ipv4.unwrap()).await;
}

/// A stop/start in moto with the guest powered off and booted again: EC2
/// draws a new public address, the agent reads it at boot, DNS answers it,
/// and there is still one node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_start_moves_dns_to_the_new_address() {
    let mut scene = Scene::launch("stop-start", &["--sweep-interval", "2s"]).await;
    scene.machine.power_on().await;
    scene.deployed_in_guest(BOOTING).await;
    let first = ec2::describe(&scene.sdk, &scene.id)
        .await
        .public_ipv4
        .unwrap();
    scene.dns_answers(first).await;

    scene.machine.power_off().await;
    ec2::stop(&scene.sdk, &scene.id).await;
    let stopped = wait_until(
        SOON,
        EVERY,
        || scene.coordinator.nodes(CLUSTER),
        |nodes| nodes.iter().all(|n| n.state == NodeState::Stopped),
    )
    .await;
    assert_eq!(stopped[0].state, NodeState::Stopped, "{stopped:?}");
    let started = ec2::start(&scene.sdk, &scene.id).await;
    let second = started.public_ipv4.expect("a new public address on start");
    assert_ne!(second, first, "moto draws a new public address");

    scene.machine.power_on().await;
    scene.deployed_in_guest(BOOTING).await;
    scene.dns_answers(second).await;
    scene.one_deployed_node().await;
}

/// The sandbox: `systemd-analyze security` in the guest rates the running
/// unit as docs/operations.md says, and with every syscall outside the filter made
/// fatal the agent registers, heartbeats, answers `status` and follows an
/// Elastic IP without being killed, and nothing in its journal or the
/// kernel's says something was denied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sandbox_rates_as_documented_and_denies_the_agent_nothing() {
    let mut scene = Scene::launch("sandbox", &[]).await;
    scene.machine.power_on().await;
    scene.deployed_in_guest(BOOTING).await;

    let rating = scene
        .machine
        .sh_ok("systemd-analyze security muster-agent.service --no-pager")
        .await;
    let exposure = rating
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for muster-agent.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no rating in:\n{rating}"));
    let documented = documented_rating();
    assert_eq!(
        exposure, documented,
        "docs/operations.md says {documented}:\n{rating}"
    );
    println!("systemd-analyze security muster-agent.service in the guest: {exposure}");

    // Denied syscalls kill (and the kernel logs them) instead of EPERM.
    let lenient = scene.unit("SystemCallErrorNumber").await;
    assert_eq!(
        lenient.trim(),
        "SystemCallErrorNumber=1",
        "EPERM as shipped"
    );
    scene
        .machine
        .sh_ok("mkdir -p /run/systemd/system/muster-agent.service.d && printf '[Service]\\nSystemCallErrorNumber=kill\\n' > /run/systemd/system/muster-agent.service.d/kill.conf && systemctl daemon-reload && systemctl restart muster-agent.service")
        .await;
    let strict = scene.unit("SystemCallErrorNumber,MainPID").await;
    assert!(
        !strict.contains(lenient.trim()),
        "the drop-in took: {strict}"
    );
    scene.deployed_in_guest(SOON).await;
    let eip = ec2::associate_new_eip(&scene.sdk, &scene.id).await;
    scene.dns_answers(eip).await;
    scene.machine.sh_ok("muster-agent status").await;
    // Long enough for heartbeats and a watchdog ping (every 30 s).
    tokio::time::sleep(Duration::from_secs(35)).await;
    assert_eq!(
        scene.unit("SystemCallErrorNumber,MainPID").await,
        strict,
        "never killed"
    );
    let kernel = scene.machine.sh_ok("journalctl -k --no-pager -o cat").await;
    assert!(!kernel.contains("type=1326"), "a seccomp kill:\n{kernel}");
    let journal = scene
        .machine
        .sh_ok("journalctl -u muster-agent.service --no-pager -o cat")
        .await;
    for denied in [
        "Permission denied",
        "Operation not permitted",
        "Read-only file system",
        "status=31/SYS",
    ] {
        assert!(
            !journal.contains(denied),
            "{denied:?} in the agent's journal:\n{journal}"
        );
    }
    scene.one_deployed_node().await;
}

/// The `.deb` path: a guest launched without user data fetches
/// `muster-agent_*.deb` from the coordinator, installs it with `apt
/// install ./…` (the unit enabled by its postinst), gets its config, and
/// the started agent registers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deb_installs_and_registers() {
    let deb = build_deb();
    let moto = Moto::start().await;
    let sdk = ec2::client(&moto.endpoint()).await;
    let deb_arg = deb.path.display().to_string();
    let coordinator =
        Coordinator::start_for_guests(&moto, &vm::coordinator_url(), &["--agent-deb", &deb_arg])
            .await;
    let created = coordinator.create_cluster(CLUSTER).await;
    let id = launch_without_user_data(&sdk).await;
    let mut scene = Scene::around("deb", moto, sdk, coordinator, id).await;
    scene.machine.power_on().await;
    assert!(
        scene
            .imds
            .log()
            .iter()
            .any(|l| l.ends_with("/user-data 404")),
        "cloud-init found no user data: {:?}",
        scene.imds.log()
    );

    let ca = std::fs::read(scene.coordinator.ca_file()).unwrap();
    scene.machine.sh_ok("mkdir -p /etc/muster").await;
    scene.machine.write_file("/etc/muster/ca.pem", &ca).await;
    let name = deb.path.file_name().unwrap().to_string_lossy().into_owned();
    let url = format!(
        "{}/v1/agent/linux/x86_64/muster-agent.deb",
        vm::coordinator_url()
    );
    let install = scene
        .machine
        .sh(&format!(
            "cd /root && curl -fsS --cacert /etc/muster/ca.pem -o {name} {url} && apt install -y ./{name}"
        ))
        .await;
    assert!(install.success(), "{install}");
    assert!(
        scene
            .unit("UnitFileState,ActiveState")
            .await
            .contains("UnitFileState=enabled"),
        "the postinst enables the unit"
    );
    let config = format!(
        "coordinator_url = \"{}\"\nca_file = \"/etc/muster/ca.pem\"\ncluster = \"{CLUSTER}\"\njoin_token = \"{}\"\n",
        vm::coordinator_url(),
        created.join_token
    );
    scene
        .machine
        .write_file("/etc/muster/agent.toml", config.as_bytes())
        .await;
    scene
        .machine
        .sh_ok("systemctl start muster-agent.service")
        .await;
    scene.deployed_in_guest(SOON).await;
    let unit = scene.unit("FragmentPath,ActiveState").await;
    assert!(
        unit.contains("FragmentPath=/lib/systemd/system/muster-agent.service"),
        "{unit}"
    );
    scene.one_deployed_node().await;
    let view = ec2::describe(&scene.sdk, &scene.id).await;
    scene.dns_answers(view.public_ipv4.unwrap()).await;
}

/// Launches a t3.micro tagged for [`CLUSTER`], with no user data, into a
/// subnet of its own with public addresses on launch (moto's default VPC
/// hands out private addresses outside its subnets, which no guest
/// network can match).
async fn launch_without_user_data(sdk: &Client) -> String {
    let vpc = sdk
        .create_vpc()
        .cidr_block("10.88.0.0/16")
        .send()
        .await
        .unwrap();
    let vpc_id = vpc.vpc().and_then(|v| v.vpc_id()).unwrap();
    let subnet = sdk
        .create_subnet()
        .vpc_id(vpc_id)
        .cidr_block("10.88.1.0/24")
        .availability_zone("us-east-1a")
        .send()
        .await
        .unwrap();
    let subnet_id = subnet.subnet().and_then(|s| s.subnet_id()).unwrap();
    sdk.modify_subnet_attribute()
        .subnet_id(subnet_id)
        .map_public_ip_on_launch(
            aws_sdk_ec2::types::AttributeBooleanValue::builder()
                .value(true)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let answer = sdk
        .run_instances()
        .image_id(TEST_AMI)
        .instance_type(aws_sdk_ec2::types::InstanceType::T3Micro)
        .min_count(1)
        .max_count(1)
        .subnet_id(subnet_id)
        .tag_specifications(ec2::member_tags(CLUSTER))
        .send()
        .await
        .unwrap();
    answer.instances()[0].instance_id().unwrap().to_owned()
}

/// The agent's main pid, as systemd knows it.
async fn main_pid(scene: &Scene) -> u32 {
    let unit = scene.unit("MainPID").await;
    unit.trim()
        .strip_prefix("MainPID=")
        .and_then(|p| p.parse().ok())
        .filter(|p| *p != 0)
        .unwrap_or_else(|| panic!("no main pid: {unit}"))
}

/// The rating the docs give the agent's unit ("rates it 1.5", in
/// docs/operations.md).
fn documented_rating() -> String {
    let readme = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/operations.md");
    let text = std::fs::read_to_string(&readme).unwrap();
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    text.split("`systemd-analyze security` rates it ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| c != '.' && !c.is_ascii_digit()).next())
        .map(|n| n.trim_end_matches('.').to_owned())
        .unwrap_or_else(|| {
            panic!(
                "{} does not say how the agent's unit rates",
                readme.display()
            )
        })
}

/// A built `.deb` in a directory of its own.
struct Deb {
    path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

/// `cargo deb` of the agent from the test build (as `tests/packages.rs`
/// builds it); fails when cargo-deb is missing.
fn build_deb() -> Deb {
    let binary = bin_path("muster-agent");
    let target_dir = binary.parent().and_then(Path::parent).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new("cargo")
        .args([
            "deb",
            "-p",
            "muster-agent",
            "--no-build",
            "--profile",
            "dev",
        ])
        .args(["--strip", "--no-dbgsym", "--fast", "--offline", "-o"])
        .arg(dir.path())
        .env("CARGO_TARGET_DIR", target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap_or_else(|e| panic!("running cargo deb: {e} (scripts/setup installs cargo-deb)"));
    assert!(
        output.status.success(),
        "cargo deb -p muster-agent failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let path = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .expect("cargo deb wrote a .deb");
    Deb { path, _dir: dir }
}
