//! The simulated board's panel (`driver = "sim"` for [gpio] and [watchdog], the host-sim
//! profile): what a technician would see and press on a real board, as files in
//! `STATE_DIR/sim-board/`, so that the integration tests (and a developer at a PC) watch
//! and drive the daemon from another process.
//!
//! - `led`, `buzzer`: `on` or `off`, rewritten when the line changes;
//! - `button`: written from outside, `pressed` or `released` (anything else is released);
//! - `watchdog`: `fired` once the simulated watchdog expired. The daemon then ends at
//!   once with [`SIMULATED_RESET`], as a board resets: no shutdown, no flush.

use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use edgedx_board::pins::SimPin;
use edgedx_board::watchdog::SimWatchdogHandle;

/// Exit status of a daemon whose simulated watchdog fired.
pub const SIMULATED_RESET: i32 = 75;

/// How often the panel is looked at: a press shorter than this may be missed, as a
/// debounced button would miss it too.
const POLL: Duration = Duration::from_millis(10);

/// The simulated devices the daemon opened.
#[derive(Default)]
pub struct Panel {
    pub led: Option<SimPin>,
    pub buzzer: Option<SimPin>,
    pub button: Option<SimPin>,
    /// Whether the button pulls its line low when pressed (`gpio.button_active_low`).
    pub button_active_low: bool,
    pub watchdog: Option<SimWatchdogHandle>,
}

impl Panel {
    fn is_empty(&self) -> bool {
        self.led.is_none()
            && self.buzzer.is_none()
            && self.button.is_none()
            && self.watchdog.is_none()
    }

    /// Shows the panel in `state_dir/sim-board/` from a thread of its own (nothing to do
    /// when no device is simulated).
    pub fn start(self, state_dir: &Path) -> anyhow::Result<()> {
        if self.is_empty() {
            return Ok(());
        }
        let dir = state_dir.join("sim-board");
        std::fs::create_dir_all(&dir)?;
        log::info!("simulated board panel in {}", dir.display());
        let mut shown: [Option<bool>; 2] = [None, None];
        thread::Builder::new()
            .name("sim-panel".into())
            .spawn(move || loop {
                for (pin, name, last) in [(&self.led, "led"), (&self.buzzer, "buzzer")]
                    .into_iter()
                    .zip(shown.iter_mut())
                    .filter_map(|((pin, name), last)| Some((pin.as_ref()?, name, last)))
                {
                    let on = pin.is_set_high();
                    if *last != Some(on) {
                        write(&dir.join(name), if on { "on" } else { "off" });
                        *last = Some(on);
                    }
                }
                if let Some(button) = &self.button {
                    let pressed = std::fs::read_to_string(dir.join("button"))
                        .is_ok_and(|t| t.trim() == "pressed");
                    button.set_level(pressed != self.button_active_low);
                }
                if self.watchdog.as_ref().is_some_and(SimWatchdogHandle::fired) {
                    write(&dir.join("watchdog"), "fired");
                    log::error!(
                        "the simulated watchdog fired (not fed within its timeout): a board \
                         resets here; exiting with status {SIMULATED_RESET}"
                    );
                    std::process::exit(SIMULATED_RESET);
                }
                thread::sleep(POLL);
            })?;
        Ok(())
    }
}

/// Replaces `path` whole, so that a reader never sees half a word.
fn write(path: &PathBuf, text: &str) {
    let tmp = path.with_extension("tmp");
    if let Err(e) = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, path)) {
        log::warn!("simulated board panel {}: {e}", path.display());
    }
}
