//! Fuzz the ClientHello peek (`gateway-userspace/src/passthrough/client_hello.rs`), which
//! reads untrusted bytes on every TLS port. The parser file is compiled here as is
//! (`#[path]`): it depends on nothing but `std`, so the fuzz build needs neither tokio,
//! rustls nor the eBPF build of gateway-userspace.
//!
//! Beyond "never panics, never reads out of bounds", it checks the properties the
//! listener relies on: a decision, once made, does not change when more bytes arrive
//! (the peek loop stops at the first one), `NeedMore` never comes past the peek bound,
//! and an SNI is always a lowercase DNS-shaped name of at most 253 bytes.
#![no_main]

#[allow(dead_code)]
#[path = "../../gateway-userspace/src/passthrough/client_hello.rs"]
mod client_hello;

use client_hello::{peek_sni, Invalid, Peek, MAX_PEEK_LEN, MAX_SERVER_NAME_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let first = peek_sni(data);
    match first {
        Peek::NeedMore => assert!(data.len() < MAX_PEEK_LEN),
        Peek::Sni(name) => {
            let s = name.as_str();
            assert!(!s.is_empty() && s.len() <= MAX_SERVER_NAME_LEN);
            assert!(s
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b)));
        }
        _ => {}
    }
    // Decided (except by the length bound): more bytes must not change the answer.
    if !matches!(first, Peek::NeedMore | Peek::Invalid(Invalid::TooLarge)) {
        let mut longer = data.to_vec();
        longer.extend_from_slice(&[0x16, 0x03, 0x01, 0x00, 0x01, 0x00]);
        assert_eq!(peek_sni(&longer), first);
    }
    // A prefix of a complete ClientHello is never already something else but invalid.
    if matches!(first, Peek::Sni(_) | Peek::NoSni) && !data.is_empty() {
        let prefix = peek_sni(&data[..data.len() - 1]);
        assert!(
            matches!(prefix, Peek::NeedMore | Peek::Invalid(_)) || prefix == first,
            "{prefix:?} then {first:?}"
        );
    }
});
