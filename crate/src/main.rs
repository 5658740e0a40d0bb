//! The `puyu` command line. See `puyu --help`.

#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
fn main() -> std::process::ExitCode {
    cli::main()
}

#[cfg(not(target_arch = "wasm32"))]
mod cli {
    use std::path::PathBuf;
    use std::process::ExitCode;

    use anyhow::{bail, Context};
    use clap::{Parser, Subcommand, ValueEnum};

    use puyu::{gpu, perplexity, reference, tiny};

    #[derive(Parser)]
    #[command(name = "puyu", version, about = "InternLM2 (书生·浦语 2.0) on WebGPU")]
    struct Cli {
        #[command(subcommand)]
        command: Command,
    }

    #[derive(Subcommand)]
    enum Command {
        /// Show the GPU adapters wgpu finds, with their backend, features and limits.
        Info {
            #[arg(long, value_enum, default_value_t = Backend::Auto)]
            backend: Backend,
        },
        /// Per-token negative log-likelihood of a token sequence.
        Perplexity {
            /// An HF InternLM2 folder (config.json + safetensors), or a bundled tiny model:
            /// `tiny` or `tiny-ntk`.
            #[arg(long, default_value = "tiny")]
            model: String,
            /// The tokens as a JSON array of ids, e.g. `[1, 2136, 505]`.
            #[arg(long, conflicts_with = "file")]
            ids: Option<String>,
            /// A text file to score (needs the tokenizer, which is not built yet).
            #[arg(long)]
            file: Option<PathBuf>,
            /// Where to compute: `cpu` runs the f32 reference.
            #[arg(long, value_enum, default_value_t = Device::Cpu)]
            device: Device,
            /// Print `{"tokens", "nll", "mean_nll", "ppl"}` as JSON.
            #[arg(long)]
            json: bool,
        },
        /// Greedy continuation of a token sequence with the CPU reference (ids in, ids out).
        Continue {
            #[arg(long, default_value = "tiny")]
            model: String,
            /// The prompt as a JSON array of ids.
            #[arg(long)]
            ids: String,
            #[arg(long, default_value_t = 16)]
            max_tokens: usize,
        },
        /// Developer tools.
        #[command(hide = true)]
        Dev {
            #[command(subcommand)]
            tool: DevTool,
        },
    }

    #[derive(Subcommand)]
    enum DevTool {
        /// Write a bundled tiny checkpoint as an HF folder (config.json, model.safetensors,
        /// tokenizer.model).
        WriteTiny { name: String, dir: PathBuf },
    }

    #[derive(Clone, Copy, ValueEnum)]
    enum Backend {
        Auto,
        Vulkan,
        Metal,
        Dx12,
        Gl,
    }

    impl Backend {
        fn wgpu(self) -> wgpu::Backends {
            match self {
                Backend::Auto => wgpu::Backends::all(),
                Backend::Vulkan => wgpu::Backends::VULKAN,
                Backend::Metal => wgpu::Backends::METAL,
                Backend::Dx12 => wgpu::Backends::DX12,
                Backend::Gl => wgpu::Backends::GL,
            }
        }
    }

    #[derive(Clone, Copy, PartialEq, ValueEnum)]
    enum Device {
        Gpu,
        Cpu,
    }

    pub fn main() -> ExitCode {
        let cli = Cli::parse();
        match run(cli) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        }
    }

    fn run(cli: Cli) -> anyhow::Result<()> {
        match cli.command {
            Command::Info { backend } => info(backend),
            Command::Perplexity {
                model,
                ids,
                file,
                device,
                json,
            } => {
                if device == Device::Gpu {
                    bail!("the GPU engine is not built yet; use --device cpu");
                }
                let tokens = match (ids, file) {
                    (Some(ids), _) => parse_ids(&ids)?,
                    (None, Some(_)) => bail!(
                        "scoring a text file needs the tokenizer, which is not built yet; \
                         pass the token ids with --ids"
                    ),
                    (None, None) => bail!("give the tokens with --ids '[1, 2, 3]'"),
                };
                let model = load_reference(&model)?;
                let report = perplexity::cpu(&model, &tokens)?;
                if json {
                    println!("{}", serde_json::to_string(&report)?);
                } else {
                    println!(
                        "tokens: {}  mean NLL: {:.4}  perplexity: {:.3}",
                        report.tokens, report.mean_nll, report.ppl
                    );
                }
                Ok(())
            }
            Command::Continue {
                model,
                ids,
                max_tokens,
            } => {
                let prompt = parse_ids(&ids)?;
                let model = load_reference(&model)?;
                let mut session = model.new_session();
                let mut logits = model.forward(&mut session, &prompt)?;
                let vocab = model.config.vocab_size;
                let mut out = Vec::new();
                for _ in 0..max_tokens {
                    let last = &logits[logits.len() - vocab..];
                    let next = reference::argmax(last);
                    out.push(next);
                    if model.config.eos_token_ids.contains(&next) {
                        break;
                    }
                    logits = model.forward(&mut session, &[next])?;
                }
                println!("{}", serde_json::to_string(&out)?);
                Ok(())
            }
            Command::Dev {
                tool: DevTool::WriteTiny { name, dir },
            } => {
                let spec = tiny::TinySpec::by_name(&name)
                    .with_context(|| format!("no tiny model named `{name}` (tiny, tiny-ntk)"))?;
                spec.write_hf_dir(&dir)?;
                eprintln!("wrote {} to {}", spec.name, dir.display());
                Ok(())
            }
        }
    }

    /// A tiny model by name, else an HF folder.
    fn load_reference(model: &str) -> anyhow::Result<reference::Model> {
        if let Some(spec) = tiny::TinySpec::by_name(model) {
            return Ok(puyu::tiny_reference(&spec)?);
        }
        let dir = PathBuf::from(model);
        if !dir.is_dir() {
            bail!("model `{model}` is neither a folder nor a bundled model (tiny, tiny-ntk)");
        }
        Ok(puyu::load_hf_reference(&dir)?)
    }

    fn parse_ids(text: &str) -> anyhow::Result<Vec<u32>> {
        serde_json::from_str(text)
            .with_context(|| format!("--ids must be a JSON array of token ids, got `{text}`"))
    }

    fn info(backend: Backend) -> anyhow::Result<()> {
        let adapters = gpu::list_adapters(backend.wgpu());
        if adapters.is_empty() {
            bail!(
                "no GPU adapter found; on Linux install a Vulkan driver \
                 (e.g. `apt-get install mesa-vulkan-drivers`)"
            );
        }
        for (i, adapter) in adapters.iter().enumerate() {
            let info = adapter.get_info();
            let limits = adapter.limits();
            let features = adapter.features();
            println!("adapter {i}: {} ({:?}, {:?})", info.name, info.backend, info.device_type);
            println!("  driver: {} {}", info.driver, info.driver_info);
            println!(
                "  shader-f16: {}  subgroups: {}  timestamps: {}",
                features.contains(wgpu::Features::SHADER_F16),
                features.contains(wgpu::Features::SUBGROUP),
                features.contains(wgpu::Features::TIMESTAMP_QUERY)
            );
            println!(
                "  max_buffer_size: {}  max_storage_buffer_binding_size: {}",
                limits.max_buffer_size, limits.max_storage_buffer_binding_size
            );
            println!(
                "  max_compute_invocations_per_workgroup: {}  workgroup storage: {}  storage buffers per stage: {}",
                limits.max_compute_invocations_per_workgroup,
                limits.max_compute_workgroup_storage_size,
                limits.max_storage_buffers_per_shader_stage
            );
        }
        Ok(())
    }
}
