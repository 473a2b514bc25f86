//! The agent's TOML settings file (`/etc/muster/agent.toml`), as parsed
//! before validation. Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use muster_agent::settings::FileSettings;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = FileSettings::parse(text);
    }
});
