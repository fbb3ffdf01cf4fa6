//! Where the default model bundle is found when `--bundle` (or the config's `bundle`) is
//! not given. Nothing about the build machine is compiled in: the places are found from
//! where the running binary is.

use std::path::{Path, PathBuf};

/// The packaged bundle, relative to the installation prefix (`/usr` for the Debian
/// package, so `/usr/share/edgedx/bundles/default`).
const PACKAGED_BUNDLE: &str = "share/edgedx/bundles/default";
/// The bundle in a source checkout, for `cargo run` (the binary is under `target/`).
const SOURCE_BUNDLE: &str = "models/brain-mri-4class";

/// `--bundle` if given, else the bundle packaged beside the binary
/// (`<prefix>/bin/edgedx` → `<prefix>/share/edgedx/bundles/default`), else the source
/// tree's bundle above the binary's `target/` directory. When none exists, the packaged
/// path is returned, so that the error names where the bundle should be.
pub fn bundle_dir(arg: Option<PathBuf>) -> PathBuf {
    if let Some(dir) = arg {
        return dir;
    }
    let exe = std::env::current_exe().ok();
    let exe_dir = exe.as_deref().and_then(Path::parent);
    default_bundle(exe_dir).unwrap_or_else(|| packaged_bundle(exe_dir))
}

fn packaged_bundle(exe_dir: Option<&Path>) -> PathBuf {
    match exe_dir.and_then(Path::parent) {
        Some(prefix) => prefix.join(PACKAGED_BUNDLE),
        None => Path::new("/usr").join(PACKAGED_BUNDLE),
    }
}

fn default_bundle(exe_dir: Option<&Path>) -> Option<PathBuf> {
    let has_manifest = |dir: &Path| dir.join(edgedx_bundle::MANIFEST_FILE).is_file();
    let packaged = packaged_bundle(exe_dir);
    if has_manifest(&packaged) {
        return Some(packaged);
    }
    // target/<profile>/edgedx or target/<triple>/<profile>/edgedx (also deps/ for tests):
    // the checkout is the parent of the nearest `target` ancestor.
    let target = exe_dir?
        .ancestors()
        .find(|d| d.file_name() == Some("target".as_ref()))?;
    let source = target.parent()?.join(SOURCE_BUNDLE);
    has_manifest(&source).then_some(source)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle_at(dir: &Path) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(edgedx_bundle::MANIFEST_FILE), "").unwrap();
    }

    #[test]
    fn the_packaged_bundle_is_found_beside_the_binary() {
        let root = tempfile::tempdir().unwrap();
        let bin = root.path().join("usr/bin");
        bundle_at(&root.path().join("usr/share/edgedx/bundles/default"));
        assert_eq!(
            default_bundle(Some(&bin)),
            Some(root.path().join("usr/share/edgedx/bundles/default"))
        );
    }

    #[test]
    fn a_checkout_build_finds_the_source_bundle_above_target() {
        let root = tempfile::tempdir().unwrap();
        bundle_at(&root.path().join(SOURCE_BUNDLE));
        for bin in [
            "target/release",
            "target/aarch64-unknown-linux-gnu/debug/deps",
        ] {
            assert_eq!(
                default_bundle(Some(&root.path().join(bin))),
                Some(root.path().join(SOURCE_BUNDLE)),
                "{bin}"
            );
        }
    }

    #[test]
    fn without_any_bundle_the_error_names_the_packaged_place() {
        let root = tempfile::tempdir().unwrap();
        let bin = root.path().join("opt/edgedx/bin");
        assert_eq!(default_bundle(Some(&bin)), None);
        assert_eq!(
            packaged_bundle(Some(&bin)),
            root.path().join("opt/edgedx/share/edgedx/bundles/default")
        );
    }
}
