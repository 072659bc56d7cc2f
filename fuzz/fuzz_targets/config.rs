//! Config parsing and validation on arbitrary text: an error, never a panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use sockeye::config::Config;

fuzz_target!(|text: &str| {
    let _ = Config::parse(Path::new("fuzz.yaml"), text);
});
