//! Endpoints files (file discovery) on any text: endpoints with weights of
//! at least 1, or errors that each name the file; never a panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let path = Path::new("/etc/weft/endpoints.yaml");
    match weft::config::discovery::parse_endpoints_file(path, text) {
        Ok(endpoints) => assert!(endpoints.iter().all(|e| e.weight >= 1)),
        Err(errors) => {
            assert!(!errors.0.is_empty());
            assert!(errors.0.iter().all(|e| e.file == path && !e.message.is_empty()));
        }
    }
});
