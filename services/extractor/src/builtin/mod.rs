//! The built-in extractor: deterministic, no network. It follows the agent's
//! questions through the transcript, ties each to a `returns` field, and reads
//! the callee's replies in English or Spanish: yes/no, numbers in digits or
//! words, dates and times relative to the call, enum choices and free text.
//! Corrections count ("five, sorry, six" is 6); answers volunteered before
//! their question, or several in one reply, go to the field they name.

mod dates;
mod fields;
mod lexicon;
mod numbers;
mod readers;
mod text;

#[cfg(test)]
mod accuracy_tests;

use chrono::NaiveDate;
use ringer::returns::{FieldKind, ReturnsSchema};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use dates::{Bias, find_dates};
use fields::{FieldProfile, keyword_scores};
use lexicon::{CLOSING_PHRASES, COURTESY_PHRASES, PAST_CUES, REASK_PHRASES, REQUEST_PHRASES};
use numbers::find_numbers;
use readers::{Context, Found, Reading, read_field};
use text::{Token, TokenKind, is_inner_dot, sentence_ranges, tokenize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Agent,
    Callee,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Turn {
    pub role: Role,
    pub text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    En,
    Es,
}

/// Reads the callee's answers from `transcript` into a result with exactly
/// the schema's keys. A field the conversation did not yield is null; every
/// other value is of its field's type and passes `validate_result`.
pub fn extract(
    schema: &ReturnsSchema,
    transcript: &[Turn],
    language: Language,
    call_date: NaiveDate,
) -> Map<String, Value> {
    let profiles: Vec<FieldProfile> = schema.fields.iter().map(FieldProfile::new).collect();
    let mut conversation = Conversation {
        profiles: &profiles,
        language,
        call_date,
        asked_before: vec![false; profiles.len()],
        readings: vec![Reading::Nothing; profiles.len()],
    };
    let mut question = Question::none();
    let mut replies = String::new();
    for turn in transcript {
        match turn.role {
            Role::Callee => {
                if !replies.is_empty() {
                    replies.push('\n');
                }
                replies.push_str(&turn.text);
            }
            Role::Agent => {
                if !replies.is_empty() {
                    conversation.read_replies(&replies, &question);
                    replies.clear();
                }
                question = conversation.follow_agent(&turn.text, question);
            }
        }
    }
    if !replies.is_empty() {
        conversation.read_replies(&replies, &question);
    }

    profiles
        .iter()
        .zip(conversation.readings)
        .map(|(profile, reading)| {
            let value = match reading {
                Reading::Value(value) if profile.spec.accepts(&value) => value,
                _ => Value::Null,
            };
            (profile.spec.name.clone(), value)
        })
        .collect()
}

/// The fields the agent's last question asked about, and what it said that
/// helps read the answer.
#[derive(Debug, Clone)]
struct Question {
    fields: Vec<usize>,
    about_past: bool,
    date: Option<NaiveDate>,
    /// Content words of the asking sentence, to recognise it when repeated.
    wording: Vec<String>,
}

impl Question {
    fn none() -> Question {
        Question {
            fields: Vec::new(),
            about_past: false,
            date: None,
            wording: Vec::new(),
        }
    }

    /// A question about `field` alone, without the agent's wording: for
    /// reading a field the callee brought up on their own.
    fn about(field: usize) -> Question {
        Question {
            fields: vec![field],
            ..Question::none()
        }
    }
}

fn content_words(tokens: &[Token]) -> Vec<String> {
    let mut words: Vec<String> = tokens
        .iter()
        .filter(|t| t.is_word())
        .map(|t| t.norm.clone())
        .collect();
    words.sort_unstable();
    words.dedup();
    words
}

struct Conversation<'a> {
    profiles: &'a [FieldProfile<'a>],
    language: Language,
    call_date: NaiveDate,
    asked_before: Vec<bool>,
    /// The last thing stated about each field.
    readings: Vec<Reading>,
}

/// Score at which a question (or a clause of a reply) is about a field: one
/// word of its name, or two of its description or options.
const QUESTION_THRESHOLD: f32 = 1.0;
const MENTION_THRESHOLD: f32 = 1.5;
/// A statement without a question mark must name the field outright.
const STATEMENT_THRESHOLD: f32 = 3.0;

impl Conversation<'_> {
    /// Works out which fields an agent turn asks about; a turn that asks
    /// nothing new keeps the previous question open (an acknowledgement, a
    /// request to repeat), unless it closes the call or changes the subject.
    fn follow_agent(&mut self, text: &str, previous: Question) -> Question {
        let tokens = tokenize(text);
        let sentences = sentence_ranges(&tokens);
        let questions: Vec<&[Token]> = sentences
            .iter()
            .map(|&(s, e)| &tokens[s..e])
            .filter(|sentence| is_question(sentence, &tokens))
            .collect();

        // Every question of the turn counts: "Which insurer? And when was your last visit?"
        let mut asked: Vec<usize> = Vec::new();
        let mut asking: &[Token] = &tokens;
        let repeats = |sentence: &[Token]| {
            !REASK_PHRASES.find_all(&tokens).is_empty()
                || (!previous.wording.is_empty() && content_words(sentence) == previous.wording)
        };
        for sentence in &questions {
            let favoured: &[usize] = if repeats(sentence) {
                &previous.fields
            } else {
                &[]
            };
            let fields = self.fields_asked(sentence, QUESTION_THRESHOLD, favoured);
            if !fields.is_empty() {
                asking = sentence;
            }
            for field in fields {
                if !asked.contains(&field) {
                    asked.push(field);
                }
            }
        }
        if asked.len() > 1 {
            asking = &tokens;
            asked.sort_unstable();
        }
        let closing = !CLOSING_PHRASES.find_all(&tokens).is_empty();
        if asked.is_empty() && questions.is_empty() && !closing {
            asked = self.fields_asked(&tokens, STATEMENT_THRESHOLD, &[]);
        }
        if asked.is_empty() {
            let Some(last_question) = questions.last() else {
                return if closing { Question::none() } else { previous };
            };
            if repeats(last_question) {
                return previous;
            }
            let courtesy = !COURTESY_PHRASES.find_all(last_question).is_empty();
            // The scripted agent asks for fields in order: a question that names
            // none of them is most likely about the next one not yet asked.
            match self.asked_before.iter().position(|asked| !asked) {
                Some(next) if !courtesy && !closing => {
                    asked = vec![next];
                    asking = last_question;
                }
                _ => return Question::none(),
            }
        }
        for &field in &asked {
            self.asked_before[field] = true;
        }
        let numbers = find_numbers(asking, self.language);
        let date = find_dates(
            asking,
            &numbers,
            self.language,
            self.call_date,
            Bias::Future,
        )
        .into_iter()
        .find(|d| d.explicit)
        .map(|d| d.date);
        Question {
            fields: asked,
            about_past: asking.iter().any(|t| t.is_any(PAST_CUES)),
            date,
            wording: content_words(asking),
        }
    }

    /// The fields `tokens` asks about: the best-scoring one, and others
    /// nearly as strong when the question joins several ("name and email?").
    /// A tie goes to a `favoured` field (the question is being repeated), else
    /// to one not asked yet.
    fn fields_asked(&self, tokens: &[Token], threshold: f32, favoured: &[usize]) -> Vec<usize> {
        let scores = keyword_scores(self.profiles, tokens);
        let best = scores.iter().copied().fold(0.0_f32, f32::max);
        if best < threshold {
            return Vec::new();
        }
        let tied: Vec<usize> = (0..scores.len())
            .filter(|&i| scores[i] >= best - 1e-3)
            .collect();
        let first = tied
            .iter()
            .copied()
            .find(|i| favoured.contains(i))
            .or_else(|| tied.iter().copied().find(|&i| !self.asked_before[i]))
            .unwrap_or(tied[0]);
        let joins = tokens
            .iter()
            .any(|t| t.is_any(&["and", "y", ",", "also", "tambien"]));
        let mut asked = vec![first];
        if joins {
            let companion_floor = MENTION_THRESHOLD.max(best * 0.5);
            asked.extend((0..scores.len()).filter(|&i| i != first && scores[i] >= companion_floor));
            asked.sort_unstable();
        }
        asked
    }

    fn context(&self, field: usize, question: &Question) -> Context {
        let bias = if question.about_past {
            Bias::Past
        } else {
            self.profiles[field].bias
        };
        Context {
            language: self.language,
            today: self.call_date,
            bias,
            question_date: question.date,
            unprompted: !question.fields.contains(&field),
        }
    }

    fn record(&mut self, field: usize, found: &Found) {
        if found.reading != Reading::Nothing {
            self.readings[field] = found.reading.clone();
        }
    }

    /// Reads the callee's replies to `question`: first what they volunteer
    /// about other fields (a clause naming a field, an unmistakable date or
    /// enum choice), then the asked fields from the rest.
    fn read_replies(&mut self, source: &str, question: &Question) {
        let tokens = tokenize(source);
        let clauses = clause_ranges(&tokens);
        let asked = &question.fields;
        let free_text_asked = asked
            .iter()
            .any(|&f| *self.profiles[f].kind() == FieldKind::String);
        let mut claimed = vec![false; tokens.len()];
        let mut claimed_by_dated = vec![false; tokens.len()];

        for (index, &(start, clause_end)) in clauses.iter().enumerate() {
            if claimed[start] {
                continue;
            }
            let Some((candidates, named)) = self.volunteered_fields(
                &tokens[start..clause_end],
                asked,
                index == 0 && free_text_asked,
            ) else {
                continue;
            };
            // A field named in a clause may get its value later in the sentence:
            // "for the interview, next Tuesday at 1 works".
            let end = if named {
                sentence_end(&tokens, start)
            } else {
                clause_end
            };
            let clause = &tokens[start..end];
            if self.is_first_answer(source, &tokens[..start], clause, question, index) {
                continue;
            }
            let volunteered = candidates.into_iter().find_map(|field| {
                let context = Context {
                    unprompted: true,
                    ..self.context(field, &Question::about(field))
                };
                let found = read_field(&self.profiles[field], source, clause, &context);
                (found.reading != Reading::Nothing).then_some((field, found))
            });
            let Some((field, found)) = volunteered else {
                continue;
            };
            self.record(field, &found);
            let (s, e) = match (named || free_text_asked, found.span) {
                (false, Some((s, e))) => (start + s, start + e),
                _ => (start, end),
            };
            claimed[s..e].fill(true);
        }

        let typed_first = asked
            .iter()
            .copied()
            .filter(|&f| *self.profiles[f].kind() != FieldKind::String)
            .chain(
                asked
                    .iter()
                    .copied()
                    .filter(|&f| *self.profiles[f].kind() == FieldKind::String),
            );
        for field in typed_first {
            let profile = &self.profiles[field];
            let mask: Vec<bool> = if profile.is_dated() {
                claimed
                    .iter()
                    .zip(&claimed_by_dated)
                    .map(|(c, d)| *c && !*d)
                    .collect()
            } else {
                claimed.clone()
            };
            let context = self.context(field, question);
            let picks_a_clause = asked.len() > 1
                && matches!(
                    profile.kind(),
                    FieldKind::Boolean
                        | FieldKind::Integer
                        | FieldKind::Number
                        | FieldKind::Enum(_)
                );
            if picks_a_clause
                && let Some((range, found)) =
                    self.best_clause(field, source, &tokens, &clauses, &mask, &context)
            {
                self.record(field, &found);
                claimed[range.0..range.1].fill(true);
                continue;
            }
            let remaining = if *profile.kind() == FieldKind::String {
                unclaimed_clauses(&tokens, &clauses, &mask)
            } else {
                unclaimed_tokens(&tokens, &mask)
            };
            let found = read_field(profile, source, &remaining, &context);
            self.record(field, &found);
            if asked.len() > 1
                && let Some((s, e)) = found.span
            {
                // Map back through `remaining` to claim in the reply's own tokens.
                let (s, e) = (remaining[s].start, remaining[e - 1].end);
                for (i, token) in tokens.iter().enumerate() {
                    if token.start >= s && token.end <= e {
                        claimed[i] = true;
                        claimed_by_dated[i] |= profile.is_dated();
                    }
                }
            }
        }
    }

    /// Whether `clause` is the callee's answer to the asked field rather than
    /// something volunteered: the first part of the reply the asked field can
    /// read ("68,000 a year" names years, but answers the salary).
    fn is_first_answer(
        &self,
        source: &str,
        before: &[Token],
        clause: &[Token],
        question: &Question,
        index: usize,
    ) -> bool {
        question.fields.iter().any(|&asked| {
            let profile = &self.profiles[asked];
            let context = self.context(asked, question);
            if *profile.kind() == FieldKind::String {
                return index == 0 || is_preamble(before);
            }
            let reads = |tokens: &[Token]| {
                read_field(profile, source, tokens, &context).reading != Reading::Nothing
            };
            reads(clause) && !reads(before)
        })
    }

    /// When several fields are asked at once, the clause of the reply that
    /// answers `field` most squarely ("Yeah; about four."), and its reading.
    fn best_clause(
        &self,
        field: usize,
        source: &str,
        tokens: &[Token],
        clauses: &[(usize, usize)],
        claimed: &[bool],
        context: &Context,
    ) -> Option<((usize, usize), Found)> {
        let profile = &self.profiles[field];
        let mut best: Option<(f32, (usize, usize), Found)> = None;
        for &(start, end) in clauses {
            if claimed[start..end].iter().any(|&c| c) {
                continue;
            }
            let clause = &tokens[start..end];
            let found = read_field(profile, source, clause, context);
            let Some((s, e)) = found
                .span
                .filter(|_| matches!(found.reading, Reading::Value(_)))
            else {
                continue;
            };
            let words = clause.iter().filter(|t| !t.is_punct()).count().max(1);
            let named = keyword_scores(self.profiles, clause)[field] >= MENTION_THRESHOLD;
            let fit = (e - s) as f32 / words as f32 + if named { 1.0 } else { 0.0 };
            // A yes or no opening a sentence answers for what follows it, up to
            // an "and"/"but" or a number ("Yes, I work from home" / "Yep, and $900").
            let opens_sentence = start == 0 || tokens[start - 1].is_sentence_break();
            let end = if *profile.kind() == FieldKind::Boolean && opens_sentence {
                let stop = sentence_end(tokens, start);
                clauses
                    .iter()
                    .filter(|&&(s, _)| s >= end && s < stop)
                    .find(|&&(s, e)| {
                        tokens[s].is_any(&["and", "y", "but", "pero", "also", "plus", "ademas"])
                            || tokens[s..e].iter().any(Token::is_digits)
                    })
                    .map_or(stop, |&(s, _)| s)
            } else {
                end
            };
            if best.as_ref().is_none_or(|(best_fit, _, _)| fit > *best_fit) {
                best = Some((fit, (start, end), found));
            }
        }
        best.map(|(_, range, found)| (range, found))
    }

    /// The fields a clause of a reply may volunteer, likeliest first, and
    /// whether they are named outright (rather than recognised by the value).
    fn volunteered_fields(
        &self,
        clause: &[Token],
        asked: &[usize],
        is_opening_free_text: bool,
    ) -> Option<(Vec<usize>, bool)> {
        let scores = keyword_scores(self.profiles, clause);
        let mut named: Vec<usize> = (0..scores.len())
            .filter(|&f| scores[f] >= MENTION_THRESHOLD)
            .filter(|&f| !(asked.len() == 1 && asked[0] == f))
            .collect();
        // Free text reads anything, so on a tie a typed field gets the first try.
        let is_text = |f: usize| *self.profiles[f].kind() == FieldKind::String;
        named.sort_by(|&a, &b| {
            scores[b]
                .total_cmp(&scores[a])
                .then(is_text(a).cmp(&is_text(b)))
        });
        if !named.is_empty() {
            return Some((named, true));
        }
        if asked.is_empty() || is_opening_free_text {
            return None;
        }
        self.signalled_field(clause, asked)
            .map(|field| (vec![field], false))
    }

    /// A field that a clause answers unmistakably without naming it: an
    /// option only that enum has, or a date when only that field takes one.
    fn signalled_field(&self, clause: &[Token], asked: &[usize]) -> Option<usize> {
        let not_asked = |f: &usize| !asked.contains(f);
        let numbers = find_numbers(clause, self.language);
        let dates = find_dates(
            clause,
            &numbers,
            self.language,
            self.call_date,
            Bias::Future,
        );
        let times = dates::find_times(clause, &numbers);
        // "a las nueve y media" holds "media", which is no priority.
        let in_date_or_time = |s: usize| {
            dates.iter().any(|d| (d.start..d.end).contains(&s))
                || times.iter().any(|t| (t.start..t.end).contains(&s))
        };
        let enum_fields: Vec<usize> = (0..self.profiles.len())
            .filter(not_asked)
            .filter(|&f| {
                let Some(options) = &self.profiles[f].options else {
                    return false;
                };
                let asked_options_match = asked.iter().any(|&a| {
                    self.profiles[a]
                        .options
                        .as_ref()
                        .is_some_and(|o| !o.find_all(clause).is_empty())
                });
                !asked_options_match
                    && options
                        .find_all(clause)
                        .iter()
                        .any(|&(s, _, _)| clause[s].norm.len() > 2 && !in_date_or_time(s))
            })
            .collect();
        if let [field] = enum_fields[..] {
            return Some(field);
        }
        if asked.iter().any(|&a| self.profiles[a].is_dated()) {
            return None;
        }
        let dated: Vec<usize> = (0..self.profiles.len())
            .filter(not_asked)
            .filter(|&f| self.profiles[f].is_dated())
            .collect();
        let [field] = dated[..] else { return None };
        let has_date = dates.iter().any(|d| d.explicit);
        let has_time =
            *self.profiles[field].kind() == FieldKind::DateTime && times.iter().any(|t| t.explicit);
        (has_date || has_time).then_some(field)
    }
}

fn is_question(sentence: &[Token], all: &[Token]) -> bool {
    let Some(last) = sentence.last() else {
        return false;
    };
    let next = all.iter().find(|t| t.start >= last.end);
    next.is_some_and(|t| t.is("?"))
        || sentence.iter().any(|t| t.is("¿") || t.is("?"))
        || !REQUEST_PHRASES.find_all(sentence).is_empty()
}

/// Whether a reply so far only acknowledged the question ("Sure,", "Pues,").
fn is_preamble(tokens: &[Token]) -> bool {
    const ACKNOWLEDGEMENTS: &[&str] = &[
        "sure", "yes", "yeah", "yep", "well", "um", "uh", "oh", "ok", "okay", "so", "si", "claro",
        "pues", "bueno", "mire", "este", "hmm", "right", "alright", "vale",
    ];
    let words: Vec<&Token> = tokens.iter().filter(|t| !t.is_punct()).collect();
    words.len() <= 2 && words.iter().all(|t| t.is_any(ACKNOWLEDGEMENTS))
}

/// Index of the token that ends the sentence holding `start` (or the end).
fn sentence_end(tokens: &[Token], start: usize) -> usize {
    (start..tokens.len())
        .find(|&i| tokens[i].is_sentence_break() && !is_inner_dot(tokens, i))
        .unwrap_or(tokens.len())
}

/// Words that open a new clause after "and"/"y" ("and my email is…").
const CLAUSE_OPENERS: &[&str] = &[
    "my",
    "our",
    "the",
    "i",
    "we",
    "it",
    "i'm",
    "we're",
    "it's",
    "we'll",
    "i'll",
    "i'd",
    "we'd",
    "mi",
    "nuestro",
    "nuestra",
    "la",
    "el",
    "los",
    "las",
    "somos",
    "seremos",
    "vamos",
    "quiero",
    "queremos",
    "prefiero",
    "preferimos",
    "also",
    "tambien",
    "as",
    "for",
    "para",
    "por",
];

/// Clause token ranges of a reply: split at sentence ends, commas, dashes, and
/// connectives that start a new statement ("and my email is", "por cierto").
fn clause_ranges(tokens: &[Token]) -> Vec<(usize, usize)> {
    let mut ranges = Vec::new();
    let mut start = 0;
    for (i, token) in tokens.iter().enumerate() {
        let punct_break =
            token.is_clause_break() && !is_inner_dot(tokens, i) && !is_glued_separator(tokens, i);
        let connective = token.is_any(&["also", "plus", "ademas", "tambien"])
            || (token.is_any(&["and", "y", "but", "pero", "oh"])
                && tokens.get(i + 1).is_some_and(|t| t.is_any(CLAUSE_OPENERS)))
            || (token.is("by")
                && tokens.get(i + 1).is_some_and(|t| t.is("the"))
                && tokens.get(i + 2).is_some_and(|t| t.is("way")))
            || (token.is("por") && tokens.get(i + 1).is_some_and(|t| t.is("cierto")));
        if punct_break || connective {
            if i > start {
                ranges.push((start, i));
            }
            start = if punct_break { i + 1 } else { i };
        }
    }
    if start < tokens.len() {
        ranges.push((start, tokens.len()));
    }
    ranges
}

/// A separator inside "3:30", "1,200" or "3-14".
fn is_glued_separator(tokens: &[Token], i: usize) -> bool {
    i > 0
        && i + 1 < tokens.len()
        && tokens[i].kind == TokenKind::Punct
        && tokens[i - 1].end == tokens[i].start
        && tokens[i].end == tokens[i + 1].start
        && (tokens[i - 1].is_digits() || tokens[i + 1].is_digits())
}

/// The reply without claimed tokens; a comma stands where some were taken out,
/// so that what surrounded them is not read as one phrase.
fn unclaimed_tokens(tokens: &[Token], claimed: &[bool]) -> Vec<Token> {
    let mut remaining = Vec::with_capacity(tokens.len());
    for (token, &taken) in tokens.iter().zip(claimed) {
        if !taken {
            remaining.push(token.clone());
        } else if remaining.last().is_none_or(|t: &Token| !t.is(",")) {
            remaining.push(Token {
                norm: ",".to_owned(),
                kind: TokenKind::Punct,
                start: token.start,
                end: token.start,
            });
        }
    }
    remaining
}

/// The reply's clauses that hold no claimed token, for free text, each with
/// the punctuation that follows it.
fn unclaimed_clauses(tokens: &[Token], clauses: &[(usize, usize)], claimed: &[bool]) -> Vec<Token> {
    let mut remaining = Vec::new();
    for (index, &(start, end)) in clauses.iter().enumerate() {
        if claimed[start..end].iter().any(|&c| c) {
            continue;
        }
        let from = if index == 0 { 0 } else { start };
        let to = clauses.get(index + 1).map_or(tokens.len(), |next| next.0);
        remaining.extend_from_slice(&tokens[from..to]);
    }
    remaining
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn conversation(lines: &[(&str, &str)]) -> Vec<Turn> {
        lines
            .iter()
            .map(|(role, text)| Turn {
                role: if *role == "a" {
                    Role::Agent
                } else {
                    Role::Callee
                },
                text: (*text).to_owned(),
            })
            .collect()
    }

    fn march_11() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 3, 11).unwrap()
    }

    #[test]
    fn reads_a_simple_reservation() {
        let schema = ReturnsSchema::parse(&json!({
            "party_size": "integer",
            "reservation_date": "date",
            "seating": "enum:indoor|outdoor|bar",
            "special_requests": "string?",
            "high_chair": "boolean",
        }))
        .unwrap();
        let transcript = conversation(&[
            (
                "a",
                "Hi, this is Sam from Bella Cucina. Do you have a minute?",
            ),
            ("c", "Sure, go ahead."),
            ("a", "How many people will be in your party?"),
            (
                "c",
                "Um, we'll be five. Sorry, six — my sister is coming too.",
            ),
            ("a", "Great. What date would you like the reservation for?"),
            (
                "c",
                "Next Friday, and we'd love to sit outside if possible.",
            ),
            ("a", "Do you prefer indoor, outdoor or bar seating?"),
            ("c", "Like I said, outside."),
            ("a", "Any special requests?"),
            (
                "c",
                "Well, it's my mom's birthday, so a small cake would be lovely.",
            ),
            ("a", "Will you need a high chair?"),
            ("c", "Nope."),
            ("a", "Perfect, thank you. Have a great day!"),
            ("c", "You too, bye!"),
        ]);
        let result = extract(&schema, &transcript, Language::En, march_11());
        assert_eq!(
            Value::Object(result.clone()),
            json!({
                "party_size": 6,
                "reservation_date": "2026-03-20",
                "seating": "outdoor",
                "special_requests": "my mom's birthday, so a small cake would be lovely",
                "high_chair": false,
            })
        );
        assert!(schema.validate_result(&Value::Object(result)).is_ok());
    }

    #[test]
    fn reads_spanish_answers_given_out_of_order() {
        let schema = ReturnsSchema::parse(&json!({
            "nombre": {"type": "string", "description": "Nombre completo"},
            "edad": "integer",
            "fecha_cita": {"type": "string", "format": "date", "description": "Fecha de la cita"},
        }))
        .unwrap();
        let transcript = conversation(&[
            ("a", "¿Me puede decir su nombre completo?"),
            (
                "c",
                "Sí, me llamo Ana Torres, y la cita la quiero para el próximo martes.",
            ),
            ("a", "¿Me puede decir su edad?"),
            ("c", "Prefiero no decirlo."),
            ("a", "¿Me puede decir la fecha de la cita?"),
            ("c", "Como le dije, el martes."),
        ]);
        let result = extract(&schema, &transcript, Language::Es, march_11());
        assert_eq!(
            Value::Object(result),
            json!({"nombre": "Ana Torres", "edad": null, "fecha_cita": "2026-03-17"})
        );
    }

    #[test]
    fn always_returns_every_key() {
        let schema = ReturnsSchema::parse(&json!({"a": "integer", "b": "date?"})).unwrap();
        let result = extract(&schema, &[], Language::En, march_11());
        assert_eq!(Value::Object(result), json!({"a": null, "b": null}));
    }
}
