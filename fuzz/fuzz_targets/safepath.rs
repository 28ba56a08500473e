#![no_main]
use godwit_safepath::Component;
use libfuzzer_sys::fuzz_target;
use std::path::{Component as PathPart, Path};

// Untrusted names to path components: a parsed or encoded component is always exactly one
// normal path component, and encoding round-trips.
fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let one = |c: &Component| {
        let parts: Vec<_> = Path::new(c.as_str()).components().collect();
        assert!(parts.len() == 1 && matches!(parts[0], PathPart::Normal(_)), "{s:?} -> {c}");
    };
    if let Ok(c) = Component::parse(s) {
        one(&c);
        assert_eq!(c.as_str(), s);
    }
    let e = Component::encode(s);
    one(&e);
    assert!(Component::parse(e.as_str()).is_ok());
    if e.as_str().len() < godwit_safepath::MAX_LEN - 17 {
        assert_eq!(e.decode().as_deref(), Some(s));
    }
});
