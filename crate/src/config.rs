//! The model's hyper-parameters, read from an HF InternLM2 `config.json`.
//!
//! Every field the forward pass needs is checked here, once, with an error that names the field;
//! nothing downstream re-validates. InternLM2 has no `head_dim` field: it is `hidden / heads`.

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// How RoPE positions are scaled beyond the trained context (`rope_scaling` in config.json).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE at every length.
    None,
    /// Dynamic NTK: once the total length L exceeds `max_position_embeddings`, the base becomes
    /// `base · (factor·L/max_pos − (factor−1))^(hd/(hd−2))` (see [`crate::rope`]).
    Dynamic { factor: f64 },
    /// Linear interpolation: positions are divided by `factor`.
    Linear { factor: f64 },
}

#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    pub tie_word_embeddings: bool,
    pub bos_token_id: u32,
    /// Every id that ends generation (config's `eos_token_id`, which may be a list).
    pub eos_token_ids: Vec<u32>,
}

impl ModelConfig {
    /// Query heads that share one KV head (GQA group size, `G` in internlm2.md).
    pub fn kv_group(&self) -> usize {
        self.num_heads / self.num_kv_heads
    }

    /// Rows of the packed `wqkv` matrix: `(heads + 2·kv_heads) · head_dim`.
    pub fn qkv_rows(&self) -> usize {
        (self.num_heads + 2 * self.num_kv_heads) * self.head_dim
    }

    pub fn from_json_str(text: &str) -> Result<Self> {
        Self::from_json_str_named(text, "config.json")
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub fn from_file(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json_str_named(&text, &path.display().to_string())
    }

    fn from_json_str_named(text: &str, path: &str) -> Result<Self> {
        let value: Value = serde_json::from_str(text).map_err(|e| Error::ConfigSyntax {
            path: path.to_string(),
            reason: e.to_string(),
        })?;
        let Value::Object(obj) = value else {
            return Err(Error::ConfigSyntax {
                path: path.to_string(),
                reason: "the top level is not an object".into(),
            });
        };
        Self::from_object(&obj)
    }

    fn from_object(obj: &Map<String, Value>) -> Result<Self> {
        check_architecture(obj)?;
        if obj.get("bias").and_then(Value::as_bool) == Some(true) {
            return Err(Error::ConfigInvalidField {
                field: "bias",
                reason: "InternLM2 checkpoints with biases are not supported".into(),
            });
        }
        if let Some(act) = obj.get("hidden_act") {
            if act.as_str() != Some("silu") {
                return Err(Error::ConfigInvalidField {
                    field: "hidden_act",
                    reason: format!("{act} is not supported (InternLM2 uses \"silu\")"),
                });
            }
        }

        let hidden_size = positive(obj, "hidden_size")?;
        let num_heads = positive(obj, "num_attention_heads")?;
        let num_kv_heads = match obj.get("num_key_value_heads") {
            None | Some(Value::Null) => num_heads,
            Some(_) => positive(obj, "num_key_value_heads")?,
        };
        if hidden_size % num_heads != 0 {
            return Err(Error::ConfigInvalidField {
                field: "num_attention_heads",
                reason: format!("hidden_size {hidden_size} is not a multiple of {num_heads} heads"),
            });
        }
        if num_heads % num_kv_heads != 0 {
            return Err(Error::ConfigInvalidField {
                field: "num_key_value_heads",
                reason: format!("{num_heads} heads cannot be grouped over {num_kv_heads} KV heads"),
            });
        }
        let head_dim = hidden_size / num_heads;
        if head_dim % 2 != 0 {
            return Err(Error::ConfigInvalidField {
                field: "num_attention_heads",
                reason: format!("head_dim {head_dim} must be even for RoPE"),
            });
        }

        let (rope_theta, rope_scaling) = rope(obj)?;
        let eos_token_ids = match obj.get("eos_token_id") {
            None | Some(Value::Null) => vec![2],
            Some(Value::Array(ids)) => ids
                .iter()
                .map(|v| token_id(v, "eos_token_id"))
                .collect::<Result<_>>()?,
            Some(v) => vec![token_id(v, "eos_token_id")?],
        };
        let bos_token_id = match obj.get("bos_token_id") {
            None | Some(Value::Null) => 1,
            Some(v) => token_id(v, "bos_token_id")?,
        };

        Ok(ModelConfig {
            vocab_size: positive(obj, "vocab_size")?,
            hidden_size,
            intermediate_size: positive(obj, "intermediate_size")?,
            num_layers: positive(obj, "num_hidden_layers")?,
            num_heads,
            num_kv_heads,
            head_dim,
            max_position_embeddings: positive(obj, "max_position_embeddings")?,
            rms_norm_eps: positive_float(obj, "rms_norm_eps")?,
            rope_theta,
            rope_scaling,
            tie_word_embeddings: obj
                .get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            bos_token_id,
            eos_token_ids,
        })
    }
}

fn check_architecture(obj: &Map<String, Value>) -> Result<()> {
    let model_type = obj.get("model_type").and_then(Value::as_str);
    let architectures: Option<Vec<&str>> = obj
        .get("architectures")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect());
    match (model_type, architectures) {
        (None, None) => Err(Error::ConfigMissingField {
            field: "model_type",
        }),
        (Some(t), _) if t != "internlm2" => Err(Error::UnsupportedArchitecture {
            found: t.to_string(),
        }),
        (_, Some(archs)) if !archs.contains(&"InternLM2ForCausalLM") => {
            Err(Error::UnsupportedArchitecture {
                found: archs.join(", "),
            })
        }
        _ => Ok(()),
    }
}

/// `rope_theta` and the scaling, from `rope_scaling` (current configs) or the older
/// `"rotary": {"base", "type", "scaling_factor"}` form. `rope_scaling` wins when both exist.
fn rope(obj: &Map<String, Value>) -> Result<(f64, RopeScaling)> {
    let rotary = obj.get("rotary").and_then(Value::as_object);
    let theta = match (obj.get("rope_theta"), rotary.and_then(|r| r.get("base"))) {
        (Some(Value::Null) | None, None) => 10000.0, // InternLM2Config's default
        (Some(v), _) if !v.is_null() => float_value(v, "rope_theta")?,
        (_, Some(base)) => float_value(base, "rotary.base")?,
        _ => unreachable!(),
    };
    if !(theta > 1.0 && theta.is_finite()) {
        return Err(Error::ConfigInvalidField {
            field: "rope_theta",
            reason: format!("{theta} must be a finite number above 1"),
        });
    }

    let scaling = match obj.get("rope_scaling") {
        Some(Value::Object(s)) => {
            let kind = s
                .get("type")
                .or_else(|| s.get("rope_type"))
                .and_then(Value::as_str)
                .ok_or(Error::ConfigMissingField {
                    field: "rope_scaling.type",
                })?;
            let factor = s.get("factor").ok_or(Error::ConfigMissingField {
                field: "rope_scaling.factor",
            });
            scaling_of(kind, || factor.and_then(|f| float_value(f, "rope_scaling.factor")))?
        }
        Some(Value::Null) | None => match rotary {
            Some(r) => {
                let kind = r.get("type").and_then(Value::as_str).unwrap_or("origin");
                let factor = r.get("scaling_factor");
                scaling_of(kind, || match factor {
                    Some(f) => float_value(f, "rotary.scaling_factor"),
                    None => Ok(1.0),
                })?
            }
            None => RopeScaling::None,
        },
        Some(other) => {
            return Err(Error::ConfigInvalidField {
                field: "rope_scaling",
                reason: format!("expected null or an object, found {other}"),
            })
        }
    };
    Ok((theta, scaling))
}

fn scaling_of(kind: &str, factor: impl FnOnce() -> Result<f64>) -> Result<RopeScaling> {
    let checked = |factor: f64| {
        if factor > 0.0 && factor.is_finite() {
            Ok(factor)
        } else {
            Err(Error::ConfigInvalidField {
                field: "rope_scaling.factor",
                reason: format!("{factor} must be a positive number"),
            })
        }
    };
    match kind {
        "origin" | "default" => Ok(RopeScaling::None),
        "dynamic" => Ok(RopeScaling::Dynamic {
            factor: checked(factor()?)?,
        }),
        "linear" => Ok(RopeScaling::Linear {
            factor: checked(factor()?)?,
        }),
        other => Err(Error::UnsupportedRopeScaling {
            kind: other.to_string(),
        }),
    }
}

fn positive(obj: &Map<String, Value>, field: &'static str) -> Result<usize> {
    let v = obj.get(field).ok_or(Error::ConfigMissingField { field })?;
    match v.as_u64() {
        Some(n) if n > 0 && n <= u32::MAX as u64 => Ok(n as usize),
        _ => Err(Error::ConfigInvalidField {
            field,
            reason: format!("{v} is not a positive integer"),
        }),
    }
}

fn positive_float(obj: &Map<String, Value>, field: &'static str) -> Result<f64> {
    let v = obj.get(field).ok_or(Error::ConfigMissingField { field })?;
    let x = float_value(v, field)?;
    if x > 0.0 {
        Ok(x)
    } else {
        Err(Error::ConfigInvalidField {
            field,
            reason: format!("{x} must be positive"),
        })
    }
}

fn float_value(v: &Value, field: &'static str) -> Result<f64> {
    v.as_f64()
        .filter(|x| x.is_finite())
        .ok_or_else(|| Error::ConfigInvalidField {
            field,
            reason: format!("{v} is not a number"),
        })
}

fn token_id(v: &Value, field: &'static str) -> Result<u32> {
    v.as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| Error::ConfigInvalidField {
            field,
            reason: format!("{v} is not a token id"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> serde_json::Value {
        serde_json::json!({
            "architectures": ["InternLM2ForCausalLM"], "model_type": "internlm2",
            "vocab_size": 92544, "hidden_size": 2048, "intermediate_size": 8192,
            "num_hidden_layers": 24, "num_attention_heads": 16, "num_key_value_heads": 8,
            "max_position_embeddings": 32768, "rms_norm_eps": 1e-5, "rope_theta": 1000000,
            "rope_scaling": {"type": "dynamic", "factor": 2.0}, "bias": false,
            "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2,
            "tie_word_embeddings": false
        })
    }

    fn parse(v: &serde_json::Value) -> Result<ModelConfig> {
        ModelConfig::from_json_str(&v.to_string())
    }

    #[test]
    fn reads_the_1_8b_config() {
        let c = parse(&base()).unwrap();
        assert_eq!(c.head_dim, 128);
        assert_eq!(c.kv_group(), 2);
        assert_eq!(c.qkv_rows(), 4096);
        assert_eq!(c.rope_theta, 1e6);
        assert_eq!(c.rope_scaling, RopeScaling::Dynamic { factor: 2.0 });
        assert_eq!(c.eos_token_ids, vec![2]);
    }

    #[test]
    fn rope_scaling_forms() {
        let mut v = base();
        v["rope_scaling"] = serde_json::Value::Null;
        assert_eq!(parse(&v).unwrap().rope_scaling, RopeScaling::None);
        v["rope_scaling"] = serde_json::json!({"type": "linear", "factor": 4.0});
        assert_eq!(parse(&v).unwrap().rope_scaling, RopeScaling::Linear { factor: 4.0 });
        v["rope_scaling"] = serde_json::json!({"rope_type": "dynamic", "factor": 2.5});
        assert_eq!(parse(&v).unwrap().rope_scaling, RopeScaling::Dynamic { factor: 2.5 });

        // The older InternLM form: "rotary": {"base", "type"}.
        let mut old = base();
        old.as_object_mut().unwrap().remove("rope_scaling");
        old.as_object_mut().unwrap().remove("rope_theta");
        old["rotary"] = serde_json::json!({"base": 10000, "type": "dynamic"});
        let c = parse(&old).unwrap();
        assert_eq!(c.rope_theta, 10000.0);
        assert_eq!(c.rope_scaling, RopeScaling::Dynamic { factor: 1.0 });
        old["rotary"] = serde_json::json!({"base": 50000, "type": "origin"});
        let c = parse(&old).unwrap();
        assert_eq!((c.rope_theta, c.rope_scaling), (50000.0, RopeScaling::None));
    }

    #[test]
    fn eos_may_be_a_list() {
        let mut v = base();
        v["eos_token_id"] = serde_json::json!([2, 92542]);
        assert_eq!(parse(&v).unwrap().eos_token_ids, vec![2, 92542]);
    }

    #[test]
    fn named_errors() {
        let mut v = base();
        v["rope_scaling"] = serde_json::json!({"type": "yarn", "factor": 4.0});
        assert!(matches!(parse(&v), Err(Error::UnsupportedRopeScaling { kind }) if kind == "yarn"));

        let mut v = base();
        v.as_object_mut().unwrap().remove("hidden_size");
        assert!(matches!(parse(&v), Err(Error::ConfigMissingField { field: "hidden_size" })));

        let mut v = base();
        v["rope_scaling"] = serde_json::json!({"type": "dynamic"});
        assert!(matches!(
            parse(&v),
            Err(Error::ConfigMissingField { field: "rope_scaling.factor" })
        ));

        let mut v = base();
        v["model_type"] = serde_json::json!("llama");
        v["architectures"] = serde_json::json!(["LlamaForCausalLM"]);
        let err = parse(&v).unwrap_err();
        assert!(matches!(&err, Error::UnsupportedArchitecture { found } if found == "llama"));
        assert!(err.to_string().contains("llama"));

        let mut v = base();
        v["num_key_value_heads"] = serde_json::json!(3);
        assert!(matches!(
            parse(&v),
            Err(Error::ConfigInvalidField { field: "num_key_value_heads", .. })
        ));

        let mut v = base();
        v["vocab_size"] = serde_json::json!(-5);
        assert!(matches!(parse(&v), Err(Error::ConfigInvalidField { field: "vocab_size", .. })));

        assert!(matches!(
            ModelConfig::from_json_str("{not json"),
            Err(Error::ConfigSyntax { .. })
        ));
    }
}
