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
