//! Protocol sniffing on arbitrary first bytes: never panics, and a decision taken on a
//! prefix holds however many bytes follow.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sockeye::proxy::sniff::classify;

fuzz_target!(|bytes: &[u8]| {
    let whole = classify(bytes);
    for cut in 0..bytes.len() {
        if let Some(early) = classify(&bytes[..cut]) {
            assert_eq!(Some(early), whole, "decided {early:?} after {cut} bytes");
            break;
        }
    }
});
