//! The config loader and validator on any bytes: a config out, or errors
//! that each name the file and a key or a line; never a panic or a hang.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Relative paths in the text resolve into a directory that does not exist.
    let path = Path::new("/nonexistent/weft.yaml");
    let errors = match weft::config::parse_bytes(path, data) {
        Err(errors) => errors,
        Ok(loaded) => {
            let problems = weft::config::problems(&loaded.config);
            let checked = if problems.is_empty() {
                weft::snapshot::check(&loaded)
            } else {
                Err(loaded.errors(problems))
            };
            match checked {
                Ok(()) => return,
                Err(errors) => errors,
            }
        }
    };
    assert!(!errors.0.is_empty());
    for e in &errors.0 {
        assert_eq!(e.file, path);
        assert!(!e.message.is_empty(), "{e:?}");
        assert!(!e.key.is_empty() || e.line.is_some(), "{e:?}");
    }
});
