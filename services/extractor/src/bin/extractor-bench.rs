//! Extractions per second of the built-in extractor on one core, for a
//! five-field schema over generated conversations. Prints a Markdown table.

use std::hint::black_box;
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use clap::Parser;
use ringer::call::Language;
use ringer::returns::ReturnsSchema;
use ringer_extractor::BuiltinExtractor;
use ringer_extractor::extraction::{ExtractionRequest, Utterance};
use serde_json::json;

/// The goal of the issue: extractions per second on one core.
const GOAL_PER_SECOND: f64 = 2_000.0;

#[derive(Debug, clap::Parser)]
#[command(
    name = "extractor-bench",
    about = "Benchmark the built-in extractor on one core"
)]
struct Args {
    /// Seconds to measure each scenario (after a short warm-up).
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
}

struct Scenario {
    name: &'static str,
    language: Language,
    transcript: Vec<Utterance>,
}

fn schema() -> ReturnsSchema {
    ReturnsSchema::parse(&json!({
        "party_size": "integer",
        "reservation_date": "date",
        "seating": "enum:indoor|outdoor|bar",
        "high_chair": "boolean",
        "special_requests": "string?",
    }))
    .expect("the benchmark schema is valid")
}

fn scenarios() -> Vec<Scenario> {
    let english = vec![
        Utterance::agent("Hi, this is Sam from Bella Cucina. Do you have a minute?"),
        Utterance::callee("Sure, go ahead."),
        Utterance::agent("How many people will be in your party?"),
        Utterance::callee("Um, we'll be five. Sorry, six — my sister is coming too."),
        Utterance::agent("Great. What date would you like the reservation for?"),
        Utterance::callee("Next Friday, and we'd love to sit outside if possible."),
        Utterance::agent("Do you prefer indoor, outdoor or bar seating?"),
        Utterance::callee("Like I said, outside."),
        Utterance::agent("Will you need a high chair?"),
        Utterance::callee("Nope."),
        Utterance::agent("Any special requests?"),
        Utterance::callee("Well, it's my mom's birthday, so a small cake would be lovely."),
        Utterance::agent("Perfect, thank you. Have a great day!"),
        Utterance::callee("You too, bye!"),
    ];
    let spanish = vec![
        Utterance::agent("Hola, le llamo de Bella Cucina. ¿Tiene un momento?"),
        Utterance::callee("Sí, dígame."),
        Utterance::agent("¿Cuántas personas serán en su grupo?"),
        Utterance::callee("Seremos cuatro."),
        Utterance::agent("¿Para qué fecha quiere la reserva?"),
        Utterance::callee("Para el próximo sábado."),
        Utterance::agent("¿Prefiere mesa en el interior, en la terraza o en la barra?"),
        Utterance::callee("En el interior, por favor."),
        Utterance::agent("¿Necesitará una trona para niños?"),
        Utterance::callee("Sí, una."),
        Utterance::agent("¿Alguna petición especial?"),
        Utterance::callee("Que la mesa esté lejos de la puerta."),
        Utterance::agent("Perfecto, muchas gracias. ¡Que tenga un buen día!"),
    ];
    // A long call: the same questions asked again among small talk.
    let mut long = english.clone();
    for _ in 0..4 {
        long.extend([
            Utterance::agent("Sorry, the line was bad. How many people was that again?"),
            Utterance::callee("Six of us, and outdoor seating if you have it."),
            Utterance::agent("And the date?"),
            Utterance::callee("Next Friday, like I said. Thanks so much for checking."),
        ]);
    }
    vec![
        Scenario {
            name: "reservation",
            language: Language::En,
            transcript: english,
        },
        Scenario {
            name: "reserva",
            language: Language::Es,
            transcript: spanish,
        },
        Scenario {
            name: "long reservation",
            language: Language::En,
            transcript: long,
        },
    ]
}

struct Measurement {
    extractions: u64,
    elapsed: Duration,
    /// CPU time of the measuring thread, when the kernel reports it.
    cpu: Option<Duration>,
}

impl Measurement {
    /// Extractions per second of one core: per CPU-second of the thread, so
    /// that other processes on a shared machine do not lower the figure.
    fn per_core_second(&self) -> f64 {
        let busy = self.cpu.unwrap_or(self.elapsed);
        self.extractions as f64 / busy.as_secs_f64()
    }

    fn per_wall_second(&self) -> f64 {
        self.extractions as f64 / self.elapsed.as_secs_f64()
    }
}

/// CPU time this thread has run, from `/proc/thread-self/schedstat` (Linux).
fn thread_cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let nanos = stat.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(nanos))
}

fn measure(request: &ExtractionRequest<'_>, budget: Duration) -> Measurement {
    let extractor = BuiltinExtractor;
    let warm_up = Instant::now();
    while warm_up.elapsed() < budget / 10 {
        black_box(extractor.extract_now(black_box(request)));
    }
    let started = Instant::now();
    let cpu_started = thread_cpu_time();
    let mut extractions = 0u64;
    // Check the clock every few iterations so that it does not weigh on the result.
    while started.elapsed() < budget {
        for _ in 0..16 {
            black_box(extractor.extract_now(black_box(request)));
        }
        extractions += 16;
    }
    let elapsed = started.elapsed();
    let cpu = match (cpu_started, thread_cpu_time()) {
        (Some(before), Some(after)) if after > before => Some(after - before),
        _ => None,
    };
    Measurement {
        extractions,
        elapsed,
        cpu,
    }
}

fn main() {
    let args = Args::parse();
    let budget = Duration::from_secs_f64(args.seconds.max(0.1));
    let schema = schema();
    let call_date = NaiveDate::from_ymd_opt(2026, 3, 11).expect("valid date");

    println!("## Extractor: built-in extractions per second (issue 5)\n");
    println!(
        "One thread (one core), a 5-field schema (integer, date, enum, boolean, string?), \
         generated conversations; each extraction reads the whole transcript. Rates are per CPU-second \
         of the measuring thread (wall-clock beside them: lower when the machine is shared). \
         Goal: ≥ {GOAL_PER_SECOND:.0}/s.\n"
    );
    println!(
        "| scenario | language | turns | extractions | CPU s | extractions/s (one core) | µs/extraction | wall-clock /s | ≥ {GOAL_PER_SECOND:.0}/s |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---|");
    let mut slowest = f64::INFINITY;
    let mut results = Vec::new();
    for scenario in scenarios() {
        let request = ExtractionRequest {
            schema: &schema,
            transcript: &scenario.transcript,
            language: scenario.language,
            call_date,
            prompt: "Book a table",
        };
        let result = BuiltinExtractor.extract_now(&request);
        if let Err(error) = schema.validate_result(&result) {
            eprintln!("the built-in extractor returned an invalid result: {error}");
            std::process::exit(1);
        }
        let measurement = measure(&request, budget);
        let rate = measurement.per_core_second();
        slowest = slowest.min(rate);
        println!(
            "| {} | {} | {} | {} | {:.2} | {:.0} | {:.1} | {:.0} | {} |",
            scenario.name,
            scenario.language,
            scenario.transcript.len(),
            measurement.extractions,
            measurement.cpu.unwrap_or(measurement.elapsed).as_secs_f64(),
            rate,
            1e6 / rate,
            measurement.per_wall_second(),
            if rate >= GOAL_PER_SECOND { "yes" } else { "no" },
        );
        results.push((scenario.name, result));
    }
    println!("\nSlowest scenario: {slowest:.0} extractions/s.");
    println!("\nResults read (so the work is real):\n");
    for (name, result) in results {
        println!("- {name}: `{result}`");
    }
}
