//! Agent state in the vector store. State entries live in a collection of their own (`<name>_state`, same
//! definition as the contexts') so a context search never has to filter them out, and their points use the
//! context payload layout, so the filter translation, both backends and the rerank serve them unchanged:
//!
//! | context field | state entry                                                    |
//! |---------------|----------------------------------------------------------------|
//! | `id`          | `StateKey::point_id()`                                         |
//! | `session_id`  | the entry's session, `""` without one                          |
//! | `agent_id`    | the owning agent                                               |
//! | `type`        | `agent_state`                                                  |
//! | `content`     | the text the value carries (`state_text`)                      |
//! | `metadata`    | `{"key": key, "value": value}`                                 |
//! | `visibility`  | `private`: only the owning agent (and admins) may see it        |
//! | `version`, `updated_at`, `expires_at` | the entry's own                        |
//!
//! What text a JSON value carries: every string in it, each after the path of object keys that leads to it
//! (`"retry policy: exponential backoff"`), with the numbers and booleans beside them the same way, all after
//! the entry's key. A value without a non-empty string carries no text and gets no point: counters, flags and
//! cursors are not worth recalling by meaning.

use serde_json::{Value, json};
use uuid::Uuid;

use crate::domain::{AgentState, Context, Visibility, content_hash};
use crate::error::{StoreError, StoreResult};

/// The `type` of every state point.
pub const STATE_POINT_TYPE: &str = "agent_state";

/// The text of a value is cut here (the model reads ~256 tokens of it at most).
pub const MAX_STATE_TEXT_CHARS: usize = 2000;

/// Characters of one object key kept in a path (longer keys are cut).
const MAX_NAME_CHARS: usize = 64;
/// Object keys kept in a path (deeper ones are left out of it).
const MAX_PATH_NAMES: usize = 8;

/// Words of a key or path segment: separators become spaces (`retry_policy` -> `retry policy`), cut at
/// `MAX_NAME_CHARS`.
fn words(name: &str) -> String {
    name.chars()
        .take(MAX_NAME_CHARS)
        .map(|c| if matches!(c, '_' | '-' | '.' | ':' | '/' | '@') { ' ' } else { c })
        .collect()
}

/// The text being built, within `MAX_STATE_TEXT_CHARS`: building stops once it is full, so a value of many
/// leaves under long keys costs no more than the budget (never a copy of the path per leaf).
struct Text {
    out: String,
    chars: usize,
    leaves: usize,
    has_text: bool,
}

impl Text {
    fn full(&self) -> bool {
        self.chars >= MAX_STATE_TEXT_CHARS
    }

    fn push(&mut self, piece: &str) {
        for c in piece.chars() {
            if self.full() {
                return;
            }
            self.out.push(c);
            self.chars += 1;
        }
    }

    fn leaf(&mut self, path: &[String], value: &str) {
        if self.leaves > 0 {
            self.push("; ");
        }
        self.leaves += 1;
        if !path.is_empty() {
            self.push(&path.join(" "));
            self.push(": ");
        }
        self.push(value);
    }

    fn collect(&mut self, path: &mut Vec<String>, value: &Value) {
        if self.full() {
            return;
        }
        match value {
            Value::String(text) => {
                let text = text.trim();
                if !text.is_empty() {
                    self.has_text = true;
                    self.leaf(path, text);
                }
            }
            Value::Number(number) => self.leaf(path, &number.to_string()),
            Value::Bool(flag) => self.leaf(path, if *flag { "true" } else { "false" }),
            Value::Null => {}
            Value::Array(items) => items.iter().for_each(|item| self.collect(path, item)),
            Value::Object(fields) => {
                for (name, item) in fields {
                    let named = path.len() < MAX_PATH_NAMES;
                    if named {
                        path.push(words(name));
                    }
                    self.collect(path, item);
                    if named {
                        path.pop();
                    }
                }
            }
        }
    }
}

/// The text `value` carries under `key`, or None when it carries none (see the module documentation).
pub fn state_text(key: &str, value: &Value) -> Option<String> {
    let mut text = Text { out: String::new(), chars: 0, leaves: 0, has_text: false };
    text.push(&words(key));
    text.push(": ");
    text.collect(&mut Vec::new(), value);
    text.has_text.then_some(text.out)
}

/// The point of a state entry whose value carries text.
pub fn state_point(state: &AgentState, point_id: Uuid, vector: Vec<f32>) -> Option<super::VectorPoint> {
    let content = state_text(&state.key, &state.value)?;
    let metadata = json!({"key": state.key, "value": state.value});
    let context = Context {
        id: point_id,
        session_id: state.session_id.clone().unwrap_or_default(),
        agent_id: state.agent_id.clone(),
        context_type: STATE_POINT_TYPE.into(),
        content_hash: content_hash(&content),
        content,
        tags: Vec::new(),
        metadata: metadata.as_object().cloned().unwrap_or_default(),
        visibility: Visibility::Private,
        created_at: state.updated_at,
        updated_at: state.updated_at,
        version: state.version,
        expires_at: state.expires_at,
    };
    Some(super::VectorPoint { context, vector })
}

/// The state entry a point holds.
pub fn state_of_point(point: &Context) -> StoreResult<AgentState> {
    let key = point.metadata.get("key").and_then(Value::as_str);
    let (Some(key), Some(value)) = (key, point.metadata.get("value")) else {
        return Err(StoreError::Backend(format!("state point {} lacks its key or value", point.id)));
    };
    Ok(AgentState {
        agent_id: point.agent_id.clone(),
        session_id: (!point.session_id.is_empty()).then(|| point.session_id.clone()),
        key: key.to_string(),
        value: value.clone(),
        version: point.version,
        updated_at: point.updated_at,
        expires_at: point.expires_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Timestamp;
    use crate::store::graph::StateKey;

    #[test]
    fn text_is_the_key_then_each_leaf_after_its_path() {
        let value = json!({"strategy": "exponential backoff", "max_attempts": 5, "notes": ["jitter", ""]});
        let text = state_text("retry_policy", &value).unwrap();
        assert!(text.starts_with("retry policy: "), "{text}");
        let mut parts: Vec<&str> = text["retry policy: ".len()..].split("; ").collect();
        parts.sort_unstable();
        assert_eq!(parts, ["max attempts: 5", "notes: jitter", "strategy: exponential backoff"]);
        assert_eq!(state_text("goal", &json!("ship the parser")).unwrap(), "goal: ship the parser");
    }

    #[test]
    fn long_keys_and_many_leaves_stay_within_the_budget() {
        let long = "k".repeat(30_000);
        let leaves: Vec<Value> = (0..20_000).map(|i| if i == 0 { json!("a") } else { json!(0) }).collect();
        let text = state_text(&long, &json!({ long.clone(): leaves })).unwrap();
        assert!(text.chars().count() <= MAX_STATE_TEXT_CHARS, "{}", text.len());
        let deep = (0..50).fold(json!("bottom"), |inner, i| json!({ format!("level{i}"): inner }));
        let text = state_text("deep", &deep).unwrap();
        assert!(text.ends_with(": bottom") && text.matches("level").count() == MAX_PATH_NAMES, "{text}");
    }

    #[test]
    fn values_without_a_string_carry_no_text() {
        for value in [json!(42), json!(true), json!(null), json!({"count": 3, "done": false}), json!(["", " "])] {
            assert_eq!(state_text("cursor", &value), None, "{value}");
        }
    }

    #[test]
    fn a_point_gives_back_its_state() {
        let state = AgentState {
            agent_id: "planner".into(),
            session_id: Some("s1".into()),
            key: "decision".into(),
            value: json!({"choice": "use sqlite"}),
            version: 3,
            updated_at: Timestamp(5),
            expires_at: Some(Timestamp(9)),
        };
        let id = StateKey::of(&state).point_id();
        let point = state_point(&state, id, vec![0.0; 4]).unwrap();
        assert_eq!(point.context.visibility, Visibility::Private);
        assert_eq!(state_of_point(&point.context).unwrap(), state);
        let unsessioned = AgentState { session_id: None, ..state };
        let point = state_point(&unsessioned, id, vec![0.0; 4]).unwrap();
        assert_eq!(point.context.session_id, "");
        assert_eq!(state_of_point(&point.context).unwrap(), unsessioned);
    }

    #[test]
    fn point_ids_differ_by_each_part_of_the_key() {
        let key = |agent: &str, session: Option<&str>, name: &str| StateKey {
            agent_id: agent.into(),
            session_id: session.map(str::to_string),
            key: name.into(),
        };
        let ids = [
            key("a", None, "k").point_id(),
            key("b", None, "k").point_id(),
            key("a", Some("s"), "k").point_id(),
            key("a", None, "k2").point_id(),
            key("ak", None, "").point_id(),
        ];
        let distinct: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
        assert_eq!(key("a", None, "k").point_id(), ids[0], "stable");
    }
}
