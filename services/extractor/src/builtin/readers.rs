//! Reading one field's value from what the callee said about it.

use chrono::NaiveDate;
use ringer::returns::FieldKind;
use serde_json::{Number, Value};

use super::Language;
use super::dates::{Bias, DateSpan, TimeSpan, find_dates, find_period, find_times};
use super::fields::FieldProfile;
use super::lexicon::{
    CALLEE_CHECK_PHRASES, CLOSER_PHRASES, CUES, Cue, NAME_OPENER_PHRASES, NEGATORS, OPENER_PHRASES,
    WEAK_YES,
};
use super::numbers::{NumberSpan, find_numbers};
use super::text::{Token, sentence_ranges, source_text};

/// What a stretch of speech says about a field.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Reading {
    Value(Value),
    /// The callee declined or did not know.
    Unknown,
    /// Nothing about this field.
    Nothing,
}

/// A reading and the tokens it was read from, so that a volunteered answer
/// can be taken out of the reply before the asked field reads the rest.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Found {
    pub reading: Reading,
    pub span: Option<(usize, usize)>,
}

impl Found {
    fn nothing() -> Found {
        Found {
            reading: Reading::Nothing,
            span: None,
        }
    }

    fn unknown() -> Found {
        Found {
            reading: Reading::Unknown,
            span: None,
        }
    }

    fn value(value: Value, span: (usize, usize)) -> Found {
        Found {
            reading: Reading::Value(value),
            span: Some(span),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Context {
    pub language: Language,
    pub today: NaiveDate,
    pub bias: Bias,
    /// A date the agent's question named ("what time on Friday?").
    pub question_date: Option<NaiveDate>,
    /// Reading something nobody asked for: only unmistakable values count
    /// ("one guest" in a request is no party size).
    pub unprompted: bool,
}

/// Reads `profile`'s field from `tokens` (of `source`). The value, if any,
/// is of the field's type and within its constraints.
pub(crate) fn read_field(
    profile: &FieldProfile,
    source: &str,
    tokens: &[Token],
    context: &Context,
) -> Found {
    let kept = answering_tokens(tokens);
    let answer: Vec<Token> = kept.iter().map(|&i| tokens[i].clone()).collect();
    let found = match profile.kind() {
        FieldKind::Boolean => read_boolean(source, &answer),
        FieldKind::Integer | FieldKind::Number => read_number(profile, source, &answer, context),
        FieldKind::Date => read_date(source, &answer, context),
        FieldKind::DateTime => read_datetime(source, &answer, context),
        FieldKind::Enum(options) => read_enum(profile, options, source, &answer),
        FieldKind::String => read_string(profile, source, &answer),
    };
    match &found.reading {
        Reading::Value(value) if !profile.spec.accepts(value) => Found::nothing(),
        _ => Found {
            span: found
                .span
                .filter(|(s, e)| s < e)
                .map(|(s, e)| (kept[s], kept[e - 1] + 1)),
            ..found
        },
    }
}

/// Indices of the tokens outside sentences in which the callee checks
/// something ("Sorry, what was that?"), which answer nothing. A question that
/// proposes an answer ("How about Friday at 3?") is kept.
fn answering_tokens(tokens: &[Token]) -> Vec<usize> {
    let mut kept = Vec::with_capacity(tokens.len());
    for (start, end) in sentence_ranges(tokens) {
        let closing = (end..(end + 1).min(tokens.len())).chain(start..end);
        let is_question = closing
            .clone()
            .any(|i| tokens[i].is("?") || tokens[i].is("¿"));
        let words = tokens[start..end].iter().filter(|t| !t.is_punct()).count();
        let checks = is_question
            && (words <= 2
                || !CALLEE_CHECK_PHRASES
                    .find_all(&tokens[start..end])
                    .is_empty())
            && !has_value_words(&tokens[start..end]);
        if !checks {
            kept.extend(start..(end + 1).min(tokens.len()));
        }
    }
    kept
}

/// Whether a sentence holds something an answer is made of: digits or a
/// weekday, month or clock word.
fn has_value_words(tokens: &[Token]) -> bool {
    tokens.iter().any(|t| {
        t.is_digits()
            || t.is_any(&[
                "monday",
                "tuesday",
                "wednesday",
                "thursday",
                "friday",
                "saturday",
                "sunday",
                "lunes",
                "martes",
                "miercoles",
                "jueves",
                "viernes",
                "sabado",
                "domingo",
                "tomorrow",
                "manana",
                "today",
                "hoy",
                "noon",
                "mediodia",
            ])
    })
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct CueMatch {
    start: usize,
    end: usize,
    cue: Cue,
}

/// Every cue in `tokens`, longest first, non-overlapping. A Spanish "si"
/// without its accent is "if" unless it stands alone.
fn cues(source: &str, tokens: &[Token]) -> Vec<CueMatch> {
    let mut found = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        match CUES.longest_at(tokens, i) {
            Some((len, cue)) => {
                let unaccented_if = tokens[i].is("si")
                    && len == 1
                    && !source[tokens[i].start..tokens[i].end].contains(['í', 'Í'])
                    && tokens.get(i + 1).is_some_and(|t| !t.is_punct());
                if !unaccented_if {
                    found.push(CueMatch {
                        start: i,
                        end: i + len,
                        cue,
                    });
                }
                i += len;
            }
            None => i += 1,
        }
    }
    found
}

#[derive(Debug, Clone, Copy)]
struct Segment {
    start: usize,
    end: usize,
}

/// Splits at corrections: what follows "sorry"/"I mean"/"no, " replaces what
/// came before. `soft` also splits at "actually"/"wait"; `bare_no` at a "no"
/// standing alone between commas ("five, no, six").
fn segments(tokens: &[Token], cues: &[CueMatch], soft: bool, bare_no: bool) -> Vec<Segment> {
    let mut found = Vec::new();
    let mut start = 0;
    for cue in cues {
        // Free text splits at "actually, no," / "bueno, no," only.
        if !soft && !bare_no && cue.cue == Cue::SoftCorrection {
            let next_word = (cue.end..tokens.len()).find(|&i| !tokens[i].is_punct());
            if let Some(no) = next_word.filter(|&i| tokens[i].is("no") && i <= cue.end + 1) {
                found.push(Segment {
                    start,
                    end: cue.start,
                });
                start = no + 1;
            }
            continue;
        }
        // In free text, "Pollen... no, peanuts" corrects too.
        let after_pause = !soft && cue.start > 0 && tokens[cue.start - 1].is_sentence_break();
        let is_bare_no = (bare_no || after_pause)
            && cue.cue == Cue::No
            && cue.end == cue.start + 1
            && tokens[cue.start].is("no")
            && (cue.start == 0 || tokens[cue.start - 1].is_clause_break())
            && tokens.get(cue.end).is_none_or(|t| t.is_clause_break());
        let splits =
            cue.cue == Cue::Correction || (soft && cue.cue == Cue::SoftCorrection) || is_bare_no;
        if splits {
            found.push(Segment {
                start,
                end: cue.start,
            });
            start = cue.end;
        }
    }
    found.push(Segment {
        start,
        end: tokens.len(),
    });
    found
}

fn cues_in(cues: &[CueMatch], start: usize, end: usize) -> impl Iterator<Item = &CueMatch> {
    cues.iter()
        .filter(move |c| c.start >= start && c.end <= end)
}

/// Whether token `i` lies in a phrase that says nothing ("one more thing", "no sé").
fn in_filler(cues: &[CueMatch], i: usize) -> bool {
    cues.iter()
        .any(|c| matches!(c.cue, Cue::Neutral | Cue::Unknown) && (c.start..c.end).contains(&i))
}

fn has_unknown(cues: &[CueMatch], segment: Segment) -> bool {
    cues_in(cues, segment.start, segment.end).any(|c| c.cue == Cue::Unknown)
}

/// Folds segment readings: each later value or "don't know" replaces the last.
fn last_stated(readings: impl IntoIterator<Item = Found>) -> Found {
    readings
        .into_iter()
        .filter(|found| found.reading != Reading::Nothing)
        .last()
        .unwrap_or_else(Found::nothing)
}

fn read_boolean(source: &str, tokens: &[Token]) -> Found {
    let cues = cues(source, tokens);
    let readings = segments(tokens, &cues, true, false)
        .into_iter()
        .map(|segment| {
            let sentence_readings = sentence_ranges(&tokens[segment.start..segment.end])
                .into_iter()
                .map(|(s, e)| {
                    let (s, e) = (segment.start + s, segment.start + e);
                    let first_word = (s..e).find(|&i| !tokens[i].is_punct());
                    // "Correct." answers; "I need to correct something" does not.
                    let polar: Vec<&CueMatch> = cues_in(&cues, s, e)
                        .filter(|c| matches!(c.cue, Cue::Yes | Cue::No))
                        .filter(|c| {
                            !tokens[c.start].is_any(OPENING_ONLY_YES) || Some(c.start) == first_word
                        })
                        .collect();
                    let is_weak = |c: &&&CueMatch| {
                        let text = tokens[c.start..c.end]
                            .iter()
                            .map(|t| t.norm.as_str())
                            .collect::<Vec<_>>()
                            .join(" ");
                        (c.cue == Cue::Yes && WEAK_YES.contains(&text.as_str()))
                            || (c.cue == Cue::No && text == "no")
                    };
                    let chosen = if has_unknown(&cues, Segment { start: s, end: e }) {
                        match polar.iter().find(|c| !is_weak(c)) {
                            Some(cue) => Some(**cue),
                            None => return Found::unknown(),
                        }
                    } else {
                        polar.first().map(|c| **c)
                    };
                    match chosen {
                        Some(cue) => {
                            Found::value(Value::Bool(cue.cue == Cue::Yes), (cue.start, cue.end))
                        }
                        None => Found::nothing(),
                    }
                });
            last_stated(sentence_readings)
        });
    last_stated(readings)
}

/// Number, date and time spans of a piece of speech, found once.
struct Spans {
    numbers: Vec<NumberSpan>,
    dates: Vec<DateSpan>,
    times: Vec<TimeSpan>,
}

impl Spans {
    fn find(tokens: &[Token], context: &Context) -> Spans {
        let numbers = find_numbers(tokens, context.language);
        let dates = find_dates(
            tokens,
            &numbers,
            context.language,
            context.today,
            context.bias,
        );
        let times = find_times(tokens, &numbers);
        Spans {
            numbers,
            dates,
            times,
        }
    }

    fn overlaps_date_or_time(&self, start: usize, end: usize) -> bool {
        let overlaps = |s: usize, e: usize| s < end && start < e;
        self.dates
            .iter()
            .any(|d| d.explicit && overlaps(d.start, d.end))
            || self
                .times
                .iter()
                .any(|t| t.explicit && overlaps(t.start, t.end))
    }
}

fn within(start: usize, end: usize, segment: Segment) -> bool {
    start >= segment.start && end <= segment.end
}

fn number_value(value: f64, integer: bool) -> Option<Value> {
    if integer || value.fract() == 0.0 && value.abs() < 9.0e15 {
        (value.fract() == 0.0).then(|| Value::from(value as i64))
    } else {
        Number::from_f64(value).map(Value::Number)
    }
}

fn read_number(profile: &FieldProfile, source: &str, tokens: &[Token], context: &Context) -> Found {
    let cues = cues(source, tokens);
    let spans = Spans::find(tokens, context);
    let integer = *profile.kind() == FieldKind::Integer;
    let readings = segments(tokens, &cues, true, true)
        .into_iter()
        .map(|segment| {
            let candidates: Vec<&NumberSpan> = spans
                .numbers
                .iter()
                .filter(|n| within(n.start, n.end, segment) && !n.ordinal)
                .filter(|n| !in_filler(&cues, n.start))
                .filter(|n| !spans.overlaps_date_or_time(n.start, n.end))
                .filter(|n| !(n.start > 0 && tokens[n.start - 1].is_any(&["not", "no", "ni"])))
                .collect();
            // A lone "one"/"una" after a determiner is a pronoun ("the blue one").
            let is_pronoun =
                |n: &NumberSpan| n.weak && n.start > 0 && tokens[n.start - 1].is_any(DETERMINERS);
            let chosen = candidates.iter().find(|n| !n.weak).or(candidates
                .iter()
                .find(|n| !is_pronoun(n) && !context.unprompted));
            match chosen.and_then(|n| Some((number_value(n.value, integer)?, n))) {
                Some((value, n)) => Found::value(value, (n.start, n.end)),
                None if chosen.is_some() => Found::nothing(),
                None if has_unknown(&cues, segment) => Found::unknown(),
                None => Found::nothing(),
            }
        });
    last_stated(readings)
}

fn read_date(source: &str, tokens: &[Token], context: &Context) -> Found {
    let cues = cues(source, tokens);
    let spans = Spans::find(tokens, context);
    let mut state: Option<(NaiveDate, (usize, usize))> = None;
    let mut readings = Vec::new();
    for segment in segments(tokens, &cues, true, true) {
        if let Some(date) = spans
            .dates
            .iter()
            .find(|d| within(d.start, d.end, segment) && !in_filler(&cues, d.start))
        {
            state = Some((date.date, (date.start, date.end)));
            readings.push(Found::value(
                Value::String(date.date.to_string()),
                (date.start, date.end),
            ));
        } else if let Some((date, span)) = state
            && let Some(day) = bare_number(&spans, segment, 1.0..=31.0)
            && let Some(corrected) = chrono::Datelike::with_day(&date, day)
        {
            // "the 15th — sorry, 16": a lone number corrects the day.
            state = Some((corrected, span));
            readings.push(Found::value(Value::String(corrected.to_string()), span));
        } else if has_unknown(&cues, segment) {
            readings.push(Found::unknown());
        }
    }
    last_stated(readings)
}

/// A lone whole number in `segment` within `range`, not part of a date or time.
fn bare_number(
    spans: &Spans,
    segment: Segment,
    range: std::ops::RangeInclusive<f64>,
) -> Option<u32> {
    spans
        .numbers
        .iter()
        .find(|n| {
            within(n.start, n.end, segment)
                && !n.weak
                && n.value.fract() == 0.0
                && range.contains(&n.value)
        })
        .map(|n| n.value as u32)
}

fn read_datetime(source: &str, tokens: &[Token], context: &Context) -> Found {
    let cues = cues(source, tokens);
    let spans = Spans::find(tokens, context);
    let mut date: Option<&DateSpan> = None;
    let mut time: Option<TimeSpan> = None;
    let mut period = None;
    let mut readings = Vec::new();
    for segment in segments(tokens, &cues, true, true) {
        let segment_date = spans.dates.iter().find(|d| within(d.start, d.end, segment));
        let segment_time = spans.times.iter().find(|t| within(t.start, t.end, segment));
        let segment_period = find_period(&tokens[segment.start..segment.end]);
        if segment_date.is_some() {
            date = segment_date;
        }
        if let Some(found) = segment_time {
            time = Some(found.clone());
            period = segment_period;
        } else if let Some(previous) = &mut time
            && segment_date.is_none()
            && let Some(hour) = bare_number(&spans, segment, 1.0..=23.0)
        {
            // "3 pm — sorry, 4": a lone number corrects the hour.
            previous.hour = hour;
        } else if segment_period.is_some() {
            period = segment_period;
        }
        let Some(time) = &time else {
            if segment_date.is_none() && has_unknown(&cues, segment) {
                readings.push(Found::unknown());
            }
            continue;
        };
        let Some(clock) = time.resolve(period) else {
            continue;
        };
        let day = date
            .map(|d| d.date)
            .or(context.question_date)
            .unwrap_or(context.today);
        let value = format!("{}T{}Z", day.format("%Y-%m-%d"), clock.format("%H:%M:%S"));
        let start = date.map_or(time.start, |d| d.start.min(time.start));
        let end = date.map_or(time.end, |d| d.end.max(time.end));
        readings.push(Found::value(Value::String(value), (start, end)));
    }
    last_stated(readings)
}

fn read_enum(profile: &FieldProfile, options: &[String], source: &str, tokens: &[Token]) -> Found {
    let Some(phrases) = &profile.options else {
        return Found::nothing();
    };
    let cues = cues(source, tokens);
    let yes_option = options
        .iter()
        .position(|o| matches!(o.to_lowercase().as_str(), "yes" | "si" | "sí" | "true"));
    let no_option = options
        .iter()
        .position(|o| matches!(o.to_lowercase().as_str(), "no" | "false"));
    let matches = phrases.find_all(tokens);
    let readings = segments(tokens, &cues, true, yes_option.is_none())
        .into_iter()
        .map(|segment| {
            let chosen = matches.iter().find(|(start, end, _)| {
                within(*start, *end, segment) && !is_negated(tokens, *start, segment.start)
            });
            if let Some(&(start, end, index)) = chosen {
                return Found::value(Value::String(options[index].clone()), (start, end));
            }
            if let (Some(yes), Some(no)) = (yes_option, no_option) {
                let polarity = read_boolean(source, &tokens[segment.start..segment.end]);
                if let Reading::Value(Value::Bool(answer)) = polarity.reading {
                    let index = if answer { yes } else { no };
                    let span = polarity
                        .span
                        .map(|(s, e)| (s + segment.start, e + segment.start));
                    return Found {
                        reading: Reading::Value(Value::String(options[index].clone())),
                        span,
                    };
                }
            }
            match (has_unknown(&cues, segment), profile.unsure_option) {
                (true, Some(index)) => Found::value(
                    Value::String(options[index].clone()),
                    (segment.start, segment.end),
                ),
                (true, None) => Found::unknown(),
                _ => Found::nothing(),
            }
        });
    last_stated(readings)
}

/// Whether the phrase at `start` follows "not"/"rather than"/"en vez de"
/// within its clause.
fn is_negated(tokens: &[Token], start: usize, floor: usize) -> bool {
    let mut k = start;
    let mut looked = 0;
    while k > floor && looked < 3 {
        k -= 1;
        let token = &tokens[k];
        if token.is_clause_break() {
            return false;
        }
        if token.is_any(NEGATORS) {
            return true;
        }
        looked += 1;
    }
    false
}

/// Yes-words that answer only when they open the sentence.
const OPENING_ONLY_YES: &[&str] = &["correct", "right", "correcto", "exacto", "seguro", "cierto"];

const DETERMINERS: &[&str] = &[
    "the", "this", "that", "which", "any", "each", "every", "another", "no", "el", "la", "ese",
    "esa", "este", "esta", "otro", "otra", "cada", "ningun", "ninguna", "algun", "alguna", "cual",
];

/// Words that make a free-text reply a plain "none".
const NONE_WORDS: &[&str] = &[
    "nothing", "none", "nada", "ninguna", "ninguno", "really", "at", "all", "thanks", "thank",
    "you", "gracias", "that's", "it", "no", "nope", "not", "for", "now", "special", "todo", "bien",
    "eso", "esto", "that", "this", "especial", "i", "know", "of", "about", "one", "yet", "sure",
    "on",
];

fn read_string(profile: &FieldProfile, source: &str, tokens: &[Token]) -> Found {
    let cues = cues(source, tokens);
    let readings = segments(tokens, &cues, false, false)
        .into_iter()
        .map(|segment| {
            let masked: Vec<&Token> = (segment.start..segment.end)
                .filter(|&i| {
                    !cues_in(&cues, segment.start, segment.end).any(|c| {
                        matches!(c.cue, Cue::Unknown | Cue::Neutral)
                            && (c.start..c.end).contains(&i)
                    })
                })
                .map(|i| &tokens[i])
                .collect();
            let kept = strip_edges(profile, &masked);
            let is_plain_no = kept
                .iter()
                .filter(|t| !t.is_punct())
                .all(|t| is_none_word(profile, t));
            if kept.is_empty() || is_plain_no {
                return if has_unknown(&cues, segment) {
                    Found::unknown()
                } else {
                    Found::nothing()
                };
            }
            let text = source_text(source, &kept);
            let text = if profile.email_like {
                spoken_email(&kept).unwrap_or(text)
            } else if profile.phone_like {
                spoken_phone(source, &kept).unwrap_or(text)
            } else {
                text
            };
            let text = text.trim_matches(|c: char| c.is_whitespace() || ".,;:!¡¿\"“”".contains(c));
            let text = match profile.spec.max_length {
                Some(max) => text.chars().take(max as usize).collect(),
                None => text.to_owned(),
            };
            let span = (segment.start, segment.end);
            Found::value(Value::String(text), span)
        });
    last_stated(readings)
}

/// A word that, alone with others like it, says there is nothing: "No
/// allergies", "nada especial", "none, thanks".
fn is_none_word(profile: &FieldProfile, token: &Token) -> bool {
    token.is_any(NONE_WORDS)
        || profile
            .keywords
            .contains_key(&super::fields::Key::of(&token.norm))
        || matches!(
            CUES.longest_at(std::slice::from_ref(token), 0),
            Some((1, Cue::Yes | Cue::No))
        )
}

/// Drops what opens and closes a free-text answer without being part of it:
/// fillers, "yes,", "it's", "my name is", "thanks", and a leading "no, not
/// really;" before the actual answer.
fn strip_edges<'t>(profile: &FieldProfile, tokens: &[&'t Token]) -> Vec<&'t Token> {
    let owned: Vec<Token> = tokens.iter().map(|t| (*t).clone()).collect();
    let mut start = 0;
    let mut end = owned.len();
    loop {
        let before = start;
        while start < end && owned[start].is_punct() {
            start += 1;
        }
        let rest = &owned[start..end];
        if let Some((len, ())) = OPENER_PHRASES.longest_at(rest, 0) {
            start += len;
        } else if profile.name_like
            && let Some((len, ())) = NAME_OPENER_PHRASES.longest_at(rest, 0)
        {
            start += len;
        } else if let Some(len) = field_lead_in(profile, rest) {
            start += len;
        } else if let Some(clause_end) = rest.iter().position(Token::is_clause_break)
            && clause_end > 0
            && clause_end + 1 < rest.len()
            && rest[..clause_end].iter().all(|t| is_none_word(profile, t))
        {
            start += clause_end + 1;
        }
        if start == before {
            break;
        }
    }
    loop {
        let before = end;
        while end > start && owned[end - 1].is_punct() {
            end -= 1;
        }
        for len in 1..=3.min(end - start) {
            if CLOSER_PHRASES.longest_at(&owned[end - len..end], 0) == Some((len, ())) {
                end -= len;
                break;
            }
        }
        if end == before {
            break;
        }
    }
    tokens[start..end].to_vec()
}

/// "my email is", "the address would be", "mi correo es": an article, words
/// naming the field, and a verb.
fn field_lead_in(profile: &FieldProfile, tokens: &[Token]) -> Option<usize> {
    if !tokens.first()?.is_any(&[
        "my", "our", "the", "mi", "nuestro", "nuestra", "el", "la", "his", "her", "su",
    ]) {
        return None;
    }
    for verb_at in 2..=4.min(tokens.len().saturating_sub(1)) {
        let names_field = tokens[1..verb_at].iter().any(|t| {
            profile
                .keywords
                .contains_key(&super::fields::Key::of(&t.norm))
                || t.is_any(&["name", "nombre"])
        });
        let verb_len = match (
            tokens[verb_at].norm.as_str(),
            tokens.get(verb_at + 1).map(|t| t.norm.as_str()),
        ) {
            ("would" | "will" | "should", Some("be")) => 2,
            ("is" | "es" | "are" | "son" | "seria" | "sera", _) => 1,
            _ => 0,
        };
        if names_field && verb_len > 0 {
            return Some(verb_at + verb_len);
        }
    }
    None
}

/// A written address ("ana.torres@gmail.com") as written, or a spoken one
/// ("john dot smith at gmail dot com") put together.
fn spoken_email(tokens: &[&Token]) -> Option<String> {
    if let Some(at) = tokens.iter().position(|t| t.is("@")) {
        let glued = |i: usize| tokens[i].end == tokens[i + 1].start;
        let mut first = at;
        while first > 0 && glued(first - 1) {
            first -= 1;
        }
        let mut last = at;
        while last + 1 < tokens.len() && glued(last) {
            last += 1;
        }
        while last > at && tokens[last].is_punct() {
            last -= 1;
        }
        let email: String = tokens[first..=last]
            .iter()
            .map(|t| t.norm.as_str())
            .collect();
        return email.contains('.').then_some(email);
    }
    let mut email = String::new();
    for token in tokens {
        match token.norm.as_str() {
            "at" | "arroba" => email.push('@'),
            "dot" | "punto" => email.push('.'),
            "underscore" => email.push('_'),
            "dash" | "hyphen" | "guion" => email.push('-'),
            "," => break,
            text if token.is_word() || token.is_digits() || "@._-+".contains(text) => {
                email.push_str(text)
            }
            _ => {}
        }
    }
    let (user, domain) = email.split_once('@')?;
    let valid =
        !user.is_empty() && domain.contains('.') && !domain.ends_with('.') && !domain.contains('@');
    valid.then_some(email)
}

/// "five five five, one two three four" → "5551234"; at least seven digits.
fn spoken_phone(source: &str, tokens: &[&Token]) -> Option<String> {
    let mut digits = String::new();
    for token in tokens {
        let digit = match token.norm.as_str() {
            "zero" | "oh" | "cero" => "0",
            "one" | "uno" => "1",
            "two" | "dos" => "2",
            "three" | "tres" => "3",
            "four" | "cuatro" => "4",
            "five" | "cinco" => "5",
            "six" | "seis" => "6",
            "seven" | "siete" => "7",
            "eight" | "ocho" => "8",
            "nine" | "nueve" => "9",
            text if token.is_digits() => text,
            _ => continue,
        };
        digits.push_str(digit);
    }
    if digits.len() < 7 {
        return None;
    }
    let plus = tokens
        .first()
        .is_some_and(|first| source[..first.start].ends_with('+'))
        || tokens.iter().any(|t| t.is("+"));
    Some(if plus { format!("+{digits}") } else { digits })
}

#[cfg(test)]
mod tests {
    use ringer::returns::ReturnsSchema;
    use serde_json::json;

    use super::super::text::tokenize;
    use super::*;

    fn read(kind: Value, text: &str, language: Language) -> Reading {
        let schema = ReturnsSchema::parse(&json!({ "field": kind })).unwrap();
        let profile = FieldProfile::new(&schema.fields[0]);
        let context = Context {
            language,
            today: NaiveDate::from_ymd_opt(2026, 3, 11).unwrap(),
            bias: Bias::Future,
            question_date: None,
            unprompted: false,
        };
        read_field(&profile, text, &tokenize(text), &context).reading
    }

    fn value(kind: &str, text: &str, language: Language) -> Value {
        match read(json!(kind), text, language) {
            Reading::Value(value) => value,
            other => panic!("{text}: {other:?}"),
        }
    }

    #[test]
    fn reads_yes_and_no() {
        for text in [
            "Yeah, sure.",
            "Of course!",
            "Yep",
            "Sí, claro",
            "Por supuesto",
            "I do.",
            "Yes — no problem",
            "Claro que sí",
        ] {
            assert_eq!(value("boolean", text, Language::En), json!(true), "{text}");
        }
        for text in [
            "Nope.",
            "Not really.",
            "No, para nada",
            "Yes — actually no",
            "I don't, no.",
            "Claro que no",
            "Of course not",
        ] {
            assert_eq!(value("boolean", text, Language::En), json!(false), "{text}");
        }
        for text in [
            "I don't know",
            "No sé",
            "I'd rather not say",
            "Prefiero no decirlo",
            "Hmm, not sure",
        ] {
            assert_eq!(
                read(json!("boolean"), text, Language::En),
                Reading::Unknown,
                "{text}"
            );
        }
        assert_eq!(
            read(json!("boolean"), "Si es posible", Language::Es),
            Reading::Nothing
        );
    }

    #[test]
    fn reads_numbers_with_corrections() {
        assert_eq!(value("integer", "It's 5, sorry, 6", Language::En), json!(6));
        assert_eq!(value("integer", "Five, no, six", Language::En), json!(6));
        assert_eq!(value("integer", "Not five, six", Language::En), json!(6));
        assert_eq!(
            value("integer", "We'll be there at 7, four of us", Language::En),
            json!(4)
        );
        assert_eq!(
            value("number", "About two and a half", Language::En),
            json!(2.5)
        );
        assert_eq!(
            value("integer", "Somos veintitrés", Language::Es),
            json!(23)
        );
        assert_eq!(
            read(json!("integer"), "two and a half", Language::En),
            Reading::Nothing
        );
        assert_eq!(
            read(json!("integer"), "No sé", Language::Es),
            Reading::Unknown
        );
        assert_eq!(
            read(
                json!({"type": "integer", "maximum": 10}),
                "eleven",
                Language::En
            ),
            Reading::Nothing
        );
    }

    #[test]
    fn reads_dates_and_times() {
        assert_eq!(
            value("date", "Next Tuesday works", Language::En),
            json!("2026-03-17")
        );
        assert_eq!(
            value("date", "The 15th, sorry, the 16th", Language::En),
            json!("2026-03-16")
        );
        assert_eq!(
            value("datetime", "Tomorrow at 3 pm", Language::En),
            json!("2026-03-12T15:00:00Z")
        );
        assert_eq!(
            value(
                "datetime",
                "El viernes a las diez y media de la mañana",
                Language::Es
            ),
            json!("2026-03-13T10:30:00Z")
        );
        assert_eq!(
            value("datetime", "Friday at 3 — sorry, 4", Language::En),
            json!("2026-03-13T16:00:00Z")
        );
        assert_eq!(
            read(json!("datetime"), "Tomorrow", Language::En),
            Reading::Nothing
        );
    }

    #[test]
    fn reads_enum_choices() {
        let seating = "enum:indoor|outdoor|bar";
        assert_eq!(
            value(seating, "Outside, please", Language::En),
            json!("outdoor")
        );
        assert_eq!(
            value(seating, "Not indoors — outdoors", Language::En),
            json!("outdoor")
        );
        assert_eq!(
            value(seating, "En la terraza", Language::Es),
            json!("outdoor")
        );
        assert_eq!(
            value(seating, "Indoor. Actually, the bar", Language::En),
            json!("bar")
        );
        assert_eq!(
            value("enum:yes|no|maybe", "Nope", Language::En),
            json!("no")
        );
        assert_eq!(
            value("enum:yes|no|maybe", "I'm not sure", Language::En),
            json!("maybe")
        );
    }

    #[test]
    fn reads_free_text() {
        assert_eq!(
            value(
                "string",
                "Well, a table by the window, please.",
                Language::En
            ),
            json!("a table by the window")
        );
        assert_eq!(
            value(
                "string",
                "Pues, para el cumpleaños de mi hija",
                Language::Es
            ),
            json!("para el cumpleaños de mi hija")
        );
        assert_eq!(
            read(json!("string"), "Prefiero no decirlo", Language::Es),
            Reading::Unknown
        );
        assert_eq!(
            read(json!("string"), "No, nothing, thanks.", Language::En),
            Reading::Nothing
        );
        let schema = json!({"type": "string", "description": "Contact email"});
        assert_eq!(
            read(
                schema,
                "Sure, it's john dot smith at gmail dot com",
                Language::En
            ),
            Reading::Value(json!("john.smith@gmail.com"))
        );
    }
}
