//! IMDS's answers as the agent parses them: the input is split at NUL
//! bytes into instance id, zone, region, local-ipv4, public-ipv4, the IPv6
//! list, identity document and PKCS7 signature (absent when there are
//! fewer parts). Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use muster_agent::imds::{parse_addresses, parse_identity, parse_ipv6s, parse_signed_identity};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split('\0');
    let id = parts.next().unwrap_or_default().to_owned();
    let zone = parts.next().unwrap_or_default().to_owned();
    let region = parts.next().unwrap_or_default().to_owned();
    let local = parts.next();
    let public = parts.next();
    let ipv6s = parts.next();
    let document = parts.next().map(str::to_owned);
    let pkcs7 = parts.next().map(str::to_owned);
    let ipv6 = parse_ipv6s(ipv6s).ok().flatten();
    if let Ok(addresses) = parse_addresses(local, public, ipv6) {
        let _ = parse_identity(id, zone, region, addresses);
    }
    let _ = parse_signed_identity(document, pkcs7);
});
