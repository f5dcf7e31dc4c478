//! The serde model agrees with the TypeScript field table (`ts/config/model.ts`), which declares
//! every config field once: the JSON Schema schemars derives from the structs here is compared
//! with `schema/config-model.schema.json`, the schema the table generates (an ava test keeps the
//! file equal to what the table generates). A field added, removed, renamed or retyped on one side
//! only fails this test or that one.
//!
//! The rule: Rust reads every model the TypeScript side writes, with the same meaning.
//! - Every object has the same properties on both sides, of the same types (enum values included).
//! - A property Rust requires is required by the TS model too (TS writes every required field).
//! - Where Rust defaults a missing property, the default is the TS table's.
//! - The TS range of an integer fits the Rust integer type.
//! - A property optional on both sides may also be null in Rust: serde reads a missing and a null
//!   `Option` alike.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

const TS_MODEL_SCHEMA: &str = include_str!("../../../schema/config-model.schema.json");

/// A schema reduced to what the comparison looks at (no descriptions, no formats).
#[derive(Debug, Clone, PartialEq)]
enum Shape {
    String,
    Integer { min: f64, max: f64 },
    Boolean,
    Null,
    Enum(BTreeSet<String>),
    Array(Box<Shape>),
    Object(BTreeMap<String, Property>),
    Union(Vec<Shape>),
}

#[derive(Debug, Clone, PartialEq)]
struct Property {
    shape: Shape,
    required: bool,
    default: Option<Value>,
}

/// `schema` as a [`Shape`]; `root` resolves `$ref`s (`#/$defs/Name`, as schemars writes them).
fn shape(schema: &Value, root: &Value) -> Result<Shape, String> {
    if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
        let name =
            reference.strip_prefix("#/$defs/").ok_or_else(|| format!("unexpected $ref {reference}"))?;
        let target = root.pointer(&format!("/$defs/{name}")).ok_or_else(|| format!("no $defs/{name}"))?;
        return shape(target, root);
    }
    if let Some(Value::String(value)) = schema.get("const") {
        return Ok(Shape::Enum(BTreeSet::from([value.clone()])));
    }
    if let Some(Value::Array(values)) = schema.get("enum") {
        let mut members = Vec::new();
        for v in values {
            members.push(match v {
                Value::String(s) => Shape::Enum(BTreeSet::from([s.clone()])),
                Value::Null => Shape::Null,
                other => return Err(format!("enum value {other} is neither a string nor null")),
            });
        }
        return Ok(union(members));
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(Value::Array(options)) = schema.get(key) {
            let members = options.iter().map(|o| shape(o, root)).collect::<Result<Vec<_>, _>>()?;
            return Ok(union(members));
        }
    }
    let types: Vec<&str> = match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => return Err(format!("a schema without a type: {schema}")),
    };
    let members = types.into_iter().map(|t| typed(t, schema, root)).collect::<Result<Vec<_>, _>>()?;
    Ok(union(members))
}

fn typed(name: &str, schema: &Value, root: &Value) -> Result<Shape, String> {
    Ok(match name {
        "string" => Shape::String,
        "boolean" => Shape::Boolean,
        "null" => Shape::Null,
        "integer" => {
            let (mut min, mut max) = match schema.get("format").and_then(Value::as_str) {
                Some("uint8") => (0.0, f64::from(u8::MAX)),
                Some("uint16") => (0.0, f64::from(u16::MAX)),
                Some("uint32") => (0.0, f64::from(u32::MAX)),
                Some("uint64") => (0.0, u64::MAX as f64),
                Some("int32") => (f64::from(i32::MIN), f64::from(i32::MAX)),
                Some("int64") => (i64::MIN as f64, i64::MAX as f64),
                _ => (f64::NEG_INFINITY, f64::INFINITY),
            };
            if let Some(m) = schema.get("minimum").and_then(Value::as_f64) {
                min = min.max(m);
            }
            if let Some(m) = schema.get("maximum").and_then(Value::as_f64) {
                max = max.min(m);
            }
            Shape::Integer { min, max }
        }
        "array" => {
            let items = schema.get("items").ok_or("an array without items")?;
            Shape::Array(Box::new(shape(items, root)?))
        }
        "object" => {
            let required: BTreeSet<&str> = match schema.get("required") {
                Some(Value::Array(names)) => names.iter().filter_map(Value::as_str).collect(),
                _ => BTreeSet::new(),
            };
            let mut properties = BTreeMap::new();
            if let Some(Value::Object(props)) = schema.get("properties") {
                for (key, prop) in props {
                    let property = Property {
                        shape: shape(prop, root).map_err(|e| format!("{key}: {e}"))?,
                        required: required.contains(key.as_str()),
                        default: prop.get("default").cloned(),
                    };
                    properties.insert(key.clone(), property);
                }
            }
            Shape::Object(properties)
        }
        other => return Err(format!("unexpected type {other}")),
    })
}

/// Members of one union: nested unions flattened, the values of enums merged into one enum.
fn union(members: Vec<Shape>) -> Shape {
    let mut values = BTreeSet::new();
    let mut others = Vec::new();
    for member in members {
        match member {
            Shape::Enum(v) => values.extend(v),
            Shape::Union(inner) => others.extend(inner),
            other => others.push(other),
        }
    }
    if !values.is_empty() {
        others.push(Shape::Enum(values));
    }
    if others.len() == 1 {
        others.remove(0)
    } else {
        others.sort_by_key(sort_key);
        Shape::Union(others)
    }
}

/// Orders the members of a union so that the two sides' members line up: a tagged object by its
/// tag values (`kind=hash`), anything else by its type.
fn sort_key(shape: &Shape) -> String {
    match shape {
        Shape::Object(props) => {
            let tags: Vec<String> = props
                .iter()
                .filter_map(|(key, p)| match &p.shape {
                    Shape::Enum(v) if v.len() == 1 => Some(format!("{key}={}", v.iter().next()?)),
                    _ => None,
                })
                .collect();
            format!("object {}", tags.join(","))
        }
        Shape::Enum(_) => "enum".into(),
        Shape::Array(_) => "array".into(),
        other => format!("{other:?}"),
    }
}

/// `shape` without null among its members.
fn without_null(shape: &Shape) -> Shape {
    match shape {
        Shape::Union(members) => union(members.iter().filter(|m| **m != Shape::Null).cloned().collect()),
        other => other.clone(),
    }
}

/// Every way `rust` fails to read what `ts` describes the same way, as `path: problem` lines.
fn differences(ts: &Shape, rust: &Shape, path: &str, out: &mut Vec<String>) {
    match (ts, rust) {
        (Shape::Integer { min, max }, Shape::Integer { min: rmin, max: rmax }) => {
            if min < rmin || max > rmax {
                out.push(format!("{path}: TS allows {min}..={max}, the Rust type holds {rmin}..={rmax}"));
            }
        }
        (Shape::Array(t), Shape::Array(r)) => differences(t, r, &format!("{path}[]"), out),
        (Shape::Object(t), Shape::Object(r)) => {
            let keys: BTreeSet<&String> = t.keys().chain(r.keys()).collect();
            for key in keys {
                let at = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                match (t.get(key), r.get(key)) {
                    (Some(_), None) => out.push(format!("{at}: in the TS model, not in the Rust struct")),
                    (None, Some(_)) => out.push(format!("{at}: in the Rust struct, not in the TS model")),
                    (Some(tp), Some(rp)) => property(tp, rp, &at, out),
                    (None, None) => {}
                }
            }
        }
        (Shape::Union(t), Shape::Union(r)) if t.len() == r.len() => {
            for (tm, rm) in t.iter().zip(r) {
                if sort_key(tm) != sort_key(rm) {
                    out.push(format!("{path}: TS {tm:?}, Rust {rm:?}"));
                } else {
                    differences(tm, rm, path, out);
                }
            }
        }
        (t, r) if t == r => {}
        (t, r) => out.push(format!("{path}: TS {t:?}, Rust {r:?}")),
    }
}

fn property(ts: &Property, rust: &Property, path: &str, out: &mut Vec<String>) {
    if rust.required && !ts.required {
        out.push(format!("{path}: Rust requires it, the TS model may leave it out"));
    }
    if ts.required && !rust.required {
        if let Some(rust_default) = &rust.default {
            if ts.default.as_ref() != Some(rust_default) {
                out.push(format!(
                    "{path}: Rust defaults it to {rust_default}, the TS table to {:?}",
                    ts.default
                ));
            }
        }
    }
    let rust_shape =
        if !ts.required && !rust.required { without_null(&rust.shape) } else { rust.shape.clone() };
    differences(&ts.shape, &rust_shape, path, out);
}

fn compare(ts_schema: &Value, rust_schema: &Value) -> Result<Vec<String>, String> {
    let ts = shape(ts_schema, ts_schema)?;
    let rust = shape(rust_schema, rust_schema)?;
    let mut out = Vec::new();
    differences(&ts, &rust, "", &mut out);
    Ok(out)
}

fn rust_schema() -> Value {
    schemars::schema_for!(crate::Config).to_value()
}

fn ts_schema() -> Value {
    serde_json::from_str(TS_MODEL_SCHEMA).expect("schema/config-model.schema.json is JSON")
}

#[test]
fn the_rust_model_reads_what_the_ts_field_table_declares() {
    let diffs = compare(&ts_schema(), &rust_schema()).expect("both schemas have known shapes");
    assert!(
        diffs.is_empty(),
        "the Rust config model and schema/config-model.schema.json (from ts/config/model.ts) disagree:\n{}",
        diffs.join("\n")
    );
}

/// What the comparison reports once `change` is made to the committed TS schema.
fn differences_after(change: impl FnOnce(&mut Value)) -> Vec<String> {
    let mut ts = ts_schema();
    change(&mut ts);
    compare(&ts, &rust_schema()).expect("known shapes")
}

/// A listener field's schema in the committed TS schema.
fn listener_field<'a>(schema: &'a mut Value, field: &str) -> &'a mut Value {
    schema
        .pointer_mut(&format!("/properties/listeners/items/properties/{field}"))
        .unwrap_or_else(|| panic!("the committed schema has listeners[].{field}"))
}

fn listener_fields(schema: &mut Value) -> &mut serde_json::Map<String, Value> {
    schema
        .pointer_mut("/properties/listeners/items/properties")
        .and_then(Value::as_object_mut)
        .expect("the committed schema has listener fields")
}

/// The comparison itself: a field on one side only, a default, a range or an enum value that
/// differs are each reported.
#[test]
fn a_field_changed_on_one_side_only_is_reported() {
    assert_eq!(
        differences_after(|s| {
            listener_fields(s).remove("proxyHeaders");
        }),
        ["listeners[].proxyHeaders: in the Rust struct, not in the TS model"]
    );
    assert_eq!(
        differences_after(|s| {
            listener_fields(s).insert("extra".into(), serde_json::json!({ "type": "boolean" }));
        }),
        ["listeners[].extra: in the TS model, not in the Rust struct"]
    );
    assert_eq!(
        differences_after(|s| listener_field(s, "maxConnections")["maximum"] = u64::MAX.into()),
        ["listeners[].maxConnections: TS allows 1..=18446744073709552000, the Rust type holds 0..=4294967295"]
    );
    assert_eq!(
        differences_after(|s| listener_field(s, "detectTimeoutMs")["default"] = 2000.into()),
        ["listeners[].detectTimeoutMs: Rust defaults it to 1000, the TS table to Some(Number(2000))"]
    );
    assert_eq!(
        differences_after(
            |s| listener_field(s, "protocol")["enum"] = serde_json::json!(["http", "tcp", "udp"])
        ),
        [r#"listeners[].protocol: TS Enum({"http", "tcp", "udp"}), Rust Enum({"http", "tcp"})"#]
    );
}
