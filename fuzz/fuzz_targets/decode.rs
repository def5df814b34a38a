//! Every decoder that reads bytes off the wire, on arbitrary bytes: command
//! envelopes (plain and verified against a fixed trusted key), `peek_id`,
//! service and agent events, releases and subjects. A panic, or memory past
//! `-rss_limit_mb`, is a finding. The logic is shared with the stable
//! property test in `ferry_protocol::fuzzing`.
#![no_main]

use std::sync::OnceLock;

use ferry_protocol::fuzzing::{decode_everything, harness_key};
use ferry_protocol::TrustedKeys;
use libfuzzer_sys::fuzz_target;

fn trusted() -> &'static TrustedKeys {
    static TRUSTED: OnceLock<TrustedKeys> = OnceLock::new();
    TRUSTED.get_or_init(|| {
        let key = harness_key().expect("the harness seed is a valid nkey seed");
        TrustedKeys::new([key.public_key()]).expect("a valid public key")
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = decode_everything(data, trusted(), time::OffsetDateTime::now_utc());
});
