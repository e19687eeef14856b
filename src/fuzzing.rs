//! Entry points of the fuzz targets in `fuzz/` (`cargo fuzz run tool_arguments`, `... context_filter`) and of
//! the property test that runs the same code in the ordinary test suite. Each takes arbitrary bytes and
//! panics only when an invariant breaks:
//!
//! - decoding tool arguments never panics, refuses with `invalid_argument` only, and what it accepts
//!   encodes back to JSON that decodes again;
//! - every filter `ContextFilter::parse` accepts converts for every store without error: to the Qdrant JSON
//!   that qdrant-edge deserializes, to the Qdrant-server gRPC types, and to SQL that SQLite prepares and runs
//!   with exactly as many parameters as placeholders.

use std::cell::RefCell;
use std::sync::OnceLock;

use rusqlite::{Connection, params_from_iter};
use serde_json::Value;

use crate::domain::{ContextFilter, ContextFilterArgs, ReadScope, Timestamp};
use crate::error::{ErrorCode, ServiceError};
use crate::store::graph::sqlite::{SCHEMA, filter_sql, list_contexts_sql};
use crate::store::vector::{edge, filter::to_qdrant_json, qdrant};
use crate::tools;

/// The first byte picks the tool, the rest is its JSON arguments.
pub fn tool_arguments(data: &[u8]) {
    let Some((&selector, json)) = data.split_first() else { return };
    let Ok(arguments) = serde_json::from_slice::<Value>(json) else { return };
    check_tool_arguments(selector, arguments);
}

/// The structured half of `tool_arguments`, also driven by the property test with generated JSON.
pub fn check_tool_arguments(selector: u8, arguments: Value) {
    // The catalogue generates every JSON schema: build the name list once, not per input.
    static NAMES: OnceLock<Vec<&'static str>> = OnceLock::new();
    let names = NAMES
        .get_or_init(|| tools::catalogue().iter().map(|t| t.name).filter(|n| *n != "authenticate_agent").collect());
    let name = names[selector as usize % names.len()];
    match tools::decode_arguments(name, arguments.clone()) {
        Err(err) => assert_eq!(err.code, ErrorCode::InvalidArgument, "{name}: {}", err.message),
        Ok(encoded) => {
            let again = tools::decode_arguments(name, encoded.clone());
            assert!(again.is_ok(), "{name}: {encoded} was encoded from accepted arguments but does not decode");
            // The request types that carry a filter: it must convert everywhere once it parses.
            if matches!(name, "list_contexts" | "search_context")
                && let Ok(mut args) = serde_json::from_value::<serde_json::Map<String, Value>>(arguments)
            {
                let not_filter = [
                    "query",
                    "limit",
                    "cursor",
                    "agent_id",
                    "candidates",
                    "fuzzy_threshold",
                    "vector_weight",
                    "expand_related",
                ];
                for field in not_filter {
                    args.remove(field);
                }
                if let Ok(filter_args) = serde_json::from_value::<ContextFilterArgs>(Value::Object(args)) {
                    check_filter(selector, filter_args);
                }
            }
        }
    }
}

/// The first byte picks the caller's scope, the rest is `ContextFilterArgs` as JSON.
pub fn context_filter(data: &[u8]) {
    let Some((&selector, json)) = data.split_first() else { return };
    let Ok(args) = serde_json::from_slice::<ContextFilterArgs>(json) else { return };
    check_filter(selector, args);
}

/// Parses the filter for one of four scopes; what parses must convert for every store.
pub fn check_filter(selector: u8, args: ContextFilterArgs) {
    let scope = ReadScope {
        agent_id: "fuzz-agent".into(),
        admin: selector & 1 == 1,
        sessions: (selector & 2 == 2).then(|| vec!["s1".into(), "s-2".into()]),
    };
    let filter = match ContextFilter::parse(args, scope, Timestamp(1_700_000_000_000)) {
        Ok(filter) => filter,
        Err(ServiceError::InvalidArgument(_) | ServiceError::PayloadTooLarge(_)) => return,
        Err(other) => panic!("a filter was refused with {other:?}, not as invalid input"),
    };
    let json = to_qdrant_json(&filter);
    let typed =
        edge::qdrant_filter(&filter).unwrap_or_else(|err| panic!("qdrant-edge refuses the filter {json}: {err}"));
    let read: qdrant_edge::Filter =
        serde_json::from_value(json.clone()).unwrap_or_else(|err| panic!("qdrant-edge cannot read {json}: {err}"));
    assert_eq!(typed, read, "the filter built in qdrant-edge's types differs from {json}");
    if let Err(err) = qdrant::filter(&json) {
        panic!("the gRPC conversion refuses the filter {json}: {err}");
    }
    let (conditions, values) = filter_sql(&filter);
    let sql = list_contexts_sql(&conditions, 10);
    let placeholders = sql.matches('?').count();
    assert_eq!(placeholders, values.len(), "{sql}");
    SQLITE.with(|conn| {
        let conn = conn.borrow();
        let mut statement = conn.prepare(&sql).unwrap_or_else(|e| panic!("SQLite refuses {sql}: {e}"));
        let rows = statement.query_map(params_from_iter(values.iter()), |_| Ok(()));
        let rows = rows.unwrap_or_else(|e| panic!("SQLite cannot run {sql}: {e}"));
        for row in rows {
            row.unwrap_or_else(|e| panic!("SQLite fails on {sql}: {e}"));
        }
    });
}

thread_local! {
    /// An empty in-memory database with the real schema, for preparing and running filter queries.
    static SQLITE: RefCell<Connection> = RefCell::new({
        let conn = Connection::open_in_memory().expect("in-memory SQLite");
        conn.execute_batch(SCHEMA).expect("the schema applies to an empty database");
        conn
    });
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    /// JSON values that look like tool arguments: objects with the fields the requests have, holding
    /// values of every JSON type, including the edge cases of numbers and strings.
    fn argument_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map(Value::Number).unwrap_or(Value::Null)),
            ".{0,12}".prop_map(Value::from),
            "[a-z0-9:/@_-]{0,8}".prop_map(Value::from),
            prop::sample::select(vec![
                "public",
                "private",
                "admin_only",
                "2026-01-01T00:00:00Z",
                "1970-01-01T00:00:00Z"
            ])
            .prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(field_name(), inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn field_name() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(vec![
                "session_id",
                "types",
                "tags_any",
                "tags_all",
                "agent_ids",
                "created_after",
                "created_before",
                "visibility",
                "metadata",
                "query",
                "limit",
                "cursor",
                "content",
                "tags",
                "id",
                "key",
                "value",
                "expected_version",
                "ttl_seconds",
                "purpose",
                "relation",
                "from_id",
                "to_id",
                "depth",
                "sql",
            ])
            .prop_map(String::from),
            "[a-z:/@_-]{1,6}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn generated_tool_arguments_keep_the_invariants(selector in any::<u8>(), arguments in argument_value()) {
            check_tool_arguments(selector, arguments);
        }

        #[test]
        fn generated_filters_convert_for_every_store(selector in any::<u8>(), arguments in argument_value()) {
            if let Ok(args) = serde_json::from_value::<ContextFilterArgs>(arguments) {
                check_filter(selector, args);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..256)) {
            tool_arguments(&data);
            context_filter(&data);
        }
    }

    /// The committed seed corpus of both fuzz targets (and the cases fuzzing found) run as tests.
    #[test]
    fn seed_corpus_keeps_the_invariants() {
        let root = crate::test_checkout().join("fuzz").join("seeds");
        let mut ran = 0;
        for (target, run) in [("tool_arguments", tool_arguments as fn(&[u8])), ("context_filter", context_filter)] {
            for entry in std::fs::read_dir(root.join(target)).expect("seed folder") {
                run(&std::fs::read(entry.expect("seed").path()).expect("seed file"));
                ran += 1;
            }
        }
        assert!(ran >= 4, "only {ran} seeds");
    }

    #[test]
    fn metadata_keys_of_every_allowed_character_convert() {
        for key in ["n:::", "a/b", "x@y", "a-b", "größe", "_", "k1"] {
            let args: ContextFilterArgs = serde_json::from_value(json!({"metadata": {key: 1.5}})).unwrap();
            check_filter(0, args);
        }
    }

    #[test]
    fn metadata_filters_of_every_number_kind_convert() {
        for value in [json!(1), json!(-3), json!(1.5), json!(u64::MAX), json!(true), json!("x")] {
            let args: ContextFilterArgs = serde_json::from_value(json!({"metadata": {"n": value}})).unwrap();
            check_filter(0, args);
        }
    }
}
