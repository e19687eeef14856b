//! The OpenAPI 3.1 document of the HTTP tool endpoint, generated from the tool catalogue's schemas.
//! Each tool's `$defs` move to `components/schemas` so references resolve within the document.

use serde_json::{Map, Value, json};

use crate::tools::catalogue;

/// Moves `$defs` of a schema into `components` and points its references there.
fn hoist_definitions(schema: &Map<String, Value>, components: &mut Map<String, Value>) -> Value {
    let mut schema = Value::Object(schema.clone());
    if let Some(definitions) = schema.as_object_mut().and_then(|s| s.remove("$defs"))
        && let Value::Object(definitions) = definitions
    {
        for (name, mut definition) in definitions {
            rewrite_refs(&mut definition);
            components.insert(name, definition);
        }
    }
    rewrite_refs(&mut schema);
    schema
}

fn rewrite_refs(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map.iter_mut() {
                if key == "$ref"
                    && let Value::String(target) = inner
                    && let Some(name) = target.strip_prefix("#/$defs/")
                {
                    *target = format!("#/components/schemas/{name}");
                } else {
                    rewrite_refs(inner);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(rewrite_refs),
        _ => {}
    }
}

pub fn document() -> Value {
    let mut components = Map::new();
    let mut paths = Map::new();
    for tool in catalogue() {
        let mut input_components = Map::new();
        let input = hoist_definitions(&tool.input_schema, &mut input_components);
        let output = hoist_definitions(&tool.output_schema, &mut input_components);
        components.extend(input_components);
        // A body is required only when some argument is: tools whose arguments are all optional take none.
        let body_required = input.get("required").and_then(Value::as_array).is_some_and(|r| !r.is_empty());
        let error = json!({"description": "The tool failed", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ToolError"}}}});
        paths.insert(
            format!("/mcp/tool/{}", tool.name),
            json!({"post": {
                "operationId": tool.name,
                "summary": tool.description,
                "requestBody": {"required": body_required, "content": {"application/json": {"schema": input}}},
                "responses": {
                    "200": {"description": "The tool's result", "content": {"application/json": {"schema": output}}},
                    "400": error, "401": error, "403": error, "404": error, "409": error,
                    "413": error, "415": error, "422": error, "429": error, "503": error
                }
            }}),
        );
    }
    components.insert(
        "ToolError".into(),
        json!({"type": "object", "required": ["error"], "properties": {"error": {
            "type": "object", "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}}
        }}}),
    );
    json!({
        "openapi": "3.1.0",
        "info": {"title": "context-store", "version": env!("CARGO_PKG_VERSION"),
                 "description": "HTTP tool endpoint of context-store: the same tools as MCP, JSON in and out."},
        "paths": paths,
        "components": {"schemas": components}
    })
}
