//! `weft inject` on any text: documents injected, passed through or skipped
//! with one report line each, or the input refused with a message; a second
//! injection changes nothing and uninjecting restores the document; never a
//! panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft::inject::input;
use weft::inject::walk::{process, Mode};

fuzz_target!(|text: &str| {
    let Ok(source) = input::parse("stdin", text) else {
        return;
    };
    let inject = Mode::Inject(Box::default());
    for original in source.documents {
        let mut report = Vec::new();
        let mut once = original.clone();
        process(&mut once, &inject, &mut report);
        assert!(!report.is_empty());
        let mut twice = once.clone();
        process(&mut twice, &inject, &mut report);
        assert_eq!(twice, once);
        let mut undone = once;
        process(&mut undone, &Mode::Uninject, &mut report);
        assert_eq!(undone, original);
    }
});
