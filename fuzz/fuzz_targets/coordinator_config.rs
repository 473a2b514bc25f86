//! The coordinator's TOML config file (`/etc/muster/coordinator.toml`),
//! decoded and validated into its settings with no flags given. Nothing
//! may panic; files it names are read with a size cap.
#![no_main]

use libfuzzer_sys::fuzz_target;
use muster_coordinator_config::{ServeArgs, Settings};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Settings::from_toml(&ServeArgs::default(), text);
    }
});
