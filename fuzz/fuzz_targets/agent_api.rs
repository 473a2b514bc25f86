//! The agent API bodies, as the coordinator decodes them from the network
//! (register and heartbeat, then their validation) and as the agent
//! decodes the coordinator's answers. Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use muster_proto::{
    ErrorBody, HeartbeatRequest, HeartbeatResponse, RegisterRequest, RegisterResponse,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = serde_json::from_slice::<RegisterRequest>(data) {
        let _ = req.validate();
    }
    if let Ok(req) = serde_json::from_slice::<HeartbeatRequest>(data) {
        let _ = req.validate();
    }
    let _ = serde_json::from_slice::<RegisterResponse>(data);
    let _ = serde_json::from_slice::<HeartbeatResponse>(data);
    let _ = serde_json::from_slice::<ErrorBody>(data);
});
