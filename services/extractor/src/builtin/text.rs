//! Tokens of spoken text, normalised for matching (lower case, accents folded)
//! while keeping their byte spans in the original text.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// Maps and sets keyed by short words, hashed with a fast non-cryptographic
/// hash (the keys are lexicon words and the words of one call).
pub(crate) type WordMap<K, V> = HashMap<K, V, BuildHasherDefault<WordHasher>>;
pub(crate) type WordSet<K> = HashSet<K, BuildHasherDefault<WordHasher>>;

/// The Fx hash (rotate, xor, multiply), a word at a time.
#[derive(Default)]
pub(crate) struct WordHasher {
    hash: u64,
}

impl WordHasher {
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for WordHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            self.add(u64::from_le_bytes(chunk.try_into().unwrap_or_default()));
        }
        let mut tail = [0u8; 8];
        let rest = chunks.remainder();
        tail[..rest.len()].copy_from_slice(rest);
        self.add(u64::from_le_bytes(tail) ^ rest.len() as u64);
    }

    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    fn finish(&self) -> u64 {
        self.hash
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenKind {
    Word,
    Digits,
    Punct,
}

#[derive(Debug, Clone)]
pub(crate) struct Token {
    /// Lower-cased, accent-folded text; `'` for every apostrophe.
    pub norm: String,
    pub kind: TokenKind,
    pub start: usize,
    pub end: usize,
}

impl Token {
    pub fn is(&self, word: &str) -> bool {
        self.norm == word
    }

    pub fn is_any(&self, words: &[&str]) -> bool {
        words.contains(&self.norm.as_str())
    }

    pub fn is_word(&self) -> bool {
        self.kind == TokenKind::Word
    }

    pub fn is_digits(&self) -> bool {
        self.kind == TokenKind::Digits
    }

    pub fn is_punct(&self) -> bool {
        self.kind == TokenKind::Punct
    }

    /// Whether this token ends a sentence or a turn.
    pub fn is_sentence_break(&self) -> bool {
        self.kind == TokenKind::Punct
            && matches!(
                self.norm.as_str(),
                "." | "!" | "?" | ";" | "\n" | "…" | "—" | "–" | "¿" | "¡"
            )
    }

    /// Whether this token separates clauses (sentence breaks and commas, dashes).
    pub fn is_clause_break(&self) -> bool {
        self.is_sentence_break()
            || (self.kind == TokenKind::Punct
                && matches!(self.norm.as_str(), "," | "-" | ":" | "(" | ")"))
    }
}

/// Splits `text` into words, digit runs and punctuation. A hyphen between two
/// letters joins nothing and is dropped ("twenty-three" reads as two words); a
/// full stop inside "a.m."/"p.m." is folded into one `am`/`pm` word.
pub(crate) fn tokenize(text: &str) -> Vec<Token> {
    let mut tokens = Vec::with_capacity(text.len() / 4);
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let end_of = |index: usize| chars.get(index).map_or(text.len(), |(offset, _)| *offset);
    let mut i = 0;
    while i < chars.len() {
        let (start, c) = chars[i];
        if c.is_alphabetic() {
            let mut norm = String::new();
            let mut j = i;
            while j < chars.len() {
                let ch = chars[j].1;
                if ch.is_alphabetic() {
                    push_folded(&mut norm, ch);
                    j += 1;
                } else if is_apostrophe(ch)
                    && chars
                        .get(j + 1)
                        .is_some_and(|(_, next)| next.is_alphabetic())
                {
                    norm.push('\'');
                    j += 1;
                } else {
                    break;
                }
            }
            tokens.push(Token {
                norm,
                kind: TokenKind::Word,
                start,
                end: end_of(j),
            });
            i = j;
        } else if c.is_ascii_digit() {
            let mut j = i;
            while j < chars.len() && chars[j].1.is_ascii_digit() {
                j += 1;
            }
            tokens.push(Token {
                norm: text[start..end_of(j)].to_owned(),
                kind: TokenKind::Digits,
                start,
                end: end_of(j),
            });
            i = j;
        } else if c.is_whitespace() && c != '\n' {
            i += 1;
        } else {
            let joins_words = c == '-'
                && i > 0
                && chars[i - 1].1.is_alphabetic()
                && chars
                    .get(i + 1)
                    .is_some_and(|(_, next)| next.is_alphabetic());
            if !joins_words {
                let norm = if is_apostrophe(c) {
                    '\''.to_string()
                } else {
                    c.to_string()
                };
                tokens.push(Token {
                    norm,
                    kind: TokenKind::Punct,
                    start,
                    end: end_of(i + 1),
                });
            }
            i += 1;
        }
    }
    fold_meridiem_abbreviations(&mut tokens);
    tokens
}

fn is_apostrophe(c: char) -> bool {
    matches!(c, '\'' | '’' | '‘' | 'ʼ')
}

fn push_folded(out: &mut String, c: char) {
    if c.is_ascii() {
        out.push(c.to_ascii_lowercase());
        return;
    }
    let folded = match c {
        'á' | 'à' | 'ä' | 'â' | 'Á' | 'À' | 'Ä' | 'Â' => 'a',
        'é' | 'è' | 'ë' | 'ê' | 'É' | 'È' | 'Ë' | 'Ê' => 'e',
        'í' | 'ì' | 'ï' | 'î' | 'Í' | 'Ì' | 'Ï' | 'Î' => 'i',
        'ó' | 'ò' | 'ö' | 'ô' | 'Ó' | 'Ò' | 'Ö' | 'Ô' => 'o',
        'ú' | 'ù' | 'ü' | 'û' | 'Ú' | 'Ù' | 'Ü' | 'Û' => 'u',
        'ñ' | 'Ñ' => 'n',
        'ç' | 'Ç' => 'c',
        _ => {
            out.extend(c.to_lowercase());
            return;
        }
    };
    out.push(folded);
}

/// "a.m." / "p. m." → one `am` / `pm` word.
fn fold_meridiem_abbreviations(tokens: &mut Vec<Token>) {
    let mut i = 0;
    while i + 2 < tokens.len() {
        let is_meridiem = tokens[i].is_any(&["a", "p"])
            && tokens[i + 1].is(".")
            && tokens[i + 2].is("m")
            && tokens[i + 1].start - tokens[i].end <= 1
            && tokens[i + 2].start - tokens[i + 1].end <= 1;
        if is_meridiem {
            let has_final_dot = tokens
                .get(i + 3)
                .is_some_and(|t| t.is(".") && t.start == tokens[i + 2].end);
            let last = if has_final_dot { i + 3 } else { i + 2 };
            let norm = format!("{}m", tokens[i].norm);
            let end = tokens[last].end;
            tokens.splice(
                i..=last,
                [Token {
                    norm,
                    kind: TokenKind::Word,
                    start: tokens[i].start,
                    end,
                }],
            );
        }
        i += 1;
    }
}

/// Lower-cases and folds accents, the normal form tokens are compared in.
pub(crate) fn fold(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        push_folded(&mut out, c);
    }
    out
}

/// A crude stem shared by English and Spanish: plural `s` dropped, cut to six
/// letters, so that "guests"/"guest" and "preferred"/"preferida" meet.
pub(crate) fn stem(word: &str) -> String {
    let word = word.strip_suffix("'s").unwrap_or(word);
    let word = if word.chars().count() > 3 {
        word.strip_suffix('s').unwrap_or(word)
    } else {
        word
    };
    word.chars().take(6).collect()
}

/// Phrases (sequences of normalised words) with a value each, matched
/// longest-first at a token position.
pub(crate) struct PhraseMap<V> {
    by_first_word: WordMap<String, Vec<(Vec<String>, V)>>,
}

impl<V: Copy> PhraseMap<V> {
    pub fn new<'a>(entries: impl IntoIterator<Item = (&'a str, V)>) -> PhraseMap<V> {
        let mut by_first_word: WordMap<String, Vec<(Vec<String>, V)>> = WordMap::default();
        for (phrase, value) in entries {
            let words: Vec<String> = tokenize(phrase).into_iter().map(|t| t.norm).collect();
            if let Some(first) = words.first() {
                by_first_word
                    .entry(first.clone())
                    .or_default()
                    .push((words, value));
            }
        }
        for candidates in by_first_word.values_mut() {
            candidates.sort_by_key(|(words, _)| std::cmp::Reverse(words.len()));
        }
        PhraseMap { by_first_word }
    }

    /// The longest phrase starting at `tokens[at]`: how many tokens it spans, and its value.
    pub fn longest_at(&self, tokens: &[Token], at: usize) -> Option<(usize, V)> {
        let candidates = self.by_first_word.get(&tokens.get(at)?.norm)?;
        candidates.iter().find_map(|(words, value)| {
            let matches = words.len() <= tokens.len() - at
                && words
                    .iter()
                    .zip(&tokens[at..])
                    .all(|(word, token)| *word == token.norm);
            matches.then_some((words.len(), *value))
        })
    }

    /// Every non-overlapping match, scanning left to right.
    pub fn find_all(&self, tokens: &[Token]) -> Vec<(usize, usize, V)> {
        let mut found = Vec::new();
        let mut i = 0;
        while i < tokens.len() {
            match self.longest_at(tokens, i) {
                Some((len, value)) => {
                    found.push((i, i + len, value));
                    i += len;
                }
                None => i += 1,
            }
        }
        found
    }
}

/// Sentence token ranges, closing punctuation excluded; an opening "¿"/"¡"
/// stays with its sentence.
pub(crate) fn sentence_ranges(tokens: &[Token]) -> Vec<(usize, usize)> {
    let mut ranges = Vec::new();
    let mut start = 0;
    for (i, token) in tokens.iter().enumerate() {
        let ends_sentence =
            token.is_sentence_break() && !token.is_any(&["¿", "¡"]) && !is_inner_dot(tokens, i);
        if ends_sentence {
            if i > start {
                ranges.push((start, i));
            }
            start = i + 1;
        }
    }
    if start < tokens.len() {
        ranges.push((start, tokens.len()));
    }
    ranges
}

/// A dot inside "2.5" or "john.smith", which ends no sentence.
pub(crate) fn is_inner_dot(tokens: &[Token], i: usize) -> bool {
    tokens[i].is(".")
        && i > 0
        && i + 1 < tokens.len()
        && tokens[i - 1].end == tokens[i].start
        && tokens[i].end == tokens[i + 1].start
}

/// Rebuilds the original wording of `tokens` (a subsequence of `all`, in
/// order): the source text between neighbouring tokens is kept, and a single
/// space stands for any tokens left out.
pub(crate) fn source_text(source: &str, tokens: &[&Token]) -> String {
    let mut out = String::new();
    for (i, token) in tokens.iter().enumerate() {
        if i > 0 {
            let previous = tokens[i - 1];
            let gap = &source[previous.end..token.start];
            // Only whitespace and word-joining hyphens lie between adjacent tokens.
            if gap.chars().all(|c| c.is_whitespace() || c == '-') {
                out.push_str(if gap.contains('\n') { " " } else { gap });
            } else {
                out.push(' ');
            }
        }
        out.push_str(&source[token.start..token.end]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norms(text: &str) -> Vec<String> {
        tokenize(text).into_iter().map(|t| t.norm).collect()
    }

    #[test]
    fn tokenizes_words_digits_and_punctuation() {
        assert_eq!(
            norms("Sí, twenty-three at 3:30 p.m. — don’t"),
            [
                "si", ",", "twenty", "three", "at", "3", ":", "30", "pm", "—", "don't"
            ]
        );
        assert_eq!(norms("15th"), ["15", "th"]);
        assert_eq!(norms("2026-03-14"), ["2026", "-", "03", "-", "14"]);
        assert_eq!(norms("MAÑANA"), ["manana"]);
    }

    #[test]
    fn phrase_map_prefers_the_longest_phrase() {
        let map = PhraseMap::new([
            ("no", 1),
            ("no se", 2),
            ("of course not", 3),
            ("of course", 4),
        ]);
        let tokens = tokenize("no sé");
        assert_eq!(map.longest_at(&tokens, 0), Some((2, 2)));
        let tokens = tokenize("of course not");
        assert_eq!(map.longest_at(&tokens, 0), Some((3, 3)));
    }

    #[test]
    fn source_text_keeps_original_spacing() {
        let source = "Um,  Maria   López!";
        let tokens = tokenize(source);
        let kept: Vec<&Token> = tokens[2..4].iter().collect();
        assert_eq!(source_text(source, &kept), "Maria   López");
    }

    #[test]
    fn stems_meet_across_plurals_and_languages() {
        assert_eq!(stem("guests"), stem("guest"));
        assert_eq!(stem("preferred"), stem("preferida"));
        assert_eq!(stem("days"), "day");
    }
}
