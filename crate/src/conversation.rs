//! A multi-turn chat over one KV cache: each turn feeds the model only what is new since the
//! last one (the reply's last token, the end of the assistant turn, the user's turn and the
//! generation prompt), never the whole conversation again.
//!
//! The ids fed over a conversation equal the template's rendering of it, except that the
//! assistant's turns are the sampled ids themselves (not a re-encoding of their text, which
//! could tokenize differently).

use crate::chat::{Message, Template};
use crate::error::Result;
use crate::tokenizer::{Tokenizer, IM_END};

pub struct Conversation {
    pub template: Template,
    /// The turns so far (the assistant's as decoded text).
    pub messages: Vec<Message>,
    /// Sampled but not yet fed to the model: the reply's last token.
    pending: Vec<u32>,
}

impl Conversation {
    pub fn new(template: Template) -> Self {
        Conversation { template, messages: Vec::new(), pending: Vec::new() }
    }

    /// Forgets everything (the caller empties the KV cache too).
    pub fn reset(&mut self) {
        self.messages.clear();
        self.pending.clear();
    }

    /// Adds a user turn; returns the ids to run after what the model holds.
    pub fn user(&mut self, tokenizer: &Tokenizer, text: &str) -> Result<Vec<u32>> {
        self.messages.push(Message::user(text));
        if self.messages.len() == 1 {
            return self.template.encode(tokenizer, &self.messages);
        }
        let mut ids = std::mem::take(&mut self.pending);
        // Close the assistant turn (its <|im_end|> may have been sampled already), open the user's.
        let turn = format!("<|im_end|>\n<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n");
        let mut next = tokenizer.encode(&turn, false)?;
        if ids.last() == Some(&IM_END) {
            next.remove(0);
        }
        ids.extend(next);
        Ok(ids)
    }

    /// Takes back the last user turn (it was not run: it did not fit the context).
    pub fn undo_user(&mut self) {
        if self.messages.last().is_some_and(|m| m.role == crate::chat::Role::User) {
            self.messages.pop();
        }
    }

    /// Records the reply to the last user turn: its sampled ids (a stop id included) and text.
    pub fn assistant(&mut self, ids: &[u32], text: &str) {
        self.messages.push(Message::assistant(text));
        self.pending = ids.last().copied().into_iter().collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two turns fed piece by piece are the template's rendering of the conversation.
    #[test]
    fn turns_add_up_to_the_rendered_conversation() {
        let t = Tokenizer::from_sentencepiece(crate::tiny::TOKENIZER_MODEL).unwrap();
        let mut c = Conversation::new(Template::default());
        let mut fed = c.user(&t, "你好").unwrap();
        let reply = t.encode("Hello!", false).unwrap();
        fed.extend(&reply[..reply.len() - 1]);
        // Ended by max tokens: no <|im_end|> sampled.
        c.assistant(&reply, "Hello!");
        fed.extend(c.user(&t, "more").unwrap());
        let whole = Template::default()
            .encode(&t, &[Message::user("你好"), Message::assistant("Hello!"), Message::user("more")])
            .unwrap();
        assert_eq!(fed, whole);

        // Ended by a sampled <|im_end|>: it is fed once, not twice.
        let mut c = Conversation::new(Template::default());
        let mut fed = c.user(&t, "你好").unwrap();
        let mut reply = t.encode("Hello!", false).unwrap();
        reply.push(IM_END);
        fed.extend(&reply[..reply.len() - 1]);
        c.assistant(&reply, "Hello!");
        fed.extend(c.user(&t, "more").unwrap());
        assert_eq!(fed, whole);
    }
}
