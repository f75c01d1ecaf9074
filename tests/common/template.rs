//! `infra/template.yaml` as JSON, for the tests that check it against the code
//! (tests/template.rs) and against the requests the code makes (tests/common/iam.rs).

use serde_json::{Value, json};

/// The template as JSON, short-form intrinsics (`!Ref x`) turned into their long form
/// (`{"Ref": "x"}`, `{"Fn::Sub": ...}`).
pub fn template() -> Value {
    let text = std::fs::read_to_string(super::repo().join("infra/template.yaml"))
        .expect("read infra/template.yaml");
    let yaml: serde_norway::Value = serde_norway::from_str(&text).expect("template is YAML");
    to_json(yaml)
}

fn to_json(v: serde_norway::Value) -> Value {
    use serde_norway::Value as Y;
    match v {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => serde_json::to_value(n).expect("a number"),
        Y::String(s) => Value::String(s),
        Y::Sequence(items) => Value::Array(items.into_iter().map(to_json).collect()),
        Y::Mapping(m) => Value::Object(
            m.into_iter()
                .map(|(k, v)| {
                    let k = k.as_str().expect("string keys").to_string();
                    (k, to_json(v))
                })
                .collect(),
        ),
        Y::Tagged(t) => {
            let name = t.tag.to_string().trim_start_matches('!').to_string();
            let key = match name.as_str() {
                "Ref" | "Condition" => name,
                _ => format!("Fn::{name}"),
            };
            json!({ key: to_json(t.value) })
        }
    }
}
