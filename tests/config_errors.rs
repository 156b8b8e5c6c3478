//! `portcullis validate` prints the same errors — file, line, key and text — for a corpus of
//! broken configs (`tests/config_errors/*.yaml`, one or more sections wrong in each). The
//! `.expected` files were written by the binary before section building moved into the domain
//! modules; a change here is a change users see, so it must be deliberate.

use std::path::Path;
use std::process::Command;

#[test]
fn validate_output_matches_the_recorded_corpus() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/config_errors");
    let mut checked = 0;
    let mut failures = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    for file in files {
        let name = file.file_name().unwrap().to_str().unwrap().to_string();
        let expected = std::fs::read_to_string(file.with_extension("expected"))
            .unwrap_or_else(|_| panic!("{name} has no .expected file"));
        let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .arg("validate")
            .arg(&name)
            .current_dir(&dir)
            .env_remove("PORTCULLIS_TEST_SURELY_UNSET")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let valid = expected.contains(": ok (");
        assert_eq!(
            out.status.code(),
            Some(if valid { 0 } else { 1 }),
            "{name}: {stdout}"
        );
        if stdout != expected {
            failures.push(format!(
                "--- {name} expected:\n{expected}--- got:\n{stdout}"
            ));
        }
        checked += 1;
    }
    assert!(checked >= 20, "only {checked} corpus files found");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
