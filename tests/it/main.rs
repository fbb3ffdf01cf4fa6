//! edgedx integration suite: drives the real binary and the real libraries against real
//! models and real DICOM files. Runs natively and, for aarch64, under qemu-aarch64.

mod bundle_init;
mod classify;
mod daemon;
mod fairness;
mod gate;
mod golden;
mod memory;
mod model_team;
mod package;
mod qformats;
mod safety;
mod util;
mod vgg16;
