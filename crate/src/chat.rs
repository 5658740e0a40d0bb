//! InternLM2-Chat's conversation format: the ChatML-style template, tools (`<|plugin|>`) and
//! the code interpreter (`<|interpreter|>`), and parsing the model's replies back.
//!
//! ```text
//! <s><|im_start|>system\n{system}<|im_end|>\n
//! <|im_start|>system name=<|plugin|>\n[{tool schemas}]<|im_end|>\n
//! <|im_start|>user\n{text}<|im_end|>\n
//! <|im_start|>assistant\n{text}<|action_start|><|plugin|>\n{"name": …, "parameters": …}<|action_end|><|im_end|>\n
//! <|im_start|>environment name=<|plugin|>\n{result}<|im_end|>\n
//! <|im_start|>assistant\n
//! ```
//! A conversation is rendered to text and then encoded as a whole (special-token names in the
//! text become their ids), as HF's `apply_chat_template` does.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::Result;
use crate::tokenizer::Tokenizer;

/// The system prompt of HF's `model.chat()` for InternLM2-Chat.
pub const DEFAULT_SYSTEM_PROMPT: &str = "You are an AI assistant whose name is InternLM (书生·浦语).\n\
- InternLM (书生·浦语) is a conversational language model that is developed by Shanghai AI Laboratory (上海人工智能实验室). It is designed to be helpful, honest, and harmless.\n\
- InternLM (书生·浦语) can understand and communicate fluently in the language chosen by the user such as English and 中文.";

/// The system prompt that introduces the code interpreter (lagent's InternLM2 protocol).
pub const DEFAULT_INTERPRETER_PROMPT: &str = "You now have access to a Jupyter notebook environment supporting Python code execution. Just send code to python to run in this stateful environment. This tool is suitable for scenarios that need to use Python code, such as calculation and plotting.";

/// Text that ends an assistant turn: the end of the message, or of a tool call.
pub const STOP_STRINGS: [&str; 2] = ["<|im_end|>", "<|action_end|>"];
/// The ids of the stop strings, with `</s>`.
pub const STOP_IDS: [u32; 3] = [crate::tokenizer::EOS, crate::tokenizer::IM_END, crate::tokenizer::ACTION_END];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
    /// Results of tools and of the interpreter.
    Environment,
}

/// Whom a system or environment message is about: ` name=<|plugin|>` or ` name=<|interpreter|>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    Plugin,
    Interpreter,
}

impl Channel {
    fn token(self) -> &'static str {
        match self {
            Channel::Plugin => "<|plugin|>",
            Channel::Interpreter => "<|interpreter|>",
        }
    }
}

/// A call of a tool by the assistant.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    pub name: String,
    /// The arguments object (`parameters` in InternLM2's format).
    pub arguments: Value,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<Channel>,
    /// Assistant messages only: the tools it called, after its text.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// Assistant messages only: code it sent to the interpreter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

impl Message {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Message {
            role,
            content: content.into(),
            name: None,
            tool_calls: Vec::new(),
            code: None,
        }
    }
    pub fn system(content: impl Into<String>) -> Self {
        Message::new(Role::System, content)
    }
    pub fn user(content: impl Into<String>) -> Self {
        Message::new(Role::User, content)
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Message::new(Role::Assistant, content)
    }
    /// The result of a tool (`Channel::Plugin`) or of interpreted code.
    pub fn environment(channel: Channel, content: impl Into<String>) -> Self {
        Message {
            name: Some(channel),
            ..Message::new(Role::Environment, content)
        }
    }
}

/// Which system prompt a conversation gets when it has no system message of its own.
#[derive(Clone, Debug, PartialEq)]
pub enum System {
    /// InternLM2-Chat's default ([`DEFAULT_SYSTEM_PROMPT`]), as HF's `model.chat()` uses.
    Default,
    /// No system message at all (HF's `apply_chat_template`).
    None,
    Custom(String),
}

/// How to render a conversation.
#[derive(Clone, Debug)]
pub struct Template {
    pub system: System,
    /// Tool schemas (JSON objects): rendered as the `system name=<|plugin|>` message.
    pub tools: Vec<Value>,
    /// Announce the code interpreter with this prompt.
    pub interpreter: Option<String>,
    /// End with `<|im_start|>assistant\n` so the model writes the reply.
    pub add_generation_prompt: bool,
}

impl Default for Template {
    fn default() -> Self {
        Template {
            system: System::Default,
            tools: Vec::new(),
            interpreter: None,
            add_generation_prompt: true,
        }
    }
}

impl Template {
    /// The conversation as text, starting with `<s>`.
    pub fn render(&self, messages: &[Message]) -> String {
        let mut out = String::from("<s>");
        let has_system = messages.first().is_some_and(|m| m.role == Role::System && m.name.is_none());
        if !has_system {
            match &self.system {
                System::Default => push_turn(&mut out, "system", None, DEFAULT_SYSTEM_PROMPT),
                System::Custom(text) => push_turn(&mut out, "system", None, text),
                System::None => {}
            }
        }
        // The tool and interpreter announcements follow the main system message.
        let (head, rest) = if has_system { messages.split_at(1) } else { messages.split_at(0) };
        for m in head {
            push_message(&mut out, m);
        }
        if !self.tools.is_empty() {
            let schemas = python_json(&Value::Array(self.tools.clone()));
            push_turn(&mut out, "system", Some(Channel::Plugin), &schemas);
        }
        if let Some(prompt) = &self.interpreter {
            push_turn(&mut out, "system", Some(Channel::Interpreter), prompt);
        }
        for m in rest {
            push_message(&mut out, m);
        }
        if self.add_generation_prompt {
            out.push_str("<|im_start|>assistant\n");
        }
        out
    }

    /// The rendered conversation's token ids.
    pub fn encode(&self, tokenizer: &Tokenizer, messages: &[Message]) -> Result<Vec<u32>> {
        tokenizer.encode(&self.render(messages), false)
    }
}

fn push_turn(out: &mut String, role: &str, name: Option<Channel>, content: &str) {
    out.push_str("<|im_start|>");
    out.push_str(role);
    if let Some(c) = name {
        out.push_str(" name=");
        out.push_str(c.token());
    }
    out.push('\n');
    out.push_str(content);
    out.push_str("<|im_end|>\n");
}

fn push_message(out: &mut String, m: &Message) {
    let role = match m.role {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::Environment => "environment",
    };
    let mut content = m.content.clone();
    for call in &m.tool_calls {
        let json = python_json(&serde_json::json!({"name": call.name, "parameters": call.arguments}));
        content.push_str(&format!("<|action_start|><|plugin|>\n{json}<|action_end|>"));
    }
    if let Some(code) = &m.code {
        content.push_str(&format!("<|action_start|><|interpreter|>\n{code}<|action_end|>"));
    }
    push_turn(out, role, m.name, &content);
}

/// JSON as Python's `json.dumps(v, ensure_ascii=False)` writes it (`, ` and `: ` separators,
/// keys in their given order), which is what InternLM2's tool prompts were trained on.
pub fn python_json(v: &Value) -> String {
    match v {
        Value::Array(items) => {
            let parts: Vec<String> = items.iter().map(python_json).collect();
            format!("[{}]", parts.join(", "))
        }
        Value::Object(map) => {
            let parts: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{}: {}", Value::String(k.clone()), python_json(v)))
                .collect();
            format!("{{{}}}", parts.join(", "))
        }
        other => other.to_string(),
    }
}

/// A tool call the model wrote that could not be read.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct InvalidToolCall {
    /// The text between `<|action_start|><|plugin|>\n` and `<|action_end|>`.
    pub raw: String,
    pub reason: String,
}

/// An assistant reply, split into its text and its actions.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Reply {
    pub content: String,
    pub tool_calls: Vec<ToolCall>,
    /// Code sent to the interpreter (the body of its ```python block, or the raw text).
    pub code: Option<String>,
    /// Tool calls whose JSON was malformed: reported, not dropped, and never a panic.
    pub invalid_tool_calls: Vec<InvalidToolCall>,
}

/// Parses the text the model generated for one assistant turn (special tokens included as
/// their names; a final `<|im_end|>` or `<|action_end|>` may be present or already cut).
pub fn parse_reply(text: &str) -> Reply {
    let text = text.strip_suffix("<|im_end|>").unwrap_or(text);
    let mut reply = Reply::default();
    let mut rest = text;
    while let Some(start) = rest.find("<|action_start|>") {
        reply.content.push_str(&rest[..start]);
        let after = &rest[start + "<|action_start|>".len()..];
        let (body, next) = match after.find("<|action_end|>") {
            Some(end) => (&after[..end], &after[end + "<|action_end|>".len()..]),
            None => (after, ""),
        };
        rest = next;
        if let Some(call) = body.strip_prefix("<|plugin|>") {
            let raw = call.trim();
            match parse_tool_call(raw) {
                Ok(call) => reply.tool_calls.push(call),
                Err(reason) => reply.invalid_tool_calls.push(InvalidToolCall {
                    raw: raw.to_string(),
                    reason,
                }),
            }
        } else if let Some(code) = body.strip_prefix("<|interpreter|>") {
            reply.code = Some(code_block(code));
        } else {
            reply.invalid_tool_calls.push(InvalidToolCall {
                raw: body.to_string(),
                reason: "an action must start with <|plugin|> or <|interpreter|>".into(),
            });
        }
    }
    reply.content.push_str(rest);
    reply.content = reply.content.trim_end_matches("<|im_end|>").to_string();
    reply
}

fn parse_tool_call(raw: &str) -> std::result::Result<ToolCall, String> {
    let v: Value = serde_json::from_str(raw).map_err(|e| format!("not valid JSON: {e}"))?;
    let obj = v.as_object().ok_or("a tool call must be a JSON object")?;
    let name = obj
        .get("name")
        .and_then(Value::as_str)
        .ok_or("a tool call needs a string `name`")?;
    let arguments = obj
        .get("parameters")
        .or_else(|| obj.get("arguments"))
        .cloned()
        .unwrap_or(Value::Object(Default::default()));
    // Some replies carry the arguments as a JSON string.
    let arguments = match arguments {
        Value::String(s) => serde_json::from_str(&s).map_err(|e| format!("`parameters` is a string but not JSON: {e}"))?,
        other => other,
    };
    Ok(ToolCall {
        name: name.to_string(),
        arguments,
    })
}

/// The body of a fenced code block (```python … ```), or the text as it is.
fn code_block(text: &str) -> String {
    let t = text.trim();
    if let Some(inner) = t.strip_prefix("```") {
        let inner = inner.split_once('\n').map_or("", |(_, body)| body);
        return inner.trim_end().trim_end_matches("```").trim_end().to_string();
    }
    t.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_json_spacing() {
        let v = serde_json::json!({"name": "get_weather", "parameters": {"location": "上海", "days": [1, 2]}});
        assert_eq!(
            python_json(&v),
            r#"{"name": "get_weather", "parameters": {"location": "上海", "days": [1, 2]}}"#
        );
    }

    #[test]
    fn parses_a_tool_call() {
        let r = parse_reply("I will look it up.<|action_start|><|plugin|>\n{\"name\": \"get_weather\", \"parameters\": {\"location\": \"Shanghai\"}}<|action_end|>");
        assert_eq!(r.content, "I will look it up.");
        assert_eq!(r.tool_calls, vec![ToolCall { name: "get_weather".into(), arguments: serde_json::json!({"location": "Shanghai"}) }]);
        assert!(r.invalid_tool_calls.is_empty() && r.code.is_none());
    }

    #[test]
    fn parses_interpreter_code() {
        let r = parse_reply("Let me compute.<|action_start|><|interpreter|>\n```python\nprint(2 ** 10)\n```<|action_end|>");
        assert_eq!(r.content, "Let me compute.");
        assert_eq!(r.code.as_deref(), Some("print(2 ** 10)"));
        // Cut at the stop string (no <|action_end|>), and without a fence.
        let r = parse_reply("<|action_start|><|interpreter|>\nx = 1\nx + 1");
        assert_eq!(r.code.as_deref(), Some("x = 1\nx + 1"));
    }

    #[test]
    fn malformed_tool_calls_are_reported() {
        for (text, needle) in [
            ("<|action_start|><|plugin|>\n{\"name\": \"f\", \"parameters\": {\"a\": 1}", "not valid JSON"),
            ("<|action_start|><|plugin|>\n[1, 2]<|action_end|>", "JSON object"),
            ("<|action_start|><|plugin|>\n{\"parameters\": {}}<|action_end|>", "`name`"),
            ("<|action_start|><|plugin|>\n{\"name\": \"f\", \"parameters\": \"{oops\"}<|action_end|>", "not JSON"),
            ("<|action_start|>{\"name\": \"f\"}<|action_end|>", "must start with"),
        ] {
            let r = parse_reply(text);
            assert!(r.tool_calls.is_empty(), "{text}");
            assert_eq!(r.invalid_tool_calls.len(), 1, "{text}");
            assert!(r.invalid_tool_calls[0].reason.contains(needle), "{text}: {}", r.invalid_tool_calls[0].reason);
        }
        // String-encoded parameters that are valid JSON are accepted.
        let r = parse_reply("<|action_start|><|plugin|>\n{\"name\": \"f\", \"arguments\": \"{\\\"a\\\": 1}\"}<|action_end|>");
        assert_eq!(r.tool_calls[0].arguments, serde_json::json!({"a": 1}));
    }

    #[test]
    fn plain_text_is_content() {
        let r = parse_reply("Hello there!<|im_end|>");
        assert_eq!(r, Reply { content: "Hello there!".into(), ..Default::default() });
    }

    #[test]
    fn renders_tools_interpreter_and_environment() {
        let tools = vec![serde_json::json!({"name": "get_weather", "description": "天气", "parameters": {"type": "object"}})];
        let t = Template { system: System::Custom("Be brief.".into()), tools, interpreter: Some("Use Python.".into()), add_generation_prompt: true };
        let mut call = Message::assistant("I will look it up.");
        call.tool_calls.push(ToolCall { name: "get_weather".into(), arguments: serde_json::json!({"location": "Shanghai"}) });
        let msgs = vec![
            Message::user("Weather in Shanghai?"),
            call,
            Message::environment(Channel::Plugin, "{\"temperature\": 22}"),
        ];
        assert_eq!(
            t.render(&msgs),
            "<s><|im_start|>system\nBe brief.<|im_end|>\n\
             <|im_start|>system name=<|plugin|>\n[{\"name\": \"get_weather\", \"description\": \"天气\", \"parameters\": {\"type\": \"object\"}}]<|im_end|>\n\
             <|im_start|>system name=<|interpreter|>\nUse Python.<|im_end|>\n\
             <|im_start|>user\nWeather in Shanghai?<|im_end|>\n\
             <|im_start|>assistant\nI will look it up.<|action_start|><|plugin|>\n{\"name\": \"get_weather\", \"parameters\": {\"location\": \"Shanghai\"}}<|action_end|><|im_end|>\n\
             <|im_start|>environment name=<|plugin|>\n{\"temperature\": 22}<|im_end|>\n\
             <|im_start|>assistant\n"
        );
    }

    #[test]
    fn system_prompt_choices() {
        let msgs = [Message::user("hi")];
        let default = Template::default().render(&msgs);
        assert!(default.starts_with(&format!("<s><|im_start|>system\n{DEFAULT_SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\nhi")));
        let none = Template { system: System::None, ..Default::default() }.render(&msgs);
        assert_eq!(none, "<s><|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
        // A conversation's own system message wins over the default.
        let own = Template::default().render(&[Message::system("S"), Message::user("hi")]);
        assert_eq!(own, "<s><|im_start|>system\nS<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
    }
}
