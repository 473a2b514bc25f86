//! The measures side by side with a reference on the same machine.
//!
//! P1: `wrk` sends the agents' heartbeats
//! (each node's own credential and body, HTTPS POSTs) to the coordinator,
//! then the same requests from the same client to nginx answering each
//! with a fixed 200 over the same certificate, and the row gives the
//! heartbeats per second per core of server CPU of each and their ratio.
//! Twice: on 64 kept-alive connections, and with a new TLS connection per
//! request (`Connection: close`).
//!
//! nginx runs one worker (one core at most), the coordinator its default
//! runtime; the CPU each used is read from `/proc` over the run, so "per
//! core" is requests per second of server CPU whatever either used. wrk
//! runs one thread on the same machine, as the generator always does.
//!
//! P9: `dnsperf` asks the embedded DNS server, then Knot DNS serving the
//! same records (see [`versus_knot`]).

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use muster_proto::paths;
use muster_tests::procs::cpu_time;
use muster_tests::Coordinator;

use super::{heartbeat_body, Node};

/// Connections wrk keeps open, as in the P1 flood.
const CONNECTIONS: usize = 64;

/// What one wrk run against one server gave.
struct Run {
    rate: f64,
    p99: Duration,
    /// Answers that were not 2xx, and socket errors.
    errors: u64,
    /// Cores of server CPU used, on average over the run.
    cores: f64,
}

impl Run {
    fn per_core(&self) -> f64 {
        if self.cores > 0.0 {
            self.rate / self.cores
        } else {
            0.0
        }
    }

    fn text(&self) -> String {
        format!(
            "{:.0}/s at {:.0} % of a core, p99 {:.1} ms, {} errors",
            self.rate,
            self.cores * 100.0,
            self.p99.as_secs_f64() * 1000.0,
            self.errors
        )
    }
}

/// Runs both modes against the coordinator and nginx, and prints a P1
/// row for each.
pub(super) fn versus_nginx(
    coordinator: &Coordinator,
    nodes: &[Node],
    seconds: u64,
    command: &str,
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let nginx = Nginx::start(dir.path(), coordinator.data_dir())?;
    for close in [false, true] {
        let script = dir.path().join(format!("heartbeat-{close}.lua"));
        std::fs::write(&script, lua_script(nodes, close)?)?;
        let muster = wrk(&coordinator.url(), &script, seconds, &[coordinator.pid()])?;
        let reference = wrk(&nginx.url, &script, seconds, &nginx.pids())?;
        let how = if close {
            "a new TLS connection per request (`Connection: close`), 64 at a time"
        } else {
            "64 kept-alive connections"
        };
        println!(
            "| P1 | heartbeats/s per core of server CPU against nginx answering the same POSTs with a fixed 200 (same certificate, one worker): wrk, one thread, {how}, {} nodes' credentials and bodies, {seconds} s each, on the same machine | muster {}; nginx {}; per core {:.0}/s against {:.0}/s: **{:.2} of nginx** | {command} |",
            nodes.len(),
            muster.text(),
            reference.text(),
            muster.per_core(),
            reference.per_core(),
            muster.per_core() / reference.per_core().max(f64::MIN_POSITIVE),
        );
    }
    Ok(())
}

/// A wrk script that walks the nodes round and round, each request the
/// node's heartbeat with its credential.
fn lua_script(nodes: &[Node], close: bool) -> anyhow::Result<String> {
    let mut lua = String::from("local nodes = {\n");
    for node in nodes {
        let body = serde_json::to_string(&heartbeat_body(node))?;
        anyhow::ensure!(!body.contains("]==]"), "a body holds the Lua delimiter");
        writeln!(lua, "  {{\"{}\", [==[{body}]==]}},", node.credential)?;
    }
    let close = if close {
        ", [\"Connection\"] = \"close\""
    } else {
        ""
    };
    write!(
        lua,
        "}}\nlocal requests = {{}}\n\
         init = function(args)\n\
         \x20 for i, node in ipairs(nodes) do\n\
         \x20   requests[i] = wrk.format(\"POST\", \"{path}\", {{[\"Content-Type\"] = \"application/json\", \
         [\"Authorization\"] = \"Bearer \" .. node[1]{close}}}, node[2])\n\
         \x20 end\n\
         end\n\
         local i = 0\n\
         request = function()\n\
         \x20 i = i % #requests + 1\n\
         \x20 return requests[i]\n\
         end\n",
        path = paths::AGENT_HEARTBEAT,
    )?;
    Ok(lua)
}

/// Runs wrk against `url` for `seconds` and reads what it printed and the
/// CPU `server` (its pids) used meanwhile.
fn wrk(url: &str, script: &Path, seconds: u64, server: &[u32]) -> anyhow::Result<Run> {
    let cpu = || server.iter().map(|pid| cpu_time(*pid)).sum::<Duration>();
    let before = cpu();
    let started = Instant::now();
    let output = Command::new("wrk")
        .args(["-t1", &format!("-c{CONNECTIONS}"), &format!("-d{seconds}s")])
        .arg("--latency")
        .arg("-s")
        .arg(script)
        .arg(format!(
            "{}{}",
            url.trim_end_matches('/'),
            paths::AGENT_HEARTBEAT
        ))
        .output()
        .map_err(|e| anyhow::anyhow!("running wrk: {e} (scripts/bench installs it)"))?;
    let wall = started.elapsed().as_secs_f64();
    let used = (cpu() - before).as_secs_f64();
    let text = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(
        output.status.success(),
        "wrk failed: {text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rate = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no Requests/sec in wrk's output:\n{text}"))?;
    let p99 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .and_then(|v| duration(v.trim()))
        .ok_or_else(|| anyhow::anyhow!("no 99% latency in wrk's output:\n{text}"))?;
    let non_2xx: u64 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let socket: u64 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Socket errors:"))
        .map(|v| {
            v.split(',')
                .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    Ok(Run {
        rate,
        p99,
        errors: non_2xx + socket,
        cores: used / wall,
    })
}

/// wrk's latency figure, e.g. `4.40ms`, `610.00us`, `1.02s`.
fn duration(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (value, unit) = text.split_at(split);
    let value: f64 = value.parse().ok()?;
    let secs = match unit {
        "us" => value / 1e6,
        "ms" => value / 1e3,
        "s" => value,
        "m" => value * 60.0,
        _ => return None,
    };
    Some(Duration::from_secs_f64(secs))
}

/// nginx on a loopback port with the coordinator's certificate, answering
/// every request with the coordinator's heartbeat answer; stopped by pid.
struct Nginx {
    url: String,
    master: Child,
}

impl Nginx {
    fn start(dir: &Path, coordinator_data: &Path) -> anyhow::Result<Nginx> {
        let port = muster_tests::procs::free_tcp_port();
        let prefix = dir.join("nginx");
        std::fs::create_dir_all(prefix.join("logs"))?;
        let answer =
            r#"{"state":"deployed","heartbeat_interval_ms":4000,"heartbeat_jitter_ms":400}"#;
        let conf = format!(
            "daemon off;\nmaster_process on;\nworker_processes 1;\npid {p}/nginx.pid;\n\
             error_log {p}/logs/error.log warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  keepalive_requests 1000000000;\n  keepalive_timeout 75s;\n\
               client_body_temp_path {p}/body;\n  proxy_temp_path {p}/proxy;\n\
               fastcgi_temp_path {p}/fastcgi;\n  uwsgi_temp_path {p}/uwsgi;\n  scgi_temp_path {p}/scgi;\n\
               server {{\n    listen 127.0.0.1:{port} ssl;\n\
                 ssl_certificate {data}/server.pem;\n    ssl_certificate_key {data}/server-key.pem;\n\
                 ssl_protocols TLSv1.3;\n\
                 location / {{ default_type application/json; return 200 '{answer}'; }}\n  }}\n}}\n",
            p = prefix.display(),
            data = coordinator_data.display(),
        );
        let conf_path = prefix.join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let master = Command::new("nginx")
            .arg("-p")
            .arg(&prefix)
            .arg("-c")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| anyhow::anyhow!("running nginx: {e} (scripts/bench installs it)"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            anyhow::ensure!(Instant::now() < deadline, "nginx did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Nginx {
            url: format!("https://127.0.0.1:{port}"),
            master,
        })
    }

    /// The master and its workers.
    fn pids(&self) -> Vec<u32> {
        let master = self.master.id();
        let mut pids = vec![master];
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            let ppid = stat
                .rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if ppid == Some(master) {
                pids.push(pid);
            }
        }
        pids
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGQUIT: nginx's graceful stop; then make sure.
        let pid = nix::unistd::Pid::from_raw(self.master.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGQUIT);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.master.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.master.kill();
        let _ = self.master.wait();
    }
}

/// P9: the embedded DNS server against Knot DNS serving the same records
/// (written from the same model, `desired_records`), both asked the same
/// mix by `dnsperf` over UDP: node names, internal names, names under a
/// node's wildcard, the cluster's two round robins, and names that do not
/// exist. Knot runs one UDP worker; the coordinator its default runtime,
/// with no response-rate limit (Knot has none by default).
pub(super) fn versus_knot(
    coordinator: &Coordinator,
    nodes: &[muster_proto::NodeView],
    seconds: u64,
    command: &str,
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let zone = muster_tests::ZONE;
    let queries = dir.path().join("queries");
    std::fs::write(&queries, query_mix(nodes, zone))?;
    let knot = Knot::start(dir.path(), zone, &zone_file(nodes, zone)?)?;
    let muster = dnsperf(
        coordinator.dns_addr(),
        &queries,
        seconds,
        &[coordinator.pid()],
    )?;
    let reference = dnsperf(knot.addr, &queries, seconds, &[knot.process.id()])?;
    println!(
        "| P9 | DNS queries/s per core of server CPU against Knot DNS serving the same records (one UDP worker): dnsperf, one client thread, UDP, {} nodes' zone, a mix of node names, internal names, wildcards, round robins and NXDOMAIN, {seconds} s each, on the same machine | muster {}; Knot {}; per core {:.0}/s against {:.0}/s: **{:.2} of Knot** | {command} |",
        nodes.len(),
        muster.text(),
        reference.text(),
        muster.per_core(),
        reference.per_core(),
        muster.per_core() / reference.per_core().max(f64::MIN_POSITIVE),
    );
    Ok(())
}

/// What one dnsperf run gave.
struct DnsRun {
    rate: f64,
    lost: u64,
    cores: f64,
}

impl DnsRun {
    fn per_core(&self) -> f64 {
        if self.cores > 0.0 {
            self.rate / self.cores
        } else {
            0.0
        }
    }

    fn text(&self) -> String {
        format!(
            "{:.0}/s at {:.0} % of a core, {} lost",
            self.rate,
            self.cores * 100.0,
            self.lost
        )
    }
}

/// The query mix, one `name type` a line, walking the nodes.
fn query_mix(nodes: &[muster_proto::NodeView], zone: &str) -> String {
    let mut lines = String::new();
    for (i, node) in nodes.iter().enumerate() {
        let _ = writeln!(lines, "{} A", node.dns_name);
        let _ = writeln!(lines, "{} A", node.internal_dns_name);
        let _ = writeln!(lines, "app.{} A", node.dns_name);
        let _ = writeln!(lines, "{}.{zone} A", node.cluster);
        let _ = writeln!(lines, "{}.internal.{zone} A", node.cluster);
        let _ = writeln!(lines, "missing-{i}.{}.{zone} A", node.cluster);
    }
    lines
}

/// The zone file of `nodes`' records, as the model makes them, with an
/// SOA and NS as the embedded server answers them.
fn zone_file(nodes: &[muster_proto::NodeView], zone: &str) -> anyhow::Result<String> {
    use muster_coordinator::dns::zone::{desired_records, NodeRecordSource, RecordData};
    let sources: Vec<NodeRecordSource> = nodes
        .iter()
        .map(|n| NodeRecordSource {
            cluster: n.cluster.clone(),
            name: n.name.clone(),
            state: n.state,
            private_ipv4: n.private_ipv4,
            public_ipv4: n.public_ipv4,
            ipv6: n.ipv6,
        })
        .collect();
    let origin = hickory_proto::rr::Name::from_ascii(format!("{zone}."))?;
    let records = desired_records(&origin, &sources)?;
    let mut file = format!(
        "$ORIGIN {zone}.\n$TTL 30\n@ SOA ns.{zone}. hostmaster.{zone}. 1 3600 600 86400 30\n\
         @ NS ns.{zone}.\nns A 127.0.0.1\n"
    );
    for (name, data) in &records {
        match data {
            RecordData::Addresses(ips) => {
                for ip in ips {
                    let kind = if ip.is_ipv4() { "A" } else { "AAAA" };
                    writeln!(file, "{} {kind} {ip}", name.to_ascii())?;
                }
            }
            RecordData::Cname(target) => writeln!(file, "{} CNAME {target}", name.to_ascii())?,
        }
    }
    Ok(file)
}

/// Runs dnsperf against `server` for `seconds`, reading the CPU `pids`
/// used meanwhile.
fn dnsperf(
    server: std::net::SocketAddr,
    queries: &Path,
    seconds: u64,
    pids: &[u32],
) -> anyhow::Result<DnsRun> {
    let cpu = || pids.iter().map(|pid| cpu_time(*pid)).sum::<Duration>();
    let before = cpu();
    let started = Instant::now();
    let output = Command::new("dnsperf")
        .args([
            "-s",
            &server.ip().to_string(),
            "-p",
            &server.port().to_string(),
        ])
        .arg("-d")
        .arg(queries)
        .args([
            "-l",
            &seconds.to_string(),
            "-c",
            "1",
            "-T",
            "1",
            "-q",
            "500",
        ])
        .output()
        .map_err(|e| anyhow::anyhow!("running dnsperf: {e} (scripts/bench installs it)"))?;
    let wall = started.elapsed().as_secs_f64();
    let used = (cpu() - before).as_secs_f64();
    let text = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(output.status.success(), "dnsperf failed: {text}");
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .and_then(|v| v.split_whitespace().next().map(str::to_owned))
    };
    let rate = field("Queries per second:")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no queries per second in dnsperf's output:\n{text}"))?;
    let lost = field("Queries lost:")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Ok(DnsRun {
        rate,
        lost,
        cores: used / wall,
    })
}

/// Knot DNS on a loopback port, one UDP worker, serving one zone file;
/// stopped by pid.
struct Knot {
    addr: std::net::SocketAddr,
    process: Child,
}

impl Knot {
    fn start(dir: &Path, zone: &str, records: &str) -> anyhow::Result<Knot> {
        let port = muster_tests::procs::free_udp_tcp_port();
        let root = dir.join("knot");
        std::fs::create_dir_all(root.join("zones"))?;
        std::fs::write(root.join("zones").join(format!("{zone}.zone")), records)?;
        let conf = format!(
            "server:\n    rundir: \"{r}\"\n    listen: 127.0.0.1@{port}\n    udp-workers: 1\n    tcp-workers: 1\n    background-workers: 1\n\
             database:\n    storage: \"{r}\"\n\
             log:\n  - target: stderr\n    any: warning\n\
             zone:\n  - domain: {zone}\n    storage: \"{r}/zones\"\n    file: \"{zone}.zone\"\n    zonefile-sync: -1\n    journal-content: none\n",
            r = root.display(),
        );
        let conf_path = root.join("knot.conf");
        std::fs::write(&conf_path, conf)?;
        let process = Command::new("knotd")
            .arg("-c")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(root.join("knotd.log"))?)
            .spawn()
            .map_err(|e| anyhow::anyhow!("running knotd: {e} (scripts/bench installs knot)"))?;
        let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(addr).is_err() {
            anyhow::ensure!(
                Instant::now() < deadline,
                "knotd did not listen on {port}: {}",
                std::fs::read_to_string(root.join("knotd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Knot { addr, process })
    }
}

impl Drop for Knot {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_durations_are_read() {
        assert_eq!(duration("4.40ms"), Some(Duration::from_micros(4400)));
        assert_eq!(duration("610.00us"), Some(Duration::from_micros(610)));
        assert_eq!(duration("1.50s"), Some(Duration::from_millis(1500)));
        assert_eq!(duration("fast"), None);
    }
}
