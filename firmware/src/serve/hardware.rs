//! Hardware bring-up through the board traits: the camera thread, the status LED, the
//! alert buzzer and the capture button.

use std::path::Path;
use std::sync::mpsc::{self, Sender, SyncSender};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use edgedx_board::profile::Driver;
use edgedx_board::Clock;

use anyhow::Context;
use sha2::{Digest, Sha256};

use super::config::{self, CameraKind, Config};
use super::sim_panel::Panel;
use super::{CaptureRequest, CapturedFrame, Event};

/// The camera runs in its own thread: a capture can block for a frame interval or more.
pub(super) fn start_camera(
    c: &config::CameraConfig,
    events: SyncSender<Event>,
) -> anyhow::Result<Sender<CaptureRequest>> {
    use edgedx_board::camera::{Camera, PixelFormat};
    let format = match c.format.as_str() {
        "mjpeg" => PixelFormat::Mjpeg,
        "grey" => PixelFormat::Grey,
        _ => PixelFormat::Yuyv,
    };
    let mut camera: Box<dyn Camera> = match c.kind {
        CameraKind::Sim => {
            let dir = c.dir.clone().context("camera.dir")?;
            Box::new(
                edgedx_board::camera::SimCamera::from_dir(&dir, format)
                    .with_context(|| format!("simulated camera {}", dir.display()))?,
            )
        }
        CameraKind::V4l2 => {
            let device = c.device.clone().context("camera.device")?;
            open_v4l2(&device, format, c.width, c.height)?
        }
    };
    log::info!("camera: {}", camera.describe());
    let (tx, rx) = mpsc::channel::<CaptureRequest>();
    thread::Builder::new()
        .name("camera".into())
        .spawn(move || {
            for (capture_id, requester) in rx {
                let frame = camera
                    .capture()
                    .map_err(|e| e.to_string())
                    .and_then(|frame| {
                        let raw_sha256: [u8; 32] = Sha256::digest(&frame.data).into();
                        let description = format!(
                            "{:?} {}x{} #{}",
                            frame.format, frame.width, frame.height, frame.sequence
                        );
                        frame
                            .to_image_file()
                            .map(|(_, bytes)| CapturedFrame {
                                bytes,
                                raw_sha256,
                                description,
                            })
                            .map_err(|e| e.to_string())
                    });
                if events
                    .send(Event::Captured {
                        capture_id,
                        requester,
                        frame,
                    })
                    .is_err()
                {
                    break;
                }
            }
        })?;
    Ok(tx)
}

#[cfg(feature = "v4l2")]
fn open_v4l2(
    device: &Path,
    format: edgedx_board::camera::PixelFormat,
    width: u32,
    height: u32,
) -> anyhow::Result<Box<dyn edgedx_board::camera::Camera>> {
    Ok(Box::new(
        edgedx_board::camera::V4l2Camera::open(device, format, width, height)
            .with_context(|| format!("opening camera {}", device.display()))?,
    ))
}

#[cfg(not(feature = "v4l2"))]
fn open_v4l2(
    device: &Path,
    _: edgedx_board::camera::PixelFormat,
    _: u32,
    _: u32,
) -> anyhow::Result<Box<dyn edgedx_board::camera::Camera>> {
    bail!(
        "camera {}: this build has no V4L2 support (feature \"v4l2\")",
        device.display()
    )
}

/// Status LED and alert buzzer (returned, driven by the supervisor's tick) and the capture
/// button (polled in its own thread, which sends [`Event::CaptureButton`] once per press),
/// on GPIO lines or simulated (their sim pins go to `panel`).
#[allow(clippy::type_complexity)]
pub(super) fn open_gpio(
    config: &Config,
    events: SyncSender<Event>,
    clock: Arc<dyn Clock>,
    panel: &mut Panel,
) -> anyhow::Result<(
    Option<edgedx_board::StatusLed>,
    Option<edgedx_board::AlertBuzzer>,
)> {
    use edgedx_board::pins::{open_input, open_output, GpioPin, SimPin};
    use embedded_hal::digital::PinState;
    let Some(g) = &config.gpio else {
        return Ok((None, None));
    };
    let chip = g.chip.as_path();
    let ctx = |what: &str, line: u32| format!("{what} on {} line {line}", chip.display());
    let sim = g.driver == Driver::Sim;
    // A simulated line starts at `level`; its clone shows on the panel.
    let sim_pin = |level: bool, slot: &mut Option<SimPin>| {
        let pin = SimPin::new(level);
        *slot = Some(pin.clone());
        GpioPin::from(pin)
    };
    let output = |line: u32, what: &str, slot: &mut Option<SimPin>| -> anyhow::Result<GpioPin> {
        if sim {
            Ok(sim_pin(false, slot))
        } else {
            open_output(chip, line, PinState::Low).with_context(|| ctx(what, line))
        }
    };
    let led = match g.led {
        Some(line) => Some(
            edgedx_board::StatusLed::new(output(line, "status LED", &mut panel.led)?)
                .with_context(|| ctx("status LED", line))?,
        ),
        None => None,
    };
    let buzzer = match g.buzzer {
        Some(line) => Some(
            edgedx_board::AlertBuzzer::new(output(line, "buzzer", &mut panel.buzzer)?)
                .with_context(|| ctx("buzzer", line))?,
        ),
        None => None,
    };
    if let Some(line) = g.button {
        let pin = if sim {
            panel.button_active_low = g.button_active_low;
            sim_pin(g.button_active_low, &mut panel.button)
        } else {
            open_input(chip, line).with_context(|| ctx("capture button", line))?
        };
        let mut button = edgedx_board::CaptureButton::new(
            pin,
            g.button_active_low,
            Duration::from_millis(g.debounce_ms),
        );
        thread::Builder::new()
            .name("button".into())
            .spawn(move || loop {
                match button.poll(clock.now()) {
                    Ok(true) => {
                        if events.send(Event::CaptureButton).is_err() {
                            return;
                        }
                    }
                    Ok(false) => {}
                    Err(e) => {
                        log::error!("capture button: {e}; button disabled");
                        return;
                    }
                }
                thread::sleep(Duration::from_millis(10));
            })?;
    }
    Ok((led, buzzer))
}
