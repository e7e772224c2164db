//! Where a model computes: the `device` key of a `[[models]]` table ([`DeviceSpec`]), the GPU probe
//! ([`probe`]) and the placement made once at start ([`place`]). `cpu` runs on the CPU; `cuda` and
//! `cuda:N` run on that GPU or the server refuses to start, naming the model and why (never a silent
//! CPU run); `auto` takes GPU 0 when a backend can use it and otherwise runs on the CPU, logging why.
//!
//! No model kind has a CUDA backend yet (issue #18), so today `cuda` is always refused at start —
//! "binary built without the `cuda` feature", "no usable CUDA GPU: …", or, with a usable GPU,
//! "CUDA backend for `<kind>` not implemented yet" — and `auto` always falls back to the CPU.

use crate::config::ModelKind;
use std::fmt;

/// A model's `device` key as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    /// `"cpu"` (the default).
    #[default]
    Cpu,
    /// `"cuda"` (= `"cuda:0"`) or `"cuda:N"`: GPU N as the CUDA driver numbers them (after
    /// `CUDA_VISIBLE_DEVICES`).
    Cuda(u32),
    /// `"auto"`: GPU 0 when a backend can use it, else the CPU.
    Auto,
}

impl DeviceSpec {
    /// The spec `text` names; the error says what is accepted.
    pub fn parse(text: &str) -> Result<DeviceSpec, String> {
        const ACCEPTED: &str =
            "expected \"cpu\", \"cuda\", \"cuda:N\" (N = a GPU index: 0, 1, …) or \"auto\"";
        match text {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            "auto" => Ok(DeviceSpec::Auto),
            _ => match text.strip_prefix("cuda:") {
                // Digits only: u32's parser would also take "+1".
                Some(n) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => n
                    .parse()
                    .map(DeviceSpec::Cuda)
                    .map_err(|_| format!("\"{text}\": GPU index {n} is out of range")),
                Some(n) => {
                    Err(format!("\"{text}\": N in \"cuda:N\" must be a GPU index (0, 1, …), got \"{n}\""))
                }
                None => Err(format!("\"{text}\" is not a device: {ACCEPTED}")),
            },
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
            DeviceSpec::Auto => f.write_str("auto"),
        }
    }
}

/// What the probe found on one GPU.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuInfo {
    pub ordinal: u32,
    pub name: String,
    /// (major, minor): (9, 0) for an H100 or H200.
    pub compute_capability: (i32, i32),
    pub total_bytes: usize,
    /// Free when probed (other processes and contexts hold the rest).
    pub free_bytes: usize,
    /// The CUDA version the driver supports, (major, minor).
    pub driver_version: (i32, i32),
    /// Whether each CUDA library the backends will use (`cublas`, `cublasLt`, `nvrtc`) loads.
    pub libraries: Vec<(&'static str, bool)>,
}

impl fmt::Display for GpuInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const GIB: f64 = (1u64 << 30) as f64;
        let (cc_major, cc_minor) = self.compute_capability;
        let (drv_major, drv_minor) = self.driver_version;
        let (total, free) = (self.total_bytes as f64 / GIB, self.free_bytes as f64 / GIB);
        write!(f, "GPU {} ({}, sm_{cc_major}{cc_minor}, {total:.1} GiB, ", self.ordinal, self.name)?;
        write!(f, "{free:.1} GiB free, driver CUDA {drv_major}.{drv_minor}")?;
        for (lib, present) in &self.libraries {
            write!(f, ", {lib} {}", if *present { "found" } else { "missing" })?;
        }
        f.write_str(")")
    }
}

/// Why a GPU cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    #[error("this slate binary was built without the `cuda` feature")]
    NoFeature,
    #[error("the CUDA driver library (libcuda) is not loadable: {0}")]
    NoDriver(String),
    #[error("CUDA driver error: {0}")]
    Driver(String),
    #[error("there is no GPU {ordinal}: the CUDA driver sees {count}")]
    NoSuchDevice { ordinal: u32, count: u32 },
}

/// Probes GPU `ordinal` (see `backend::cuda::probe`); without the `cuda` feature, always
/// [`ProbeError::NoFeature`].
pub fn probe(ordinal: u32) -> Result<GpuInfo, ProbeError> {
    #[cfg(feature = "cuda")]
    {
        super::cuda::probe(ordinal)
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = ordinal;
        Err(ProbeError::NoFeature)
    }
}

/// Where a placed model runs. Only the CPU today: a `Cuda` variant comes with the first CUDA backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Cpu,
}

impl Device {
    pub fn as_str(self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
        }
    }
}

/// A model's placement: the device it runs on, what was asked for, and, when `auto` did not get a
/// GPU, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub device: Device,
    pub requested: DeviceSpec,
    pub fallback: Option<String>,
}

/// Why a model cannot be placed where its config says; refuses the start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    #[error("model '{model}': device: {reason}")]
    Invalid { model: String, reason: String },
    #[error(
        "model '{model}': device = \"{spec}\" needs a GPU, but this slate binary was built without the \
         `cuda` feature (build with `--features cuda`, or set device = \"cpu\" or \"auto\")"
    )]
    NoFeature { model: String, spec: DeviceSpec },
    #[error(
        "model '{model}': device = \"{spec}\": no usable CUDA GPU: {source} (set device = \"cpu\" or \
         \"auto\" to run on the CPU)"
    )]
    NoGpu { model: String, spec: DeviceSpec, source: ProbeError },
    #[error(
        "model '{model}': device = \"{spec}\": CUDA backend for {kind} not implemented yet ({gpu} is \
         usable; set device = \"cpu\" or \"auto\")"
    )]
    NotImplemented { model: String, spec: DeviceSpec, kind: &'static str, gpu: String },
    #[error("model '{model}': device = \"{spec}\": {kind} models run on the CPU only")]
    CpuOnly { model: String, spec: DeviceSpec, kind: &'static str },
}

/// Places model `model` of `kind` as `spec` asks, asking `probe` about GPUs (the real [`probe`] when
/// serving; tests pass their own).
pub fn place(
    model: &str,
    kind: ModelKind,
    spec: DeviceSpec,
    probe: &mut dyn FnMut(u32) -> Result<GpuInfo, ProbeError>,
) -> Result<Placement, DeviceError> {
    let cpu = |fallback| Ok(Placement { device: Device::Cpu, requested: spec, fallback });
    let gpu_kind = matches!(kind, ModelKind::Ranker | ModelKind::Slm);
    match spec {
        DeviceSpec::Cpu => cpu(None),
        _ if !gpu_kind => Err(DeviceError::CpuOnly { model: model.into(), spec, kind: kind.as_str() }),
        DeviceSpec::Cuda(n) => match probe(n) {
            Err(ProbeError::NoFeature) => Err(DeviceError::NoFeature { model: model.into(), spec }),
            Err(source) => Err(DeviceError::NoGpu { model: model.into(), spec, source }),
            // No kind has a CUDA backend yet; the first one places `Device::Cuda` here.
            Ok(gpu) => Err(DeviceError::NotImplemented {
                model: model.into(),
                spec,
                kind: kind.as_str(),
                gpu: gpu.to_string(),
            }),
        },
        DeviceSpec::Auto => match probe(0) {
            Ok(gpu) => {
                cpu(Some(format!("CUDA backend for {} not implemented yet ({gpu} is usable)", kind.as_str())))
            }
            Err(e) => cpu(Some(format!("no usable CUDA GPU: {e}"))),
        },
    }
}

/// Places every model of `models` (name, kind, configured `device` text) with the real probe (each
/// GPU probed once), logging each fallback of `auto`; the first model that cannot be placed refuses
/// the start.
pub fn place_all<'a>(
    models: impl IntoIterator<Item = (&'a str, ModelKind, &'a str)>,
) -> Result<Vec<Placement>, DeviceError> {
    let mut probed = std::collections::HashMap::new();
    let mut cached = |n: u32| probed.entry(n).or_insert_with(|| probe(n)).clone();
    let mut placements = Vec::new();
    for (model, kind, text) in models {
        let spec =
            DeviceSpec::parse(text).map_err(|reason| DeviceError::Invalid { model: model.into(), reason })?;
        let placement = place(model, kind, spec, &mut cached)?;
        if let Some(why) = &placement.fallback {
            // A `cuda` build was made to find a GPU; one without the feature never could.
            if cfg!(feature = "cuda") {
                tracing::warn!(model, runs_on = "cpu", "device = \"auto\" falls back to the CPU: {why}");
            } else {
                tracing::info!(model, runs_on = "cpu", "device = \"auto\" falls back to the CPU: {why}");
            }
        }
        placements.push(placement);
    }
    Ok(placements)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h100() -> GpuInfo {
        GpuInfo {
            ordinal: 0,
            name: "NVIDIA H100 80GB HBM3".into(),
            compute_capability: (9, 0),
            total_bytes: 80 << 30,
            free_bytes: 79 << 30,
            driver_version: (13, 0),
            libraries: vec![("cublas", true), ("nvrtc", false)],
        }
    }

    #[test]
    fn specs_parse_and_print() {
        for (text, spec, shown) in [
            ("cpu", DeviceSpec::Cpu, "cpu"),
            ("cuda", DeviceSpec::Cuda(0), "cuda:0"),
            ("cuda:0", DeviceSpec::Cuda(0), "cuda:0"),
            ("cuda:7", DeviceSpec::Cuda(7), "cuda:7"),
            ("auto", DeviceSpec::Auto, "auto"),
        ] {
            assert_eq!(DeviceSpec::parse(text), Ok(spec), "{text}");
            assert_eq!(spec.to_string(), shown);
        }
        for (bad, says) in [
            ("gpu", "\"gpu\" is not a device: expected \"cpu\", \"cuda\", \"cuda:N\""),
            ("CUDA", "is not a device"),
            ("", "\"\" is not a device"),
            ("cuda:x", "N in \"cuda:N\" must be a GPU index (0, 1, …), got \"x\""),
            ("cuda:-1", "got \"-1\""),
            ("cuda:+1", "got \"+1\""),
            ("cuda:", "got \"\""),
            ("cuda: 1", "got \" 1\""),
            ("cuda:99999999999", "GPU index 99999999999 is out of range"),
        ] {
            let e = DeviceSpec::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
    }

    #[test]
    fn cpu_never_probes() {
        let mut probe = |_: u32| -> Result<GpuInfo, ProbeError> { panic!("cpu must not probe") };
        let p = place("m", ModelKind::Ranker, DeviceSpec::Cpu, &mut probe).unwrap();
        assert_eq!(p, Placement { device: Device::Cpu, requested: DeviceSpec::Cpu, fallback: None });
        place("t", ModelKind::Trees, DeviceSpec::Cpu, &mut probe).unwrap();
    }

    #[test]
    fn cuda_is_refused_with_the_reason() {
        let mut no_feature = |_: u32| Err(ProbeError::NoFeature);
        let e = place("rk", ModelKind::Ranker, DeviceSpec::Cuda(0), &mut no_feature).unwrap_err();
        assert!(matches!(e, DeviceError::NoFeature { .. }), "{e:?}");
        let shown = e.to_string();
        assert!(shown.contains("model 'rk'") && shown.contains("\"cuda:0\""), "{shown}");
        assert!(shown.contains("built without the `cuda` feature"), "{shown}");

        let mut one_gpu =
            |n: u32| if n == 0 { Ok(h100()) } else { Err(ProbeError::NoSuchDevice { ordinal: n, count: 1 }) };
        let e = place("lm", ModelKind::Slm, DeviceSpec::Cuda(3), &mut one_gpu).unwrap_err().to_string();
        assert!(e.contains("model 'lm'") && e.contains("\"cuda:3\""), "{e}");
        assert!(e.contains("no usable CUDA GPU: there is no GPU 3: the CUDA driver sees 1"), "{e}");

        // A usable GPU, but no backend for the kind: refused, never run on the CPU instead.
        for (kind, name) in [(ModelKind::Ranker, "ranker"), (ModelKind::Slm, "slm")] {
            let e = place("m", kind, DeviceSpec::Cuda(0), &mut one_gpu).unwrap_err().to_string();
            assert!(e.contains(&format!("CUDA backend for {name} not implemented yet")), "{e}");
            assert!(e.contains("GPU 0 (NVIDIA H100 80GB HBM3, sm_90, 80.0 GiB, 79.0 GiB free"), "{e}");
        }
    }

    #[test]
    fn auto_falls_back_to_the_cpu_saying_why() {
        let mut driverless = |_: u32| Err(ProbeError::NoDriver("libcuda.so.1: not found".into()));
        let p = place("m", ModelKind::Ranker, DeviceSpec::Auto, &mut driverless).unwrap();
        assert_eq!((p.device, p.requested), (Device::Cpu, DeviceSpec::Auto));
        let why = p.fallback.unwrap();
        assert!(
            why.starts_with("no usable CUDA GPU: the CUDA driver library (libcuda) is not loadable"),
            "{why}"
        );

        let mut asked = Vec::new();
        let mut usable = |n: u32| {
            asked.push(n);
            Ok(h100())
        };
        let p = place("m", ModelKind::Slm, DeviceSpec::Auto, &mut usable).unwrap();
        assert_eq!(p.device, Device::Cpu);
        assert!(p.fallback.unwrap().starts_with("CUDA backend for slm not implemented yet (GPU 0"));
        assert_eq!(asked, [0], "auto looks at GPU 0");
    }

    #[test]
    fn tabular_kinds_are_cpu_only() {
        let mut usable = |_: u32| Ok(h100());
        for spec in [DeviceSpec::Auto, DeviceSpec::Cuda(0)] {
            let e = place("t", ModelKind::Trees, spec, &mut usable).unwrap_err().to_string();
            assert!(e.contains("trees models run on the CPU only"), "{e}");
        }
    }

    #[test]
    fn place_all_names_the_first_model_it_cannot_place() {
        let e = place_all([("a", ModelKind::Ranker, "cpu"), ("b", ModelKind::Slm, "gpu")]).unwrap_err();
        assert!(e.to_string().starts_with("model 'b': device: \"gpu\" is not a device"), "{e}");
        let ok = place_all([("a", ModelKind::Ranker, "cpu"), ("b", ModelKind::Slm, "auto")]).unwrap();
        assert_eq!(ok.iter().map(|p| p.device).collect::<Vec<_>>(), [Device::Cpu, Device::Cpu]);
        assert!(ok[0].fallback.is_none() && ok[1].fallback.is_some());
    }

    /// The real probe, on this machine: without the feature it is always `NoFeature`; with it, any
    /// answer but `NoFeature`, and no panic (cudarc panics inside are caught).
    #[test]
    fn the_real_probe_answers() {
        match (cfg!(feature = "cuda"), probe(0)) {
            (false, Err(ProbeError::NoFeature)) => {}
            (true, Ok(gpu)) => assert!(!gpu.name.is_empty() && gpu.total_bytes > 0, "{gpu:?}"),
            (true, Err(e)) => assert_ne!(e, ProbeError::NoFeature),
            (cuda, answer) => panic!("built with cuda: {cuda}, yet the probe says {answer:?}"),
        }
        let far = probe(u32::MAX);
        assert!(far.is_err(), "GPU {} cannot exist: {far:?}", u32::MAX);
    }
}
