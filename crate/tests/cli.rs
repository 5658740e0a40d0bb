//! The `puyu` binary as a user runs it (a subprocess): happy paths on the bundled tiny
//! models, and clear failures on bad input.

mod common;

use std::process::{Command, Output};

use common::Golden;

fn puyu(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_puyu"))
        .args(args)
        .output()
        .expect("the puyu binary runs")
}

/// `puyu chat --temperature 0 ARGS` with `input` typed on stdin.
fn chat(args: &[&str], input: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_puyu"))
        .args(["chat", "--temperature", "0"])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the puyu binary runs");
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `perplexity --json` on the golden prompt equals the NLL that HF transformers computed
/// (tools/reference_dump.py: cross-entropy in f64 on its f32 logits). Tolerance 1e-3, as
/// for the logits the NLL is made of.
#[test]
fn perplexity_json_matches_the_reference() {
    for name in ["tiny", "tiny-ntk"] {
        let golden = Golden::load(name);
        let (_, ids) = golden.ids("prompt_ids");
        let (_, want) = golden.f32("prompt_nll");
        let ids_json = serde_json::to_string(&ids).unwrap();
        let out = puyu(&["perplexity", "--model", name, "--ids", &ids_json, "--device", "cpu", "--json"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["tokens"], ids.len());
        let nll: Vec<f64> = serde_json::from_value(report["nll"].clone()).unwrap();
        assert_eq!(nll.len(), ids.len() - 1);
        for (i, (g, w)) in nll.iter().zip(&want).enumerate() {
            assert!((g - *w as f64).abs() <= 1e-3, "{name}: nll[{i}] {g} vs {w}");
        }
        let mean = nll.iter().sum::<f64>() / nll.len() as f64;
        assert!((report["mean_nll"].as_f64().unwrap() - mean).abs() < 1e-9);
        assert!((report["ppl"].as_f64().unwrap() / mean.exp() - 1.0).abs() < 1e-9);
    }
}

#[test]
fn perplexity_reads_an_hf_folder() {
    let dir = tempfile::tempdir().unwrap();
    let out = puyu(&["dev", "write-tiny", "tiny", dir.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let args = |model: &str| {
        let out = puyu(&["perplexity", "--model", model, "--ids", "[1, 2136, 505, 395]", "--device", "cpu", "--json"]);
        assert!(out.status.success(), "{}", stderr(&out));
        out.stdout
    };
    assert_eq!(args(dir.path().to_str().unwrap()), args("tiny"));
}

#[test]
fn greedy_continuation_matches_the_reference() {
    let golden = Golden::load("tiny");
    let (_, ids) = golden.ids("prompt_ids");
    let (_, greedy) = golden.ids("greedy_ids");
    let ids_json = serde_json::to_string(&ids).unwrap();
    let out = puyu(&["continue", "--model", "tiny", "--ids", &ids_json, "--max-tokens", "8"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let got: Vec<u32> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got, greedy[..8]);
}

#[test]
fn bad_input_fails_clearly() {
    let cases: &[(&[&str], &str)] = &[
        (&["perplexity", "--model", "/no/such/folder", "--ids", "[1,2]", "--device", "cpu"], "neither a folder"),
        (&["perplexity", "--ids", "[1, 2", "--device", "cpu"], "JSON array"),
        (&["perplexity", "--ids", "[1]", "--device", "cpu"], "at least 2 tokens"),
        (&["perplexity", "--ids", "[1, 99999999]", "--device", "cpu"], "outside the vocabulary"),
        (&["info", "--backend", "quantum"], "invalid value"),
    ];
    for (args, needle) in cases {
        let out = puyu(args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = stderr(&out);
        assert!(err.contains(needle), "{args:?}: expected `{needle}` in: {err}");
    }
    // Exit codes that mean something (see `puyu --help`).
    let code = |args: &[&str]| puyu(args).status.code();
    assert_eq!(code(&["info", "--backend", "quantum"]), Some(2), "bad command line");
    assert_eq!(code(&["run", "--model", "/no/such/folder", "--prompt", "x"]), Some(3), "missing model");
    assert_eq!(code(&["perplexity", "--ids", "[1, 99999999]", "--device", "cpu"]), Some(3), "bad input");
    assert_eq!(code(&["run", "--prompt", "x", "--temperature=-1"]), Some(1), "an option out of range");

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), "{\"model_type\": \"internlm2\"}").unwrap();
    let out = puyu(&["perplexity", "--model", dir.path().to_str().unwrap(), "--ids", "[1,2]", "--device", "cpu"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("`hidden_size` is missing"), "{}", stderr(&out));
}

#[test]
fn info_lists_the_adapter() {
    let out = puyu(&["info"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("adapter 0:") && text.contains("max_storage_buffer_binding_size"), "{text}");
}

#[test]
fn tokenize_prints_ids_from_every_kind_of_path() {
    let model_file = common::repo_root().join("crate/assets/internlm2-tokenizer/tokenizer.model");
    let json_dir = tempfile::tempdir().unwrap();
    let t = puyu::Tokenizer::from_sentencepiece(puyu::tiny::TOKENIZER_MODEL).unwrap();
    std::fs::write(json_dir.path().join("tokenizer.json"), t.to_json().unwrap()).unwrap();
    for model in ["tiny", model_file.to_str().unwrap(), json_dir.path().to_str().unwrap()] {
        let out = puyu(&["tokenize", "--model", model, "你好，世界！"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let ids: Vec<u32> = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(ids, [1, 77230, 60353, 68339, 60477], "{model}");
        let out = puyu(&["tokenize", "--model", model, "--no-bos", "Hello world"]);
        assert_eq!(serde_json::from_slice::<Vec<u32>>(&out.stdout).unwrap(), [9843, 2028]);
    }
}

/// `perplexity --file` tokenizes the text (with <s>) and scores the same ids as `--ids`.
#[test]
fn perplexity_of_a_text_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("text.txt");
    std::fs::write(&file, "书生·浦语2.0（InternLM2）支持200K超长上下文。").unwrap();
    let by_file = puyu(&["perplexity", "--file", file.to_str().unwrap(), "--device", "cpu", "--json"]);
    assert!(by_file.status.success(), "{}", stderr(&by_file));
    let golden: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(common::repo_root().join("crate/assets/internlm2-tokenizer/golden.json")).unwrap(),
    )
    .unwrap();
    let entry = golden["encode"].as_array().unwrap().iter().find(|e| e["text"].as_str().unwrap().starts_with("书生")).unwrap();
    let mut ids = vec![1u32];
    ids.extend(serde_json::from_value::<Vec<u32>>(entry["ids"].clone()).unwrap());
    let by_ids = puyu(&["perplexity", "--ids", &serde_json::to_string(&ids).unwrap(), "--device", "cpu", "--json"]);
    assert_eq!(by_file.stdout, by_ids.stdout);
    let missing = puyu(&["perplexity", "--file", "/no/such.txt", "--device", "cpu"]);
    assert!(!missing.status.success() && stderr(&missing).contains("/no/such.txt"));
}

/// Greedy `run` prints the decoded greedy continuation, which the golden fixture fixes.
#[test]
fn run_streams_the_greedy_text() {
    let golden = Golden::load("tiny");
    let (_, prompt) = golden.ids("prompt_ids");
    let (_, greedy) = golden.ids("greedy_ids");
    let t = puyu::Tokenizer::from_sentencepiece(puyu::tiny::TOKENIZER_MODEL).unwrap();
    let prompt_text = t.decode(&prompt[1..], false).unwrap();
    assert_eq!(t.encode(&prompt_text, true).unwrap(), prompt, "the golden prompt is real text");
    let out = puyu(&["run", "--prompt", &prompt_text, "--temperature", "0", "--max-tokens", "12", "--device", "cpu"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let want = t.decode(&greedy[..12], true).unwrap();
    assert_eq!(String::from_utf8(out.stdout.clone()).unwrap().trim_end_matches('\n'), want);
    let err = stderr(&out);
    assert!(err.contains(&format!("prompt {} tokens", prompt.len())) && err.contains("generated 12 tokens"), "{err}");

    // Seeded sampling repeats; --chat wraps the prompt in the template.
    let sampled = |seed: &str| puyu(&["run", "--prompt", "Hi", "--chat", "--seed", seed, "--max-tokens", "6", "--device", "cpu"]).stdout;
    assert_eq!(sampled("5"), sampled("5"));
    let bad = puyu(&["run", "--prompt", "Hi", "--top-p", "0"]);
    assert!(!bad.status.success() && stderr(&bad).contains("top_p"));
}

/// `convert` writes a folder that `run`, `tokenize` and `perplexity` take; bad input fails
/// with a message that says what to do.
#[test]
fn convert_then_use_the_folder() {
    let root = tempfile::tempdir().unwrap();
    let hf = root.path().join("hf");
    let q4 = root.path().join("q4");
    assert!(puyu(&["dev", "write-tiny", "tiny", hf.to_str().unwrap()]).status.success());
    let out = puyu(&["convert", hf.to_str().unwrap(), q4.to_str().unwrap(), "--quant", "q4"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("q4"), "{}", stderr(&out));
    for f in ["config.json", "tokenizer.json", "manifest.json", "model-00000.safetensors"] {
        assert!(q4.join(f).is_file(), "{f}");
    }
    let model = q4.to_str().unwrap();
    let out = puyu(&["run", "--model", model, "--prompt", "Hello", "--temperature", "0", "--max-tokens", "4", "--device", "cpu"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = puyu(&["tokenize", "--model", model, "Hello world"]);
    assert_eq!(serde_json::from_slice::<Vec<u32>>(&out.stdout).unwrap(), [1, 9843, 2028]);
    let out = puyu(&["perplexity", "--model", model, "--ids", "[1, 9843, 2028]", "--device", "cpu", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));

    // Again into the same folder: refused without --force, accepted with it.
    let again = puyu(&["convert", hf.to_str().unwrap(), model, "--quant", "q8"]);
    assert!(!again.status.success() && stderr(&again).contains("--force"), "{}", stderr(&again));
    let forced = puyu(&["convert", hf.to_str().unwrap(), model, "--quant", "q8", "--force"]);
    assert!(forced.status.success(), "{}", stderr(&forced));

    // A corrupt manifest, a missing input, an unknown quantization.
    std::fs::write(q4.join("manifest.json"), "{\"format\": \"puyu\", \"format_version\": 7}").unwrap();
    let out = puyu(&["perplexity", "--model", model, "--ids", "[1, 2]", "--device", "cpu"]);
    assert!(!out.status.success() && stderr(&out).contains("convert the model again"), "{}", stderr(&out));
    let out = puyu(&["convert", "/no/such/hf", root.path().join("x").to_str().unwrap()]);
    assert!(!out.status.success() && stderr(&out).contains("/no/such/hf"), "{}", stderr(&out));
    let out = puyu(&["convert", hf.to_str().unwrap(), root.path().join("y").to_str().unwrap(), "--quant", "q3"]);
    assert!(!out.status.success() && stderr(&out).contains("q3"));
}

/// On the GPU (lavapipe in CI), `run` and `perplexity` give what the CPU reference gives: the
/// bundled tiny model goes to the GPU as f16, which holds its bf16 weights all but exactly.
#[test]
fn gpu_and_cpu_agree_through_the_cli() {
    let run = |device: &str| {
        let out = puyu(&["run", "--prompt", "书生·浦语 is", "--temperature", "0", "--max-tokens", "8", "--device", device]);
        assert!(out.status.success(), "{}", stderr(&out));
        (String::from_utf8(out.stdout.clone()).unwrap(), stderr(&out))
    };
    let (gpu_text, gpu_err) = run("gpu");
    let (cpu_text, _) = run("cpu");
    assert_eq!(gpu_text, cpu_text);
    assert!(gpu_err.contains("generated 8 tokens") && !gpu_err.contains("cpu reference"), "{gpu_err}");

    let ppl = |args: &[&str]| {
        let mut all = vec!["perplexity", "--ids", "[1, 2136, 505, 395, 1420, 1614]", "--json"];
        all.extend(args);
        let out = puyu(&all);
        assert!(out.status.success(), "{}", stderr(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        serde_json::from_value::<Vec<f64>>(v["nll"].clone()).unwrap()
    };
    let cpu = ppl(&["--device", "cpu"]);
    // The f32 path agrees to 1e-3 nats; with an f16 KV cache (K and V rounded to 2^-11
    // relative) NLLs of ~25 nats move by a few 1e-3, so 1e-2 there.
    for (args, tol) in [(&["--device", "gpu", "--no-f16"][..], 1e-3), (&["--device", "gpu"][..], 1e-2)] {
        for (g, c) in ppl(args).iter().zip(&cpu) {
            assert!((g - c).abs() <= tol, "{args:?}: {g} vs {c}");
        }
    }
}

/// `puyu bench --json` on the tiny model: every field is there, with sane values, and the
/// portable path reports its features off. `--kernels` times each kernel at a shape.
#[test]
fn bench_json_has_every_field() {
    let out = puyu(&["bench", "--prompt-tokens", "9", "--gen-tokens", "3", "--repeat", "2", "--json", "--no-f16", "--no-subgroups"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in ["model", "adapter", "backend", "load_s"] {
        assert!(!v[key].is_null(), "{key} missing: {v}");
    }
    assert_eq!((v["shader_f16"].as_bool(), v["subgroups"].as_bool()), (Some(false), Some(false)));
    assert_eq!((v["prompt_tokens"].as_u64(), v["gen_tokens"].as_u64(), v["repeat"].as_u64()), (Some(9), Some(3), Some(2)));
    for key in ["prefill_tokens_per_s", "decode_tokens_per_s", "time_to_first_token_ms"] {
        let (median, min, max) = (v[key]["median"].as_f64().unwrap(), v[key]["min"].as_f64().unwrap(), v[key]["max"].as_f64().unwrap());
        assert!(min > 0.0 && min <= median && median <= max, "{key}: {v}");
    }
    // The tiny model: bf16 weights converted to f16 (2 bytes each, ~11.9 M parameters in the
    // embedding and output alone), and a KV cache of 2 layers × 2 × 13 tokens × 32 f32 values.
    let m = &v["memory_bytes"];
    assert!(m["weights"].as_u64().unwrap() > 23_000_000, "{m}");
    assert_eq!(m["kv_cache"].as_u64(), Some(2 * 2 * 13 * 32 * 4));
    // Decode reads all but the embedding table: 92544 × 64 f16, and the 4-byte placeholder of
    // its (unused) scales buffer.
    assert_eq!(m["weights"].as_u64().unwrap() - m["decode_read"].as_u64().unwrap(), 92544 * 64 * 2 + 4, "{m}");
    let (decode_bw, copy_bw) = (v["decode_weight_gb_per_s"].as_f64().unwrap(), v["copy_gb_per_s"].as_f64().unwrap());
    assert!(decode_bw > 0.0 && copy_bw > 0.0, "{v}");
    assert!((v["roofline_fraction"].as_f64().unwrap() - decode_bw / copy_bw).abs() < 1e-9, "{v}");
    assert!(v.get("profile").is_none(), "no profile unless asked: {v}");
    assert_eq!(v["sampling"], "greedy");

    // --profile: the last repeat's prompt step (9 tokens) and 2 decode steps, by kind of
    // dispatch, summed. --sample: tokens drawn as `puyu run` draws them.
    let out = puyu(&["bench", "--prompt-tokens", "9", "--gen-tokens", "2", "--repeat", "2", "--json", "--profile", "--sample"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for (step, steps, tokens) in [("prefill", 1, 9), ("decode", 2, 2)] {
        let s = &v["profile"][step];
        assert_eq!((s["steps"].as_u64(), s["tokens"].as_u64()), (Some(steps), Some(tokens)), "{v}");
        let rows = s["rows"].as_array().unwrap();
        let w2 = rows.iter().find(|r| r["name"] == "w2").unwrap_or_else(|| panic!("no w2 row: {s}"));
        assert_eq!(w2["dispatches"].as_u64(), Some(2 * steps), "one per layer and step: {s}");
        // A top-k draw: the radix select's four counting passes, the gather, the finish.
        let sample = rows.iter().find(|r| r["name"] == "sample").unwrap_or_else(|| panic!("no sample row: {s}"));
        assert_eq!(sample["dispatches"].as_u64(), Some(6 * steps), "{s}");
        assert!(rows.iter().map(|r| r["ms"].as_f64().unwrap()).sum::<f64>() > 0.0, "{s}");
    }
    assert_eq!(v["sampling"], "temperature 0.8, top-k 50, top-p 0.8");

    let out = puyu(&["bench", "--kernels", "tiny", "--prompt-tokens", "5", "--json", "--no-subgroups"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = v["kernels"].as_array().unwrap();
    assert!(rows.iter().any(|r| r["kernel"] == "matmul output") && rows.iter().any(|r| r["kernel"] == "attention attend"), "{v}");
    assert!(rows.iter().all(|r| r["gb_per_s"].as_f64().unwrap() > 0.0));
}

/// `puyu chat` driven through stdin: two turns, the second feeding only its new tokens (the
/// first reply's last token, the end of that turn and the new user turn) to the cache the
/// first left; `/reset` starts over with the whole template again; `/exit` quits.
#[test]
fn chat_keeps_the_cache_across_turns() {
    let out = chat(&["--max-tokens", "5", "--context", "256"], "你好\nmore\n/reset\n你好\n/exit\n");
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    // Summaries follow the "> " prompt on the same stderr line.
    let summaries: Vec<&str> = err.lines().filter_map(|l| l.find("[prompt ").map(|at| &l[at..])).collect();
    assert_eq!(summaries.len(), 3, "{err}");
    let prompt_tokens = |l: &str| -> usize { l["[prompt ".len()..].split(' ').next().unwrap().parse().unwrap() };

    let t = puyu::Tokenizer::from_sentencepiece(puyu::tiny::TOKENIZER_MODEL).unwrap();
    let first = puyu::chat::Template::default().encode(&t, &[puyu::chat::Message::user("你好")]).unwrap().len();
    assert_eq!(prompt_tokens(summaries[0]), first, "{err}");
    // The reply's last token + "<|im_end|>\n<|im_start|>user\nmore<|im_end|>\n<|im_start|>assistant\n"
    // (less its <|im_end|> when the reply ended with one).
    let turn = t.encode("<|im_end|>\n<|im_start|>user\nmore<|im_end|>\n<|im_start|>assistant\n", false).unwrap().len();
    let second = if summaries[0].contains("| Stop |") { turn } else { 1 + turn };
    assert_eq!(prompt_tokens(summaries[1]), second, "{err}");
    assert_eq!(prompt_tokens(summaries[2]), first, "after /reset: {err}");
    // Greedy: the same first turn gives the same answer A after the reset. stdout is
    // A \n B \n A \n (answers may hold newlines themselves).
    let s = String::from_utf8(out.stdout.clone()).unwrap();
    let same = (1..s.len() / 2)
        .filter(|&i| s.is_char_boundary(i))
        .any(|i| s[i..].starts_with('\n') && s.ends_with(&format!("\n{}\n", &s[..i])));
    assert!(same, "{s:?}");
    assert!(err.contains("(new conversation)") && summaries[0].contains("context 107/256"), "{err}");
}

/// `--model org/name` finds the model offline in the Hugging Face hub cache (HF_HUB_CACHE),
/// converts it once into puyu's cache and reuses it; an id that is not there says how to get
/// it; a chat prompt over the context is a named error and the chat goes on.
#[test]
fn model_lookup_in_the_hf_cache() {
    let root = tempfile::tempdir().unwrap();
    let hub = root.path().join("hub");
    let snapshot = hub.join("models--internlm--tiny-test/snapshots/0123abcd");
    assert!(puyu(&["dev", "write-tiny", "tiny", snapshot.to_str().unwrap()]).status.success());
    std::fs::create_dir_all(hub.join("models--internlm--tiny-test/refs")).unwrap();
    std::fs::write(hub.join("models--internlm--tiny-test/refs/main"), "0123abcd").unwrap();
    let run = |model: &str| {
        Command::new(env!("CARGO_BIN_EXE_puyu"))
            .args(["run", "--model", model, "--prompt", "Hello", "--temperature", "0", "--max-tokens", "3"])
            .env("HF_HUB_CACHE", &hub)
            .env("PUYU_CACHE", root.path().join("puyu-cache"))
            .output()
            .unwrap()
    };
    let first = run("internlm/tiny-test");
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(stderr(&first).contains("converting") && stderr(&first).contains("internlm_tiny-test-q4"), "{}", stderr(&first));
    let second = run("internlm/tiny-test");
    assert!(second.status.success() && stderr(&second).contains("converted from"), "{}", stderr(&second));
    assert_eq!(first.stdout, second.stdout);

    let missing = run("internlm/not-there");
    assert!(!missing.status.success());
    let err = stderr(&missing);
    assert!(err.contains("huggingface-cli download internlm/not-there") && err.contains(hub.to_str().unwrap()), "{err}");

    let out = chat(&["--max-tokens", "3", "--context", "64"], "hello\n/exit\n");
    let err = stderr(&out);
    assert!(out.status.success() && err.contains("context is full") && !err.contains("[prompt "), "{err}");
}
