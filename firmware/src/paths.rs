//! Where the default model bundle is found when `--bundle` is not given.

use std::path::PathBuf;

/// Installed location (the package and the board image put the approved bundle here).
const INSTALLED_BUNDLE: &str = "/usr/share/edgedx/bundles/default";
/// The bundle in the source tree, for `cargo run` from a checkout.
const SOURCE_BUNDLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/brain-mri-4class");

/// `--bundle` if given, else the installed bundle, else the one in the source tree.
pub fn bundle_dir(arg: Option<PathBuf>) -> PathBuf {
    if let Some(dir) = arg {
        return dir;
    }
    let installed = PathBuf::from(INSTALLED_BUNDLE);
    if installed.join(edgedx_bundle::MANIFEST_FILE).is_file() {
        return installed;
    }
    PathBuf::from(SOURCE_BUNDLE)
}
