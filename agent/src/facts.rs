//! Host facts for the heartbeat, from sysinfo.
//!
//! Only what is reported is refreshed: memory, the mount list (cheap: it is
//! `/proc/mounts`), and the sizes of `/` and the data volume — never a
//! `statvfs` of other mounts, which could hang on a dead network filesystem.
//! The CPU count, OS and kernel are read once. Every value is kept within
//! the bounds of [`HostFacts::validate`].

use std::path::Path;
use std::sync::{Arc, Mutex};

use muster_proto::{DiskUsage, HostFacts, MAX_TEXT_LEN};
use sysinfo::{CpuRefreshKind, DiskRefreshKind, Disks, MemoryRefreshKind, System};

/// Where the data volume is mounted, when it is.
pub const DATA_MOUNT: &str = "/var/lib/muster-data";

/// The mounts reported, in order.
const MOUNTS: [&str; 2] = ["/", DATA_MOUNT];

/// The most load average reported (the wire bound).
const MAX_LOAD: f64 = 1e6;

/// Most CPUs reported (the wire bound).
const MAX_CPUS: usize = 4096;

/// Gathers host facts; cheap to clone, one gathering at a time.
#[derive(Debug, Clone)]
pub struct FactsCollector {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug)]
struct Inner {
    system: System,
    disks: Disks,
    cpus: u32,
    os: String,
    kernel: String,
}

impl Default for FactsCollector {
    fn default() -> Self {
        Self::new()
    }
}

impl FactsCollector {
    /// Reads what does not change while the host runs.
    pub fn new() -> Self {
        let mut system = System::new();
        system.refresh_cpu_list(CpuRefreshKind::nothing());
        let cpus = system.cpus().len().clamp(1, MAX_CPUS) as u32;
        let os = match (System::name(), System::os_version()) {
            (Some(name), Some(version)) => format!("{name} {version}"),
            (Some(name), None) => name,
            (None, _) => System::long_os_version().unwrap_or_else(|| "unknown".to_owned()),
        };
        let kernel = System::kernel_version().unwrap_or_else(|| "unknown".to_owned());
        FactsCollector {
            inner: Arc::new(Mutex::new(Inner {
                system,
                disks: Disks::new(),
                cpus,
                os: clean_text(&os),
                kernel: clean_text(&kernel),
            })),
        }
    }

    /// Gathers the current facts (blocking: a few small reads under
    /// `/proc` and two `statvfs` calls).
    pub fn collect_blocking(&self) -> HostFacts {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let inner = &mut *inner;
        inner
            .system
            .refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
        let memory_total_bytes = inner.system.total_memory();
        let memory_used_bytes = inner.system.used_memory().min(memory_total_bytes);

        // Re-list mounts without measuring them, then measure only ours, so a
        // data volume mounted after start is picked up.
        inner
            .disks
            .refresh_specifics(true, DiskRefreshKind::nothing());
        let mut disks = Vec::new();
        for mount in MOUNTS {
            let Some(disk) = inner
                .disks
                .list_mut()
                .iter_mut()
                .find(|d| d.mount_point() == Path::new(mount))
            else {
                continue;
            };
            disk.refresh_specifics(DiskRefreshKind::nothing().with_storage());
            let total_bytes = disk.total_space();
            if total_bytes == 0 {
                continue;
            }
            disks.push(DiskUsage {
                mount: mount.to_owned(),
                total_bytes,
                // sysinfo knows only the space available to users, so the
                // root reserve counts as used.
                used_bytes: total_bytes.saturating_sub(disk.available_space()),
            });
        }

        let load = System::load_average();
        HostFacts {
            cpus: inner.cpus,
            load_average: [load.one, load.five, load.fifteen].map(bounded_load),
            memory_total_bytes,
            memory_used_bytes,
            disks,
            uptime_secs: System::uptime(),
            os: inner.os.clone(),
            kernel: inner.kernel.clone(),
        }
    }

    /// [`FactsCollector::collect_blocking`] off the async threads.
    pub async fn collect(&self) -> HostFacts {
        let collector = self.clone();
        match tokio::task::spawn_blocking(move || collector.collect_blocking()).await {
            Ok(facts) => facts,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
}

fn bounded_load(load: f64) -> f64 {
    if load.is_finite() {
        load.clamp(0.0, MAX_LOAD)
    } else {
        0.0
    }
}

/// Free text as the wire accepts it: no control characters, at most
/// [`MAX_TEXT_LEN`] bytes.
fn clean_text(text: &str) -> String {
    let mut out = String::new();
    for c in text.trim().chars().filter(|c| !c.is_control()) {
        if out.len() + c.len_utf8() > MAX_TEXT_LEN {
            break;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The facts of the machine running the tests pass the coordinator's
    /// validation and report `/` with a plausible size.
    #[test]
    fn real_host_facts_validate() {
        let facts = FactsCollector::new().collect_blocking();
        facts.validate().unwrap();
        assert!(facts.cpus >= 1);
        assert!(facts.memory_total_bytes > 0);
        assert!(facts.memory_used_bytes <= facts.memory_total_bytes);
        assert!(!facts.kernel.is_empty());
        if let Some(root) = facts.disks.iter().find(|d| d.mount == "/") {
            assert!(root.total_bytes > 0 && root.used_bytes <= root.total_bytes);
        }
        assert!(facts
            .disks
            .iter()
            .all(|d| MOUNTS.contains(&d.mount.as_str())));
    }

    /// Load averages out of range or not numbers are brought within bounds.
    #[test]
    fn load_is_bounded() {
        assert_eq!(bounded_load(f64::NAN), 0.0);
        assert_eq!(bounded_load(-1.0), 0.0);
        assert_eq!(bounded_load(1e9), MAX_LOAD);
        assert_eq!(bounded_load(0.5), 0.5);
    }

    /// Text is cut to the wire limit and loses control characters.
    #[test]
    fn text_is_cleaned() {
        assert_eq!(clean_text(" Debian\n12 "), "Debian12");
        assert_eq!(clean_text(&"x".repeat(300)).len(), MAX_TEXT_LEN);
    }
}
