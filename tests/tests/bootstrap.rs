//! Bootstrap: the user data the coordinator renders passes cloud-init's own
//! schema check (as text, gzipped, from a launch, from `userdata`); a node
//! booted from it (its files written, its install step run, under a
//! temporary root) downloads the agent from the coordinator, checks it,
//! and joins; a binary that does not match the SHA-256 in the user data
//! is never installed.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use muster_coordinator::launcher::userdata::{self, AgentBootstrap, MAX_USER_DATA_BYTES};
use muster_proto::{AgentDownload, NodeState, UserDataResponse};
use muster_tests::cloudinit::{self, under};
use muster_tests::ec2;
use muster_tests::procs::{bin_path, tail, Process};
use muster_tests::{wait_until, Agent, Coordinator, Imds, Moto, EVENTUALLY, POLL};

const CA: &str =
    "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUZ3l0ZXN0\n-----END CERTIFICATE-----\n";

fn download() -> AgentDownload {
    AgentDownload {
        url: "https://muster.example.com:7443/v1/agent/linux/x86_64/muster-agent".into(),
        arch: "x86_64".into(),
        sha256: "ab".repeat(32),
    }
}

fn bootstrap<'a>(ca: Option<&'a str>, agent: Option<&'a AgentDownload>) -> AgentBootstrap<'a> {
    AgentBootstrap {
        coordinator_url: "https://muster.example.com:7443",
        ca_pem: ca,
        cluster: "web",
        join_token: "mjoin_0123",
        agents: agent.map(std::slice::from_ref).unwrap_or_default(),
        drain_wait_secs: 30,
    }
}

/// Every shape of user data passes `cloud-init schema`: with the agent
/// installed from the coordinator or not, with a CA or the system roots,
/// and gzipped (checked as cloud-init reads it, unpacked). One too big
/// even gzipped is refused.
#[test]
fn rendered_user_data_passes_the_cloud_init_schema() {
    let agent = download();
    for b in [
        bootstrap(Some(CA), Some(&agent)),
        bootstrap(None, Some(&agent)),
        bootstrap(Some(CA), None),
    ] {
        let user_data = userdata::render(&b).unwrap();
        assert!(!user_data.gzip);
        cloudinit::assert_schema_valid(user_data.text().unwrap());
    }

    // A CA bundle big enough to push the text over 16 KiB.
    let bundle = CA.repeat(MAX_USER_DATA_BYTES / CA.len() + 1);
    let user_data = userdata::render(&bootstrap(Some(&bundle), Some(&agent))).unwrap();
    assert!(user_data.gzip, "over 16 KiB as text, it is gzipped");
    assert!(user_data.bytes.len() <= MAX_USER_DATA_BYTES);
    let text = cloudinit::unpack(&user_data.bytes);
    assert!(text.len() > MAX_USER_DATA_BYTES);
    cloudinit::assert_schema_valid(&text);

    // Random text barely compresses: too big even gzipped.
    let noise: String = {
        use rand::Rng as _;
        let mut rng = rand::thread_rng();
        (0..3 * MAX_USER_DATA_BYTES)
            .map(|_| char::from(rng.gen_range(b'!'..=b'~')))
            .collect()
    };
    let error = userdata::render(&bootstrap(Some(&noise), Some(&agent))).unwrap_err();
    assert!(
        matches!(error, userdata::UserDataError::TooLarge { .. }),
        "{error}"
    );
}

/// `userdata CLUSTER` prints what the launcher would pass, with a fresh
/// join token: valid for cloud-init, naming this coordinator, and
/// installing the very binary the coordinator serves; its token admits an
/// instance launched by other means. A cluster that does not exist is
/// refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_userdata_command_prints_what_a_launch_gets() {
    let moto = Moto::start().await;
    let coordinator = Coordinator::start(&moto).await;
    let created = coordinator.create_cluster("web").await;
    let rendered: UserDataResponse = coordinator.admin_json(&["userdata", "web"]).await;
    assert_eq!(rendered.cluster, "web");
    assert!(!rendered.gzip);
    assert_ne!(
        rendered.join_token, created.join_token,
        "a fresh token is minted"
    );
    let text = rendered.user_data.clone().expect("text when not gzipped");
    assert_eq!(rendered.size_bytes, text.len());
    cloudinit::assert_schema_valid(&text);
    let doc = cloudinit::document(&text);
    let written = |path: &str| {
        doc["write_files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["path"] == path)
            .and_then(|f| f["content"].as_str())
            .unwrap_or_else(|| panic!("{path} is not written"))
            .to_owned()
    };
    let agent_toml: toml::Table = written(userdata::AGENT_CONFIG_PATH).parse().unwrap();
    assert_eq!(
        agent_toml["join_token_file"].as_str(),
        Some(userdata::JOIN_TOKEN_PATH)
    );
    assert_eq!(
        written(userdata::JOIN_TOKEN_PATH).trim(),
        rendered.join_token.as_str()
    );
    assert_eq!(
        agent_toml["coordinator_url"].as_str(),
        Some(coordinator.url().as_str())
    );

    // The binary it installs is the one next to the coordinator, and the
    // coordinator serves exactly it.
    assert_eq!(rendered.agents.len(), 1, "one architecture served");
    let agent = rendered.agents[0].clone();
    assert_eq!(agent.sha256, sha256sum(&bin_path("muster-agent")));
    assert_eq!(agent.arch, std::env::consts::ARCH);
    let served = coordinator
        .https_client()
        .get(&agent.url)
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), 200);
    let dir = tempfile::tempdir().unwrap();
    let fetched = dir.path().join("muster-agent");
    std::fs::write(&fetched, served.bytes().await.unwrap()).unwrap();
    assert_eq!(sha256sum(&fetched), agent.sha256);
    // No other architecture or file is served.
    for path in [
        "/v1/agent/linux/riscv64/muster-agent",
        "/v1/agent/linux/x86_64/muster-agent.deb",
        "/v1/agent/linux/x86_64/muster-coordinator",
    ] {
        let answer = coordinator
            .https_client()
            .get(format!("{}{path}", coordinator.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 404, "{path}");
    }

    // Written to a file, it is the same bytes, private.
    let out = dir.path().join("user-data");
    let output = coordinator
        .admin(&["userdata", "web", "--output", out.to_str().unwrap()])
        .await;
    assert!(output.status.success(), "{output:?}");
    let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    cloudinit::assert_schema_valid(&std::fs::read_to_string(&out).unwrap());
    assert!(String::from_utf8_lossy(&output.stderr).contains("join token"));

    // Its token admits an instance muster did not launch (tagged for the
    // cluster, as every member must be), as a join token does (a launch
    // token would not).
    let sdk = ec2::client(&moto.endpoint()).await;
    let outside = ec2::launch_instance(&sdk, "web").await;
    let imds = Imds::start(sdk.clone(), &outside).await;
    let _agent = Agent::start(&coordinator, &imds, "web", &rendered.join_token);
    let node = wait_until(
        EVENTUALLY,
        POLL,
        || coordinator.nodes("web"),
        |nodes: &Vec<muster_proto::NodeView>| {
            nodes
                .iter()
                .any(|n| n.instance_id == outside && n.state == NodeState::Deployed)
        },
    )
    .await;
    assert!(
        node.iter()
            .any(|n| n.instance_id == outside && n.state == NodeState::Deployed),
        "{node:?}"
    );

    let output = coordinator.admin(&["userdata", "nope"]).await;
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("no cluster"));
    let output = coordinator.admin(&["userdata", "Bad_Name"]).await;
    assert_eq!(output.status.code(), Some(64));
}

/// The user data EC2 holds for a launched instance passes the schema too,
/// for a plain launch and for one with provider options.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launched_user_data_passes_the_cloud_init_schema() {
    let moto = Moto::start().await;
    let sdk = ec2::client(&moto.endpoint()).await;
    ec2::create_instance_profile(&moto.endpoint(), "muster-nodes").await;
    let coordinator = Coordinator::start(&moto).await;
    for (name, extra) in [
        ("plain", &[][..]),
        ("profiled", &["--instance-profile", "muster-nodes"][..]),
    ] {
        let created = coordinator.launch_cluster(name, 1, 8, extra).await;
        let id = &created.launch.unwrap().launched[0];
        let bytes = ec2::try_user_data(&sdk, id).await.unwrap().unwrap();
        assert!(bytes.len() <= MAX_USER_DATA_BYTES);
        cloudinit::assert_schema_valid(&cloudinit::unpack(&bytes));
    }
}

/// The whole boot: a node launched through the coordinator into moto gets
/// its user data applied to a temporary root (the files written with their
/// modes, the install step run: download, SHA-256 check, install), and the
/// agent installed there, started with the settings installed there,
/// against the strict IMDS emulator, joins: the node is deployed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_boots_from_its_user_data() {
    let moto = Moto::start().await;
    let sdk = ec2::client(&moto.endpoint()).await;
    let coordinator = Coordinator::start(&moto).await;
    let created = coordinator.launch_cluster("web", 1, 8, &[]).await;
    let id = created.launch.unwrap().launched[0].clone();

    let bytes = ec2::try_user_data(&sdk, &id).await.unwrap().unwrap();
    let doc = cloudinit::document(&cloudinit::unpack(&bytes));
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let boot = cloudinit::apply(&doc, r);
    assert!(boot.all_succeeded(), "{}", boot.outputs());
    assert_eq!(boot.ran.len(), 1, "one step is run: the install");

    // The files, with their modes; the binary, checked and executable.
    let mode = |p: &str| {
        std::fs::metadata(under(r, p))
            .unwrap_or_else(|e| panic!("{p}: {e}"))
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(userdata::JOIN_TOKEN_PATH), 0o600);
    assert_eq!(mode(userdata::AGENT_CONFIG_PATH), 0o644);
    assert_eq!(mode(userdata::CA_PATH), 0o644);
    assert_eq!(mode(userdata::AGENT_BINARY_PATH), 0o755);
    assert_eq!(
        std::fs::read(under(r, userdata::CA_PATH)).unwrap(),
        std::fs::read(coordinator.ca_file()).unwrap()
    );
    assert_eq!(
        std::fs::read_to_string(under(r, userdata::AGENT_UNIT_PATH)).unwrap(),
        std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd/muster-agent.service")
        )
        .unwrap()
    );
    assert_eq!(
        sha256sum(&under(r, userdata::AGENT_BINARY_PATH)),
        sha256sum(&bin_path("muster-agent"))
    );
    // Then the volume, then the unit: recorded, in that order.
    let recorded: Vec<String> = boot.recorded.iter().map(|c| c.join(" ")).collect();
    assert_eq!(
        recorded,
        [
            "/usr/bin/muster-agent prepare-volume",
            "systemctl daemon-reload",
            "systemctl enable --now --no-block muster-agent.service"
        ]
    );

    // The installed agent, with the installed settings; only the paths
    // the root moved are given as flags.
    let imds = Imds::start(sdk.clone(), &id).await;
    let mut command = Command::new(under(r, userdata::AGENT_BINARY_PATH));
    command
        .arg("run")
        .arg("--config")
        .arg(under(r, userdata::AGENT_CONFIG_PATH))
        .arg("--ca-file")
        .arg(under(r, userdata::CA_PATH))
        .arg("--join-token-file")
        .arg(under(r, userdata::JOIN_TOKEN_PATH))
        .arg("--state-dir")
        .arg(under(r, "/var/lib/muster-agent"))
        .arg("--socket")
        .arg(under(r, "/run/muster-agent/agent.sock"))
        .args(["--imds-poll-interval", "200ms"])
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.endpoint())
        .env("RUST_LOG", "info");
    let mut agent = Process::spawn("muster-agent", command);
    let node = wait_until(
        EVENTUALLY,
        POLL,
        || coordinator.node("web", &id),
        |d| d.node.state == NodeState::Deployed,
    )
    .await;
    assert_eq!(
        node.node.state,
        NodeState::Deployed,
        "{}",
        tail(&agent.logs(), 8 * 1024)
    );
    assert!(agent.try_exit().is_none());
}

/// A binary that is not the one the user data names is refused: the
/// coordinator's binary changes after the user data was rendered, the
/// install step's check fails, and nothing is installed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_agent_is_not_installed() {
    let moto = Moto::start().await;
    let dir = tempfile::tempdir().unwrap();
    let binary = dir.path().join("muster-agent");
    std::fs::copy(bin_path("muster-agent"), &binary).unwrap();
    let coordinator =
        Coordinator::start_with(&moto, &["--agent-binary", binary.to_str().unwrap()]).await;
    coordinator.create_cluster("web").await;
    let rendered: UserDataResponse = coordinator.admin_json(&["userdata", "web"]).await;
    let pinned = rendered.agents[0].sha256.clone();
    assert_eq!(pinned, sha256sum(&binary));
    let doc = cloudinit::document(rendered.user_data.as_deref().unwrap());

    // Untouched, it installs.
    let good = tempfile::tempdir().unwrap();
    let boot = cloudinit::apply(&doc, good.path());
    assert!(boot.all_succeeded(), "{}", boot.outputs());
    assert_eq!(
        sha256sum(&under(good.path(), userdata::AGENT_BINARY_PATH)),
        pinned
    );

    // One byte more on the coordinator's side.
    let mut bytes = std::fs::read(&binary).unwrap();
    bytes.push(0);
    std::fs::write(&binary, bytes).unwrap();
    let bad = tempfile::tempdir().unwrap();
    let boot = cloudinit::apply(&doc, bad.path());
    assert_eq!(boot.ran.len(), 1);
    let (_, output) = &boot.ran[0];
    assert!(!output.status.success(), "{}", boot.outputs());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("does not match SHA-256"),
        "{}",
        boot.outputs()
    );
    assert!(
        !under(bad.path(), userdata::AGENT_BINARY_PATH).exists(),
        "nothing is installed"
    );
    assert!(
        !under(bad.path(), "/usr/bin").exists(),
        "not even its directory"
    );
    // The coordinator now pins what it serves now.
    let again: UserDataResponse = coordinator.admin_json(&["userdata", "web"]).await;
    assert_eq!(again.agents[0].sha256, sha256sum(&binary));
}

/// A coordinator serving an agent per architecture: the user data pins
/// each one's SHA-256, and a node installs only its own architecture's
/// binary (checked as x86_64 and, with a `uname` saying so, as aarch64,
/// whose binary here is a small ELF file with aarch64's machine type). A
/// node of an architecture with no agent says so and installs nothing; a
/// binary whose SHA-256 is another's fails `sha256sum -c`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_architecture_installs_only_its_own_pinned_agent() {
    let moto = Moto::start().await;
    let dir = tempfile::tempdir().unwrap();
    let arm = dir.path().join("muster-agent-aarch64");
    let mut elf = std::fs::read(bin_path("muster-agent")).unwrap()[..4096].to_vec();
    elf[18..20].copy_from_slice(&183u16.to_le_bytes());
    std::fs::write(&arm, &elf).unwrap();
    let x86 = bin_path("muster-agent");
    let coordinator = Coordinator::start_with(
        &moto,
        &[
            "--agent-binary",
            x86.to_str().unwrap(),
            "--agent-binary",
            arm.to_str().unwrap(),
        ],
    )
    .await;
    coordinator.create_cluster("web").await;
    let rendered: UserDataResponse = coordinator.admin_json(&["userdata", "web"]).await;
    let arches: Vec<&str> = rendered.agents.iter().map(|a| a.arch.as_str()).collect();
    assert_eq!(arches, ["x86_64", "aarch64"]);
    assert_eq!(rendered.agents[0].sha256, sha256sum(&x86));
    assert_eq!(rendered.agents[1].sha256, sha256sum(&arm));
    let doc = cloudinit::document(rendered.user_data.as_deref().unwrap());

    for (arch, binary) in [("x86_64", &x86), ("aarch64", &arm)] {
        let root = tempfile::tempdir().unwrap();
        let boot = cloudinit::apply_on(&doc, root.path(), arch);
        assert!(boot.all_succeeded(), "{arch}: {}", boot.outputs());
        assert_eq!(
            sha256sum(&under(root.path(), userdata::AGENT_BINARY_PATH)),
            sha256sum(binary),
            "{arch} installs its own binary"
        );
    }

    let root = tempfile::tempdir().unwrap();
    let boot = cloudinit::apply_on(&doc, root.path(), "riscv64");
    let (_, output) = &boot.ran[0];
    assert!(!output.status.success());
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(
        said.contains("this node is riscv64") && said.contains("x86_64 aarch64"),
        "{said}"
    );
    assert!(!under(root.path(), userdata::AGENT_BINARY_PATH).exists());

    // aarch64's URL pinned to x86_64's SHA-256: the check refuses it.
    let mut swapped = doc.clone();
    let install = swapped["runcmd"][0].as_array_mut().unwrap();
    let x86_sum = install[8].clone();
    install[11] = x86_sum;
    let root = tempfile::tempdir().unwrap();
    let boot = cloudinit::apply_on(&swapped, root.path(), "aarch64");
    let (_, output) = &boot.ran[0];
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("does not match SHA-256"),
        "{}",
        boot.outputs()
    );
    assert!(!under(root.path(), userdata::AGENT_BINARY_PATH).exists());
}

/// SHA-256 of a file, as `sha256sum` prints it.
fn sha256sum(path: &Path) -> String {
    let output = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(output.status.success());
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}
