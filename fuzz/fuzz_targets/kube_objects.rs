//! Kubernetes objects as the API server might send them (any JSON): each converter
//! skips what it cannot read, never panics.
#![no_main]

use kube::core::DynamicObject;
use libfuzzer_sys::fuzz_target;
use sockeye::discovery::kube::objects;

fuzz_target!(|bytes: &[u8]| {
    let Ok(object) = serde_json::from_slice::<DynamicObject>(bytes) else { return };
    let _ = objects::key(&object);
    let _ = objects::namespace(&object);
    let _ = objects::pod(&object, "node-1");
    let _ = objects::service(&object);
    let _ = objects::slice(&object);
});
