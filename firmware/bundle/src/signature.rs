//! Bundle signatures: Ed25519 over the exact bytes of `manifest.toml`, kept beside it.
//!
//! The manifest names every model file with its sha256, so one signature over the
//! manifest covers the files transitively: [`verify_bundle`] checks the signature first
//! and then streams every listed file through sha256. A bundle that fails either check
//! yields an error and nothing else; the caller loads only from the [`Verified`] value,
//! whose manifest was parsed from the very bytes that were verified.
//!
//! Formats (also in `models/BUNDLE.md`, section "Signing"):
//! - public key: one line, `ed25519:<64 lowercase hex>` (the 32-byte key), short enough
//!   for a TOML string in the device config;
//! - private key: PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`), the format `openssl genpkey
//!   -algorithm ed25519` writes, mode 0600;
//! - `manifest.toml.sig`: TOML with `algorithm`, `key_id`, `signature` (128 hex) and the
//!   informational `signed_by` and `date`, which the signature does not cover.

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, KeypairBytes};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::{Bundle, BundleError, Manifest, MANIFEST_FILE, MAX_MANIFEST_BYTES};

/// Signature file name inside a bundle directory, beside `manifest.toml`.
pub const SIGNATURE_FILE: &str = "manifest.toml.sig";
/// The only algorithm this build signs and accepts.
pub const ALGORITHM: &str = "ed25519";
/// Prefix of a public key line.
pub const PUBLIC_KEY_PREFIX: &str = "ed25519:";
/// A signature file is a few hundred bytes; anything far larger is not one.
const MAX_SIGNATURE_BYTES: u64 = 64 << 10;
/// A PEM Ed25519 key is about 120 bytes.
const MAX_PRIVATE_KEY_BYTES: u64 = 16 << 10;
/// Hex digits of the key's sha256 that name it (64 bits: enough to tell a device's few
/// trusted keys apart; the key itself, not the id, is what verification trusts).
const KEY_ID_HEX_LEN: usize = 16;

/// Why a bundle could not be signed or did not verify.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    #[error("{path}: no signature file: the bundle is unsigned; refusing it (sign it with `edgedx bundle sign`)")]
    MissingSignature { path: PathBuf },
    #[error("{path}: not a valid signature file: {message}")]
    MalformedSignature { path: PathBuf, message: String },
    #[error("{path}: the signature by key {key_id} does not verify: the manifest was changed after signing, or the signature is forged")]
    BadSignature { path: PathBuf, key_id: String },
    #[error("{path}: signed by key {key_id}, which is not a trusted key of this device (trusted: {trusted})")]
    UntrustedKey {
        path: PathBuf,
        key_id: String,
        trusted: String,
    },
    #[error("no trusted bundle keys are configured: refusing every bundle (add `trusted_keys = [\"ed25519:...\"]` to the config)")]
    NoTrustedKeys,
    #[error("{origin}: not a usable key: {message}")]
    BadKey { origin: String, message: String },
    #[error("{path} (models.{variant}): sha256 is {actual}, the signed manifest expects {expected}: refusing a bundle whose files are not the signed ones")]
    FileHashMismatch {
        variant: String,
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("{path}: not finished, refusing to sign it: {fields} still to be written (`{placeholder}` marks what `edgedx bundle init` left for the model team)", placeholder = crate::PLACEHOLDER)]
    Unfinished { path: PathBuf, fields: String },
    #[error(transparent)]
    Manifest(#[from] BundleError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no randomness for a new key: {message}")]
    Random { message: String },
}

/// Coarse classes of [`SignatureError`], stable for machine-readable output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SignatureErrorKind {
    MissingSignature,
    BadSignature,
    UntrustedKey,
    BadKey,
    FileHashMismatch,
    Manifest,
    Io,
}

impl SignatureErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SignatureErrorKind::MissingSignature => "missing_signature",
            SignatureErrorKind::BadSignature => "bad_signature",
            SignatureErrorKind::UntrustedKey => "untrusted_key",
            SignatureErrorKind::BadKey => "bad_key",
            SignatureErrorKind::FileHashMismatch => "file_hash_mismatch",
            SignatureErrorKind::Manifest => "manifest",
            SignatureErrorKind::Io => "io",
        }
    }
}

impl SignatureError {
    pub fn kind(&self) -> SignatureErrorKind {
        match self {
            SignatureError::MissingSignature { .. } => SignatureErrorKind::MissingSignature,
            // A signature file that cannot be read as one proves nothing either.
            SignatureError::MalformedSignature { .. } | SignatureError::BadSignature { .. } => {
                SignatureErrorKind::BadSignature
            }
            SignatureError::UntrustedKey { .. } | SignatureError::NoTrustedKeys => {
                SignatureErrorKind::UntrustedKey
            }
            SignatureError::BadKey { .. } => SignatureErrorKind::BadKey,
            SignatureError::FileHashMismatch { .. } => SignatureErrorKind::FileHashMismatch,
            SignatureError::Manifest(_) | SignatureError::Unfinished { .. } => {
                SignatureErrorKind::Manifest
            }
            SignatureError::Io { .. } | SignatureError::Random { .. } => SignatureErrorKind::Io,
        }
    }
}

/// A trusted (or signing) Ed25519 public key.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    key: VerifyingKey,
}

impl PublicKey {
    /// Parses `ed25519:<64 hex>`. Surrounding whitespace is ignored; anything else that is
    /// not exactly that, or a key that is not a valid curve point or has small order, is
    /// refused.
    pub fn parse(text: &str) -> Result<PublicKey, SignatureError> {
        let bad = |message: String| SignatureError::BadKey {
            origin: format!("public key {:?}", shorten(text)),
            message,
        };
        let text = text.trim();
        let Some(hex_part) = text.strip_prefix(PUBLIC_KEY_PREFIX) else {
            return Err(bad(format!(
                "must start with {PUBLIC_KEY_PREFIX:?} followed by 64 hex digits"
            )));
        };
        if hex_part.len() != 64 {
            return Err(bad(format!(
                "needs 64 hex digits after {PUBLIC_KEY_PREFIX:?}, found {}",
                hex_part.len()
            )));
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut bytes)
            .map_err(|e| bad(format!("not hexadecimal: {e}")))?;
        let key = VerifyingKey::from_bytes(&bytes)
            .map_err(|_| bad("not a point on the Ed25519 curve".into()))?;
        // verify_strict would refuse every signature under such a key anyway; saying so
        // when the config is read is clearer than a bad signature on every bundle later.
        if key.is_weak() {
            return Err(bad(
                "a small-order (weak) key, which cannot authenticate anything".into(),
            ));
        }
        Ok(PublicKey { key })
    }

    /// The first 16 hex digits of the sha256 of the 32 key bytes.
    pub fn key_id(&self) -> String {
        let mut id = hex::encode(Sha256::digest(self.key.as_bytes()));
        id.truncate(KEY_ID_HEX_LEN);
        id
    }

    pub fn to_bytes(&self) -> [u8; 32] {
        self.key.to_bytes()
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PUBLIC_KEY_PREFIX}{}", hex::encode(self.key.as_bytes()))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self}, key_id {})", self.key_id())
    }
}

impl FromStr for PublicKey {
    type Err = SignatureError;

    fn from_str(s: &str) -> Result<PublicKey, SignatureError> {
        PublicKey::parse(s)
    }
}

/// The text of a private key file (PKCS#8 PEM), wiped from memory when dropped and never
/// printed by `Debug`.
pub struct PrivateKeyPem(Zeroizing<String>);

impl PrivateKeyPem {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PrivateKeyPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKeyPem(<redacted>)")
    }
}

/// A new key pair from the operating system's random source: the private key file's text
/// and the public key line for device configs.
pub fn generate_keypair() -> Result<(PrivateKeyPem, PublicKey), SignatureError> {
    let mut seed = Zeroizing::new([0u8; 32]);
    getrandom::fill(seed.as_mut()).map_err(|e| SignatureError::Random {
        message: e.to_string(),
    })?;
    let signing = SigningKey::from_bytes(&seed);
    // PKCS#8 v1 (no embedded public key), which is what openssl writes and reads
    // everywhere; ed25519-dalek's own encoder would write v2.
    let pem = KeypairBytes {
        secret_key: *seed,
        public_key: None,
    }
    .to_pkcs8_pem(LineEnding::LF)
    .map_err(|e| SignatureError::BadKey {
        origin: "new key".into(),
        message: format!("cannot encode as PKCS#8: {e}"),
    })?;
    let public = PublicKey {
        key: signing.verifying_key(),
    };
    Ok((PrivateKeyPem(Zeroizing::new(pem.to_string())), public))
}

/// The public key that belongs to a private key file.
pub fn public_key_of(private_key_path: &Path) -> Result<PublicKey, SignatureError> {
    let signing = read_private_key(private_key_path)?;
    Ok(PublicKey {
        key: signing.verifying_key(),
    })
}

/// What [`sign_bundle`] wrote.
#[derive(Debug, Clone)]
pub struct SignatureInfo {
    /// The signature file (`<bundle>/manifest.toml.sig`).
    pub path: PathBuf,
    pub key_id: String,
    /// The public key devices must trust to accept this bundle.
    pub public_key: PublicKey,
    pub signed_by: String,
    /// UTC, `YYYY-MM-DDTHH:MM:SSZ`.
    pub date: String,
}

/// A bundle whose signature and model files verified.
#[derive(Debug, Clone)]
pub struct Verified {
    /// Id of the trusted key that signed it.
    pub key_id: String,
    /// `signed_by` from the signature file: informational, not covered by the signature.
    pub signed_by: Option<String>,
    /// `date` from the signature file: informational, not covered by the signature.
    pub date: Option<String>,
    /// The bundle, its manifest parsed from the exact bytes that were verified. Load from
    /// this, not from a second `Bundle::open`, so that a manifest swapped after the check
    /// is never used; the loader's sha256 check of the mapped bytes against this manifest
    /// then covers a model file swapped after the check.
    pub bundle: Bundle,
}

/// `manifest.toml.sig` as written on disk.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignatureFile {
    algorithm: String,
    key_id: String,
    signature: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    signed_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    date: Option<String>,
}

/// Signs `<dir>/manifest.toml` with the key in `private_key_path` and writes
/// `<dir>/manifest.toml.sig` (atomically: temp file, fsync, rename).
///
/// Refuses to sign a manifest that does not validate or whose model files do not match
/// their sha256: a signature vouches for the files, so they are checked first.
pub fn sign_bundle(
    dir: &Path,
    private_key_path: &Path,
    signer: &str,
) -> Result<SignatureInfo, SignatureError> {
    let signing = read_private_key(private_key_path)?;
    let manifest_path = dir.join(MANIFEST_FILE);
    let bytes = read_limited(&manifest_path, MAX_MANIFEST_BYTES)?;
    let manifest = parse_manifest(&bytes, &manifest_path)?;
    check_files(dir, &manifest)?;
    let unfinished = manifest.unfinished();
    if !unfinished.is_empty() {
        return Err(SignatureError::Unfinished {
            path: manifest_path,
            fields: unfinished.join(", "),
        });
    }

    let public = PublicKey {
        key: signing.verifying_key(),
    };
    let signature: Signature = signing.sign(&bytes);
    let date = now_utc();
    let record = SignatureFile {
        algorithm: ALGORITHM.into(),
        key_id: public.key_id(),
        signature: hex::encode(signature.to_bytes()),
        signed_by: Some(signer.to_string()),
        date: Some(date.clone()),
    };
    let body = toml::to_string(&record).map_err(|e| SignatureError::MalformedSignature {
        path: dir.join(SIGNATURE_FILE),
        message: format!("cannot serialise: {e}"),
    })?;
    let text = format!(
        "# Ed25519 signature of the exact bytes of {MANIFEST_FILE}; `edgedx bundle verify` checks it.\n\
         # signed_by and date are informational: the signature does not cover them.\n{body}"
    );
    let sig_path = dir.join(SIGNATURE_FILE);
    write_atomically(&sig_path, text.as_bytes())?;
    Ok(SignatureInfo {
        path: sig_path,
        key_id: public.key_id(),
        public_key: public,
        signed_by: signer.to_string(),
        date,
    })
}

/// Verifies `<dir>/manifest.toml.sig` against `trusted`, then every model file the manifest
/// lists against its sha256. Reads the manifest once; the returned bundle is parsed from
/// those bytes.
pub fn verify_bundle(dir: &Path, trusted: &[PublicKey]) -> Result<Verified, SignatureError> {
    if trusted.is_empty() {
        return Err(SignatureError::NoTrustedKeys);
    }
    let manifest_path = dir.join(MANIFEST_FILE);
    let sig_path = dir.join(SIGNATURE_FILE);
    let bytes = read_limited(&manifest_path, MAX_MANIFEST_BYTES)?;
    let sig_bytes = match read_limited(&sig_path, MAX_SIGNATURE_BYTES) {
        Ok(b) => b,
        Err(SignatureError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Err(SignatureError::MissingSignature { path: sig_path });
        }
        Err(e) => return Err(e),
    };
    let record = parse_signature_file(&sig_bytes, &sig_path)?;

    // key_id only picks the key to try; what is trusted is the key, through verify_strict.
    let candidates: Vec<&PublicKey> = trusted
        .iter()
        .filter(|k| k.key_id() == record.key_id)
        .collect();
    if candidates.is_empty() {
        return Err(SignatureError::UntrustedKey {
            path: sig_path,
            key_id: record.key_id,
            trusted: trusted
                .iter()
                .map(PublicKey::key_id)
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    let signature = decode_signature(&record.signature, &sig_path)?;
    // verify_strict: rejects non-canonical encodings and small-order components, so no
    // second signature over the same manifest can be forged from a valid one.
    if !candidates
        .iter()
        .any(|k| k.key.verify_strict(&bytes, &signature).is_ok())
    {
        return Err(SignatureError::BadSignature {
            path: manifest_path,
            key_id: record.key_id,
        });
    }

    let manifest = parse_manifest(&bytes, &manifest_path)?;
    check_files(dir, &manifest)?;
    Ok(Verified {
        key_id: record.key_id,
        signed_by: record.signed_by,
        date: record.date,
        bundle: Bundle {
            dir: dir.to_path_buf(),
            manifest,
        },
    })
}

fn read_private_key(path: &Path) -> Result<SigningKey, SignatureError> {
    let bad = |message: String| SignatureError::BadKey {
        origin: path.display().to_string(),
        message,
    };
    check_private_key_mode(path)?;
    let bytes = Zeroizing::new(read_limited(path, MAX_PRIVATE_KEY_BYTES)?);
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| bad("not a PEM text file (expected -----BEGIN PRIVATE KEY-----)".into()))?;
    SigningKey::from_pkcs8_pem(text.trim()).map_err(|e| {
        bad(format!(
            "not an Ed25519 PKCS#8 PEM private key (-----BEGIN PRIVATE KEY-----): {e}"
        ))
    })
}

/// Like ssh, a private key that others can read is refused: it may already be lost.
#[cfg(unix)]
fn check_private_key_mode(path: &Path) -> Result<(), SignatureError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|source| SignatureError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(SignatureError::BadKey {
            origin: path.display().to_string(),
            message: format!(
                "private key file has mode {mode:04o}, readable by others; `chmod 600` it \
                 (and consider the key compromised if others could read it)"
            ),
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private_key_mode(_path: &Path) -> Result<(), SignatureError> {
    Ok(())
}

fn parse_signature_file(bytes: &[u8], path: &Path) -> Result<SignatureFile, SignatureError> {
    let malformed = |message: String| SignatureError::MalformedSignature {
        path: path.to_path_buf(),
        message,
    };
    let text = std::str::from_utf8(bytes).map_err(|_| malformed("not UTF-8 text".into()))?;
    let record: SignatureFile = toml::from_str(text).map_err(|e| malformed(e.to_string()))?;
    if record.algorithm != ALGORITHM {
        return Err(malformed(format!(
            "algorithm: {:?} is not supported (only {ALGORITHM:?})",
            record.algorithm
        )));
    }
    if record.key_id.len() != KEY_ID_HEX_LEN
        || !record.key_id.bytes().all(|c| c.is_ascii_hexdigit())
    {
        return Err(malformed(format!(
            "key_id: must be {KEY_ID_HEX_LEN} hex digits"
        )));
    }
    Ok(SignatureFile {
        key_id: record.key_id.to_ascii_lowercase(),
        ..record
    })
}

fn decode_signature(text: &str, path: &Path) -> Result<Signature, SignatureError> {
    let mut bytes = [0u8; 64];
    hex::decode_to_slice(text, &mut bytes).map_err(|e| SignatureError::MalformedSignature {
        path: path.to_path_buf(),
        message: format!("signature: must be 128 hex digits ({e})"),
    })?;
    Ok(Signature::from_bytes(&bytes))
}

fn parse_manifest(bytes: &[u8], path: &Path) -> Result<Manifest, SignatureError> {
    let text = std::str::from_utf8(bytes).map_err(|e| BundleError::Parse {
        path: path.to_path_buf(),
        message: format!("not UTF-8: {e}"),
    })?;
    Ok(Manifest::from_toml_str(text, path)?)
}

/// Streams every model file of the manifest through sha256 (no map: a file that changes
/// under a map would be hashed and later read as different bytes).
fn check_files(dir: &Path, manifest: &Manifest) -> Result<(), SignatureError> {
    for (variant, model) in &manifest.models {
        let path = dir.join(&model.file);
        let actual = sha256_file(&path)?;
        if !actual.eq_ignore_ascii_case(&model.sha256) {
            return Err(SignatureError::FileHashMismatch {
                variant: variant.clone(),
                path,
                expected: model.sha256.clone(),
                actual,
            });
        }
    }
    Ok(())
}

fn sha256_file(path: &Path) -> Result<String, SignatureError> {
    crate::sha256_file(path).map_err(|source| SignatureError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn read_limited(path: &Path, max: u64) -> Result<Vec<u8>, SignatureError> {
    let io = |source| SignatureError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    let mut bytes = Vec::new();
    file.take(max + 1).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() as u64 > max {
        return Err(io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {max} bytes, which no such file is"),
        )));
    }
    Ok(bytes)
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), SignatureError> {
    crate::write_file_atomically(path, bytes).map_err(|source| SignatureError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn shorten(text: &str) -> String {
    const MAX: usize = 80;
    if text.chars().count() <= MAX {
        text.to_string()
    } else {
        format!("{}...", text.chars().take(MAX).collect::<String>())
    }
}

/// Current UTC time as `YYYY-MM-DDTHH:MM:SSZ`.
fn now_utc() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    iso8601_utc(secs)
}

/// Days-from-civil inverse (Howard Hinnant's algorithm), valid for the whole i64 range
/// of days this can see.
fn iso8601_utc(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{d:02}T{h:02}:{m:02}:{s:02}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE_BUNDLE: &str =
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/brain-mri-4class");

    /// A temporary copy of the shipped bundle's top-level files (not `samples/`).
    fn bundle_copy() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(SAMPLE_BUNDLE).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_file() {
                std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
            }
        }
        // A signature shipped with the sample must not leak into these tests.
        let _ = std::fs::remove_file(dir.path().join(SIGNATURE_FILE));
        dir
    }

    /// Writes a new private key with mode 0600 into `dir` and returns its path and key.
    fn key_in(dir: &Path, name: &str) -> (PathBuf, PublicKey) {
        use std::os::unix::fs::OpenOptionsExt;
        let (pem, public) = generate_keypair().unwrap();
        let path = dir.join(name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .unwrap();
        std::io::Write::write_all(&mut f, pem.as_str().as_bytes()).unwrap();
        (path, public)
    }

    fn flip_byte(path: &Path, at: usize) {
        let mut bytes = std::fs::read(path).unwrap();
        bytes[at] ^= 0x01;
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn an_unfinished_model_card_is_not_signed() {
        let bundle = bundle_copy();
        let keys = tempfile::tempdir().unwrap();
        let (key, _) = key_in(keys.path(), "team.pem");
        let path = bundle.path().join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).unwrap();
        let start = text.find("limitations = ").unwrap();
        let end = start + text[start..].find('\n').unwrap();
        let unfinished = format!(
            "{}limitations = \"TODO: what the model was not tested on\"{}",
            &text[..start],
            &text[end..]
        );
        std::fs::write(&path, unfinished).unwrap();
        let err = sign_bundle(bundle.path(), &key, "t").unwrap_err();
        assert_eq!(err.kind(), SignatureErrorKind::Manifest);
        assert!(err.to_string().contains("model_card.limitations"), "{err}");
        assert!(!bundle.path().join(SIGNATURE_FILE).exists());
    }

    #[test]
    fn sign_then_verify_round_trips() {
        let bundle = bundle_copy();
        let keys = tempfile::tempdir().unwrap();
        let (key, public) = key_in(keys.path(), "team.pem");
        let info = sign_bundle(bundle.path(), &key, "model team").unwrap();
        assert_eq!(info.public_key, public);
        assert_eq!(info.key_id, public.key_id());
        assert_eq!(info.path, bundle.path().join(SIGNATURE_FILE));
        assert_eq!(public_key_of(&key).unwrap(), public);

        let other = PublicKey::parse(&generate_keypair().unwrap().1.to_string()).unwrap();
        let verified = verify_bundle(bundle.path(), &[other, public.clone()]).unwrap();
        assert_eq!(verified.key_id, public.key_id());
        assert_eq!(verified.signed_by.as_deref(), Some("model team"));
        assert_eq!(verified.bundle.manifest().bundle.name, "brain-mri-4class");
        assert_eq!(verified.bundle.dir(), bundle.path());
    }

    #[test]
    fn a_changed_manifest_is_a_bad_signature() {
        let bundle = bundle_copy();
        let keys = tempfile::tempdir().unwrap();
        let (key, public) = key_in(keys.path(), "k.pem");
        sign_bundle(bundle.path(), &key, "t").unwrap();
        // A byte inside the first comment or key: anything changes the signed bytes.
        flip_byte(&bundle.path().join(MANIFEST_FILE), 3);
        let err = verify_bundle(bundle.path(), &[public]).unwrap_err();
        assert_eq!(err.kind(), SignatureErrorKind::BadSignature, "{err}");
        assert!(err.to_string().contains(MANIFEST_FILE), "{err}");
    }

    #[test]
    fn a_changed_model_file_is_named() {
        let bundle = bundle_copy();
        let keys = tempfile::tempdir().unwrap();
        let (key, public) = key_in(keys.path(), "k.pem");
        sign_bundle(bundle.path(), &key, "t").unwrap();
        let model = bundle.path().join("int8.onnx");
        let len = std::fs::metadata(&model).unwrap().len() as usize;
        flip_byte(&model, len / 2);
        let err = verify_bundle(bundle.path(), &[public]).unwrap_err();
        assert_eq!(err.kind(), SignatureErrorKind::FileHashMismatch, "{err}");
        let message = err.to_string();
        assert!(message.contains("int8.onnx"), "{message}");
        assert!(message.contains("models.int8"), "{message}");
        // Signing refuses it too: a signature vouches for the files.
        let err = sign_bundle(bundle.path(), &key, "t").unwrap_err();
        assert_eq!(err.kind(), SignatureErrorKind::FileHashMismatch, "{err}");
    }

    #[test]
    fn a_missing_model_file_is_named() {
        let bundle = bundle_copy();
        let keys = tempfile::tempdir().unwrap();
        let (key, public) = key_in(keys.path(), "k.pem");
        sign_bundle(bundle.path(), &key, "t").unwrap();
        std::fs::remove_file(bundle.path().join("fp32.onnx")).unwrap();
        let err = verify_bundle(bundle.path(), &[public]).unwrap_err();
        assert_eq!(err.kind(), SignatureErrorKind::Io, "{err}");
        assert!(err.to_string().contains("fp32.onnx"), "{err}");
    }

    #[test]
    fn a_signature_by_an_untrusted_key_is_refused() {
        let bundle = bundle_copy();
        let keys = tempfile::tempdir().unwrap();
        let (key, signer) = key_in(keys.path(), "intruder.pem");
        let (_, trusted) = key_in(keys.path(), "team.pem");
        sign_bundle(bundle.path(), &key, "intruder").unwrap();
        let err = verify_bundle(bundle.path(), std::slice::from_ref(&trusted)).unwrap_err();
        assert_eq!(err.kind(), SignatureErrorKind::UntrustedKey, "{err}");
        let message = err.to_string();
        assert!(message.contains(&signer.key_id()), "{message}");
        assert!(message.contains(&trusted.key_id()), "{message}");

        let err = verify_bundle(bundle.path(), &[]).unwrap_err();
        assert_eq!(err.kind(), SignatureErrorKind::UntrustedKey, "{err}");
    }

    #[test]
    fn a_key_id_pointing_at_a_trusted_key_does_not_help_an_untrusted_signer() {
        let bundle = bundle_copy();
        let keys = tempfile::tempdir().unwrap();
        let (key, _) = key_in(keys.path(), "intruder.pem");
        let (_, trusted) = key_in(keys.path(), "team.pem");
        sign_bundle(bundle.path(), &key, "intruder").unwrap();
        let sig = bundle.path().join(SIGNATURE_FILE);
        let text = std::fs::read_to_string(&sig).unwrap();
        let record: SignatureFile = toml::from_str(&text).unwrap();
        std::fs::write(&sig, text.replace(&record.key_id, &trusted.key_id())).unwrap();
        let err = verify_bundle(bundle.path(), &[trusted]).unwrap_err();
        assert_eq!(err.kind(), SignatureErrorKind::BadSignature, "{err}");
    }

    #[test]
    fn an_unsigned_bundle_is_refused() {
        let bundle = bundle_copy();
        let (_, public) = generate_keypair().unwrap();
        let err = verify_bundle(bundle.path(), &[public]).unwrap_err();
        assert_eq!(err.kind(), SignatureErrorKind::MissingSignature, "{err}");
        assert!(err.to_string().contains(SIGNATURE_FILE), "{err}");
    }

    #[test]
    fn a_malformed_signature_file_is_refused() {
        let bundle = bundle_copy();
        let keys = tempfile::tempdir().unwrap();
        let (key, public) = key_in(keys.path(), "k.pem");
        sign_bundle(bundle.path(), &key, "t").unwrap();
        let sig = bundle.path().join(SIGNATURE_FILE);
        let good = std::fs::read_to_string(&sig).unwrap();
        for (bad, field) in [
            (good.replace("\"ed25519\"", "\"rsa\""), "algorithm"),
            (format!("{good}extra = 1\n"), "extra"),
            (
                good.replace("signature = \"", "signature = \"zz"),
                "signature",
            ),
        ] {
            std::fs::write(&sig, bad).unwrap();
            let err = verify_bundle(bundle.path(), std::slice::from_ref(&public)).unwrap_err();
            assert_eq!(err.kind(), SignatureErrorKind::BadSignature, "{err}");
            assert!(err.to_string().contains(field), "{field}: {err}");
        }
    }

    #[test]
    fn a_non_canonical_signature_is_refused() {
        let bundle = bundle_copy();
        let keys = tempfile::tempdir().unwrap();
        let (key, public) = key_in(keys.path(), "k.pem");
        sign_bundle(bundle.path(), &key, "t").unwrap();
        let sig = bundle.path().join(SIGNATURE_FILE);
        let text = std::fs::read_to_string(&sig).unwrap();
        let record: SignatureFile = toml::from_str(&text).unwrap();
        // s + l (the group order) is the same scalar mod l: accepted by a lax verifier,
        // refused by verify_strict (malleability).
        let mut bytes = hex::decode(&record.signature).unwrap();
        const L: [u8; 32] = [
            0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9,
            0xde, 0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ];
        let mut carry = 0u16;
        for i in 0..32 {
            let sum = u16::from(bytes[32 + i]) + u16::from(L[i]) + carry;
            bytes[32 + i] = sum as u8;
            carry = sum >> 8;
        }
        std::fs::write(&sig, text.replace(&record.signature, &hex::encode(&bytes))).unwrap();
        let err = verify_bundle(bundle.path(), &[public]).unwrap_err();
        assert_eq!(err.kind(), SignatureErrorKind::BadSignature, "{err}");
    }

    #[test]
    fn public_keys_parse_strictly() {
        let (_, public) = generate_keypair().unwrap();
        let line = public.to_string();
        assert!(
            line.starts_with("ed25519:") && line.len() == 8 + 64,
            "{line}"
        );
        assert_eq!(PublicKey::parse(&format!("  {line}\n")).unwrap(), public);
        assert_eq!(
            PublicKey::parse(&line.to_uppercase().replacen("ED25519", "ed25519", 1)).unwrap(),
            public
        );
        assert_eq!(public.key_id().len(), 16);

        let hex_part = &line["ed25519:".len()..];
        let cases = [
            (String::new(), "must start with"),
            (hex_part.to_string(), "must start with"),
            (format!("rsa:{hex_part}"), "must start with"),
            (format!("ed25519:{}", &hex_part[..62]), "found 62"),
            (format!("{line}00"), "found 66"),
            (format!("ed25519:{}zz", &hex_part[..62]), "not hexadecimal"),
            // The identity point: small order.
            (format!("ed25519:01{}", "0".repeat(62)), "weak"),
        ];
        for (text, expected) in cases {
            let err = PublicKey::parse(&text).unwrap_err();
            assert_eq!(err.kind(), SignatureErrorKind::BadKey, "{text}");
            assert!(err.to_string().contains(expected), "{text}: {err}");
        }
        // y = 2 has no x on the curve.
        let err = PublicKey::parse(&format!("ed25519:02{}", "0".repeat(62))).unwrap_err();
        assert!(
            err.to_string().contains("not a point") || err.to_string().contains("weak"),
            "{err}"
        );
    }

    #[test]
    fn private_keys_must_be_private_and_pkcs8() {
        use std::os::unix::fs::PermissionsExt;
        let bundle = bundle_copy();
        let keys = tempfile::tempdir().unwrap();
        let (key, _) = key_in(keys.path(), "k.pem");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = sign_bundle(bundle.path(), &key, "t").unwrap_err();
        assert_eq!(err.kind(), SignatureErrorKind::BadKey, "{err}");
        assert!(err.to_string().contains("chmod 600"), "{err}");

        let junk = keys.path().join("junk.pem");
        std::fs::write(&junk, "ed25519:not a private key\n").unwrap();
        std::fs::set_permissions(&junk, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = sign_bundle(bundle.path(), &junk, "t").unwrap_err();
        assert_eq!(err.kind(), SignatureErrorKind::BadKey, "{err}");
        assert!(err.to_string().contains("PKCS#8"), "{err}");
        assert!(!bundle.path().join(SIGNATURE_FILE).exists());
    }

    #[test]
    fn private_key_pem_is_openssl_shaped_and_redacted() {
        let (pem, _) = generate_keypair().unwrap();
        assert!(pem.as_str().starts_with("-----BEGIN PRIVATE KEY-----\n"));
        assert_eq!(format!("{pem:?}"), "PrivateKeyPem(<redacted>)");
    }

    #[test]
    fn dates_are_iso8601_utc() {
        assert_eq!(iso8601_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(iso8601_utc(1_795_335_000), "2026-11-22T08:10:00Z");
    }
}
