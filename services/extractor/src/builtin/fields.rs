//! What the extractor knows about each `returns` field: the words a question
//! about it would use, and how its answers look.

use std::sync::LazyLock;

use ringer::returns::{FieldKind, FieldSpec};

use super::dates::Bias;
use super::lexicon::{
    CONCEPT_OF, FIELD_ABBREVIATIONS, OPTION_SYNONYM_MAP, PAST_CUES, STOPWORD_SET,
};
use super::text::{PhraseMap, Token, WordMap, WordSet, fold, stem, tokenize};

/// A unit of meaning a word stands for: a concept shared by synonyms and
/// translations, or else the word's own stem.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Key {
    Concept(usize),
    Stem(String),
}

impl Key {
    pub fn of(word: &str) -> Key {
        let stemmed = stem(word);
        match CONCEPT_OF.get(&stemmed) {
            Some(&concept) => Key::Concept(concept),
            None => Key::Stem(stemmed),
        }
    }
}

const NAME_WEIGHT: f32 = 3.0;
const DESCRIPTION_WEIGHT: f32 = 1.5;
const OPTION_WEIGHT: f32 = 1.0;
const TYPE_WEIGHT: f32 = 0.5;
const INTERROGATIVE_WEIGHT: f32 = 2.0;
/// A word matched only by a shared beginning counts a little less.
const PREFIX_DISCOUNT: f32 = 0.8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Asks {
    Quantity,
    Day,
    Time,
}

/// Phrases that mean one word of the concept lists ("time of day" is not a day).
static IDIOMS: LazyLock<PhraseMap<&'static str>> = LazyLock::new(|| {
    PhraseMap::new([
        ("time of day", "window"),
        ("hora del dia", "window"),
        ("momento del dia", "window"),
        ("franja horaria", "window"),
        ("how old", "age"),
        ("how long", "long"),
        ("plus one", "guests"),
        ("go paperless", "paperless"),
        ("sin papel", "paperless"),
    ])
});

static INTERROGATIVES: LazyLock<PhraseMap<Asks>> = LazyLock::new(|| {
    PhraseMap::new([
        ("how many", Asks::Quantity),
        ("how much", Asks::Quantity),
        ("cuantos", Asks::Quantity),
        ("cuantas", Asks::Quantity),
        ("cuanto", Asks::Quantity),
        ("cuanta", Asks::Quantity),
        ("when", Asks::Day),
        ("what date", Asks::Day),
        ("what day", Asks::Day),
        ("which day", Asks::Day),
        ("cuando", Asks::Day),
        ("que dia", Asks::Day),
        ("que fecha", Asks::Day),
        ("what time", Asks::Time),
        ("a que hora", Asks::Time),
        ("que hora", Asks::Time),
    ])
});

pub(crate) struct FieldProfile<'a> {
    pub spec: &'a FieldSpec,
    pub keywords: WordMap<Key, f32>,
    pub name_like: bool,
    pub email_like: bool,
    pub phone_like: bool,
    pub bias: Bias,
    /// Enum fields: option phrases (and their synonyms) → option index.
    pub options: Option<PhraseMap<usize>>,
    /// Enum fields: index of a "maybe"-like option that an unsure answer selects.
    pub unsure_option: Option<usize>,
}

impl<'a> FieldProfile<'a> {
    pub fn new(spec: &'a FieldSpec) -> FieldProfile<'a> {
        let name_words = split_field_name(&spec.name);
        let mut keywords: WordMap<Key, f32> = WordMap::default();
        let mut add = |key: Key, weight: f32| {
            let entry = keywords.entry(key).or_insert(0.0);
            *entry = entry.max(weight);
        };
        for word in &name_words {
            add(Key::of(word), NAME_WEIGHT);
        }
        let description = spec.description.as_deref().unwrap_or("");
        let description_tokens = tokenize(description);
        for token in description_tokens.iter().filter(|t| is_content_word(t)) {
            add(Key::of(&token.norm), DESCRIPTION_WEIGHT);
        }
        match &spec.kind {
            FieldKind::Date => add(Key::of("date"), TYPE_WEIGHT),
            FieldKind::DateTime => {
                add(Key::of("date"), TYPE_WEIGHT);
                add(Key::of("time"), TYPE_WEIGHT);
            }
            FieldKind::Enum(options) => {
                for option in options {
                    let words = option_words(option);
                    for word in &words {
                        add(Key::of(word), OPTION_WEIGHT);
                    }
                    let synonyms = std::iter::once(words.join(" "))
                        .chain(words)
                        .filter_map(|key| OPTION_SYNONYM_MAP.get(key.as_str()).copied())
                        .flatten()
                        .filter(|synonym| !synonym.contains(' '));
                    for synonym in synonyms {
                        add(Key::of(synonym), OPTION_WEIGHT / 2.0);
                    }
                }
            }
            _ => {}
        }

        let described = |words: &[&str]| {
            name_words.iter().any(|w| words.contains(&w.as_str()))
                || description_tokens.iter().any(|t| t.is_any(words))
        };
        let email_like = described(&["email", "mail", "correo"]);
        let phone_like = !email_like
            && described(&[
                "phone",
                "telephone",
                "mobile",
                "cell",
                "telefono",
                "celular",
                "callback",
            ]);
        let name_like = !email_like
            && !phone_like
            && described(&["name", "nombre", "surname", "apellido", "contact"])
            && spec.kind == FieldKind::String;
        let bias = if described(PAST_CUES) {
            Bias::Past
        } else {
            Bias::Future
        };

        let (options, unsure_option) = match &spec.kind {
            FieldKind::Enum(options) => (Some(option_phrases(options)), unsure_option(options)),
            _ => (None, None),
        };
        FieldProfile {
            spec,
            keywords,
            name_like,
            email_like,
            phone_like,
            bias,
            options,
            unsure_option,
        }
    }

    /// The weight of `key` for this field: its own, or, for a plain stem, that
    /// of a field word it begins or that begins it ("miles" / "mileage").
    pub fn weight_of(&self, key: &Key) -> Option<f32> {
        if let Some(weight) = self.keywords.get(key) {
            return Some(*weight);
        }
        let Key::Stem(word) = key else { return None };
        if word.len() < 4 {
            return None;
        }
        self.keywords
            .iter()
            .filter_map(|(own, weight)| match own {
                Key::Stem(own)
                    if own.len() >= 4
                        && (own.starts_with(word.as_str()) || word.starts_with(own.as_str())) =>
                {
                    Some(weight * PREFIX_DISCOUNT)
                }
                _ => None,
            })
            .reduce(f32::max)
    }

    pub fn kind(&self) -> &FieldKind {
        &self.spec.kind
    }

    pub fn is_dated(&self) -> bool {
        matches!(self.spec.kind, FieldKind::Date | FieldKind::DateTime)
    }
}

fn is_content_word(token: &Token) -> bool {
    token.is_word() && !STOPWORD_SET.contains(token.norm.as_str())
}

/// "preferredTime2" / "preferred_time" → ["preferred", "time"], abbreviations spelled out.
fn split_field_name(name: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut previous_lower = false;
    for c in name.chars() {
        let boundary = c == '_' || c.is_ascii_digit() || (c.is_ascii_uppercase() && previous_lower);
        if boundary && !current.is_empty() {
            words.push(std::mem::take(&mut current));
        }
        if c.is_ascii_alphabetic() {
            current.push(c.to_ascii_lowercase());
        }
        previous_lower = c.is_ascii_lowercase();
    }
    if !current.is_empty() {
        words.push(current);
    }
    words
        .into_iter()
        .map(|word| {
            FIELD_ABBREVIATIONS
                .iter()
                .find(|(short, _)| *short == word)
                .map_or(word, |(_, long)| (*long).to_owned())
        })
        .filter(|word| {
            !matches!(
                word.as_str(),
                "the" | "a" | "an" | "of" | "is" | "de" | "el" | "la"
            )
        })
        .collect()
}

fn option_words(option: &str) -> Vec<String> {
    fold(option)
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Every way of naming each option: its words, its plural, and synonyms of
/// the whole option and of its single words.
fn option_phrases(options: &[String]) -> PhraseMap<usize> {
    let mut exact: Vec<(String, usize)> = Vec::new();
    let mut synonyms: Vec<(String, usize)> = Vec::new();
    let distinctive = |word: &str, index: usize| {
        options.iter().enumerate().all(|(other, option)| {
            other == index || !option_words(option).iter().any(|w| w == word)
        })
    };
    for (index, option) in options.iter().enumerate() {
        let words = option_words(option);
        let phrase = words.join(" ");
        exact.push((phrase.clone(), index));
        exact.push((format!("{phrase}s"), index));
        exact.push((format!("{phrase}es"), index));
        exact.push((words.concat(), index));
        if words.len() > 1 {
            for word in words
                .iter()
                .filter(|w| w.len() > 2 && distinctive(w, index))
            {
                synonyms.push((word.clone(), index));
            }
        }
        for key in std::iter::once(phrase.as_str()).chain(words.iter().map(String::as_str)) {
            if let Some(list) = OPTION_SYNONYM_MAP.get(key) {
                synonyms.extend(list.iter().map(|s| ((*s).to_owned(), index)));
            }
        }
    }
    // Exact names first: on equal length, an option's own name beats another's synonym.
    PhraseMap::new(
        exact
            .iter()
            .chain(&synonyms)
            .map(|(phrase, index)| (phrase.as_str(), *index)),
    )
}

fn unsure_option(options: &[String]) -> Option<usize> {
    options.iter().position(|option| {
        matches!(
            fold(option).as_str(),
            "maybe"
                | "unsure"
                | "not_sure"
                | "not sure"
                | "undecided"
                | "unknown"
                | "quizas"
                | "tal vez"
                | "no se"
        )
    })
}

/// Field keywords found in `tokens`, weighted down when several fields share them.
pub(crate) fn keyword_scores(profiles: &[FieldProfile], tokens: &[Token]) -> Vec<f32> {
    let mut present: WordSet<Key> = WordSet::default();
    let mut i = 0;
    while i < tokens.len() {
        if let Some((len, word)) = IDIOMS.longest_at(tokens, i) {
            present.insert(Key::of(word));
            i += len;
            continue;
        }
        if is_content_word(&tokens[i]) {
            present.insert(Key::of(&tokens[i].norm));
        }
        i += 1;
    }
    let asks: Vec<Asks> = INTERROGATIVES
        .find_all(tokens)
        .into_iter()
        .map(|(_, _, asks)| asks)
        .collect();
    profiles
        .iter()
        .map(|profile| {
            let words: f32 = present
                .iter()
                .filter_map(|key| {
                    let weight = profile.weight_of(key)?;
                    let sharing = profiles
                        .iter()
                        .filter(|p| p.weight_of(key).is_some())
                        .count();
                    Some(weight / sharing as f32)
                })
                .sum();
            // "How many…?" asks for a number, "When…?" for a date, whatever the nouns.
            let kind = match profile.spec.kind {
                FieldKind::Integer | FieldKind::Number if asks.contains(&Asks::Quantity) => {
                    INTERROGATIVE_WEIGHT
                }
                FieldKind::Date if asks.contains(&Asks::Day) => INTERROGATIVE_WEIGHT,
                FieldKind::DateTime if asks.contains(&Asks::Day) || asks.contains(&Asks::Time) => {
                    INTERROGATIVE_WEIGHT
                }
                _ => 0.0,
            };
            // Alone, the interrogative only just reaches the question threshold.
            if words > 0.0 {
                words + kind
            } else {
                kind / 2.0
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_field_names() {
        assert_eq!(split_field_name("preferred_time"), ["preferred", "time"]);
        assert_eq!(split_field_name("numGuests"), ["number", "guests"]);
        assert_eq!(split_field_name("appt_date2"), ["appointment", "date"]);
    }

    #[test]
    fn scores_questions_against_fields() {
        let specs = ringer::returns::ReturnsSchema::parse(&serde_json::json!({
            "party_size": {"type": "integer", "description": "Number of people in the party"},
            "preferred_time": "datetime",
            "preferred_date": "date",
            "seating": "enum:indoor|outdoor|bar",
        }))
        .unwrap();
        let profiles: Vec<FieldProfile> = specs.fields.iter().map(FieldProfile::new).collect();
        let best = |question: &str| {
            let scores = keyword_scores(&profiles, &tokenize(question));
            let (index, _) = scores
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.partial_cmp(b.1).unwrap())
                .unwrap();
            profiles[index].spec.name.as_str()
        };
        assert_eq!(best("How many people will be in your party?"), "party_size");
        assert_eq!(best("¿Cuántas personas serán?"), "party_size");
        assert_eq!(best("What time would you prefer?"), "preferred_time");
        assert_eq!(
            best("¿Me puede decir la fecha preferida?"),
            "preferred_date"
        );
        assert_eq!(best("Would you like to sit inside or outside?"), "seating");
    }
}
