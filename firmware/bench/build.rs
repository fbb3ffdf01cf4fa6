//! Records the tract version the engine was built with (read from the workspace's
//! Cargo.lock), so RESULTS.md names what was measured. The bench itself never links tract.

use std::path::Path;

fn main() {
    let lock = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.lock");
    println!("cargo:rerun-if-changed={}", lock.display());
    let text = std::fs::read_to_string(&lock).unwrap_or_default();
    let mut version = "unknown".to_string();
    let mut in_core = false;
    for line in text.lines() {
        if line == "[[package]]" {
            in_core = false;
        } else if line == "name = \"tract-core\"" {
            in_core = true;
        } else if in_core {
            if let Some(v) = line.strip_prefix("version = \"") {
                version = v.trim_end_matches('"').to_string();
                break;
            }
        }
    }
    println!("cargo:rustc-env=EDGEDX_BENCH_TRACT_VERSION={version}");
}
