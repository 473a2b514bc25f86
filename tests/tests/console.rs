//! The web console and the viewer token, against a real coordinator with
//! real agents on moto.
//!
//! - In headless Chromium (Debian's, driven by playwright-core from
//!   `tests/ui/console.mjs`): a viewer signs in, sees a cluster of three
//!   nodes, watches one turn `unreachable` when its agent is killed without
//!   reloading the page, opens it and sees its events; a wrong token is
//!   refused; the viewer cannot write; no request leaves the coordinator's
//!   origin. Screenshots are kept under `target/<profile>/artifacts/console`.
//! - Over plain HTTPS: the viewer token and console sessions read and
//!   change nothing, a new viewer token ends the old one and its sessions,
//!   and every console answer carries the strict CSP.
//! - What the console says a node's names answer is what a resolver gets
//!   from the embedded DNS server.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use muster_proto::status::{CoordinatorStatus, Role, ViewerTokenResponse};
use muster_proto::{ClusterState, NodeState};
use muster_tests::{ec2, Agent, Coordinator, Imds, Moto, EVENTUALLY};
use nix::sys::signal::Signal;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const CLUSTER: &str = "shop";

/// Heartbeats every second and a 3 s grace, so a silent node is noticed.
const FAST: &[&str] = &["--heartbeat-interval", "1s", "--grace", "3s"];

/// The browser story's own limit is 150 s; this one catches a hang.
const STORY_LIMIT: Duration = Duration::from_secs(200);

/// A cluster of `count` real nodes: their instance ids, IMDS and agents.
struct Fleet {
    ids: Vec<String>,
    agents: Vec<Agent>,
    _imds: Vec<Imds>,
}

async fn fleet(moto: &Moto, coordinator: &Coordinator, count: usize) -> Fleet {
    let join_token = coordinator.create_cluster(CLUSTER).await.join_token;
    let sdk = ec2::client(&moto.endpoint()).await;
    let mut fleet = Fleet {
        ids: Vec::new(),
        agents: Vec::new(),
        _imds: Vec::new(),
    };
    for _ in 0..count {
        let id = ec2::launch_instance(&sdk, CLUSTER).await;
        let imds = Imds::start(sdk.clone(), &id).await;
        fleet
            .agents
            .push(Agent::start(coordinator, &imds, CLUSTER, &join_token));
        fleet.ids.push(id);
        fleet._imds.push(imds);
    }
    for (id, agent) in fleet.ids.iter().zip(&fleet.agents) {
        let node = coordinator
            .wait_for_node(CLUSTER, id, NodeState::Deployed, EVENTUALLY)
            .await;
        assert_eq!(node.state, NodeState::Deployed, "{}", agent.logs());
    }
    fleet
}

/// A new viewer token, through the CLI.
async fn viewer_token(coordinator: &Coordinator) -> String {
    coordinator
        .admin_json::<ViewerTokenResponse>(&["admin", "viewer-token"])
        .await
        .viewer_token
}

/// Where the browser story keeps its screenshots.
fn artifacts() -> PathBuf {
    let dir = match std::env::var_os("MUSTER_ARTIFACTS") {
        Some(dir) => PathBuf::from(dir),
        None => muster_tests::procs::bin_path("muster-coordinator")
            .parent()
            .expect("the binaries live in a directory")
            .join("artifacts"),
    }
    .join("console");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn ui_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("ui")
}

/// A viewer watches the fleet in headless Chromium; see the module doc and
/// tests/ui/console.mjs for each step it asserts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_watches_a_node_go_unreachable_in_the_browser() {
    let moto = Moto::start().await;
    let coordinator = Coordinator::start_with(&moto, FAST).await;
    let fleet = fleet(&moto, &coordinator, 3).await;
    let viewer = viewer_token(&coordinator).await;
    let shots = artifacts();
    let stop = fleet.ids[1].clone();

    let ui = ui_dir();
    assert!(
        ui.join("node_modules/playwright-core").is_dir(),
        "playwright-core is missing from {}: run scripts/setup",
        ui.display()
    );
    let origin = coordinator.url().trim_end_matches('/').to_owned();
    let mut story = tokio::process::Command::new("node")
        .arg(ui.join("console.mjs"))
        .current_dir(&ui)
        .env("MUSTER_UI_URL", &origin)
        .env("MUSTER_VIEWER_TOKEN", &viewer)
        .env("MUSTER_ADMIN_TOKEN", coordinator.admin_token())
        .env("MUSTER_CLUSTER", CLUSTER)
        .env("MUSTER_NODES", fleet.ids.join(","))
        .env("MUSTER_STOP_NODE", &stop)
        .env("MUSTER_SCREENSHOTS", &shots)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("running node: {e} (scripts/setup installs nodejs)"));
    let mut stdin = story.stdin.take().unwrap();
    let mut lines = BufReader::new(story.stdout.take().unwrap()).lines();
    let mut stderr = story.stderr.take().unwrap();

    let mut said = Vec::new();
    let run = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line == "stop-agent" {
                // Silence, not a stop: SIGKILL sends no leave heartbeat.
                let i = fleet.ids.iter().position(|id| *id == stop).unwrap();
                fleet.agents[i].signal(Signal::SIGKILL);
                stdin.write_all(b"stopped\n").await.unwrap();
                stdin.flush().await.unwrap();
            }
            said.push(line);
        }
        story.wait().await.unwrap()
    };
    let status = tokio::time::timeout(STORY_LIMIT, run)
        .await
        .expect("the browser story finished in time");
    let mut errors = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut errors)
        .await
        .unwrap();
    let said = said.join("\n");
    assert!(
        status.success() && said.ends_with("ok"),
        "the browser story failed ({status}):\n{said}\n{errors}\ncoordinator:\n{}",
        coordinator.logs()
    );

    // The coordinator agrees with what the page showed.
    let node = coordinator.node(CLUSTER, &stop).await.node;
    assert_eq!(node.state, NodeState::Unreachable);
    for shot in [
        "login-refused.png",
        "overview.png",
        "cluster.png",
        "unreachable.png",
        "node.png",
    ] {
        let bytes =
            std::fs::read(shots.join(shot)).unwrap_or_else(|e| panic!("screenshot {shot}: {e}"));
        assert!(bytes.starts_with(b"\x89PNG"), "{shot} is no PNG");
    }
    println!("screenshots in {}", shots.display());
}

/// The coordinator's API as a plain HTTPS client sees it, redirects not
/// followed (the console's are asserted).
struct Api {
    http: reqwest::Client,
    base: String,
}

/// Who a request comes as.
#[derive(Clone, Copy)]
enum As<'a> {
    /// `Authorization: Bearer` with this token.
    Bearer(&'a str),
    /// This session cookie (`muster_session=…`).
    Cookie(&'a str),
    /// Nothing.
    Nobody,
}

impl Api {
    fn of(coordinator: &Coordinator) -> Api {
        let ca = std::fs::read(coordinator.ca_file()).unwrap();
        let http = muster_tests::coordinator::https_client_builder(&ca)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        Api {
            http,
            base: coordinator.url().trim_end_matches('/').to_owned(),
        }
    }

    /// `method path` as `who`.
    async fn send(&self, method: reqwest::Method, path: &str, who: As<'_>) -> reqwest::Response {
        let request = self.http.request(method, format!("{}{path}", self.base));
        let request = match who {
            As::Bearer(token) => request.bearer_auth(token),
            As::Cookie(cookie) => request.header("cookie", cookie),
            As::Nobody => request,
        };
        request.send().await.unwrap()
    }

    async fn get(&self, path: &str, who: As<'_>) -> reqwest::Response {
        self.send(reqwest::Method::GET, path, who).await
    }

    /// Signs in to the console with `token`: the answer.
    async fn sign_in(&self, token: &str) -> reqwest::Response {
        self.http
            .post(format!("{}/ui/login", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("token={token}"))
            .send()
            .await
            .unwrap()
    }
}

/// The session cookie a sign-in set, as a `Cookie` header value; it must be
/// HttpOnly, Secure and SameSite=Strict.
fn session_of(response: &reqwest::Response) -> String {
    let set = response
        .headers()
        .get("set-cookie")
        .expect("a session cookie")
        .to_str()
        .unwrap()
        .to_owned();
    for attribute in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(attribute), "{set}");
    }
    set.split(';').next().unwrap().to_owned()
}

/// The viewer token and console sessions read and change nothing; the
/// admin token still writes; a new viewer token ends the old one and its
/// sessions; the console's pages carry the strict CSP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_read_and_change_nothing() {
    use reqwest::Method;
    let moto = Moto::start().await;
    let coordinator = Coordinator::start(&moto).await;
    coordinator.create_cluster(CLUSTER).await;
    let viewer = viewer_token(&coordinator).await;
    let admin = coordinator.admin_token();
    let api = Api::of(&coordinator);
    let cluster_path = muster_proto::paths::cluster(CLUSTER);

    // The viewer reads, and is told who it is.
    let listed = api.get("/v1/clusters", As::Bearer(&viewer)).await;
    assert_eq!(listed.status(), 200);
    let status: CoordinatorStatus = api
        .get("/v1/status", As::Bearer(&viewer))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(status.role, Role::Viewer);
    assert!(status.leader);

    // Each write is refused with 403 forbidden, and nothing changed.
    let rotate = format!("{cluster_path}/rotate-token");
    let writes = [
        (Method::DELETE, cluster_path.as_str()),
        (Method::POST, "/v1/admin/rotate-token"),
        (Method::POST, "/v1/admin/viewer-token"),
        (Method::POST, rotate.as_str()),
    ];
    for (method, path) in writes {
        let refused = api.send(method, path, As::Bearer(&viewer)).await;
        assert_eq!(refused.status(), 403, "{path}");
        let body: serde_json::Value = refused.json().await.unwrap();
        assert_eq!(body["error"]["code"], "forbidden", "{body}");
    }
    assert_eq!(coordinator.clusters().await[0].state, ClusterState::Active);
    assert_eq!(coordinator.admin_token(), admin, "the admin token stays");
    let still = api.get("/v1/clusters", As::Bearer(&viewer)).await;
    assert_eq!(still.status(), 200, "the viewer token stays");

    // The CLI takes a viewer token for reads, and says why a write fails.
    let cli = |args: &[&str]| {
        let mut command =
            tokio::process::Command::new(muster_tests::procs::bin_path("muster-coordinator"));
        command
            .args(args)
            .env("MUSTER_ADDR", coordinator.url())
            .env("MUSTER_TOKEN", &viewer)
            .env("MUSTER_CACERT", coordinator.ca_file());
        command
    };
    let read = cli(&["node", "ls", "--json"]).output().await.unwrap();
    assert!(
        read.status.success(),
        "{}",
        String::from_utf8_lossy(&read.stderr)
    );
    let write = cli(&["cluster", "rm", CLUSTER, "--no-wait"])
        .output()
        .await
        .unwrap();
    assert!(!write.status.success());
    let said = String::from_utf8_lossy(&write.stderr);
    assert!(said.contains("forbidden"), "{said}");

    // A wrong token: 401, at the API and at sign-in, with no cookie.
    let wrong = api.get("/v1/clusters", As::Bearer("mview_0000")).await;
    assert_eq!(wrong.status(), 401);
    let refused = api.sign_in("mview_not_a_token").await;
    assert_eq!(refused.status(), 401);
    assert!(refused.headers().get("set-cookie").is_none());
    let page = refused.text().await.unwrap();
    assert!(page.contains("role=\"alert\""), "{page}");

    // Without a session, /ui/ sends to the sign-in page, which carries the
    // CSP.
    let anonymous = api.get("/ui/", As::Nobody).await;
    assert_eq!(anonymous.status(), 303);
    assert_eq!(anonymous.headers()["location"], "/ui/login");
    let login = api.get("/ui/login", As::Nobody).await;
    let csp = login.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"));

    // A session reads, and never writes, even one opened with the admin
    // token.
    for token in [&viewer, &admin] {
        let signed_in = api.sign_in(token).await;
        assert_eq!(signed_in.status(), 303);
        assert_eq!(signed_in.headers()["location"], "/ui/");
        let cookie = session_of(&signed_in);
        let app = api.get("/ui/", As::Cookie(&cookie)).await;
        assert_eq!(app.status(), 200);
        assert!(app.headers().contains_key("content-security-policy"));
        let read = api.get("/v1/clusters", As::Cookie(&cookie)).await;
        assert_eq!(read.status(), 200);
        let write = api
            .send(Method::DELETE, &cluster_path, As::Cookie(&cookie))
            .await;
        assert_eq!(write.status(), 403);
    }
    assert_eq!(coordinator.clusters().await[0].state, ClusterState::Active);

    // A new viewer token: the old one and its sessions stop at once.
    let session = session_of(&api.sign_in(&viewer).await);
    let newer = viewer_token(&coordinator).await;
    assert_ne!(newer, viewer);
    for old in [As::Bearer(&viewer), As::Cookie(&session)] {
        let ended = api.get("/v1/clusters", old).await;
        assert_eq!(ended.status(), 401, "after a new viewer token");
    }
    let fresh = api.get("/v1/clusters", As::Bearer(&newer)).await;
    assert_eq!(fresh.status(), 200);

    // The admin token still writes.
    let removed = api
        .send(Method::DELETE, &cluster_path, As::Bearer(&admin))
        .await;
    assert_eq!(removed.status(), 202);
}

/// What the console shows of a node's names is what the embedded DNS
/// server answers a resolver; the fleet's history has a sample.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nodes_names_answer_as_the_console_says() {
    let moto = Moto::start().await;
    let coordinator = Coordinator::start(&moto).await;
    let fleet = fleet(&moto, &coordinator, 1).await;
    let id = &fleet.ids[0];
    let node = coordinator.node(CLUSTER, id).await.node;
    let names: muster_proto::status::NodeNames = http_json(
        &coordinator,
        &muster_proto::paths::NODE_DNS
            .replace("{cluster}", CLUSTER)
            .replace("{name}", id),
    )
    .await;
    let resolver = coordinator.resolver();
    for name in [&node.dns_name, &node.internal_dns_name] {
        let shown: Vec<String> = names
            .names
            .iter()
            .filter(|n| n.name == *name && n.kind == "A")
            .flat_map(|n| n.answers.clone())
            .collect();
        let resolved = resolver.a(name).await.unwrap();
        let resolved: Vec<String> = resolved.a.iter().map(|ip| ip.to_string()).collect();
        assert!(!resolved.is_empty(), "{name} resolves");
        assert_eq!(shown, resolved, "{name}: the console and a resolver agree");
    }
    let history: muster_proto::status::FleetHistory =
        http_json(&coordinator, muster_proto::paths::FLEET_HISTORY).await;
    assert_eq!(history.interval_secs, 10);
    assert!(
        !history.samples.is_empty(),
        "the first sample is taken at start"
    );
}

/// GETs `path` with the admin token and parses the JSON.
async fn http_json<T: serde::de::DeserializeOwned>(coordinator: &Coordinator, path: &str) -> T {
    let admin = coordinator.admin_token();
    let response = Api::of(coordinator).get(path, As::Bearer(&admin)).await;
    assert_eq!(response.status(), 200, "{path}");
    response.json().await.unwrap()
}
