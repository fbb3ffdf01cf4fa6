//! `edgedx bundle init` and `edgedx bundle add`: a bundle from a model team's ONNX files.
//!
//! `init` reads what the graph says (input name, layout, size, channels; output name,
//! class count, whether a Softmax ends it; quantization format), asks on the command line
//! only for what a graph cannot say (normalisation and how images were fitted in
//! training), copies the files in with their sha256, writes manifest.toml with a model
//! card for the team to fill (`bundle sign` refuses it until then), and loads every model
//! once on this machine's engine to report what runs on integers and what in float.
//! `add` puts a further variant (the int8 model from models/quantize) into a bundle.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use edgedx_bundle::{
    Bundle, Colour, DicomInput, Filter, InputSpec, Layout, Manifest, ModelFile, OutputKind,
    OutputSpec, Precision, Quantization, Range, Resize, WindowPolicy, MANIFEST_FILE, PLACEHOLDER,
};
use edgedx_engine::graph::{self, Dim, GraphFacts};
use edgedx_engine::{EngineOptions, Model};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Arguments of `edgedx bundle init`.
#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// The fp32 ONNX model: the reference int8 is gated against, and the fallback.
    #[arg(long, value_name = "ONNX")]
    fp32: PathBuf,
    /// The int8 model, when it is already quantized (otherwise models/quantize adds it).
    #[arg(long, value_name = "ONNX")]
    int8: Option<PathBuf>,
    /// Class labels, one per line in the order of the model's output (blank lines and
    /// lines starting with `#` are skipped).
    #[arg(long, value_name = "FILE")]
    labels: PathBuf,
    /// The bundle directory to create (it must not exist, or be empty).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Bundle name ([a-z0-9-]); default: the directory's name.
    #[arg(long)]
    name: Option<String>,
    #[arg(long, default_value = "0.1.0")]
    version: String,
    /// Per-channel mean subtracted in training, in the units of --range, in the model's
    /// channel order (ImageNet in 0-1: 0.485,0.456,0.406).
    #[arg(long, value_delimiter = ',', required = true, num_args = 1..)]
    mean: Vec<f32>,
    /// Per-channel divisor applied after the mean (ImageNet in 0-1: 0.229,0.224,0.225).
    #[arg(long, value_delimiter = ',', required = true, num_args = 1..)]
    std: Vec<f32>,
    /// How training fitted images to the input: stretch, centre-crop or letterbox.
    #[arg(long, value_parser = keyword::<Resize>)]
    resize: Resize,
    /// With --resize centre-crop: the fraction of the resized short side kept (0.875 for
    /// resize 256, crop 224).
    #[arg(long)]
    crop_fraction: Option<f32>,
    /// With --resize letterbox: the padding's intensity in [0, 1].
    #[arg(long)]
    pad: Option<f32>,
    /// Resampling filter: nearest, box, bilinear, hamming, bicubic, lanczos (PIL's).
    #[arg(long, value_parser = keyword::<Filter>, default_value = "bilinear")]
    filter: Filter,
    /// Input range before mean and std: 0-1 or 0-255.
    #[arg(long, value_parser = keyword::<Range>, default_value = "0-1")]
    range: Range,
    /// Channel order for 3-channel models: rgb or bgr (default rgb; 1 channel is grey).
    #[arg(long, value_parser = keyword::<Colour>)]
    colour: Option<Colour>,
    /// NCHW or NHWC, when the input's shape does not tell (e.g. 3 x H x 3).
    #[arg(long, value_parser = keyword::<Layout>)]
    layout: Option<Layout>,
    /// Input height, when the graph leaves it dynamic.
    #[arg(long)]
    height: Option<u32>,
    /// Input width, when the graph leaves it dynamic.
    #[arg(long)]
    width: Option<u32>,
    /// logits or probabilities; default: probabilities when a Softmax makes the output.
    #[arg(long, value_parser = keyword::<OutputKind>)]
    output_kind: Option<OutputKind>,
    /// DICOM window: file (the file's VOI window), robust, or fixed (--window-centre,
    /// --window-width in modality units, e.g. HU).
    #[arg(long, value_parser = keyword::<WindowPolicy>, default_value = "file")]
    dicom_window: WindowPolicy,
    #[arg(long)]
    window_centre: Option<f64>,
    #[arg(long)]
    window_width: Option<f64>,
    /// Images copied into the bundle's samples/ (repeatable): `info --memory` measures the
    /// worker on them, and technicians try the bundle with them.
    #[arg(long = "sample", value_name = "IMAGE")]
    samples: Vec<PathBuf>,
}

/// Arguments of `edgedx bundle add`.
#[derive(Debug, clap::Args)]
pub struct AddArgs {
    /// Bundle directory.
    #[arg(long)]
    bundle: PathBuf,
    /// Variant name (`int8` is the one devices serve).
    #[arg(long, default_value = "int8")]
    variant: String,
    /// The ONNX file; copied into the bundle as `<variant>.onnx`.
    file: PathBuf,
}

/// Parses a manifest keyword (`centre-crop`, `0-255`, `NHWC`, ...) with the manifest's
/// own spelling, so the command line and manifest.toml accept the same words.
fn keyword<T: DeserializeOwned>(text: &str) -> Result<T, String> {
    T::deserialize(toml::Value::String(text.to_string())).map_err(|e| e.to_string())
}

/// The bundle's model file name for a variant.
fn file_name(variant: &str) -> String {
    format!("{variant}.onnx")
}

pub fn init(args: InitArgs) -> anyhow::Result<ExitCode> {
    let labels = read_labels(&args.labels)?;
    let fp32 = graph::describe(&args.fp32)?;
    if fp32.quantization != Quantization::None {
        bail!(
            "{}: --fp32 is {} quantized; give the float model (the reference and the fallback)",
            args.fp32.display(),
            fp32.quantization
        );
    }
    let (image, batch) = image_input(&fp32, &args.fp32)?;
    let geometry = geometry(image, &args)?;
    let output = class_output(&fp32, &args.fp32, labels.len())?;
    let kind = args.output_kind.unwrap_or(match fp32.output_op.as_deref() {
        Some("Softmax") => OutputKind::Probabilities,
        _ => OutputKind::Logits,
    });
    let int8 = match &args.int8 {
        Some(path) => Some((path, int8_facts(path, &fp32)?)),
        None => None,
    };
    let name = bundle_name(&args)?;
    let input = InputSpec {
        tensor: image.name.clone(),
        layout: geometry.layout,
        height: geometry.height,
        width: geometry.width,
        channels: geometry.colour.channels(),
        colour: geometry.colour,
        mean: args.mean.clone(),
        std: args.std.clone(),
        resize: args.resize,
        crop_fraction: args.crop_fraction,
        pad: args.pad,
        filter: args.filter,
        range: args.range,
        dicom: DicomInput {
            window: args.dicom_window,
            centre: args.window_centre,
            width: args.window_width,
        },
    };

    // Built in a sibling directory and renamed into place, so a failed init leaves
    // nothing that looks like a bundle.
    let out = &args.out;
    refuse_non_empty(out)?;
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let staging = tempfile::Builder::new()
        .prefix(".bundle-init-")
        .tempdir_in(&parent)
        .with_context(|| format!("cannot create a directory in {}", parent.display()))?;
    let mut models = vec![(
        "fp32".to_string(),
        stage_model(&args.fp32, staging.path(), "fp32", Quantization::None)?.place()?,
    )];
    if let Some((path, facts)) = &int8 {
        models.push((
            "int8".to_string(),
            stage_model(path, staging.path(), "int8", facts.quantization)?.place()?,
        ));
    }
    let text = manifest_text(
        &name,
        &args.version,
        &labels,
        &input,
        &OutputSpec {
            tensor: output.clone(),
            kind,
        },
        &models,
        &args.fp32,
    )?;
    // The options are checked by the manifest's own rules before anything is written.
    let manifest = Manifest::from_toml_str(&text, &out.join(MANIFEST_FILE))
        .context("these options do not make a valid bundle")?;
    std::fs::write(staging.path().join(MANIFEST_FILE), &text).context("writing manifest.toml")?;
    copy_samples(&args.samples, &staging.path().join("samples"))?;
    let loaded = models
        .iter()
        .map(|(variant, file)| check(&manifest, variant, &staging.path().join(&file.file), file))
        .collect::<anyhow::Result<Vec<_>>>()?;

    if out.exists() {
        std::fs::remove_dir(out).with_context(|| format!("replacing {}", out.display()))?;
    }
    let staging = staging.keep();
    std::fs::rename(&staging, out)
        .with_context(|| format!("moving the new bundle to {}", out.display()))?;

    println!("wrote bundle {name} {} in {}", args.version, out.display());
    println!(
        "  input    {:?} {} {}x{}x{} {} (batch dimension {batch})",
        input.tensor, input.layout, input.height, input.width, input.channels, input.colour
    );
    println!("           {}", input.preprocessing());
    println!(
        "  output   {:?}: {} classes, {kind}{}",
        output,
        labels.len(),
        match fp32.output_op.as_deref() {
            Some(op) => format!(" (made by {op})"),
            None => String::new(),
        }
    );
    print_loaded(&loaded);
    println!("next:");
    if int8.is_none() {
        println!(
            "  quantize:  models/quantize/quantize.sh --bundle {} --calibration <dir>",
            out.display()
        );
    }
    println!(
        "  fill in:   [model_card] in {} (every {PLACEHOLDER})",
        out.join(MANIFEST_FILE).display()
    );
    println!(
        "  gate:      edgedx gate --bundle {} --dataset <labelled dir> --write",
        out.display()
    );
    println!(
        "  memory:    edgedx info --bundle {} --memory --write",
        out.display()
    );
    println!(
        "  sign:      edgedx bundle sign --bundle {} --key <key.pem>",
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

pub fn add(args: AddArgs) -> anyhow::Result<ExitCode> {
    let bundle = Bundle::open(&args.bundle)?;
    let manifest = bundle.manifest().clone();
    if !args
        .variant
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        || args.variant.is_empty()
    {
        bail!("--variant {:?}: use [a-z0-9-]", args.variant);
    }
    let facts = graph::describe(&args.file)?;
    let reference = match manifest.models.get("fp32") {
        Some(fp32) => graph::describe(&bundle.variant_path(fp32))?,
        None => bail!("{}: the bundle has no fp32 model", args.bundle.display()),
    };
    same_interface(&facts, &reference, &args.file)?;
    // Nothing of the bundle changes until the new file is known to load and run: it is
    // staged beside the model it may replace, checked, and only then renamed into place.
    let staged = stage_model(&args.file, &args.bundle, &args.variant, facts.quantization)?;
    let file = staged.file.clone();
    let table = toml::to_string(&file).context("serialising the model entry")?;
    let path = args.bundle.join(MANIFEST_FILE);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let new_text = crate::manifest_edit::replace_tables(
        &text,
        &format!("models.{}", args.variant),
        &format!("[models.{}]\n{table}", args.variant),
    );
    let reparsed = Manifest::from_toml_str(&new_text, &path)
        .context("the manifest with the new model does not validate; nothing written")?;
    if reparsed.models.get(&args.variant) != Some(&file) {
        bail!(
            "{}: the new [models.{}] table did not read back as written; nothing written",
            path.display(),
            args.variant
        );
    }
    let loaded = check(&manifest, &args.variant, &staged.path, &file)?;
    // The file first, then the manifest: a failure between the two leaves a bundle whose
    // file does not match its manifest, which every loader refuses by name.
    staged.place()?;
    crate::manifest_edit::write(&args.bundle, &new_text)?;
    println!(
        "added {} as [models.{}] ({} {}, sha256 {})",
        file.file, args.variant, file.precision, file.quantization, file.sha256
    );
    print_loaded(&[loaded]);
    if let Some(approval) = &manifest.approval {
        if args.variant == "int8" && approval.int8_sha256 != file.sha256 {
            println!("note: [approval] is for another int8 file: run `edgedx gate --write` again");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Labels from a text file: one per line, trimmed; `#` comments and blank lines skipped.
fn read_labels(path: &Path) -> anyhow::Result<Vec<String>> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if meta.len() > 4 << 20 {
        bail!(
            "{}: {} bytes is not a labels file",
            path.display(),
            meta.len()
        );
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read {} as UTF-8 text", path.display()))?;
    let labels: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect();
    let mut seen = std::collections::HashSet::new();
    if let Some(dup) = labels.iter().find(|l| !seen.insert(l.as_str())) {
        bail!("{}: label {dup:?} appears twice", path.display());
    }
    if labels.len() < 2 {
        bail!(
            "{}: a classifier needs at least 2 labels, found {}",
            path.display(),
            labels.len()
        );
    }
    Ok(labels)
}

/// The graph's one image input and how its batch dimension is declared.
fn image_input<'a>(
    g: &'a GraphFacts,
    path: &Path,
) -> anyhow::Result<(&'a graph::ValueFacts, String)> {
    let [input] = &g.inputs[..] else {
        bail!(
            "{}: edgedx feeds one image tensor; the graph has {} inputs ({})",
            path.display(),
            g.inputs.len(),
            g.inputs
                .iter()
                .map(|i| i.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    };
    if input.elem_type != "FLOAT" {
        bail!(
            "{}: input {:?} is {}; edgedx feeds float tensors (quantize inside the graph)",
            path.display(),
            input.name,
            input.elem_type
        );
    }
    match input.dims.as_deref() {
        Some([n, _, _, _]) => Ok((input, n.to_string())),
        Some(dims) => bail!(
            "{}: input {:?} has {} dimensions; an image classifier's input is 4-D (batch, and \
             channels, height, width in some order)",
            path.display(),
            input.name,
            dims.len()
        ),
        None => bail!(
            "{}: input {:?} declares no shape",
            path.display(),
            input.name
        ),
    }
}

struct Geometry {
    layout: Layout,
    height: u32,
    width: u32,
    colour: Colour,
}

/// Layout, size and colour from the input's shape, with the command line deciding what
/// the shape leaves open (and refusing what contradicts it).
fn geometry(input: &graph::ValueFacts, args: &InitArgs) -> anyhow::Result<Geometry> {
    let dims = input.dims.as_deref().unwrap_or_default();
    let fixed = |d: &Dim| match d {
        Dim::Fixed(n) => Some(*n),
        Dim::Free(_) => None,
    };
    let channel_like = |d: &Dim| matches!(fixed(d), Some(1 | 3));
    let layout = match (args.layout, channel_like(&dims[1]), channel_like(&dims[3])) {
        (Some(l), _, _) => l,
        (None, true, false) => Layout::Nchw,
        (None, false, true) => Layout::Nhwc,
        (None, ..) => bail!(
            "input {:?} has shape [{}]: cannot tell whether it is NCHW or NHWC; pass --layout",
            input.name,
            dims.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let (c, h, w) = match layout {
        Layout::Nchw => (&dims[1], &dims[2], &dims[3]),
        Layout::Nhwc => (&dims[3], &dims[1], &dims[2]),
    };
    let channels = match fixed(c) {
        Some(n @ (1 | 3)) => n as u32,
        other => bail!(
            "input {:?} in {layout} has {} channels; edgedx feeds 1 (grey) or 3 (colour)",
            input.name,
            other.map_or("dynamic".to_string(), |n| n.to_string())
        ),
    };
    let side = |d: &Dim, flag: Option<u32>, what: &str| -> anyhow::Result<u32> {
        match (fixed(d), flag) {
            (Some(n), None) => u32::try_from(n).context("input size out of range"),
            (Some(n), Some(f)) if i64::from(f) == n => Ok(f),
            (Some(n), Some(f)) => bail!("--{what} {f} contradicts the graph's {what} {n}"),
            (None, Some(f)) => Ok(f),
            (None, None) => bail!("the graph leaves the input {what} dynamic ({d}); pass --{what}"),
        }
    };
    let colour = match (channels, args.colour) {
        (1, None | Some(Colour::Grey)) => Colour::Grey,
        (3, None) => Colour::Rgb,
        (3, Some(c @ (Colour::Rgb | Colour::Bgr))) => c,
        (n, Some(c)) => bail!("--colour {c} does not fit an input with {n} channel(s)"),
        (n, None) => bail!("unexpected channel count {n}"),
    };
    Ok(Geometry {
        layout,
        height: side(h, args.height, "height")?,
        width: side(w, args.width, "width")?,
        colour,
    })
}

/// The class output: the first graph output, whose last dimension (when fixed) must be
/// the label count.
fn class_output(g: &GraphFacts, path: &Path, classes: usize) -> anyhow::Result<String> {
    let Some(output) = g.outputs.first() else {
        bail!("{}: the graph has no output", path.display());
    };
    if let Some(Dim::Fixed(n)) = output.dims.as_deref().and_then(|d| d.last()) {
        if *n as usize != classes {
            bail!(
                "{}: output {:?} has {n} classes, the labels file has {classes}",
                path.display(),
                output.name
            );
        }
    }
    Ok(output.name.clone())
}

/// The int8 file's facts, checked against the fp32 model's interface.
fn int8_facts(path: &Path, fp32: &GraphFacts) -> anyhow::Result<GraphFacts> {
    let facts = graph::describe(path)?;
    if facts.quantization == Quantization::None {
        bail!(
            "{}: --int8 has no quantized operators (no QLinear*, no DequantizeLinear); is it the float model?",
            path.display()
        );
    }
    same_interface(&facts, fp32, path)?;
    Ok(facts)
}

/// A variant must take the same input and give the same output as the fp32 model.
fn same_interface(g: &GraphFacts, reference: &GraphFacts, path: &Path) -> anyhow::Result<()> {
    let io = |f: &GraphFacts| {
        (
            f.inputs
                .iter()
                .map(|v| (v.name.clone(), v.dims.clone()))
                .collect::<Vec<_>>(),
            f.outputs.first().map(|v| v.name.clone()),
        )
    };
    let (mine, theirs) = (io(g), io(reference));
    if mine.1 != theirs.1
        || mine.0.len() != theirs.0.len()
        || mine.0.iter().zip(&theirs.0).any(|(a, b)| a.0 != b.0)
    {
        bail!(
            "{}: its input and output ({:?} -> {:?}) are not the fp32 model's ({:?} -> {:?})",
            path.display(),
            mine.0.iter().map(|v| &v.0).collect::<Vec<_>>(),
            mine.1,
            theirs.0.iter().map(|v| &v.0).collect::<Vec<_>>(),
            theirs.1
        );
    }
    Ok(())
}

fn bundle_name(args: &InitArgs) -> anyhow::Result<String> {
    let name = match &args.name {
        Some(n) => n.clone(),
        None => args
            .out
            .file_name()
            .map(|n| {
                n.to_string_lossy()
                    .to_lowercase()
                    .replace(['_', ' ', '.'], "-")
            })
            .unwrap_or_default(),
    };
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        bail!("bundle name {name:?}: use [a-z0-9-] (pass --name)");
    }
    Ok(name)
}

fn refuse_non_empty(dir: &Path) -> anyhow::Result<()> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                bail!(
                    "{} exists and is not empty: init never overwrites a bundle",
                    dir.display()
                );
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", dir.display())),
    }
}

/// A model file copied into a bundle directory under a temporary name, with its manifest
/// entry; [`Staged::place`] gives it its final name. Dropped unplaced, the copy is removed.
struct Staged {
    /// Where the bytes are now (the final path when they were already there).
    path: PathBuf,
    to: PathBuf,
    file: ModelFile,
}

impl Staged {
    fn place(mut self) -> anyhow::Result<ModelFile> {
        if self.path != self.to {
            std::fs::rename(&self.path, &self.to)
                .with_context(|| format!("moving the new model to {}", self.to.display()))?;
            self.path = self.to.clone();
        }
        Ok(self.file.clone())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if self.path != self.to {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Copies `from` into `dir` for the variant `<variant>.onnx`, hashing the bytes as they are
/// written (when `from` already is that file, it is only hashed).
fn stage_model(
    from: &Path,
    dir: &Path,
    variant: &str,
    quantization: Quantization,
) -> anyhow::Result<Staged> {
    use sha2::{Digest, Sha256};
    let name = file_name(variant);
    let to = dir.join(&name);
    let entry = |sha256: String| ModelFile {
        file: name.clone(),
        sha256,
        precision: if quantization == Quantization::None {
            Precision::Fp32
        } else {
            Precision::Int8
        },
        quantization,
    };
    let already_there = match (from.canonicalize(), to.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if already_there {
        let sha256 = edgedx_bundle::sha256_file(from)
            .with_context(|| format!("reading {}", from.display()))?;
        return Ok(Staged {
            path: to.clone(),
            to,
            file: entry(sha256),
        });
    }
    let tmp = dir.join(format!(".{name}.new-{}", std::process::id()));
    let mut hasher = Sha256::new();
    let copied = (|| -> std::io::Result<()> {
        let mut input = std::fs::File::open(from)?;
        let mut out = std::fs::File::create(&tmp)?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = input.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])?;
        }
        out.sync_all()
    })();
    // From here the temporary copy is owned, and removed if anything fails.
    let mut staged = Staged {
        path: tmp,
        to,
        file: entry(String::new()),
    };
    copied.with_context(|| format!("copying {} into {}", from.display(), dir.display()))?;
    staged.file.sha256 = hex::encode(hasher.finalize());
    Ok(staged)
}

/// manifest.toml for a new bundle: every table with a comment saying where it came from.
#[allow(clippy::too_many_arguments)]
fn manifest_text(
    name: &str,
    version: &str,
    labels: &[String],
    input: &InputSpec,
    output: &OutputSpec,
    models: &[(String, ModelFile)],
    fp32_source: &Path,
) -> anyhow::Result<String> {
    /// `value` as the table at the dotted `path`, keys in the struct's order, its
    /// sub-tables (`[dicom]`) moved under it (`[input.dicom]`).
    fn table<T: Serialize>(path: &str, value: &T) -> anyhow::Result<String> {
        let body = toml::to_string(value).context("serialising the manifest")?;
        let mut out = format!("[{path}]\n");
        for line in body.lines() {
            match line.strip_prefix('[') {
                Some(sub) => out += &format!("[{path}.{sub}\n"),
                None => out += &format!("{line}\n"),
            }
        }
        Ok(out)
    }
    #[derive(Serialize)]
    struct Info<'a> {
        name: &'a str,
        version: &'a str,
        task: &'a str,
        labels: &'a [String],
    }
    #[derive(Serialize)]
    struct Card {
        summary: String,
        trained_on: String,
        intended_use: String,
        limitations: String,
        clinical_use: String,
    }
    let card = Card {
        summary: format!("{PLACEHOLDER}: what the model does, its architecture and size"),
        trained_on: format!(
            "{PLACEHOLDER}: the training data (sources, sites, scanners, dates, label process)"
        ),
        intended_use: format!("{PLACEHOLDER}: who uses the result, for what, on which images"),
        limitations: format!(
            "{PLACEHOLDER}: what it was not trained or validated on; known failure modes"
        ),
        clinical_use: format!("{PLACEHOLDER}: regulatory status, e.g. NOT FOR CLINICAL USE"),
    };
    let mut text = format!(
        "# edgedx model bundle manifest (format: models/BUNDLE.md), written by `edgedx bundle init`\n\
         # from {}. [input] and [output] were read from the graph and the command line;\n\
         # fill in [model_card], then gate, measure and sign (models/README.md).\n\
         schema_version = {}\n\n",
        fp32_source.file_name().map(|n| n.to_string_lossy()).unwrap_or_default(),
        edgedx_bundle::SCHEMA_VERSION
    );
    text += &table(
        "bundle",
        &Info {
            name,
            version,
            task: "image-classification",
            labels,
        },
    )?;
    text += "\n# How images become the input tensor (models/BUNDLE.md, [input]).\n";
    text += &table("input", input)?;
    text += "\n";
    text += &table("output", output)?;
    for (variant, file) in models {
        text += "\n";
        text += &table(&format!("models.{variant}"), file)?;
    }
    text += "\n# For the model team to fill in: `edgedx bundle sign` refuses every field that still says TODO.\n";
    text += &table("model_card", &card)?;
    Ok(text)
}

/// Copies sample images into `dir`, refusing two with the same file name.
fn copy_samples(samples: &[PathBuf], dir: &Path) -> anyhow::Result<()> {
    if samples.is_empty() {
        return Ok(());
    }
    std::fs::create_dir(dir).with_context(|| format!("creating {}", dir.display()))?;
    for sample in samples {
        let Some(name) = sample.file_name() else {
            bail!("--sample {}: not a file", sample.display());
        };
        let to = dir.join(name);
        if to.exists() {
            bail!(
                "--sample {}: a sample named {:?} is already there",
                sample.display(),
                name
            );
        }
        std::fs::copy(sample, &to)
            .with_context(|| format!("copying --sample {}", sample.display()))?;
    }
    Ok(())
}

/// A model loaded once with the engine (batch 1, then batch 2 to learn whether the graph
/// takes batches).
struct Loaded {
    variant: String,
    model: Model,
    batches: Result<(), String>,
}

/// Loads the model file at `path` as `manifest` describes it, runs one inference on a
/// mid-grey input (the plan runs end to end), and tries batch 2.
fn check(
    manifest: &Manifest,
    variant: &str,
    path: &Path,
    file: &ModelFile,
) -> anyhow::Result<Loaded> {
    let load = |batch| {
        Model::load_file(
            path,
            variant,
            file,
            &manifest.input,
            &manifest.output.tensor,
            manifest.output.kind,
            manifest.bundle.labels.len(),
            &EngineOptions { batch },
        )
    };
    let model =
        load(1).with_context(|| format!("the {variant} model does not load on edgedx's engine"))?;
    let item = vec![0.5f32; model.input_spec().item_len()];
    model
        .run(&item)
        .with_context(|| format!("the {variant} model loads but does not run"))?;
    Ok(Loaded {
        variant: variant.to_string(),
        model,
        batches: load(2).map(|_| ()).map_err(|e| e.to_string()),
    })
}

fn print_loaded(loaded: &[Loaded]) {
    for l in loaded {
        let r = l.model.report();
        println!(
            "  {:<8} {} {} ({} bytes), loads in {:.0} ms on this machine; batch 2: {}",
            l.variant,
            r.precision,
            r.quantization,
            r.file_bytes,
            r.load_time.as_secs_f64() * 1e3,
            match &l.batches {
                Ok(()) => "yes".to_string(),
                Err(e) => format!("no ({e}): the gate's batch-invariance check needs it"),
            }
        );
        for f in &r.in_float {
            println!("           runs in float: {f}");
        }
    }
}
