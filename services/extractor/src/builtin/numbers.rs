//! Numbers as people say them: digits ("1,200", "2.5", "15th") and words in
//! English and Spanish ("three hundred and twenty", "dos y medio").

use std::sync::LazyLock;

use super::Language;
use super::text::{Token, WordMap};

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct NumberSpan {
    pub value: f64,
    /// Token range `start..end`.
    pub start: usize,
    pub end: usize,
    /// A lone "one"/"un"/"una", as likely an article or pronoun as a count.
    pub weak: bool,
    /// "3rd", "fifteenth", "primero".
    pub ordinal: bool,
    /// Written with digits (as opposed to words).
    pub digits: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Word {
    Unit(f64),
    Teen(f64),
    Tens(f64),
    /// Spanish "veintitrés": tens and unit in one word.
    TensUnit(f64),
    /// English "hundred": multiplies what came before.
    Hundred,
    /// Spanish "doscientos": adds a whole hundreds value.
    Hundreds(f64),
    Scale(f64),
    Dozen,
    Ordinal(f64),
}

const ENGLISH_WORDS: &[(&str, Word)] = &[
    ("zero", Word::Unit(0.0)),
    ("one", Word::Unit(1.0)),
    ("two", Word::Unit(2.0)),
    ("three", Word::Unit(3.0)),
    ("four", Word::Unit(4.0)),
    ("five", Word::Unit(5.0)),
    ("six", Word::Unit(6.0)),
    ("seven", Word::Unit(7.0)),
    ("eight", Word::Unit(8.0)),
    ("nine", Word::Unit(9.0)),
    ("ten", Word::Teen(10.0)),
    ("eleven", Word::Teen(11.0)),
    ("twelve", Word::Teen(12.0)),
    ("thirteen", Word::Teen(13.0)),
    ("fourteen", Word::Teen(14.0)),
    ("fifteen", Word::Teen(15.0)),
    ("sixteen", Word::Teen(16.0)),
    ("seventeen", Word::Teen(17.0)),
    ("eighteen", Word::Teen(18.0)),
    ("nineteen", Word::Teen(19.0)),
    ("twenty", Word::Tens(20.0)),
    ("thirty", Word::Tens(30.0)),
    ("forty", Word::Tens(40.0)),
    ("fourty", Word::Tens(40.0)),
    ("fifty", Word::Tens(50.0)),
    ("sixty", Word::Tens(60.0)),
    ("seventy", Word::Tens(70.0)),
    ("eighty", Word::Tens(80.0)),
    ("ninety", Word::Tens(90.0)),
    ("hundred", Word::Hundred),
    ("thousand", Word::Scale(1e3)),
    ("grand", Word::Scale(1e3)),
    ("k", Word::Scale(1e3)),
    ("million", Word::Scale(1e6)),
    ("billion", Word::Scale(1e9)),
    ("dozen", Word::Dozen),
    ("first", Word::Ordinal(1.0)),
    ("second", Word::Ordinal(2.0)),
    ("third", Word::Ordinal(3.0)),
    ("fourth", Word::Ordinal(4.0)),
    ("fifth", Word::Ordinal(5.0)),
    ("sixth", Word::Ordinal(6.0)),
    ("seventh", Word::Ordinal(7.0)),
    ("eighth", Word::Ordinal(8.0)),
    ("ninth", Word::Ordinal(9.0)),
    ("tenth", Word::Ordinal(10.0)),
    ("eleventh", Word::Ordinal(11.0)),
    ("twelfth", Word::Ordinal(12.0)),
    ("thirteenth", Word::Ordinal(13.0)),
    ("fourteenth", Word::Ordinal(14.0)),
    ("fifteenth", Word::Ordinal(15.0)),
    ("sixteenth", Word::Ordinal(16.0)),
    ("seventeenth", Word::Ordinal(17.0)),
    ("eighteenth", Word::Ordinal(18.0)),
    ("nineteenth", Word::Ordinal(19.0)),
    ("twentieth", Word::Ordinal(20.0)),
    ("thirtieth", Word::Ordinal(30.0)),
];

const SPANISH_WORDS: &[(&str, Word)] = &[
    ("cero", Word::Unit(0.0)),
    ("uno", Word::Unit(1.0)),
    ("un", Word::Unit(1.0)),
    ("una", Word::Unit(1.0)),
    ("dos", Word::Unit(2.0)),
    ("tres", Word::Unit(3.0)),
    ("cuatro", Word::Unit(4.0)),
    ("cinco", Word::Unit(5.0)),
    ("seis", Word::Unit(6.0)),
    ("siete", Word::Unit(7.0)),
    ("ocho", Word::Unit(8.0)),
    ("nueve", Word::Unit(9.0)),
    ("diez", Word::Teen(10.0)),
    ("once", Word::Teen(11.0)),
    ("doce", Word::Teen(12.0)),
    ("trece", Word::Teen(13.0)),
    ("catorce", Word::Teen(14.0)),
    ("quince", Word::Teen(15.0)),
    ("dieciseis", Word::Teen(16.0)),
    ("diecisiete", Word::Teen(17.0)),
    ("dieciocho", Word::Teen(18.0)),
    ("diecinueve", Word::Teen(19.0)),
    ("veinte", Word::Tens(20.0)),
    ("veintiuno", Word::TensUnit(21.0)),
    ("veintiun", Word::TensUnit(21.0)),
    ("veintiuna", Word::TensUnit(21.0)),
    ("veintidos", Word::TensUnit(22.0)),
    ("veintitres", Word::TensUnit(23.0)),
    ("veinticuatro", Word::TensUnit(24.0)),
    ("veinticinco", Word::TensUnit(25.0)),
    ("veintiseis", Word::TensUnit(26.0)),
    ("veintisiete", Word::TensUnit(27.0)),
    ("veintiocho", Word::TensUnit(28.0)),
    ("veintinueve", Word::TensUnit(29.0)),
    ("treinta", Word::Tens(30.0)),
    ("cuarenta", Word::Tens(40.0)),
    ("cincuenta", Word::Tens(50.0)),
    ("sesenta", Word::Tens(60.0)),
    ("setenta", Word::Tens(70.0)),
    ("ochenta", Word::Tens(80.0)),
    ("noventa", Word::Tens(90.0)),
    ("cien", Word::Hundreds(100.0)),
    ("ciento", Word::Hundreds(100.0)),
    ("doscientos", Word::Hundreds(200.0)),
    ("doscientas", Word::Hundreds(200.0)),
    ("trescientos", Word::Hundreds(300.0)),
    ("trescientas", Word::Hundreds(300.0)),
    ("cuatrocientos", Word::Hundreds(400.0)),
    ("cuatrocientas", Word::Hundreds(400.0)),
    ("quinientos", Word::Hundreds(500.0)),
    ("quinientas", Word::Hundreds(500.0)),
    ("seiscientos", Word::Hundreds(600.0)),
    ("seiscientas", Word::Hundreds(600.0)),
    ("setecientos", Word::Hundreds(700.0)),
    ("setecientas", Word::Hundreds(700.0)),
    ("ochocientos", Word::Hundreds(800.0)),
    ("ochocientas", Word::Hundreds(800.0)),
    ("novecientos", Word::Hundreds(900.0)),
    ("novecientas", Word::Hundreds(900.0)),
    ("mil", Word::Scale(1e3)),
    ("millon", Word::Scale(1e6)),
    ("millones", Word::Scale(1e6)),
    ("docena", Word::Dozen),
    ("primero", Word::Ordinal(1.0)),
    ("primer", Word::Ordinal(1.0)),
    ("primera", Word::Ordinal(1.0)),
    ("segundo", Word::Ordinal(2.0)),
    ("tercero", Word::Ordinal(3.0)),
    ("tercer", Word::Ordinal(3.0)),
];

static ENGLISH: LazyLock<WordMap<&'static str, Word>> =
    LazyLock::new(|| ENGLISH_WORDS.iter().copied().collect());
static SPANISH: LazyLock<WordMap<&'static str, Word>> =
    LazyLock::new(|| SPANISH_WORDS.iter().copied().collect());

fn lexicon(language: Language) -> &'static WordMap<&'static str, Word> {
    match language {
        Language::En => &ENGLISH,
        Language::Es => &SPANISH,
    }
}

const ORDINAL_SUFFIXES: &[&str] = &[
    "st", "nd", "rd", "th", "o", "a", "ro", "do", "er", "to", "vo", "no", "mo",
];
const CURRENCY_WORDS: &[&str] = &[
    "dollar", "dollars", "buck", "bucks", "euro", "euros", "peso", "pesos", "dolar", "dolares",
];
const CENT_WORDS: &[&str] = &[
    "cent", "cents", "centavo", "centavos", "centimo", "centimos",
];

/// Every number in `tokens`, left to right. Clock times ("3:30") and slashed
/// dates ("3/14") are not numbers and are skipped whole.
pub(crate) fn find_numbers(tokens: &[Token], language: Language) -> Vec<NumberSpan> {
    let words = lexicon(language);
    let mut found = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        if let Some(skip) = clock_or_slashed_date_len(tokens, i) {
            i += skip;
            continue;
        }
        match read_number(tokens, i, words, language) {
            Some(span) => {
                i = span.end;
                found.push(span);
            }
            None => i += 1,
        }
    }
    found
}

/// Token length of "3:30" or "3/14/2026" starting at `i`, if there is one.
fn clock_or_slashed_date_len(tokens: &[Token], i: usize) -> Option<usize> {
    if !tokens[i].is_digits() {
        return None;
    }
    let mut len = 1;
    while let (Some(separator), Some(next)) = (tokens.get(i + len), tokens.get(i + len + 1)) {
        let glued = separator.start == tokens[i + len - 1].end && next.start == separator.end;
        if glued && next.is_digits() && separator.is_any(&[":", "/"]) {
            len += 2;
        } else {
            break;
        }
    }
    (len > 1).then_some(len)
}

fn glued(tokens: &[Token], left: usize, right: usize) -> bool {
    matches!((tokens.get(left), tokens.get(right)), (Some(l), Some(r)) if l.end == r.start)
}

/// Reads "1,200.50": digit groups joined by glued `,`/`.`. A group of exactly
/// three digits after a separator is a thousands group whatever the separator
/// (English and Latin-American usage differ); anything else is a decimal part.
fn read_digits(tokens: &[Token], i: usize) -> (f64, usize) {
    let mut integer = tokens[i].norm.clone();
    let mut fraction = String::new();
    let mut end = i + 1;
    while let (Some(separator), Some(next)) = (tokens.get(end), tokens.get(end + 1)) {
        let is_group = separator.is_any(&[",", "."])
            && next.is_digits()
            && glued(tokens, end - 1, end)
            && glued(tokens, end, end + 1)
            && fraction.is_empty();
        if !is_group {
            break;
        }
        if next.norm.len() == 3 {
            integer.push_str(&next.norm);
        } else {
            fraction = next.norm.clone();
        }
        end += 2;
    }
    let text = if fraction.is_empty() {
        integer
    } else {
        format!("{integer}.{fraction}")
    };
    (text.parse().unwrap_or(0.0), end)
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Last {
    Nothing,
    Unit,
    Teen,
    Tens,
    TensUnit,
    Hundred,
    Hundreds,
    Scale,
    Joiner,
}

fn read_number(
    tokens: &[Token],
    i: usize,
    words: &WordMap<&'static str, Word>,
    language: Language,
) -> Option<NumberSpan> {
    let word_at = |j: usize| {
        tokens
            .get(j)
            .filter(|t| t.is_word())
            .and_then(|t| words.get(t.norm.as_str()).copied())
    };
    let mut total = 0.0;
    let mut current = 0.0;
    let mut last = Last::Nothing;
    let mut ordinal = false;
    let mut digits = false;
    let mut j = i;

    if tokens[i].is_digits() {
        let (value, end) = read_digits(tokens, i);
        current = value;
        digits = true;
        last = Last::TensUnit;
        j = end;
        if let Some(suffix) = tokens.get(j)
            && suffix.is_word()
            && glued(tokens, j - 1, j)
            && suffix.is_any(ORDINAL_SUFFIXES)
        {
            ordinal = true;
            j += 1;
        } else if tokens.get(j).is_some_and(|t| t.is("º") || t.is("ª")) && glued(tokens, j - 1, j)
        {
            ordinal = true;
            j += 1;
        }
    } else if tokens[i].is_any(&["a", "an"]) && language == Language::En {
        match tokens.get(i + 1).map(|t| t.norm.as_str()) {
            Some("hundred" | "thousand" | "million" | "dozen") => {
                current = 1.0;
                last = Last::Unit;
                j = i + 1;
            }
            Some("couple") => {
                let end = if tokens.get(i + 2).is_some_and(|t| t.is("of")) {
                    i + 3
                } else {
                    i + 2
                };
                return Some(NumberSpan {
                    value: 2.0,
                    start: i,
                    end,
                    weak: false,
                    ordinal: false,
                    digits: false,
                });
            }
            Some("half") => {
                return Some(NumberSpan {
                    value: 0.5,
                    start: i,
                    end: i + 2,
                    weak: false,
                    ordinal: false,
                    digits: false,
                });
            }
            // "an hour and a half"
            _ if tokens.get(i + 1).is_some_and(Token::is_word)
                && tokens.get(i + 2).is_some_and(|t| t.is("and"))
                && tokens.get(i + 3).is_some_and(|t| t.is("a"))
                && tokens.get(i + 4).is_some_and(|t| t.is("half")) =>
            {
                return Some(NumberSpan {
                    value: 1.5,
                    start: i,
                    end: i + 5,
                    weak: false,
                    ordinal: false,
                    digits: false,
                });
            }
            _ => return None,
        }
    } else if tokens[i].is_any(&["un", "una"])
        && language == Language::Es
        && tokens.get(i + 1).is_some_and(|t| t.is("par"))
    {
        let end = if tokens.get(i + 2).is_some_and(|t| t.is("de")) {
            i + 3
        } else {
            i + 2
        };
        return Some(NumberSpan {
            value: 2.0,
            start: i,
            end,
            weak: false,
            ordinal: false,
            digits: false,
        });
    } else if tokens[i].is_any(&["half", "medio", "media"]) {
        return Some(NumberSpan {
            value: 0.5,
            start: i,
            end: i + 1,
            weak: true,
            ordinal: false,
            digits: false,
        });
    } else {
        let first = word_at(i)?;
        // "thousand" alone is rarely a number; Spanish "mil" is.
        if matches!(first, Word::Scale(_) | Word::Hundred) && !tokens[i].is("mil") {
            return None;
        }
    }

    if !ordinal {
        while let Some(token) = tokens.get(j) {
            if !token.is_word() {
                break;
            }
            let Some(word) = word_at(j) else {
                let next = word_at(j + 1);
                let joins_tens =
                    token.is("y") && last == Last::Tens && matches!(next, Some(Word::Unit(_)));
                let joins_hundreds = token.is("and")
                    && matches!(last, Last::Hundred | Last::Scale)
                    && matches!(next, Some(Word::Unit(_) | Word::Teen(_) | Word::Tens(_)));
                if joins_tens || joins_hundreds {
                    last = Last::Joiner;
                    j += 1;
                    continue;
                }
                break;
            };
            let after_digits =
                digits && !matches!(word, Word::Hundred | Word::Scale(_) | Word::Dozen);
            if after_digits {
                break;
            }
            match word {
                Word::Unit(n) => {
                    if !matches!(
                        last,
                        Last::Nothing
                            | Last::Tens
                            | Last::Hundred
                            | Last::Hundreds
                            | Last::Scale
                            | Last::Joiner
                    ) {
                        break;
                    }
                    current += n;
                    last = Last::Unit;
                }
                Word::Teen(n) | Word::Tens(n) | Word::TensUnit(n) => {
                    if !matches!(
                        last,
                        Last::Nothing | Last::Hundred | Last::Hundreds | Last::Scale | Last::Joiner
                    ) {
                        break;
                    }
                    current += n;
                    last = match word {
                        Word::Teen(_) => Last::Teen,
                        Word::Tens(_) => Last::Tens,
                        _ => Last::TensUnit,
                    };
                }
                Word::Hundred => {
                    if !matches!(last, Last::Unit | Last::Teen | Last::Tens | Last::TensUnit) {
                        break;
                    }
                    current *= 100.0;
                    last = Last::Hundred;
                }
                Word::Hundreds(n) => {
                    if !matches!(last, Last::Nothing | Last::Scale) {
                        break;
                    }
                    current += n;
                    last = Last::Hundreds;
                }
                Word::Scale(scale) => {
                    if last == Last::Scale || last == Last::Joiner {
                        break;
                    }
                    total += if last == Last::Nothing { 1.0 } else { current } * scale;
                    current = 0.0;
                    last = Last::Scale;
                }
                Word::Dozen => {
                    current = if last == Last::Nothing { 1.0 } else { current } * 12.0;
                    last = Last::Scale;
                }
                Word::Ordinal(n) => {
                    if !matches!(
                        last,
                        Last::Nothing | Last::Tens | Last::Hundred | Last::Scale | Last::Joiner
                    ) {
                        break;
                    }
                    current += n;
                    ordinal = true;
                    j += 1;
                    break;
                }
            }
            j += 1;
        }
    }
    if j == i {
        return None;
    }
    let mut value = total + current;
    let mut weak = j == i + 1 && tokens[i].is_any(&["one", "un", "una"]);

    if !ordinal {
        let (fraction, end) = read_fraction(tokens, j, words, language);
        value += fraction;
        weak &= fraction == 0.0;
        j = end;
        let (cents, end) = read_cents(tokens, j, words, language);
        value += cents;
        j = end;
    }
    let negative = i > 0
        && (tokens[i - 1].is_any(&["minus", "negative", "negativo"])
            || (tokens[i - 1].is("-")
                && glued(tokens, i - 1, i)
                && !(i > 1 && glued(tokens, i - 2, i - 1))));
    let start = if negative && !tokens[i - 1].is("-") {
        i - 1
    } else {
        i
    };
    if negative {
        value = -value;
    }
    Some(NumberSpan {
        value,
        start,
        end: j,
        weak,
        ordinal,
        digits,
    })
}

/// "point five", "coma cinco", "and a half", "y medio", "hours and a half".
fn read_fraction(
    tokens: &[Token],
    j: usize,
    words: &WordMap<&'static str, Word>,
    language: Language,
) -> (f64, usize) {
    let norm = |k: usize| tokens.get(k).map_or("", |t| t.norm.as_str());
    let half_after = |k: usize| -> Option<usize> {
        match language {
            Language::En if norm(k) == "and" && norm(k + 1) == "a" && norm(k + 2) == "half" => {
                Some(k + 3)
            }
            Language::Es if norm(k) == "y" && matches!(norm(k + 1), "medio" | "media") => {
                Some(k + 2)
            }
            _ => None,
        }
    };
    if let Some(end) = half_after(j) {
        return (0.5, end);
    }
    // "an hour and a half", "una hora y media": one unit word in between.
    if tokens.get(j).is_some_and(Token::is_word)
        && !words.contains_key(norm(j))
        && let Some(end) = half_after(j + 1)
    {
        return (0.5, end);
    }
    if matches!(norm(j), "point" | "coma" | "punto") {
        let mut digits = String::new();
        let mut k = j + 1;
        while let Some(token) = tokens.get(k) {
            if token.is_digits() && digits.is_empty() {
                digits.push_str(&token.norm);
                k += 1;
                break;
            }
            match words.get(token.norm.as_str()) {
                Some(Word::Unit(n)) if !token.is_any(&["un", "una"]) => {
                    digits.push_str(&(*n as u8).to_string());
                    k += 1;
                }
                _ => break,
            }
        }
        if !digits.is_empty() {
            return (format!("0.{digits}").parse().unwrap_or(0.0), k);
        }
    }
    (0.0, j)
}

/// "45 dollars and 50 cents", "45 dólares con 50 centavos".
fn read_cents(
    tokens: &[Token],
    j: usize,
    words: &WordMap<&'static str, Word>,
    language: Language,
) -> (f64, usize) {
    let is_currency = tokens.get(j).is_some_and(|t| t.is_any(CURRENCY_WORDS));
    let joins = tokens
        .get(j + 1)
        .is_some_and(|t| t.is_any(&["and", "con", "y"]));
    if !(is_currency && joins) {
        return (0.0, j);
    }
    if let Some(cents) = read_number(tokens, j + 2, words, language)
        && tokens.get(cents.end).is_some_and(|t| t.is_any(CENT_WORDS))
        && (0.0..100.0).contains(&cents.value)
    {
        return (cents.value / 100.0, cents.end + 1);
    }
    (0.0, j)
}

#[cfg(test)]
mod tests {
    use super::super::text::tokenize;
    use super::*;

    fn values(text: &str, language: Language) -> Vec<f64> {
        find_numbers(&tokenize(text), language)
            .into_iter()
            .map(|n| n.value)
            .collect()
    }

    #[test]
    fn reads_english_numbers() {
        let cases: &[(&str, f64)] = &[
            ("twenty-three", 23.0),
            ("three hundred", 300.0),
            ("three hundred and twenty five", 325.0),
            ("two point five", 2.5),
            ("one point two five", 1.25),
            ("two and a half", 2.5),
            ("an hour and a half", 1.5),
            ("a dozen", 12.0),
            ("two dozen", 24.0),
            ("a couple of", 2.0),
            ("forty-five thousand", 45000.0),
            ("45 thousand", 45000.0),
            ("50k", 50000.0),
            ("$1,200", 1200.0),
            ("2.5", 2.5),
            ("1,250.75", 1250.75),
            ("twenty five hundred", 2500.0),
            ("two thousand twenty six", 2026.0),
            ("a hundred and ten", 110.0),
            ("45 dollars and 50 cents", 45.5),
            ("minus five", -5.0),
            ("one million two hundred thousand", 1_200_000.0),
        ];
        for (text, expected) in cases {
            assert_eq!(values(text, Language::En), [*expected], "{text}");
        }
    }

    #[test]
    fn reads_spanish_numbers() {
        let cases: &[(&str, f64)] = &[
            ("veintitrés", 23.0),
            ("ciento cincuenta", 150.0),
            ("dos y medio", 2.5),
            ("treinta y dos", 32.0),
            ("dos mil quinientos", 2500.0),
            ("mil doscientos", 1200.0),
            ("cuarenta y cinco mil", 45000.0),
            ("dos coma cinco", 2.5),
            ("una hora y media", 1.5),
            ("un par de", 2.0),
            ("un millón", 1e6),
            ("2,5", 2.5),
            ("1.500", 1500.0),
            ("trescientos veinte", 320.0),
        ];
        for (text, expected) in cases {
            assert_eq!(values(text, Language::Es), [*expected], "{text}");
        }
    }

    #[test]
    fn separates_numbers_and_skips_clock_times() {
        assert_eq!(values("five, six", Language::En), [5.0, 6.0]);
        assert_eq!(values("five six", Language::En), [5.0, 6.0]);
        assert_eq!(values("at 3:30 for 4", Language::En), [4.0]);
        assert_eq!(values("on 3/14 with 2", Language::En), [2.0]);
        assert_eq!(values("once", Language::En), Vec::<f64>::new());
    }

    #[test]
    fn marks_ordinals_and_weak_words() {
        let spans = find_numbers(
            &tokenize("the 15th, twenty-first and the blue one"),
            Language::En,
        );
        assert!(spans[0].ordinal && spans[0].value == 15.0);
        assert!(spans[1].ordinal && spans[1].value == 21.0);
        assert!(spans[2].weak && spans[2].value == 1.0);
        let spans = find_numbers(&tokenize("uno"), Language::Es);
        assert!(!spans[0].weak);
    }
}
