//! Field accuracy of the built-in extractor on the simulated conversations in
//! `fixtures/`, and a throughput check (`cargo test --release -- --ignored`).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use chrono::NaiveDate;
use ringer::returns::{FieldKind, ReturnsSchema};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::{Language, Turn, extract};

#[derive(Debug, Deserialize)]
struct Fixture {
    id: String,
    language: Language,
    call_date: NaiveDate,
    returns: Value,
    transcript: Vec<Turn>,
    expected: Map<String, Value>,
}

fn load_fixtures() -> Vec<Fixture> {
    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let mut paths: Vec<_> = std::fs::read_dir(&folder)
        .expect("fixtures folder is readable")
        .map(|entry| entry.expect("fixtures folder entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    paths.sort();
    paths
        .iter()
        .flat_map(|path| {
            let text = std::fs::read_to_string(path).expect("fixture file is readable");
            serde_json::from_str::<Vec<Fixture>>(&text).unwrap_or_else(|error| {
                panic!("{} is not a list of fixtures: {error}", path.display())
            })
        })
        .collect()
}

/// Free text is compared case-insensitively, ignoring punctuation and spacing.
fn normalise_text(text: &str) -> String {
    text.chars()
        .filter(|c| c.is_alphanumeric() || c.is_whitespace())
        .collect::<String>()
        .to_lowercase()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn values_match(kind: &FieldKind, expected: &Value, actual: &Value) -> bool {
    match (expected, actual) {
        (Value::Number(e), Value::Number(a)) => {
            (e.as_f64().unwrap_or(f64::NAN) - a.as_f64().unwrap_or(f64::NAN)).abs() < 1e-9
        }
        (Value::String(e), Value::String(a)) if *kind == FieldKind::String => {
            normalise_text(e) == normalise_text(a)
        }
        _ => expected == actual,
    }
}

#[derive(Default)]
struct Tally {
    correct: usize,
    total: usize,
}

impl Tally {
    fn add(&mut self, correct: bool) {
        self.total += 1;
        self.correct += usize::from(correct);
    }

    fn accuracy(&self) -> f64 {
        self.correct as f64 / self.total.max(1) as f64
    }
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:6.2} % ({}/{})",
            100.0 * self.accuracy(),
            self.correct,
            self.total
        )
    }
}

#[test]
fn builtin_extractor_field_accuracy_is_at_least_95_percent() {
    let fixtures = load_fixtures();
    assert!(
        fixtures.len() >= 200,
        "expected at least 200 fixtures, found {}",
        fixtures.len()
    );

    let mut overall = Tally::default();
    let mut by_language: BTreeMap<String, Tally> = BTreeMap::new();
    let mut by_type: BTreeMap<&'static str, Tally> = BTreeMap::new();
    let mut misses = Vec::new();
    for fixture in &fixtures {
        let schema = ReturnsSchema::parse(&fixture.returns)
            .unwrap_or_else(|error| panic!("{}: invalid returns: {error}", fixture.id));
        let result = extract(
            &schema,
            &fixture.transcript,
            fixture.language,
            fixture.call_date,
        );
        let result = Value::Object(result);
        if let Err(error) = schema.validate_result(&result) {
            panic!("{}: result {result} fails validation: {error}", fixture.id);
        }
        for field in &schema.fields {
            let expected = fixture.expected.get(&field.name).unwrap_or(&Value::Null);
            let actual = &result[&field.name];
            let correct = values_match(&field.kind, expected, actual);
            overall.add(correct);
            by_language
                .entry(format!("{:?}", fixture.language).to_lowercase())
                .or_default()
                .add(correct);
            by_type
                .entry(field.kind.type_name())
                .or_default()
                .add(correct);
            if !correct {
                misses.push(format!(
                    "{} {}: expected {expected}, got {actual}",
                    fixture.id, field.name
                ));
            }
        }
    }

    println!("built-in extractor on {} conversations:", fixtures.len());
    println!("  all fields   {overall}");
    for (language, tally) in &by_language {
        println!("  language {language:3} {tally}");
    }
    for (kind, tally) in &by_type {
        println!("  {kind:12} {tally}");
    }
    for miss in &misses {
        println!("  miss: {miss}");
    }
    assert!(
        overall.accuracy() >= 0.95,
        "field accuracy {overall} is below 95 %"
    );
}

/// Extractions per second for five-field schemas; run in release mode:
/// `cargo test --release -p ringer-extractor --lib -- --ignored --nocapture throughput`.
#[test]
#[ignore]
fn builtin_extractor_throughput() {
    let fixtures: Vec<(ReturnsSchema, Fixture)> = load_fixtures()
        .into_iter()
        .filter_map(|fixture| {
            let schema = ReturnsSchema::parse(&fixture.returns).ok()?;
            (schema.fields.len() == 5).then_some((schema, fixture))
        })
        .collect();
    assert!(!fixtures.is_empty());
    let rounds = 50;
    let started = Instant::now();
    let mut fields = 0;
    for _ in 0..rounds {
        for (schema, fixture) in &fixtures {
            fields += extract(
                schema,
                &fixture.transcript,
                fixture.language,
                fixture.call_date,
            )
            .len();
        }
    }
    let elapsed = started.elapsed();
    let calls = rounds * fixtures.len();
    println!(
        "{calls} extractions of 5-field schemas ({fields} fields) in {elapsed:?}: {:.1} µs each, {:.0} extractions/s",
        elapsed.as_secs_f64() * 1e6 / calls as f64,
        calls as f64 / elapsed.as_secs_f64()
    );
}

/// Prints the transcript and result of the fixtures named in `FIXTURES`
/// (comma-separated ids): `FIXTURES=en-001 cargo test … show_fixtures -- --ignored --nocapture`.
#[test]
#[ignore]
fn show_fixtures() {
    let wanted = std::env::var("FIXTURES").unwrap_or_default();
    let wanted: Vec<&str> = wanted.split(',').map(str::trim).collect();
    for fixture in load_fixtures()
        .iter()
        .filter(|f| wanted.contains(&f.id.as_str()))
    {
        let schema = ReturnsSchema::parse(&fixture.returns).expect("valid returns");
        println!("{} ({})", fixture.id, fixture.call_date);
        for turn in &fixture.transcript {
            println!("  {:?}: {}", turn.role, turn.text);
        }
        let result = extract(
            &schema,
            &fixture.transcript,
            fixture.language,
            fixture.call_date,
        );
        for field in &schema.fields {
            let expected = fixture.expected.get(&field.name).unwrap_or(&Value::Null);
            let actual = &result[&field.name];
            let mark = if values_match(&field.kind, expected, actual) {
                "  "
            } else {
                "✗ "
            };
            println!("  {mark}{}: expected {expected}, got {actual}", field.name);
        }
    }
}
