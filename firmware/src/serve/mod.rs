//! `edgedx serve`: the supervisor. It owns the links, the outbox, the status and the
//! watchdogs; inference runs in a worker process (see [`dispatch`]) that it can kill and
//! replace without dropping a link or a queued request.
//!
//! The flow, one module per step: [`start`] brings the daemon up (watchdog, bundle,
//! outbox, dispatcher, links, [`hardware`]); [`supervisor`] is the loop, one thread that
//! owns all state and reacts to [`Event`]s sent by the link readers, the spool watcher, the
//! camera, the dispatcher, the signal handler and a tick (nothing else mutates state, so
//! there are no locks around it); [`admission`] decides who may hold uploads and
//! connections; [`dispatch`] runs jobs on workers; [`outbox`] journals results.

pub mod admission;
pub mod audit;
pub mod config;
pub mod dispatch;
pub mod fallback;
pub mod ipc;
pub mod link;
pub mod memory;
pub mod outbox;
pub mod spool;
pub mod watchdog_keeper;
pub mod worker;
pub mod worker_handle;

mod hardware;
mod sim_panel;
mod start;
mod supervisor;

pub use self::start::serve;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;

use self::dispatch::DispatchEvent;
use self::link::{LinkEvent, LinkId};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Configuration file (TOML); see board/README.md for every key.
    #[arg(long)]
    config: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = config::Config::load(&args.config)?;
    let shutdown = install_signal_handlers()?;
    serve(config, shutdown, None)
}

/// Milliseconds since 1970-01-01 UTC.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Everything the supervisor loop reacts to. Moved once through the channel, so the size
/// of the largest variant (a decoded frame) costs a copy, not an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Event {
    Link(LinkId, LinkEvent),
    Spool(spool::SpoolFile),
    SpoolRead(spool::SpoolRead),
    Dispatch(DispatchEvent),
    /// The outbox syncer finished a batch.
    Synced(outbox::Synced),
    Captured {
        capture_id: u32,
        requester: Option<(LinkId, u32)>,
        frame: Result<CapturedFrame, String>,
    },
    CaptureButton,
    Shutdown,
}

#[derive(Debug)]
pub struct CapturedFrame {
    pub bytes: Vec<u8>,
    pub raw_sha256: [u8; 32],
    pub description: String,
}

/// A capture to take: the capture id and who asked (none for the capture button).
pub(super) type CaptureRequest = (u32, Option<(LinkId, u32)>);

fn link_event(id: LinkId, e: LinkEvent) -> Event {
    Event::Link(id, e)
}

fn spool_event(f: spool::SpoolFile) -> Event {
    Event::Spool(f)
}

fn spool_read_event(r: spool::SpoolRead) -> Event {
    Event::SpoolRead(r)
}

/// SIGTERM / SIGINT: finish in-flight work, flush, exit. Returns a receiver the serve
/// loop forwards as [`Event::Shutdown`].
fn install_signal_handlers() -> anyhow::Result<Receiver<()>> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])
        .context("installing signal handlers")?;
    let (tx, rx) = mpsc::channel();
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                log::info!("signal {sig}: shutting down");
                if tx.send(()).is_err() {
                    break;
                }
            }
        })?;
    Ok(rx)
}
