//! CPU features that decide which tract-linalg kernels run (NEON, dot product, SVE, AVX...).

/// Detected features, named as the kernel selection cares about them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuFeatures {
    pub arch: &'static str,
    pub features: Vec<&'static str>,
}

/// Detects the features of the CPU this process runs on (under qemu: the emulated CPU).
pub fn cpu_features() -> CpuFeatures {
    let mut features = Vec::new();
    #[cfg(target_arch = "aarch64")]
    {
        use std::arch::is_aarch64_feature_detected as has;
        for (name, present) in [
            ("neon", has!("neon")),
            ("fp16", has!("fp16")),
            ("dotprod", has!("dotprod")),
            ("i8mm", has!("i8mm")),
            ("bf16", has!("bf16")),
            ("sve", has!("sve")),
            ("sve2", has!("sve2")),
        ] {
            if present {
                features.push(name);
            }
        }
    }
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        for (name, present) in [
            ("sse4.1", has!("sse4.1")),
            ("avx", has!("avx")),
            ("avx2", has!("avx2")),
            ("fma", has!("fma")),
            ("f16c", has!("f16c")),
            ("avx512f", has!("avx512f")),
            ("avx512vnni", has!("avx512vnni")),
        ] {
            if present {
                features.push(name);
            }
        }
    }
    CpuFeatures {
        arch: std::env::consts::ARCH,
        features,
    }
}

/// Kernel choices edgedx makes for tract before its first model is built.
///
/// x86_64 only: tract-linalg 0.23.9's AMX int8 kernel (`avx512amx_mmm_i32_16x16`) reads
/// outside its operands now and then. Measured on this project's AMX-capable x86 VM: 2 of
/// 30 `edgedx gate` runs over 26 images died with SIGSEGV, gdb stopping in
/// `tileloaddt1 tmm2, [rbx + r9 * 1]` (avx512amx_mmm_i32_16x16.S:359). The AMX kernels are
/// therefore taken out of the ISA set through tract's own `TRACT_CPU_ISA` knob, and the
/// AVX-512 VNNI kernels (bit-identical results) serve instead. An operator who sets
/// `TRACT_CPU_ISA` in the environment keeps full control. The exam-room boards are aarch64,
/// where nothing changes.
pub(crate) fn configure_tract() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if cfg!(target_arch = "x86_64") && std::env::var_os("TRACT_CPU_ISA").is_none() {
            tract_onnx::tract_core::knobs::set_str("TRACT_CPU_ISA", "-amx-int8,-amx-bf16");
        }
    });
}
