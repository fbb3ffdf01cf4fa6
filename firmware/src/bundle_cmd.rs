//! `edgedx bundle init|add|keygen|sign|verify`: the model team's tools, from ONNX files to
//! a signed bundle.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use edgedx_bundle::signature::{self, PublicKey};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: BundleCommand,
}

#[derive(Debug, clap::Subcommand)]
enum BundleCommand {
    /// Write a new bundle from an fp32 ONNX model (and optionally its int8 version) and a
    /// labels file: tensor names, layout and size read from the graph, sha256s filled in,
    /// a model card to complete; every model is loaded once and reported.
    Init(Box<crate::bundle_init::InitArgs>),
    /// Put a model file into a bundle as a variant (`int8` by default) and record its
    /// sha256 and format in the manifest.
    Add(crate::bundle_init::AddArgs),
    /// Make a new Ed25519 key pair: the private key goes to --out (mode 0600, never
    /// overwritten); the public key line for device configs is printed.
    Keygen {
        /// Where to write the private key (PKCS#8 PEM).
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign a bundle's manifest.toml (after checking its model files) into
    /// manifest.toml.sig.
    Sign {
        /// Bundle directory.
        #[arg(long)]
        bundle: PathBuf,
        /// Private key file (PKCS#8 PEM, e.g. from `edgedx bundle keygen`).
        #[arg(long)]
        key: PathBuf,
        /// Who signed, recorded in the signature file (informational, not signed).
        #[arg(long)]
        signer: Option<String>,
    },
    /// Check a bundle's signature against trusted keys, then every model file's sha256.
    /// Exit 0 when it verifies, 1 when it does not, 2 for a malformed --trusted-key.
    Verify {
        /// Bundle directory.
        #[arg(long)]
        bundle: PathBuf,
        /// A trusted public key, `ed25519:<64 hex>` (repeatable).
        #[arg(long = "trusted-key", required = true, value_name = "KEY")]
        trusted_keys: Vec<String>,
    },
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        BundleCommand::Init(args) => crate::bundle_init::init(*args),
        BundleCommand::Add(args) => crate::bundle_init::add(args),
        BundleCommand::Keygen { out } => keygen(out),
        BundleCommand::Sign {
            bundle,
            key,
            signer,
        } => sign(bundle, key, signer),
        BundleCommand::Verify {
            bundle,
            trusted_keys,
        } => verify(bundle, &trusted_keys),
    }
}

fn keygen(out: PathBuf) -> anyhow::Result<ExitCode> {
    let (pem, public) = signature::generate_keypair()?;
    // create_new: an existing key is never replaced (it may be the one devices trust);
    // the mode is set at creation, so the key is never readable by others, not even
    // briefly.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&out)
        .with_context(|| {
            format!(
                "cannot create {} (an existing key file is never overwritten)",
                out.display()
            )
        })?;
    let written = file
        .write_all(pem.as_str().as_bytes())
        .and_then(|()| file.sync_all());
    if let Err(e) = written {
        drop(file);
        // A partial key file would be refused later anyway; do not leave it behind.
        let _ = std::fs::remove_file(&out);
        return Err(e).with_context(|| format!("cannot write {}", out.display()));
    }
    println!("private key: {} (mode 0600; keep it secret)", out.display());
    println!("key id:      {}", public.key_id());
    println!("public key (for the device config):");
    println!("trusted_keys = [\"{public}\"]");
    Ok(ExitCode::SUCCESS)
}

fn sign(bundle: PathBuf, key: PathBuf, signer: Option<String>) -> anyhow::Result<ExitCode> {
    let signer = signer.unwrap_or_else(default_signer);
    match signature::sign_bundle(&bundle, &key, &signer) {
        Ok(info) => {
            println!(
                "signed {} with key {} ({})",
                bundle.display(),
                info.key_id,
                info.public_key
            );
            println!("wrote {}", info.path.display());
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("edgedx: not signed: {e}");
            Ok(ExitCode::from(1))
        }
    }
}

fn verify(bundle: PathBuf, trusted_keys: &[String]) -> anyhow::Result<ExitCode> {
    let trusted = match trusted_keys
        .iter()
        .map(|k| PublicKey::parse(k))
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(keys) => keys,
        Err(e) => {
            // Bad usage (exit 2), not a verdict on the bundle.
            eprintln!("edgedx: --trusted-key: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    match signature::verify_bundle(&bundle, &trusted) {
        Ok(v) => {
            let manifest = v.bundle.manifest();
            println!(
                "verified {}: {} {} signed by key {}{}",
                bundle.display(),
                manifest.bundle.name,
                manifest.bundle.version,
                v.key_id,
                v.signed_by
                    .map(|s| format!(" ({s}, {})", v.date.as_deref().unwrap_or("no date")))
                    .unwrap_or_default()
            );
            for (variant, model) in &manifest.models {
                println!("  {variant}: {} sha256 {} ok", model.file, model.sha256);
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("edgedx: bundle refused ({}): {e}", e.kind().as_str());
            Ok(ExitCode::from(1))
        }
    }
}

/// `user@host` for the informational `signed_by`, from the environment (a command-line
/// tool, not the daemon, so reading it here is fine).
fn default_signer() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "unknown-host".into());
    format!("{user}@{host}")
}
