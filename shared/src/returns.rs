//! The `returns` schema of a call: which fields the client wants back, of which
//! type, and the checks every `result` must pass before it is stored.

use chrono::{DateTime, NaiveDate};
use serde_json::{Map, Value, json};

/// Most fields a `returns` object may declare.
pub const MAX_FIELDS: usize = 50;
/// Longest allowed field name, in characters.
pub const MAX_FIELD_NAME_LEN: usize = 64;

const SHORTHAND_TYPES: &str =
    "string, boolean, integer, number, date, datetime, enum:a|b, optionally ending in ?";
const SCHEMA_KEYWORDS: &str =
    "type, enum, format, description, minimum, maximum, minLength, maxLength";

/// A parsed and validated `returns` object, fields in the order the client gave them.
#[derive(Debug, Clone, PartialEq)]
pub struct ReturnsSchema {
    pub fields: Vec<FieldSpec>,
}

/// One field of a `returns` object.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldSpec {
    pub name: String,
    pub kind: FieldKind,
    /// Declared nullable (`"integer?"`, `["integer", "null"]`). Results may hold
    /// null for any field; this only shapes the generated JSON Schema.
    pub nullable: bool,
    pub description: Option<String>,
    pub minimum: Option<f64>,
    pub maximum: Option<f64>,
    pub min_length: Option<u64>,
    pub max_length: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldKind {
    String,
    Boolean,
    Integer,
    Number,
    /// `YYYY-MM-DD`.
    Date,
    /// RFC 3339 with an offset.
    DateTime,
    /// One of the listed options, compared exactly.
    Enum(Vec<String>),
}

impl FieldKind {
    /// The name a client would write for this type, used in error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            FieldKind::String => "string",
            FieldKind::Boolean => "boolean",
            FieldKind::Integer => "integer",
            FieldKind::Number => "number",
            FieldKind::Date => "date",
            FieldKind::DateTime => "datetime",
            FieldKind::Enum(_) => "enum",
        }
    }
}

/// Why a `returns` object or a `result` was rejected. `Display` is a sentence a
/// developer can act on; `param()` names the offending field (`returns.age`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReturnsError {
    #[error(
        "returns must be an object mapping field names to types, like {{\"age\": \"integer\"}}"
    )]
    NotAnObject,
    #[error("returns declares {count} fields; at most {MAX_FIELDS} are allowed")]
    TooManyFields { count: usize },
    #[error(
        "returns field name \"{name}\" is invalid; use 1 to {MAX_FIELD_NAME_LEN} letters, digits or underscores"
    )]
    InvalidFieldName { name: String },
    #[error("returns.{field} has unknown type \"{given}\"; use one of {SHORTHAND_TYPES}")]
    UnknownType { field: String, given: String },
    #[error(
        "returns.{field} must be a type string (one of {SHORTHAND_TYPES}) or a JSON Schema object"
    )]
    InvalidTypeSpec { field: String },
    #[error("returns.{field} {reason}")]
    InvalidEnum { field: String, reason: String },
    #[error(
        "returns.{field} uses unsupported JSON Schema keyword \"{keyword}\"; supported keywords are {SCHEMA_KEYWORDS}"
    )]
    UnsupportedKeyword { field: String, keyword: String },
    #[error("returns.{field}.{keyword} {reason}")]
    InvalidKeyword {
        field: String,
        keyword: String,
        reason: String,
    },
    #[error("result must be an object with one key per returns field")]
    ResultNotObject,
    #[error("result is missing field \"{field}\" declared in returns")]
    MissingField { field: String },
    #[error("result has field \"{field}\" that returns does not declare")]
    UnexpectedField { field: String },
    #[error("result.{field} must be {expected} or null, got {found}")]
    WrongType {
        field: String,
        expected: String,
        found: String,
    },
}

impl ReturnsError {
    /// The request parameter at fault, in the `param` form of API errors.
    pub fn param(&self) -> String {
        match self {
            ReturnsError::NotAnObject | ReturnsError::TooManyFields { .. } => "returns".to_owned(),
            ReturnsError::InvalidFieldName { name } => format!("returns.{name}"),
            ReturnsError::UnknownType { field, .. }
            | ReturnsError::InvalidTypeSpec { field }
            | ReturnsError::InvalidEnum { field, .. }
            | ReturnsError::UnsupportedKeyword { field, .. } => format!("returns.{field}"),
            ReturnsError::InvalidKeyword { field, keyword, .. } => {
                format!("returns.{field}.{keyword}")
            }
            ReturnsError::ResultNotObject => "result".to_owned(),
            ReturnsError::MissingField { field }
            | ReturnsError::UnexpectedField { field }
            | ReturnsError::WrongType { field, .. } => format!("result.{field}"),
        }
    }
}

impl ReturnsSchema {
    /// Parses the `returns` object of a create-call request.
    pub fn parse(value: &Value) -> Result<ReturnsSchema, ReturnsError> {
        let object = value.as_object().ok_or(ReturnsError::NotAnObject)?;
        if object.len() > MAX_FIELDS {
            return Err(ReturnsError::TooManyFields {
                count: object.len(),
            });
        }
        let fields = object
            .iter()
            .map(|(name, spec)| FieldSpec::parse(name, spec))
            .collect::<Result<_, _>>()?;
        Ok(ReturnsSchema { fields })
    }

    pub fn field(&self, name: &str) -> Option<&FieldSpec> {
        self.fields.iter().find(|field| field.name == name)
    }

    /// Checks that `result` has exactly the schema's keys, each null or a value
    /// of its field's type and constraints.
    pub fn validate_result(&self, result: &Value) -> Result<(), ReturnsError> {
        let object = result.as_object().ok_or(ReturnsError::ResultNotObject)?;
        for field in &self.fields {
            let value = object
                .get(&field.name)
                .ok_or_else(|| ReturnsError::MissingField {
                    field: field.name.clone(),
                })?;
            field.check_value(value)?;
        }
        if let Some(extra) = object.keys().find(|key| self.field(key).is_none()) {
            return Err(ReturnsError::UnexpectedField {
                field: extra.clone(),
            });
        }
        Ok(())
    }

    /// A result with every field null: what a call that yielded nothing returns.
    pub fn null_result(&self) -> Map<String, Value> {
        self.fields
            .iter()
            .map(|field| (field.name.clone(), Value::Null))
            .collect()
    }

    /// A strict JSON Schema for the result, in the subset OpenAI structured
    /// outputs accept: every key required, no extra keys, every value nullable.
    pub fn to_json_schema(&self) -> Value {
        let properties: Map<String, Value> = self
            .fields
            .iter()
            .map(|field| (field.name.clone(), field.to_json_schema()))
            .collect();
        let required: Vec<Value> = self
            .fields
            .iter()
            .map(|field| Value::String(field.name.clone()))
            .collect();
        json!({
            "type": "object",
            "properties": properties,
            "required": required,
            "additionalProperties": false,
        })
    }
}

impl FieldSpec {
    fn new(name: &str, kind: FieldKind, nullable: bool) -> FieldSpec {
        FieldSpec {
            name: name.to_owned(),
            kind,
            nullable,
            description: None,
            minimum: None,
            maximum: None,
            min_length: None,
            max_length: None,
        }
    }

    fn parse(name: &str, spec: &Value) -> Result<FieldSpec, ReturnsError> {
        let name_is_valid = !name.is_empty()
            && name.chars().count() <= MAX_FIELD_NAME_LEN
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !name_is_valid {
            return Err(ReturnsError::InvalidFieldName {
                name: name.chars().take(MAX_FIELD_NAME_LEN).collect(),
            });
        }
        match spec {
            Value::String(shorthand) => parse_shorthand(name, shorthand),
            Value::Object(schema) => parse_json_schema(name, schema),
            _ => Err(ReturnsError::InvalidTypeSpec {
                field: name.to_owned(),
            }),
        }
    }

    /// Checks one result value against this field: null, or of its type and
    /// within its constraints.
    pub fn check_value(&self, value: &Value) -> Result<(), ReturnsError> {
        if value.is_null() {
            return Ok(());
        }
        let wrong = |expected: String| ReturnsError::WrongType {
            field: self.name.clone(),
            expected,
            found: describe_value(value),
        };
        match &self.kind {
            FieldKind::String => {
                let Some(text) = value.as_str() else {
                    return Err(wrong("a string".to_owned()));
                };
                let length = text.chars().count() as u64;
                if self.min_length.is_some_and(|min| length < min)
                    || self.max_length.is_some_and(|max| length > max)
                {
                    return Err(wrong(self.length_description()));
                }
            }
            FieldKind::Boolean => {
                if !value.is_boolean() {
                    return Err(wrong("true or false".to_owned()));
                }
            }
            FieldKind::Integer | FieldKind::Number => {
                let integer_only = self.kind == FieldKind::Integer;
                let expected = self.numeric_description(integer_only);
                let Some(number) = value.as_f64() else {
                    return Err(wrong(expected));
                };
                let is_integer = value.is_i64() || value.is_u64() || number.fract() == 0.0;
                if (integer_only && !is_integer)
                    || self.minimum.is_some_and(|min| number < min)
                    || self.maximum.is_some_and(|max| number > max)
                {
                    return Err(wrong(expected));
                }
            }
            FieldKind::Date => {
                let is_date = value.as_str().is_some_and(is_iso_date);
                if !is_date {
                    return Err(wrong("a date written YYYY-MM-DD".to_owned()));
                }
            }
            FieldKind::DateTime => {
                let is_datetime = value
                    .as_str()
                    .is_some_and(|text| DateTime::parse_from_rfc3339(text).is_ok());
                if !is_datetime {
                    return Err(wrong(
                        "an RFC 3339 date-time like 2026-04-15T14:30:00Z".to_owned(),
                    ));
                }
            }
            FieldKind::Enum(options) => {
                let is_option = value
                    .as_str()
                    .is_some_and(|text| options.iter().any(|option| option == text));
                if !is_option {
                    return Err(wrong(format!("one of {}", quoted_list(options))));
                }
            }
        }
        Ok(())
    }

    /// Whether `value` may be stored in this field.
    pub fn accepts(&self, value: &Value) -> bool {
        self.check_value(value).is_ok()
    }

    fn to_json_schema(&self) -> Value {
        let mut schema = Map::new();
        let base_type = match &self.kind {
            FieldKind::String | FieldKind::Date | FieldKind::DateTime | FieldKind::Enum(_) => {
                "string"
            }
            FieldKind::Boolean => "boolean",
            FieldKind::Integer => "integer",
            FieldKind::Number => "number",
        };
        schema.insert("type".to_owned(), json!([base_type, "null"]));
        match &self.kind {
            FieldKind::Date => {
                schema.insert("format".to_owned(), json!("date"));
            }
            FieldKind::DateTime => {
                schema.insert("format".to_owned(), json!("date-time"));
            }
            FieldKind::Enum(options) => {
                let mut allowed: Vec<Value> = options.iter().map(|o| json!(o)).collect();
                allowed.push(Value::Null);
                schema.insert("enum".to_owned(), Value::Array(allowed));
            }
            _ => {}
        }
        if let Some(description) = &self.description {
            schema.insert("description".to_owned(), json!(description));
        }
        let bounds = [
            ("minimum", self.minimum.map(bound_json)),
            ("maximum", self.maximum.map(bound_json)),
            ("minLength", self.min_length.map(|n| json!(n))),
            ("maxLength", self.max_length.map(|n| json!(n))),
        ];
        for (keyword, bound) in bounds {
            if let Some(bound) = bound {
                schema.insert(keyword.to_owned(), bound);
            }
        }
        Value::Object(schema)
    }

    fn numeric_description(&self, integer_only: bool) -> String {
        let noun = if integer_only {
            "an integer"
        } else {
            "a number"
        };
        match (self.minimum, self.maximum) {
            (Some(min), Some(max)) => format!("{noun} from {min} to {max}"),
            (Some(min), None) => format!("{noun} of at least {min}"),
            (None, Some(max)) => format!("{noun} of at most {max}"),
            (None, None) => noun.to_owned(),
        }
    }

    fn length_description(&self) -> String {
        match (self.min_length, self.max_length) {
            (Some(min), Some(max)) => format!("a string of {min} to {max} characters"),
            (Some(min), None) => format!("a string of at least {min} characters"),
            (None, Some(max)) => format!("a string of at most {max} characters"),
            (None, None) => "a string".to_owned(),
        }
    }
}

fn parse_shorthand(name: &str, shorthand: &str) -> Result<FieldSpec, ReturnsError> {
    let (base, nullable) = match shorthand.strip_suffix('?') {
        Some(base) => (base, true),
        None => (shorthand, false),
    };
    let kind = match base {
        "string" => FieldKind::String,
        "boolean" => FieldKind::Boolean,
        "integer" => FieldKind::Integer,
        "number" => FieldKind::Number,
        "date" => FieldKind::Date,
        "datetime" => FieldKind::DateTime,
        _ => match base.strip_prefix("enum:") {
            Some(options) => FieldKind::Enum(parse_enum_options(name, options.split('|'))?),
            None => {
                return Err(ReturnsError::UnknownType {
                    field: name.to_owned(),
                    given: shorthand.to_owned(),
                });
            }
        },
    };
    Ok(FieldSpec::new(name, kind, nullable))
}

fn parse_enum_options<'a>(
    field: &str,
    options: impl Iterator<Item = &'a str>,
) -> Result<Vec<String>, ReturnsError> {
    let invalid = |reason: String| ReturnsError::InvalidEnum {
        field: field.to_owned(),
        reason,
    };
    let mut parsed: Vec<String> = Vec::new();
    for option in options {
        let option = option.trim();
        if option.is_empty() {
            return Err(invalid(
                "has an empty enum option; list options like enum:small|medium|large".to_owned(),
            ));
        }
        if parsed.iter().any(|seen| seen == option) {
            return Err(invalid(format!(
                "lists enum option \"{option}\" twice; list each option once"
            )));
        }
        parsed.push(option.to_owned());
    }
    if parsed.is_empty() {
        return Err(invalid(
            "needs at least one enum option, like enum:small|medium|large".to_owned(),
        ));
    }
    Ok(parsed)
}

fn parse_json_schema(name: &str, schema: &Map<String, Value>) -> Result<FieldSpec, ReturnsError> {
    let invalid = |keyword: &str, reason: &str| ReturnsError::InvalidKeyword {
        field: name.to_owned(),
        keyword: keyword.to_owned(),
        reason: reason.to_owned(),
    };
    if let Some(keyword) = schema.keys().find(|key| {
        !matches!(
            key.as_str(),
            "type"
                | "enum"
                | "format"
                | "description"
                | "minimum"
                | "maximum"
                | "minLength"
                | "maxLength"
        )
    }) {
        return Err(ReturnsError::UnsupportedKeyword {
            field: name.to_owned(),
            keyword: keyword.clone(),
        });
    }

    let (declared_type, mut nullable) = match schema.get("type") {
        None => (None, false),
        Some(declared) => {
            let (base, nullable) = parse_schema_type(declared)
                .ok_or_else(|| invalid("type", "must be one of \"string\", \"boolean\", \"integer\", \"number\", optionally in an array with \"null\" like [\"integer\", \"null\"]"))?;
            (Some(base), nullable)
        }
    };

    let enum_options = match schema.get("enum") {
        None => None,
        Some(Value::Array(items)) => {
            let mut options = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    Value::String(option) => options.push(option.as_str()),
                    Value::Null => nullable = true,
                    _ => return Err(invalid("enum", "must list strings (and optionally null)")),
                }
            }
            Some(parse_enum_options(name, options.into_iter())?)
        }
        Some(_) => return Err(invalid("enum", "must be an array of strings")),
    };

    let format = match schema.get("format") {
        None => None,
        Some(Value::String(format)) if format == "date" || format == "date-time" => {
            Some(format.as_str())
        }
        Some(_) => return Err(invalid("format", "must be \"date\" or \"date-time\"")),
    };

    let kind = match (declared_type, enum_options, format) {
        (None | Some("string"), Some(options), None) => FieldKind::Enum(options),
        (_, Some(_), _) => {
            return Err(invalid(
                "enum",
                "is supported only on string fields without a format",
            ));
        }
        (Some("string"), None, Some("date")) => FieldKind::Date,
        (Some("string"), None, Some(_)) => FieldKind::DateTime,
        (_, None, Some(_)) => return Err(invalid("format", "needs \"type\": \"string\"")),
        (Some("string"), None, None) => FieldKind::String,
        (Some("boolean"), None, None) => FieldKind::Boolean,
        (Some("integer"), None, None) => FieldKind::Integer,
        (Some("number"), None, None) => FieldKind::Number,
        (_, None, None) => {
            return Err(ReturnsError::InvalidTypeSpec {
                field: name.to_owned(),
            });
        }
    };

    let mut field = FieldSpec::new(name, kind, nullable);
    field.description = match schema.get("description") {
        None => None,
        Some(Value::String(description)) => Some(description.clone()),
        Some(_) => return Err(invalid("description", "must be a string")),
    };

    let is_numeric = matches!(field.kind, FieldKind::Integer | FieldKind::Number);
    for keyword in ["minimum", "maximum"] {
        let Some(bound) = schema.get(keyword) else {
            continue;
        };
        if !is_numeric {
            return Err(invalid(
                keyword,
                "applies only to integer and number fields",
            ));
        }
        let bound = bound
            .as_f64()
            .ok_or_else(|| invalid(keyword, "must be a number"))?;
        if keyword == "minimum" {
            field.minimum = Some(bound);
        } else {
            field.maximum = Some(bound);
        }
    }
    if let (Some(min), Some(max)) = (field.minimum, field.maximum)
        && min > max
    {
        return Err(invalid("minimum", "must not be greater than maximum"));
    }

    for keyword in ["minLength", "maxLength"] {
        let Some(bound) = schema.get(keyword) else {
            continue;
        };
        if field.kind != FieldKind::String {
            return Err(invalid(
                keyword,
                "applies only to string fields without a format or enum",
            ));
        }
        let bound = bound
            .as_u64()
            .ok_or_else(|| invalid(keyword, "must be a non-negative integer"))?;
        if keyword == "minLength" {
            field.min_length = Some(bound);
        } else {
            field.max_length = Some(bound);
        }
    }
    if let (Some(min), Some(max)) = (field.min_length, field.max_length)
        && min > max
    {
        return Err(invalid("minLength", "must not be greater than maxLength"));
    }
    Ok(field)
}

/// Reads a JSON Schema `type`: one supported type name, or an array of one
/// such name and `"null"`. Returns the name and whether null is allowed.
fn parse_schema_type(declared: &Value) -> Option<(&str, bool)> {
    let is_supported = |name: &str| matches!(name, "string" | "boolean" | "integer" | "number");
    match declared {
        Value::String(name) if is_supported(name) => Some((name.as_str(), false)),
        Value::Array(names) => {
            let mut base = None;
            let mut nullable = false;
            for name in names {
                match name.as_str()? {
                    "null" if !nullable => nullable = true,
                    name if is_supported(name) && base.is_none() => base = Some(name),
                    _ => return None,
                }
            }
            base.map(|base| (base, nullable))
        }
        _ => None,
    }
}

/// Writes a numeric bound back as the client most likely wrote it: whole
/// numbers without a fraction, so integer fields keep integer bounds.
fn bound_json(bound: f64) -> Value {
    if bound.fract() == 0.0 && bound.abs() < 9.0e15 {
        json!(bound as i64)
    } else {
        json!(bound)
    }
}

fn is_iso_date(text: &str) -> bool {
    text.len() == 10 && NaiveDate::parse_from_str(text, "%Y-%m-%d").is_ok()
}

fn describe_value(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() > 40 {
        let prefix: String = text.chars().take(37).collect();
        format!("{prefix}...")
    } else {
        text
    }
}

fn quoted_list(options: &[String]) -> String {
    options
        .iter()
        .map(|option| format!("\"{option}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(value: Value) -> Result<ReturnsSchema, ReturnsError> {
        ReturnsSchema::parse(&value)
    }

    fn only_field(value: Value) -> FieldSpec {
        parse(json!({ "f": value })).unwrap().fields.remove(0)
    }

    /// Field order follows the `returns` object as serde_json holds it: the
    /// client's order when the workspace enables serde_json's `preserve_order`.
    fn keys_in_map_order(value: &Value) -> Vec<&str> {
        value
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect()
    }

    #[test]
    fn parses_every_shorthand_type_in_order() {
        let returns = json!({
            "name": "string",
            "ok": "boolean",
            "age": "integer?",
            "score": "number",
            "day": "date",
            "at": "datetime?",
            "size": "enum:small|medium|large",
        });
        let schema = ReturnsSchema::parse(&returns).unwrap();
        let names: Vec<&str> = schema.fields.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, keys_in_map_order(&returns));
        let field = |name| schema.field(name).unwrap();
        assert_eq!(field("name").kind, FieldKind::String);
        assert_eq!(field("ok").kind, FieldKind::Boolean);
        assert_eq!(field("age").kind, FieldKind::Integer);
        assert!(field("age").nullable);
        assert!(!field("name").nullable);
        assert_eq!(field("score").kind, FieldKind::Number);
        assert_eq!(field("day").kind, FieldKind::Date);
        assert_eq!(field("at").kind, FieldKind::DateTime);
        assert!(field("at").nullable);
        assert_eq!(
            field("size").kind,
            FieldKind::Enum(vec!["small".into(), "medium".into(), "large".into()])
        );
    }

    #[test]
    fn nullable_enum_and_trimmed_options() {
        let field = only_field(json!("enum: a | b ?"));
        assert_eq!(field.kind, FieldKind::Enum(vec!["a".into(), "b".into()]));
        assert!(field.nullable);
    }

    #[test]
    fn unknown_type_names_the_field_and_the_choices() {
        let error = parse(json!({"age": "int"})).unwrap_err();
        assert_eq!(error.param(), "returns.age");
        assert_eq!(
            error.to_string(),
            "returns.age has unknown type \"int\"; use one of string, boolean, integer, number, date, datetime, enum:a|b, optionally ending in ?"
        );
    }

    #[test]
    fn rejects_bad_shapes() {
        assert_eq!(
            parse(json!(["age"])).unwrap_err(),
            ReturnsError::NotAnObject
        );
        assert_eq!(parse(json!({"age": 5})).unwrap_err().param(), "returns.age");
        assert!(matches!(
            parse(json!({"size": "enum:"})).unwrap_err(),
            ReturnsError::InvalidEnum { .. }
        ));
        assert!(matches!(
            parse(json!({"size": "enum:a||b"})).unwrap_err(),
            ReturnsError::InvalidEnum { .. }
        ));
        assert!(matches!(
            parse(json!({"size": "enum:a|a"})).unwrap_err(),
            ReturnsError::InvalidEnum { .. }
        ));
        assert!(matches!(
            parse(json!({"x": "String"})).unwrap_err(),
            ReturnsError::UnknownType { .. }
        ));
    }

    #[test]
    fn validates_field_names_and_count() {
        for bad in ["", "has space", "dash-ed", "ñame", &"x".repeat(65)] {
            let error = parse(json!({ bad: "string" })).unwrap_err();
            assert!(
                matches!(error, ReturnsError::InvalidFieldName { .. }),
                "{bad}"
            );
        }
        assert!(parse(json!({ "x".repeat(64): "string", "A_1": "string" })).is_ok());

        let fifty: Map<String, Value> = (0..50)
            .map(|i| (format!("f{i}"), json!("string")))
            .collect();
        assert!(ReturnsSchema::parse(&Value::Object(fifty.clone())).is_ok());
        let mut fifty_one = fifty;
        fifty_one.insert("f50".into(), json!("string"));
        let error = ReturnsSchema::parse(&Value::Object(fifty_one)).unwrap_err();
        assert_eq!(error, ReturnsError::TooManyFields { count: 51 });
        assert_eq!(error.param(), "returns");
    }

    #[test]
    fn parses_json_schema_fields() {
        let field = only_field(
            json!({"type": ["integer", "null"], "minimum": 1, "maximum": 10, "description": "Score"}),
        );
        assert_eq!(field.kind, FieldKind::Integer);
        assert!(field.nullable);
        assert_eq!((field.minimum, field.maximum), (Some(1.0), Some(10.0)));
        assert_eq!(field.description.as_deref(), Some("Score"));

        assert_eq!(
            only_field(json!({"type": "string", "format": "date"})).kind,
            FieldKind::Date
        );
        assert_eq!(
            only_field(json!({"type": "string", "format": "date-time"})).kind,
            FieldKind::DateTime
        );
        let choice = only_field(json!({"enum": ["a", "b", null]}));
        assert_eq!(choice.kind, FieldKind::Enum(vec!["a".into(), "b".into()]));
        assert!(choice.nullable);
        let text = only_field(json!({"type": "string", "minLength": 2, "maxLength": 5}));
        assert_eq!((text.min_length, text.max_length), (Some(2), Some(5)));
        assert_eq!(
            only_field(json!({"type": "boolean"})).kind,
            FieldKind::Boolean
        );
        assert_eq!(
            only_field(json!({"type": ["null", "number"]})).kind,
            FieldKind::Number
        );
    }

    #[test]
    fn rejects_unsupported_json_schema() {
        let error = parse(json!({"tags": {"type": "array"}})).unwrap_err();
        assert_eq!(error.param(), "returns.tags.type");
        let error = parse(json!({"x": {"type": "string", "pattern": "^a"}})).unwrap_err();
        assert_eq!(
            error,
            ReturnsError::UnsupportedKeyword {
                field: "x".into(),
                keyword: "pattern".into()
            }
        );
        assert!(error.to_string().contains("supported keywords are"));

        let rejected = [
            json!({"type": ["string", "integer"]}),
            json!({"type": "null"}),
            json!({"type": "string", "format": "email"}),
            json!({"type": "integer", "format": "date"}),
            json!({"type": "integer", "enum": ["1"]}),
            json!({"enum": [1, 2]}),
            json!({"enum": "a"}),
            json!({"type": "string", "minimum": 1}),
            json!({"type": "integer", "minLength": 1}),
            json!({"type": "integer", "minimum": 5, "maximum": 1}),
            json!({"type": "string", "minLength": -1}),
            json!({"type": "string", "description": 3}),
            json!({"description": "no type"}),
            json!({"type": "date"}),
        ];
        for schema in rejected {
            assert!(parse(json!({ "x": schema.clone() })).is_err(), "{schema}");
        }
    }

    #[test]
    fn validates_results() {
        let schema = parse(json!({
            "name": "string",
            "ok": "boolean",
            "age": {"type": "integer", "minimum": 0, "maximum": 130},
            "score": "number",
            "day": "date",
            "at": "datetime",
            "size": "enum:small|large",
        }))
        .unwrap();
        let good = json!({
            "name": "Ana", "ok": false, "age": 34, "score": 2.5,
            "day": "2026-03-14", "at": "2026-03-14T15:00:00Z", "size": "large",
        });
        assert_eq!(schema.validate_result(&good), Ok(()));
        assert_eq!(
            schema.validate_result(&Value::Object(schema.null_result())),
            Ok(())
        );
        assert_eq!(
            schema.validate_result(&json!({"name": "Ana", "ok": true, "age": 3.0, "score": 1, "day": null, "at": "2026-03-14T15:00:00+02:00", "size": null})),
            Ok(())
        );

        let wrong = [
            ("name", json!(5)),
            ("ok", json!("yes")),
            ("age", json!(3.5)),
            ("age", json!(-1)),
            ("age", json!("34")),
            ("score", json!("2.5")),
            ("day", json!("2026-3-14")),
            ("day", json!("2026-02-30")),
            ("at", json!("2026-03-14T15:00:00")),
            ("at", json!("2026-03-14")),
            ("size", json!("Large")),
        ];
        for (key, value) in wrong {
            let mut result = good.clone();
            result[key] = value.clone();
            let error = schema.validate_result(&result).unwrap_err();
            assert_eq!(error.param(), format!("result.{key}"), "{key}={value}");
        }

        let mut missing = good.clone();
        missing.as_object_mut().unwrap().remove("size");
        assert_eq!(
            schema.validate_result(&missing),
            Err(ReturnsError::MissingField {
                field: "size".into()
            })
        );
        let mut extra = good.clone();
        extra["color"] = json!("red");
        assert_eq!(
            schema.validate_result(&extra),
            Err(ReturnsError::UnexpectedField {
                field: "color".into()
            })
        );
        assert_eq!(
            schema.validate_result(&json!([])),
            Err(ReturnsError::ResultNotObject)
        );
    }

    #[test]
    fn wrong_type_message_is_actionable() {
        let schema = parse(json!({"size": "enum:small|large"})).unwrap();
        let error = schema
            .validate_result(&json!({"size": "huge"}))
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "result.size must be one of \"small\", \"large\" or null, got \"huge\""
        );
    }

    #[test]
    fn string_length_limits_apply_to_results() {
        let schema =
            parse(json!({"code": {"type": "string", "minLength": 2, "maxLength": 3}})).unwrap();
        assert!(schema.validate_result(&json!({"code": "ab"})).is_ok());
        assert!(schema.validate_result(&json!({"code": "ñññ"})).is_ok());
        assert!(schema.validate_result(&json!({"code": "a"})).is_err());
        assert!(schema.validate_result(&json!({"code": "abcd"})).is_err());
    }

    #[test]
    fn json_schema_is_strict_and_nullable() {
        let returns = json!({
            "age": {"type": "integer", "minimum": 0, "description": "Age in years"},
            "day": "date",
            "at": "datetime?",
            "size": "enum:s|l",
            "ok": "boolean",
        });
        let schema = ReturnsSchema::parse(&returns).unwrap();
        let generated = schema.to_json_schema();
        assert_eq!(generated["required"], json!(keys_in_map_order(&returns)));
        assert_eq!(
            generated,
            json!({
                "type": "object",
                "properties": {
                    "age": {"type": ["integer", "null"], "minimum": 0, "description": "Age in years"},
                    "day": {"type": ["string", "null"], "format": "date"},
                    "at": {"type": ["string", "null"], "format": "date-time"},
                    "size": {"type": ["string", "null"], "enum": ["s", "l", null]},
                    "ok": {"type": ["boolean", "null"]},
                },
                "required": keys_in_map_order(&returns),
                "additionalProperties": false,
            })
        );
    }
}
