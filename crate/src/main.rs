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

    use std::io::Write;
    use std::ops::ControlFlow;
    use std::time::Instant;

    use puyu::chat::{self, Message, System, Template};
    use puyu::generate::{generate_blocking, CpuSession, Forward, GenerateOptions};
    use puyu::gpu::model::GpuModel;
    use puyu::model_dir::ModelDir;
    use puyu::sampling::SamplingParams;
    use puyu::model_lookup::{self, Found};
    use puyu::{gpu, perplexity, reference, tiny, Tokenizer};

    #[derive(Parser)]
    #[command(
        name = "puyu",
        version,
        about = "InternLM2 (书生·浦语 2.0) on WebGPU",
        after_help = "Exit codes: 0 success, 1 failure, 2 bad command line, 3 missing or invalid model or input, 4 no usable GPU, 5 context full."
    )]
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
        /// Convert an HF InternLM2 checkpoint (config.json, *.safetensors in bf16/f16/f32,
        /// tokenizer.model or tokenizer.json) into a puyu model folder.
        Convert {
            hf_dir: PathBuf,
            out_dir: PathBuf,
            #[arg(long, default_value = "q4", value_parser = ["q4", "q8", "f16"])]
            quant: String,
            /// Replace OUT_DIR if it exists and is not empty.
            #[arg(long)]
            force: bool,
            /// Largest shard in MiB.
            #[arg(long, default_value_t = 512, hide = true)]
            shard_mib: u64,
        },
        /// Generate text from a prompt, streamed to stdout (statistics on stderr).
        Run {
            /// A puyu model folder, an HF InternLM2 folder, an HF model id in the local Hugging Face
            /// cache (`internlm/internlm2-chat-1_8b`; never downloaded), or `tiny` / `tiny-ntk`.
            #[arg(long, default_value = "tiny")]
            model: String,
            #[arg(long)]
            prompt: String,
            /// Wrap the prompt in InternLM2-Chat's template (with the default system prompt
            /// unless --system is given).
            #[arg(long)]
            chat: bool,
            /// The system prompt for --chat (an empty string for none).
            #[arg(long, requires = "chat")]
            system: Option<String>,
            #[arg(long, default_value_t = 128)]
            max_tokens: usize,
            #[command(flatten)]
            sampling: SamplingArgs,
            /// Where to compute: `gpu` (WebGPU kernels) or `cpu` (the f32 reference).
            #[arg(long, value_enum, default_value_t = Device::Gpu)]
            device: Device,
            #[command(flatten)]
            gpu: GpuArgs,
            /// Also print the sampled token ids (a stop id included) to stderr as
            /// `ids: [..]`, e.g. to compare with the browser.
            #[arg(long)]
            show_ids: bool,
        },
        /// Chat in the terminal with InternLM2-Chat's template: answers stream as they are
        /// generated, the KV cache is kept across turns. Ctrl-C stops an answer; `/reset`
        /// starts a new conversation; `/exit` (or end of input) quits.
        Chat {
            /// A puyu model folder, an HF InternLM2 folder, an HF model id in the local Hugging Face
            /// cache (`internlm/internlm2-chat-1_8b`; never downloaded), or `tiny` / `tiny-ntk`.
            #[arg(long, default_value = "tiny")]
            model: String,
            /// The system prompt (default: InternLM2-Chat's; an empty string for none).
            #[arg(long)]
            system: Option<String>,
            /// Most tokens per answer.
            #[arg(long, default_value_t = 512)]
            max_tokens: usize,
            /// KV-cache capacity in tokens: the whole conversation must fit.
            #[arg(long, default_value_t = 4096)]
            context: usize,
            #[command(flatten)]
            sampling: SamplingArgs,
            #[command(flatten)]
            gpu: GpuArgs,
        },
        /// Print the token ids of TEXT as a JSON array.
        Tokenize {
            /// A model folder, a tokenizer.model or tokenizer.json file, or `tiny`.
            #[arg(long, default_value = "tiny")]
            model: String,
            /// Leave out the leading <s>.
            #[arg(long)]
            no_bos: bool,
            text: String,
        },
        /// Per-token negative log-likelihood of a token sequence.
        Perplexity {
            /// A puyu model folder, an HF InternLM2 folder, an HF model id in the local Hugging Face
            /// cache (`internlm/internlm2-chat-1_8b`; never downloaded), or `tiny` / `tiny-ntk`.
            #[arg(long, default_value = "tiny")]
            model: String,
            /// The tokens as a JSON array of ids, e.g. `[1, 2136, 505]`.
            #[arg(long, conflicts_with = "file")]
            ids: Option<String>,
            /// A text file to score (tokenized with <s> first).
            #[arg(long)]
            file: Option<PathBuf>,
            /// Where to compute: `gpu` (WebGPU kernels) or `cpu` (the f32 reference).
            #[arg(long, value_enum, default_value_t = Device::Gpu)]
            device: Device,
            #[command(flatten)]
            gpu: GpuArgs,
            /// Print `{"tokens", "nll", "mean_nll", "ppl"}` as JSON.
            #[arg(long)]
            json: bool,
        },
        /// Prompt processing and generation speed on the GPU: tokens/s (median, min, max over
        /// the repeats), time to first token, load time, GPU memory.
        Bench {
            /// A puyu model folder, an HF InternLM2 folder, an HF model id in the local Hugging Face
            /// cache (`internlm/internlm2-chat-1_8b`; never downloaded), or `tiny` / `tiny-ntk`.
            #[arg(long, default_value = "tiny")]
            model: String,
            #[arg(long, default_value_t = 512)]
            prompt_tokens: usize,
            #[arg(long, default_value_t = 128)]
            gen_tokens: usize,
            #[arg(long, default_value_t = 3)]
            repeat: usize,
            /// Print one JSON object instead of a table.
            #[arg(long)]
            json: bool,
            /// Time each kernel alone at a real model's shapes instead (1_8b, 7b, 20b, or
            /// tiny): GB/s and GFLOP/s of the q4 matrix products and decode attention.
            #[arg(long, value_name = "SHAPE", num_args = 0..=1, default_missing_value = "1_8b")]
            kernels: Option<String>,
            /// With --kernels: only the kernels whose name contains this (e.g. `w1`, `attend`).
            #[arg(long, requires = "kernels")]
            only: Option<String>,
            /// Also print the GPU time of each kind of dispatch in the last prompt step and the
            /// last decode step (timestamp queries; the adapter must have timestamp-query).
            #[arg(long, conflicts_with = "kernels")]
            profile: bool,
            /// Pick tokens as `puyu run` does by default (temperature 0.8, top-k 50, top-p 0.8,
            /// seed 0) instead of greedily, so the times include a sampled draw's.
            #[arg(long, conflicts_with = "kernels")]
            sample: bool,
            #[command(flatten)]
            gpu: GpuArgs,
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
        /// Write a random-weight model with real shapes (1_8b, 7b, 20b) for benchmarks: an HF
        /// checkpoint (bf16 shards of 2 GiB with an index), or with --quant straight to a puyu
        /// folder. Never commit these.
        WriteRandom {
            shape: String,
            dir: PathBuf,
            #[arg(long, value_parser = ["q4", "q8", "f16"])]
            quant: Option<String>,
        },
        /// Encoding speed on a text file (tokens/s), for comparison with sentencepiece.
        BenchTokenizer {
            file: PathBuf,
            #[arg(long, default_value_t = 5)]
            repeat: usize,
        },
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

    /// The engine `run` generates with.
    enum Engine<'a> {
        Cpu(CpuSession<'a>),
        Gpu(Box<GpuModel>),
    }

    impl Forward for Engine<'_> {
        async fn forward_last(&mut self, tokens: &[u32]) -> puyu::Result<Vec<f32>> {
            match self {
                Engine::Cpu(c) => c.forward_last(tokens).await,
                Engine::Gpu(g) => g.forward_last(tokens).await,
            }
        }
        async fn forward_sample(&mut self, tokens: &[u32], sampler: &mut puyu::sampling::Sampler, history: &[u32]) -> puyu::Result<u32> {
            match self {
                Engine::Cpu(c) => c.forward_sample(tokens, sampler, history).await,
                Engine::Gpu(g) => Forward::forward_sample(g.as_mut(), tokens, sampler, history).await,
            }
        }
        fn cached_tokens(&self) -> usize {
            match self {
                Engine::Cpu(c) => c.cached_tokens(),
                Engine::Gpu(g) => g.cached_tokens(),
            }
        }
        fn context(&self) -> Option<usize> {
            match self {
                Engine::Cpu(c) => c.context(),
                Engine::Gpu(g) => g.context(),
            }
        }
    }

    /// How the next token is chosen.
    #[derive(clap::Args, Clone, Copy)]
    struct SamplingArgs {
        /// 0 is greedy.
        #[arg(long, default_value_t = 0.8)]
        temperature: f32,
        /// 0 keeps every token.
        #[arg(long, default_value_t = 50)]
        top_k: usize,
        /// Keep the most likely tokens whose probabilities add up to this; 1 keeps all.
        #[arg(long, default_value_t = 0.8)]
        top_p: f32,
        /// Divide the logits of the last 64 tokens' ids by this (multiply when negative); 1 is off.
        #[arg(long, default_value_t = 1.0)]
        repeat_penalty: f32,
        /// Random seed (default: from the clock, printed with the statistics).
        #[arg(long)]
        seed: Option<u64>,
    }

    impl SamplingArgs {
        fn params(&self) -> anyhow::Result<SamplingParams> {
            let seed = self.seed.unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64)
            });
            let p = SamplingParams {
                temperature: self.temperature,
                top_k: self.top_k,
                top_p: self.top_p,
                repeat_penalty: self.repeat_penalty,
                seed,
                ..Default::default()
            };
            p.validate().map_err(anyhow::Error::msg)?;
            Ok(p)
        }
    }

    /// `puyu chat`: read a line, stream the answer, print a summary; Ctrl-C stops an answer.
    mod chat_loop {
        use super::*;
        use std::io::BufRead;
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;

        use puyu::conversation::Conversation;

        pub fn run(model: &str, system: Option<String>, max_tokens: usize, context: usize, sampling: SamplingParams, args: GpuArgs) -> anyhow::Result<()> {
            let tokenizer = load_tokenizer(model)?;
            let (mut engine, _keep) = load_gpu_with_context(model, args, |_| context)?;
            let system = match system {
                None => System::Default,
                Some(s) if s.is_empty() => System::None,
                Some(s) => System::Custom(s),
            };
            let mut conversation = Conversation::new(Template { system, ..Default::default() });
            let mut stop_ids = engine.config.eos_token_ids.clone();
            stop_ids.extend(chat::STOP_IDS);
            let mut options = GenerateOptions {
                max_tokens,
                stop_ids,
                stop_strings: chat::STOP_STRINGS.map(String::from).to_vec(),
                sampling: sampling.clone(),
            };
            // Ctrl-C during an answer stops it; at the prompt it quits.
            let generating = Arc::new(AtomicBool::new(false));
            let interrupted = Arc::new(AtomicBool::new(false));
            {
                let (generating, interrupted) = (generating.clone(), interrupted.clone());
                ctrlc::set_handler(move || {
                    if generating.load(Ordering::SeqCst) {
                        interrupted.store(true, Ordering::SeqCst);
                    } else {
                        std::process::exit(130);
                    }
                })?;
            }
            eprintln!("puyu chat: {model} on {} ({} tokens of context). /reset, /exit; Ctrl-C stops an answer.", engine.describe(), engine.context);
            let stdin = std::io::stdin();
            let mut lines = stdin.lock().lines();
            let mut turn = 0u64;
            loop {
                eprint!("> ");
                let Some(line) = lines.next().transpose()? else { break };
                let text = line.trim();
                match text {
                    "" => continue,
                    "/exit" | "/quit" => break,
                    "/reset" => {
                        conversation.reset();
                        engine.reset();
                        eprintln!("(new conversation)");
                        continue;
                    }
                    _ => {}
                }
                let ids = conversation.user(&tokenizer, text)?;
                if engine.len + ids.len() > engine.context {
                    let err = puyu::Error::ContextFull { needed: engine.len + ids.len(), context: engine.context };
                    eprintln!("error: {err}; /reset starts a new conversation (or raise --context)");
                    conversation.undo_user();
                    continue;
                }
                // A different draw each turn, reproducible from the seed.
                options.sampling.seed = sampling.seed.wrapping_add(turn);
                turn += 1;
                // The prompt fits (checked above); the answer gets what is left, its last
                // sampled token not being fed.
                options.max_tokens = max_tokens.min(engine.context - engine.len - ids.len() + 1);
                interrupted.store(false, Ordering::SeqCst);
                generating.store(true, Ordering::SeqCst);
                let start = Instant::now();
                let mut first = None;
                let mut stdout = std::io::stdout().lock();
                let out = generate_blocking(&mut engine, &tokenizer, &ids, &options, |_, text| {
                    first.get_or_insert_with(Instant::now);
                    let _ = stdout.write_all(text.as_bytes());
                    let _ = stdout.flush();
                    if interrupted.load(Ordering::SeqCst) { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
                });
                generating.store(false, Ordering::SeqCst);
                let out = out?;
                let _ = writeln!(stdout);
                drop(stdout);
                let reply = chat::parse_reply(&out.text);
                for call in &reply.tool_calls {
                    eprintln!("[tool call] {} {}", call.name, call.arguments);
                }
                if let Some(code) = &reply.code {
                    eprintln!("[interpreter code]\n{code}");
                }
                conversation.assistant(&out.ids, &out.text);
                let end = Instant::now();
                let first = first.unwrap_or(end);
                let (prefill, decode) = (first.duration_since(start).as_secs_f64(), end.duration_since(first).as_secs_f64());
                eprintln!(
                    "[prompt {} tokens, {:.1} tok/s | generated {} tokens, {:.1} tok/s | first token {:.0} ms | {:?} | context {}/{}]",
                    ids.len(),
                    ids.len() as f64 / prefill.max(1e-9),
                    out.ids.len(),
                    out.ids.len().saturating_sub(1) as f64 / decode.max(1e-9),
                    prefill * 1e3,
                    out.finish,
                    engine.len,
                    engine.context,
                );
            }
            Ok(())
        }
    }

    /// Where and how the GPU engine runs.
    #[derive(clap::Args, Clone, Copy)]
    struct GpuArgs {
        /// The graphics API wgpu uses (auto: the best adapter on any).
        #[arg(long, value_enum, default_value_t = Backend::Auto)]
        backend: Backend,
        /// Do not use shader-f16 even if the adapter has it (the KV cache stays f32).
        #[arg(long)]
        no_f16: bool,
        /// Do not use subgroup operations even if the adapter has them.
        #[arg(long)]
        no_subgroups: bool,
        /// What the q4 matrix products multiply the weights with: `f32` (the reference's
        /// arithmetic), `int8` (8-bit with a scale per 32 values, llama.cpp's q8_0),
        /// `int8-decode` (8-bit in decode, f32 in prefill), or
        /// `auto` (8-bit on CPU adapters, f32 on GPUs).
        #[arg(long, default_value = "auto")]
        activations: puyu::gpu::model::Activations,
        /// Where the q4 matrices live: `buffer` (storage buffers), `texture` (rgba32uint
        /// textures, a texel per 32-weight group: fewer loads on CPU drivers), or `auto`
        /// (textures on CPU adapters, buffers on GPUs).
        #[arg(long, default_value = "auto")]
        weight_storage: puyu::gpu::model::WeightStorage,
        /// Time every dispatch with timestamp queries (`bench --profile`).
        #[arg(skip)]
        timestamps: bool,
    }

    impl GpuArgs {
        fn open(&self) -> anyhow::Result<gpu::Gpu> {
            let wish = gpu::FeatureWish { f16: !self.no_f16, subgroups: !self.no_subgroups, timestamps: self.timestamps };
            Ok(pollster::block_on(gpu::Gpu::open(self.backend.wgpu(), wish))?)
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
                ExitCode::from(exit_code(&e))
            }
        }
    }

    /// Exit codes (also in `--help`): 1 any other failure, 2 bad command line (clap), 3 a
    /// model or input that is missing or invalid, 4 no usable GPU, 5 the context is full.
    fn exit_code(e: &anyhow::Error) -> u8 {
        use puyu::Error as E;
        match e.downcast_ref::<puyu::Error>() {
            Some(E::NoAdapter { .. } | E::DeviceRequest(_) | E::DeviceLimits { .. } | E::DeviceLost { .. }) => 4,
            Some(E::ContextFull { .. }) => 5,
            Some(E::Gpu(_) | E::Io { .. }) | None => 1,
            Some(_) => 3,
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
                gpu,
                json,
            } => {
                let tokens = match (ids, file) {
                    (Some(ids), _) => parse_ids(&ids)?,
                    (None, Some(file)) => {
                        let text = std::fs::read_to_string(&file)
                            .with_context(|| format!("reading {}", file.display()))?;
                        load_tokenizer(&model)?.encode(&text, true)?
                    }
                    (None, None) => bail!("give the text with --file or the tokens with --ids '[1, 2, 3]'"),
                };
                let report = match device {
                    Device::Cpu => perplexity::cpu(&load_reference(&model)?, &tokens)?,
                    Device::Gpu => {
                        if tokens.len() < 2 {
                            bail!("perplexity needs at least 2 tokens, got {}", tokens.len());
                        }
                        let (mut gpu, _keep) = load_gpu(&model, gpu, tokens.len())?;
                        let logits = pollster::block_on(gpu.forward(&tokens, true))?;
                        perplexity::Report::from_logits(&logits, &tokens, gpu.config.vocab_size)
                    }
                };
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
            Command::Convert { hf_dir, out_dir, quant, force, shard_mib } => {
                let options = puyu::convert::ConvertOptions {
                    quant: quant.parse().map_err(anyhow::Error::msg)?,
                    max_shard_bytes: shard_mib << 20,
                    force,
                };
                let bar = indicatif::ProgressBar::new(0).with_style(
                    indicatif::ProgressStyle::with_template(
                        "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                    )?
                    .progress_chars("=> "),
                );
                bar.set_message(format!("converting to {quant}"));
                let start = Instant::now();
                let manifest = puyu::convert::convert(&hf_dir, &out_dir, &options, |done, total| {
                    bar.set_length(total);
                    bar.set_position(done);
                })?;
                bar.finish_and_clear();
                let bytes: u64 = manifest.shards.iter().map(|s| s.size).sum();
                eprintln!(
                    "wrote {} ({} tensors, {} shards, {:.1} MB, {quant}) in {:.1} s",
                    out_dir.display(),
                    manifest.tensors.len(),
                    manifest.shards.len(),
                    bytes as f64 / 1e6,
                    start.elapsed().as_secs_f64()
                );
                Ok(())
            }
            Command::Chat { model, system, max_tokens, context, sampling, gpu } => {
                chat_loop::run(&model, system, max_tokens, context, sampling.params()?, gpu)
            }
            Command::Run {
                model,
                prompt,
                chat,
                system,
                max_tokens,
                sampling,
                device,
                gpu: gpu_args,
                show_ids,
            } => {
                let sampling = sampling.params()?;
                let seed = sampling.seed;
                let tokenizer = load_tokenizer(&model)?;
                let ids = if chat {
                    let system = match system {
                        None => System::Default,
                        Some(s) if s.is_empty() => System::None,
                        Some(s) => System::Custom(s),
                    };
                    let template = Template { system, ..Default::default() };
                    template.encode(&tokenizer, &[Message::user(prompt)])?
                } else {
                    tokenizer.encode(&prompt, true)?
                };
                let config = load_config(&model)?;
                let mut stop_ids = config.eos_token_ids.clone();
                let mut stop_strings = Vec::new();
                if chat {
                    stop_ids.extend(chat::STOP_IDS);
                    stop_strings.extend(chat::STOP_STRINGS.map(String::from));
                }
                let options = GenerateOptions { max_tokens, stop_ids, stop_strings, sampling };
                let mut first_token = None;
                // Loaded only now, so a bad option fails before the model is read.
                let reference;
                let mut _keep = None;
                let mut engine = match device {
                    Device::Cpu => {
                        reference = load_reference(&model)?;
                        Engine::Cpu(CpuSession::new(&reference))
                    }
                    Device::Gpu => {
                        let gpu;
                        (gpu, _keep) = load_gpu(&model, gpu_args, ids.len() + max_tokens)?;
                        Engine::Gpu(Box::new(gpu))
                    }
                };
                let device_name = match &engine {
                    Engine::Cpu(_) => "cpu reference".to_string(),
                    Engine::Gpu(g) => g.describe(),
                };
                let start = Instant::now();
                let mut stdout = std::io::stdout().lock();
                let out = generate_blocking(&mut engine, &tokenizer, &ids, &options, |_, text| {
                    first_token.get_or_insert_with(Instant::now);
                    let _ = stdout.write_all(text.as_bytes());
                    let _ = stdout.flush();
                    ControlFlow::Continue(())
                })?;
                let _ = writeln!(stdout);
                let end = Instant::now();
                let first = first_token.unwrap_or(end);
                let prefill = first.duration_since(start).as_secs_f64();
                let decode = end.duration_since(first).as_secs_f64();
                let decoded = out.ids.len().saturating_sub(1);
                eprintln!(
                    "prompt {} tokens, {:.1} tok/s | generated {} tokens, {:.1} tok/s | first token {:.0} ms | {:?} | seed {seed} | {device_name}",
                    ids.len(),
                    ids.len() as f64 / prefill.max(1e-9),
                    out.ids.len(),
                    decoded as f64 / decode.max(1e-9),
                    prefill * 1e3,
                    out.finish,
                );
                if show_ids {
                    eprintln!("ids: {}", serde_json::to_string(&out.ids)?);
                }
                Ok(())
            }
            Command::Bench { kernels: Some(shape), only, prompt_tokens, json, gpu, .. } => {
                bench::kernels(&shape, only.as_deref(), prompt_tokens, json, gpu)
            }
            Command::Bench { model, prompt_tokens, gen_tokens, repeat, json, profile, sample, gpu, .. } => {
                let sampling = if sample { SamplingParams::default() } else { SamplingParams::greedy() };
                bench::run(&model, prompt_tokens, gen_tokens, repeat, json, &sampling, GpuArgs { timestamps: profile, ..gpu })
            }
            Command::Tokenize { model, no_bos, text } => {
                let ids = load_tokenizer(&model)?.encode(&text, !no_bos)?;
                println!("{}", serde_json::to_string(&ids)?);
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
                tool: DevTool::BenchTokenizer { file, repeat },
            } => {
                let text = std::fs::read_to_string(&file)?;
                let t0 = Instant::now();
                let tokenizer = Tokenizer::from_sentencepiece(tiny::TOKENIZER_MODEL)?;
                let load = t0.elapsed().as_secs_f64();
                let mut rates = Vec::new();
                let mut n = 0;
                for _ in 0..repeat.max(1) {
                    let t = Instant::now();
                    n = tokenizer.encode(&text, false)?.len();
                    rates.push(n as f64 / t.elapsed().as_secs_f64());
                }
                rates.sort_by(f64::total_cmp);
                println!(
                    "{{\"tokens\": {n}, \"bytes\": {}, \"median_tokens_per_s\": {:.0}, \"min\": {:.0}, \"max\": {:.0}, \"load_s\": {load:.3}}}",
                    text.len(),
                    rates[rates.len() / 2],
                    rates[0],
                    rates[rates.len() - 1]
                );
                Ok(())
            }
            Command::Dev {
                tool: DevTool::WriteRandom { shape, dir, quant },
            } => {
                let spec = tiny::REAL_SHAPES
                    .into_iter()
                    .find(|s| s.name == shape)
                    .with_context(|| format!("no shape `{shape}` (1_8b, 7b, 20b)"))?;
                let bar = indicatif::ProgressBar::new(0).with_style(
                    indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {bytes}/{total_bytes} eta {eta}")?
                        .progress_chars("=> "),
                );
                bar.set_message(format!("writing random {shape}"));
                let progress = |done, total| {
                    bar.set_length(total);
                    bar.set_position(done);
                };
                match quant {
                    Some(q) => {
                        let options = puyu::convert::ConvertOptions { quant: q.parse().map_err(anyhow::Error::msg)?, ..Default::default() };
                        puyu::convert::write_random(&spec, &dir, &options, progress)?;
                    }
                    None => spec.write_hf_sharded(&dir, progress)?,
                }
                bar.finish_and_clear();
                eprintln!("wrote random {shape} to {}", dir.display());
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

    mod bench {
        use super::*;

        pub fn kernels(shape: &str, only: Option<&str>, prompt_tokens: usize, json: bool, args: GpuArgs) -> anyhow::Result<()> {
            let spec = tiny::REAL_SHAPES
                .into_iter()
                .chain([tiny::TINY])
                .find(|s| s.name == shape)
                .with_context(|| format!("no shape `{shape}` (1_8b, 7b, 20b, tiny)"))?;
            let gpu = args.open()?;
            let rows = puyu::bench::kernels(&gpu, &spec.config(), prompt_tokens.min(64), 4096, only)?;
            if json {
                let out = serde_json::json!({ "adapter": gpu.describe(), "shape": shape, "kernels": rows });
                println!("{}", serde_json::to_string_pretty(&out)?);
                return Ok(());
            }
            println!("{shape} kernels on {}", gpu.describe());
            for r in rows {
                println!("{:<18} {:<22} {:<24} {:>9.3} ms {:>8.2} GB/s {:>8.2} GFLOP/s", r.kernel, r.variant, r.shape, r.ms, r.gb_per_s, r.gflop_per_s);
            }
            Ok(())
        }

        pub fn run(model: &str, prompt_tokens: usize, gen_tokens: usize, repeat: usize, json: bool, sampling: &SamplingParams, args: GpuArgs) -> anyhow::Result<()> {
            let (dir, _keep) = model_dir(model)?;
            // Load time: opening the folder and uploading, not converting a tiny or HF model.
            let start = Instant::now();
            let mut engine = upload(&dir, args, |_| prompt_tokens + gen_tokens + 1)?;
            if args.timestamps && !engine.gpu().timestamps {
                bail!("--profile needs timestamp-query, which {} does not have", engine.gpu().adapter_info.name);
            }
            // Uploads are queued: wait for them, so load time is the time to a usable model.
            let device = &engine.gpu().device;
            device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| anyhow::anyhow!("{e}"))?;
            let load_s = start.elapsed().as_secs_f64();
            let (prefill, decode, ttft) = puyu::bench::run(&mut engine, prompt_tokens, gen_tokens, repeat, sampling)?;
            let g = engine.gpu();
            let decode = puyu::bench::Spread::of(&decode);
            let decode_weight_gb_per_s = engine.memory.decode_read as f64 * decode.median / 1e9;
            let copy_gb_per_s = puyu::bench::copy_bandwidth(g)? / 1e9;
            let report = puyu::bench::Report {
                model: model.to_string(),
                adapter: g.adapter_info.name.clone(),
                backend: format!("{:?}", g.adapter_info.backend),
                shader_f16: g.f16,
                subgroups: g.subgroups,
                prompt_tokens,
                gen_tokens,
                repeat,
                sampling: puyu::bench::describe_sampling(sampling),
                load_s,
                prefill_tokens_per_s: puyu::bench::Spread::of(&prefill),
                decode_tokens_per_s: decode,
                time_to_first_token_ms: puyu::bench::Spread::of(&ttft),
                memory_bytes: engine.memory,
                decode_weight_gb_per_s,
                copy_gb_per_s,
                roofline_fraction: decode_weight_gb_per_s / copy_gb_per_s,
                profile: args.timestamps.then(|| engine.profile().clone()),
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
                return Ok(());
            }
            let r = &report;
            let row = |name: &str, s: puyu::bench::Spread, unit: &str| {
                println!("{name:<22} {:>10.2} {unit:<6} (min {:.2}, max {:.2})", s.median, s.min, s.max);
            };
            println!("{} on {}", model, engine.describe());
            println!("{:<22} {:>10.2} s", "load", r.load_s);
            row(&format!("prefill ({prompt_tokens} tokens)"), r.prefill_tokens_per_s, "tok/s");
            row(&format!("decode ({gen_tokens} tokens)"), r.decode_tokens_per_s, "tok/s");
            println!("{:<22} {:>10}", "tokens picked", r.sampling);
            row("time to first token", r.time_to_first_token_ms, "ms");
            let mb = |b: u64| b as f64 / 1e6;
            let m = r.memory_bytes;
            println!("{:<22} {:>10.1} MB weights, {:.2} MB KV cache, {:.1} MB scratch", "GPU memory", mb(m.weights), mb(m.kv_cache), mb(m.scratch));
            println!(
                "{:<22} {:>10.2} GB/s    ({:.1} MB of weights a token; {:.0}% of the {:.2} GB/s a buffer copy reaches here)",
                "decode bandwidth",
                r.decode_weight_gb_per_s,
                mb(m.decode_read),
                100.0 * r.roofline_fraction,
                r.copy_gb_per_s
            );
            if let Some(p) = &r.profile {
                for (what, step) in [("prompt", &p.prefill), ("decode", &p.decode)] {
                    let Some(step) = step else { continue };
                    let steps = step.steps.max(1);
                    let n = steps as f64;
                    let busy: f64 = step.rows.iter().map(|r| r.ms).sum::<f64>() / n;
                    println!(
                        "GPU time of a {what} step (mean of the last repeat's {}, {} token(s) each): {busy:.2} ms in passes, {:.2} ms first to last",
                        step.steps,
                        step.tokens / steps,
                        step.wall_ms / n
                    );
                    for row in &step.rows {
                        println!("  {:<16} {:>5} × {:>10.3} ms {:>5.1}%", row.name, row.dispatches / steps, row.ms / n, 100.0 * row.ms / n / busy.max(1e-12));
                    }
                }
            }
            Ok(())
        }
    }

    /// A tiny model by name, else a folder (puyu or HF) or an HF model id in the hub cache.
    fn load_reference(model: &str) -> anyhow::Result<reference::Model> {
        match model_lookup::find(model)? {
            Found::Tiny(spec) => Ok(puyu::tiny_reference(&spec)?),
            Found::Path(dir) => Ok(puyu::load_reference(&dir)?),
        }
    }

    /// The config of a bundled tiny model or a folder (puyu or HF).
    fn load_config(model: &str) -> anyhow::Result<puyu::ModelConfig> {
        match model_lookup::find(model)? {
            Found::Tiny(spec) => Ok(spec.config()),
            Found::Path(dir) => Ok(puyu::ModelConfig::from_file(&dir.join("config.json"))?),
        }
    }

    /// The model on the GPU with room for `tokens` in its KV cache. A puyu folder loads as it
    /// is; a bundled tiny model or an HF folder is converted first into a temporary folder
    /// (kept alive by the returned guard): f16 for tiny, so that it matches the CPU reference,
    /// q4 for HF folders.
    fn load_gpu(model: &str, args: GpuArgs, tokens: usize) -> anyhow::Result<(GpuModel, Option<tempfile::TempDir>)> {
        load_gpu_with_context(model, args, |config| tokens.max(config.max_position_embeddings.min(4096)))
    }

    /// As [`load_gpu`], with the KV-cache capacity chosen from the model's config.
    fn load_gpu_with_context(
        model: &str,
        args: GpuArgs,
        context: impl FnOnce(&puyu::ModelConfig) -> usize,
    ) -> anyhow::Result<(GpuModel, Option<tempfile::TempDir>)> {
        let (dir, keep) = model_dir(model)?;
        Ok((upload(&dir, args, context)?, keep))
    }

    /// Opens a puyu model folder and uploads it to the GPU (with a progress bar), with a KV
    /// cache of `context(config)` tokens.
    fn upload(dir: &std::path::Path, args: GpuArgs, context: impl FnOnce(&puyu::ModelConfig) -> usize) -> anyhow::Result<GpuModel> {
        let dir = ModelDir::open(dir, false)?;
        let gpu = args.open()?;
        let context = context(&dir.config);
        let options = puyu::gpu::model::GpuOptions { context, activations: args.activations, weight_storage: args.weight_storage, ..Default::default() };
        let total: u64 = dir.manifest.shards.iter().map(|s| s.size).sum();
        let bar = indicatif::ProgressBar::new(total).with_style(
            indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec}")?.progress_chars("=> "),
        );
        bar.set_message("uploading weights to the GPU");
        let engine = GpuModel::new(gpu, dir.config.clone(), &dir.manifest, |b| {
            let bytes = dir.blob(b);
            bar.inc(bytes.map_or(0, |v| v.len() as u64));
            bytes
        }, &options)?;
        bar.finish_and_clear();
        Ok(engine)
    }

    /// The puyu model folder for `model`: itself; a bundled tiny model converted to f16 (so
    /// that it matches the CPU reference) into a temporary folder kept alive by the returned
    /// guard; or an HF folder or hub-cache id converted to q4 once into puyu's cache.
    fn model_dir(model: &str) -> anyhow::Result<(PathBuf, Option<tempfile::TempDir>)> {
        let convert = |hf: &std::path::Path, out: &std::path::Path, quant| -> anyhow::Result<()> {
            let opts = puyu::convert::ConvertOptions { quant, force: true, ..Default::default() };
            puyu::convert::convert(hf, out, &opts, |_, _| {})?;
            Ok(())
        };
        match model_lookup::find(model)? {
            Found::Tiny(spec) => {
                let tmp = tempfile::tempdir()?;
                spec.write_hf_dir(&tmp.path().join("hf"))?;
                let out = tmp.path().join("model");
                convert(&tmp.path().join("hf"), &out, puyu::quant::Quant::F16)?;
                Ok((out, Some(tmp)))
            }
            Found::Path(dir) if ModelDir::is_model_dir(&dir) => Ok((dir, None)),
            Found::Path(dir) => {
                let out = model_lookup::converted_dir(&dir, puyu::quant::Quant::Q4);
                if ModelDir::is_model_dir(&out) {
                    eprintln!("using {} (converted from {} earlier)", out.display(), dir.display());
                } else {
                    eprintln!("converting {} to q4 into {} (once; later runs reuse it)", dir.display(), out.display());
                    std::fs::create_dir_all(out.parent().expect("a cache subfolder"))?;
                    convert(&dir, &out, puyu::quant::Quant::Q4)?;
                }
                Ok((out, None))
            }
        }
    }

    /// The tokenizer of a bundled tiny model (the real InternLM2 one), a model folder (or HF
    /// model id), or a tokenizer.model / tokenizer.json file.
    fn load_tokenizer(model: &str) -> anyhow::Result<Tokenizer> {
        match model_lookup::find(model)? {
            Found::Tiny(_) => Ok(Tokenizer::from_sentencepiece(tiny::TOKENIZER_MODEL)?),
            Found::Path(path) => Ok(Tokenizer::open(&path)?),
        }
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
