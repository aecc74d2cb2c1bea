//! Dates and clock times as people say them, resolved against the call's date.
//!
//! Conventions (documented because spoken dates are ambiguous): a bare weekday
//! or day of month is the next one after the call (the last one before it when
//! the question asks about the past); English "next Tuesday" is the Tuesday of
//! next week, Spanish "el próximo martes" the coming one; numeric dates are
//! month-first in English and day-first in Spanish unless that is impossible.

use std::sync::LazyLock;

use chrono::{Datelike, Days, Months, NaiveDate, NaiveTime, Weekday};

use super::Language;
use super::numbers::NumberSpan;
use super::text::{PhraseMap, Token};

/// Which way an unanchored date ("Tuesday", "March 3rd") points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bias {
    Future,
    Past,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DateSpan {
    pub date: NaiveDate,
    pub start: usize,
    pub end: usize,
    /// Unmistakably a date (weekday, month name, "tomorrow", "3/14"), as opposed
    /// to "the 15th", which could be a rank.
    pub explicit: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Period {
    Morning,
    Afternoon,
    Night,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TimeSpan {
    pub hour: u32,
    pub minute: u32,
    pub period: Option<Period>,
    pub start: usize,
    pub end: usize,
    /// Marked as a time ("at", "pm", "o'clock", "a las", "3:30"), as opposed
    /// to a bare "three thirty".
    pub explicit: bool,
}

impl TimeSpan {
    /// The clock time, using `period_hint` (a "this afternoon" elsewhere in the
    /// answer) when the time itself has no am/pm; otherwise 1–7 are taken as
    /// afternoon hours, as appointments mostly are.
    pub fn resolve(&self, period_hint: Option<Period>) -> Option<NaiveTime> {
        let hour = match (self.hour, self.period.or(period_hint)) {
            (h, _) if h >= 13 => h,
            (12, Some(Period::Morning | Period::Night)) => 0,
            (h, Some(Period::Afternoon)) if h < 12 => h + 12,
            (h, Some(Period::Night)) if (5..12).contains(&h) => h + 12,
            (h, None) if (1..=7).contains(&h) => h + 12,
            (h, _) => h,
        };
        NaiveTime::from_hms_opt(hour, self.minute, 0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Relative {
    Days(i64),
}

static WEEKDAYS: LazyLock<PhraseMap<Weekday>> = LazyLock::new(|| {
    PhraseMap::new([
        ("monday", Weekday::Mon),
        ("tuesday", Weekday::Tue),
        ("wednesday", Weekday::Wed),
        ("thursday", Weekday::Thu),
        ("friday", Weekday::Fri),
        ("saturday", Weekday::Sat),
        ("sunday", Weekday::Sun),
        ("lunes", Weekday::Mon),
        ("martes", Weekday::Tue),
        ("miercoles", Weekday::Wed),
        ("jueves", Weekday::Thu),
        ("viernes", Weekday::Fri),
        ("sabado", Weekday::Sat),
        ("domingo", Weekday::Sun),
    ])
});

static MONTHS: LazyLock<PhraseMap<u32>> = LazyLock::new(|| {
    PhraseMap::new([
        ("january", 1),
        ("jan", 1),
        ("february", 2),
        ("feb", 2),
        ("march", 3),
        ("april", 4),
        ("apr", 4),
        ("may", 5),
        ("june", 6),
        ("jun", 6),
        ("july", 7),
        ("jul", 7),
        ("august", 8),
        ("aug", 8),
        ("september", 9),
        ("sept", 9),
        ("sep", 9),
        ("october", 10),
        ("oct", 10),
        ("november", 11),
        ("nov", 11),
        ("december", 12),
        ("dec", 12),
        ("enero", 1),
        ("febrero", 2),
        ("marzo", 3),
        ("abril", 4),
        ("mayo", 5),
        ("junio", 6),
        ("julio", 7),
        ("agosto", 8),
        ("septiembre", 9),
        ("setiembre", 9),
        ("octubre", 10),
        ("noviembre", 11),
        ("diciembre", 12),
    ])
});

static RELATIVE_DAYS: LazyLock<PhraseMap<Relative>> = LazyLock::new(|| {
    PhraseMap::new([
        ("today", Relative::Days(0)),
        ("tonight", Relative::Days(0)),
        ("this morning", Relative::Days(0)),
        ("this afternoon", Relative::Days(0)),
        ("this evening", Relative::Days(0)),
        ("tomorrow", Relative::Days(1)),
        ("day after tomorrow", Relative::Days(2)),
        ("the day after tomorrow", Relative::Days(2)),
        ("yesterday", Relative::Days(-1)),
        ("day before yesterday", Relative::Days(-2)),
        ("the day before yesterday", Relative::Days(-2)),
        ("hoy", Relative::Days(0)),
        ("esta noche", Relative::Days(0)),
        ("esta manana", Relative::Days(0)),
        ("esta tarde", Relative::Days(0)),
        ("manana", Relative::Days(1)),
        ("pasado manana", Relative::Days(2)),
        ("ayer", Relative::Days(-1)),
        ("anteayer", Relative::Days(-2)),
        ("antier", Relative::Days(-2)),
        ("antes de ayer", Relative::Days(-2)),
    ])
});

static PERIODS: LazyLock<PhraseMap<Period>> = LazyLock::new(|| {
    PhraseMap::new([
        ("am", Period::Morning),
        ("in the morning", Period::Morning),
        ("this morning", Period::Morning),
        ("morning", Period::Morning),
        ("de la manana", Period::Morning),
        ("por la manana", Period::Morning),
        ("en la manana", Period::Morning),
        ("esta manana", Period::Morning),
        ("de la madrugada", Period::Morning),
        ("pm", Period::Afternoon),
        ("in the afternoon", Period::Afternoon),
        ("this afternoon", Period::Afternoon),
        ("afternoon", Period::Afternoon),
        ("in the evening", Period::Afternoon),
        ("this evening", Period::Afternoon),
        ("evening", Period::Afternoon),
        ("de la tarde", Period::Afternoon),
        ("por la tarde", Period::Afternoon),
        ("en la tarde", Period::Afternoon),
        ("esta tarde", Period::Afternoon),
        ("at night", Period::Night),
        ("tonight", Period::Night),
        ("de la noche", Period::Night),
        ("por la noche", Period::Night),
        ("en la noche", Period::Night),
        ("esta noche", Period::Night),
    ])
});

/// Words that make a following number an hour.
const HOUR_LEADS: &[&str] = &[
    "at", "around", "by", "las", "la", "until", "till", "before", "after",
];

struct Numbers<'a> {
    spans: &'a [NumberSpan],
}

impl<'a> Numbers<'a> {
    fn starting_at(&self, token: usize) -> Option<&'a NumberSpan> {
        self.spans.iter().find(|span| span.start == token)
    }

    fn whole_starting_at(
        &self,
        token: usize,
        range: std::ops::RangeInclusive<f64>,
    ) -> Option<&'a NumberSpan> {
        self.starting_at(token)
            .filter(|span| span.value.fract() == 0.0 && range.contains(&span.value))
    }
}

fn norm(tokens: &[Token], i: usize) -> &str {
    tokens.get(i).map_or("", |t| t.norm.as_str())
}

/// Every date in `tokens`, left to right.
pub(crate) fn find_dates(
    tokens: &[Token],
    numbers: &[NumberSpan],
    language: Language,
    today: NaiveDate,
    bias: Bias,
) -> Vec<DateSpan> {
    let numbers = Numbers { spans: numbers };
    let mut found = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        match date_at(tokens, i, &numbers, language, today, bias) {
            Some(span) => {
                i = span.end.max(i + 1);
                found.push(span);
            }
            None => i += 1,
        }
    }
    found
}

fn date_at(
    tokens: &[Token],
    i: usize,
    numbers: &Numbers,
    language: Language,
    today: NaiveDate,
    bias: Bias,
) -> Option<DateSpan> {
    if let Some(span) = numeric_date_at(tokens, i, language, today, bias) {
        return Some(span);
    }
    if let Some((len, Relative::Days(days))) = RELATIVE_DAYS.longest_at(tokens, i) {
        // "de la mañana", "por la mañana": the morning, not tomorrow.
        let is_morning = tokens[i].is("manana") && i > 0 && tokens[i - 1].is("la");
        if !is_morning {
            let date = today.checked_add_signed(chrono::Duration::days(days))?;
            return Some(DateSpan {
                date,
                start: i,
                end: i + len,
                explicit: true,
            });
        }
    }
    if let Some(span) = offset_date_at(tokens, i, numbers, today) {
        return Some(span);
    }
    if let Some(span) = weekday_date_at(tokens, i, numbers, language, today, bias) {
        return Some(span);
    }
    day_and_month_at(tokens, i, numbers, today, bias)
}

/// "3/14/2026", "14/3", "2026-03-14", "14.03.2026".
fn numeric_date_at(
    tokens: &[Token],
    i: usize,
    language: Language,
    today: NaiveDate,
    bias: Bias,
) -> Option<DateSpan> {
    if !tokens[i].is_digits() {
        return None;
    }
    let mut parts = vec![tokens[i].norm.as_str()];
    let mut separator = None;
    let mut j = i + 1;
    while parts.len() < 3 {
        let (Some(sep), Some(next)) = (tokens.get(j), tokens.get(j + 1)) else {
            break;
        };
        let glued = sep.start == tokens[j - 1].end && next.start == sep.end;
        if !(glued && next.is_digits() && sep.is_any(&["/", "-", "."])) {
            break;
        }
        if separator.is_some_and(|s: &str| s != sep.norm) {
            break;
        }
        separator = Some(sep.norm.as_str());
        parts.push(next.norm.as_str());
        j += 2;
    }
    let separator = separator?;
    if parts.len() == 2 && separator != "/" {
        return None;
    }
    let numbers: Vec<u32> = parts
        .iter()
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let date = if parts[0].len() == 4 {
        if parts.len() != 3 {
            return None;
        }
        NaiveDate::from_ymd_opt(numbers[0] as i32, numbers[1], numbers[2])?
    } else {
        let (mut month, mut day) = match language {
            Language::En => (numbers[0], numbers[1]),
            Language::Es => (numbers[1], numbers[0]),
        };
        if month > 12 && day <= 12 {
            std::mem::swap(&mut month, &mut day);
        }
        match numbers.get(2) {
            Some(&year) => {
                let year = if parts[2].len() == 2 {
                    2000 + year
                } else {
                    year
                };
                NaiveDate::from_ymd_opt(year as i32, month, day)?
            }
            None => anchor_month_day(month, day, today, bias)?,
        }
    };
    Some(DateSpan {
        date,
        start: i,
        end: j,
        explicit: true,
    })
}

/// "in 3 days", "in two weeks", "dentro de una semana", "en 3 días", "3 days ago", "hace una semana".
fn offset_date_at(
    tokens: &[Token],
    i: usize,
    numbers: &Numbers,
    today: NaiveDate,
) -> Option<DateSpan> {
    if let Some(span) = past_offset_at(tokens, i, numbers, today) {
        return Some(span);
    }
    let mut j = match norm(tokens, i) {
        "in" | "en" | "within" => i + 1,
        "dentro" if norm(tokens, i + 1) == "de" => i + 2,
        _ => return None,
    };
    let count = match numbers.whole_starting_at(j, 1.0..=400.0) {
        Some(span) => {
            j = span.end;
            span.value as u32
        }
        None if matches!(norm(tokens, j), "a" | "an" | "one") => {
            j += 1;
            1
        }
        None => return None,
    };
    let date = match norm(tokens, j) {
        "day" | "days" | "dia" | "dias" => today.checked_add_days(Days::new(count.into()))?,
        "week" | "weeks" | "semana" | "semanas" => {
            today.checked_add_days(Days::new(7 * u64::from(count)))?
        }
        "month" | "months" | "mes" | "meses" => today.checked_add_months(Months::new(count))?,
        _ => return None,
    };
    Some(DateSpan {
        date,
        start: i,
        end: j + 1,
        explicit: true,
    })
}

/// "3 days ago", "two weeks ago", "hace 3 días", "hace una semana".
fn past_offset_at(
    tokens: &[Token],
    i: usize,
    numbers: &Numbers,
    today: NaiveDate,
) -> Option<DateSpan> {
    let hace = norm(tokens, i) == "hace";
    let k = if hace { i + 1 } else { i };
    let (count, unit_at) = match numbers.whole_starting_at(k, 1.0..=400.0) {
        Some(span) => (span.value as u32, span.end),
        None if matches!(norm(tokens, k), "a" | "an") => (1, k + 1),
        None => return None,
    };
    let end = if hace {
        unit_at + 1
    } else if norm(tokens, unit_at + 1) == "ago" {
        unit_at + 2
    } else {
        return None;
    };
    let date = match norm(tokens, unit_at) {
        "day" | "days" | "dia" | "dias" => today.checked_sub_days(Days::new(count.into()))?,
        "week" | "weeks" | "semana" | "semanas" => {
            today.checked_sub_days(Days::new(7 * u64::from(count)))?
        }
        "month" | "months" | "mes" | "meses" => today.checked_sub_months(Months::new(count))?,
        _ => return None,
    };
    Some(DateSpan {
        date,
        start: i,
        end,
        explicit: true,
    })
}

fn weekday_date_at(
    tokens: &[Token],
    i: usize,
    numbers: &Numbers,
    language: Language,
    today: NaiveDate,
    bias: Bias,
) -> Option<DateSpan> {
    let (mut start, mut end, weekday, mut modifier) = match norm(tokens, i) {
        "next" | "this" | "coming" | "last" | "proximo" | "proxima" | "este" | "pasado" => {
            let (len, weekday) = WEEKDAYS.longest_at(tokens, i + 1)?;
            (i, i + 1 + len, weekday, Some(norm(tokens, i)))
        }
        _ => {
            let (len, weekday) = WEEKDAYS.longest_at(tokens, i)?;
            (i, i + len, weekday, None)
        }
    };
    let after: [&str; 5] = std::array::from_fn(|k| norm(tokens, end + k));
    let next_week_after = match after {
        ["next", "week", ..] => Some(2),
        ["of", "next", "week", ..] => Some(3),
        ["de", "la", "semana", "que", "viene"] => Some(5),
        ["de", "la", "proxima", "semana", ..] => Some(4),
        _ => None,
    };
    if let Some(len) = next_week_after {
        modifier = Some("next week");
        end += len;
    } else {
        match after {
            ["que", "viene", ..] => {
                modifier = Some("proximo");
                end += 2;
            }
            ["proximo" | "proxima", ..] => {
                modifier = Some("proximo");
                end += 1;
            }
            ["pasado" | "pasada", ..] => {
                modifier = Some("last");
                end += 1;
            }
            _ => {}
        }
    }
    let days_ahead = |from: NaiveDate| {
        (7 + weekday.num_days_from_monday() as i64 - from.weekday().num_days_from_monday() as i64)
            % 7
    };
    let upcoming = |include_today: bool| {
        let ahead = days_ahead(today);
        let ahead = if ahead == 0 && !include_today {
            7
        } else {
            ahead
        };
        today.checked_add_days(Days::new(ahead as u64))
    };
    let most_recent = || {
        let back = (7 - days_ahead(today)) % 7;
        let back = if back == 0 { 7 } else { back };
        today.checked_sub_days(Days::new(back as u64))
    };
    let next_week = || {
        let monday =
            today.checked_sub_days(Days::new(today.weekday().num_days_from_monday().into()))?;
        monday.checked_add_days(Days::new(7 + u64::from(weekday.num_days_from_monday())))
    };
    let date = match modifier {
        Some("next") if language == Language::En => next_week()?,
        Some("next week") => next_week()?,
        Some("next" | "coming" | "proximo" | "proxima") => upcoming(false)?,
        Some("this" | "este") => upcoming(true)?,
        Some("last" | "pasado") => most_recent()?,
        _ => match bias {
            Bias::Future => upcoming(false)?,
            Bias::Past => most_recent()?,
        },
    };
    if i > 0 && tokens[i - 1].is_any(&["el", "on", "this"]) && modifier.is_none() {
        start = i - 1;
    }
    // "Tuesday the 15th", "el martes 15 de marzo": the day number decides.
    for k in end..=end + 1 {
        if let Some(span) = day_and_month_at(tokens, k, numbers, today, bias) {
            return Some(DateSpan {
                start,
                explicit: true,
                ..span
            });
        }
        let bare_day = numbers.whole_starting_at(k, 1.0..=31.0).filter(|span| {
            let introduced = k == end || tokens[end].is_any(&["the", "el"]);
            let is_clock = tokens.get(span.end).is_some_and(|t| {
                t.is_any(&[
                    "am", "pm", ":", "o'clock", "in", "de", "y", "menos", "horas", "at", "a",
                ])
            });
            introduced && !is_clock
        });
        if let Some(day) = bare_day
            && let Some(date) = anchor_day(day.value as u32, today, bias)
        {
            return Some(DateSpan {
                date,
                start,
                end: day.end,
                explicit: true,
            });
        }
    }
    Some(DateSpan {
        date,
        start,
        end,
        explicit: true,
    })
}

/// "March 3rd", "3rd of March", "el 3 de marzo de 2026", "the 15th", "el día 15".
fn day_and_month_at(
    tokens: &[Token],
    i: usize,
    numbers: &Numbers,
    today: NaiveDate,
    bias: Bias,
) -> Option<DateSpan> {
    // Month first: "March 3rd", "March the 3rd", "marzo 3".
    if let Some((len, month)) = MONTHS.longest_at(tokens, i) {
        let mut k = i + len;
        if tokens.get(k).is_some_and(|t| t.is_any(&["the", "el"])) {
            k += 1;
        }
        let day = numbers.whole_starting_at(k, 1.0..=31.0)?;
        return month_date(
            tokens,
            i,
            day.end,
            month,
            day.value as u32,
            numbers,
            today,
            bias,
        );
    }
    // Day first, led by an article or not: "the 3rd of March", "el 3 de marzo", "3 March".
    let mut k = i;
    let led = match (norm(tokens, i), norm(tokens, i + 1)) {
        ("on", "the") => 2,
        ("the" | "el", "dia") => 2,
        ("the" | "el", _) => 1,
        _ => 0,
    };
    k += led;
    let day = numbers.whole_starting_at(k, 1.0..=31.0)?;
    // "at 7 October 22nd": the 7 is an hour.
    if led == 0 && k > 0 && tokens[k - 1].is_any(HOUR_LEADS) {
        return None;
    }
    let mut m = day.end;
    if tokens.get(m).is_some_and(|t| t.is_any(&["of", "de"])) {
        m += 1;
    }
    if let Some((len, month)) = MONTHS.longest_at(tokens, m) {
        return month_date(
            tokens,
            i,
            m + len,
            month,
            day.value as u32,
            numbers,
            today,
            bias,
        );
    }
    // A bare day of the month needs an article or an ordinal to be a date.
    let followed_by_unit = tokens.get(day.end).is_some_and(|t| {
        t.is_any(&[
            "por", "percent", "%", "people", "personas", "de", "of", "years", "anos",
        ])
    });
    // Unled ordinal words ("first", "a second") are too often not dates.
    if (led > 0 || (day.ordinal && day.digits)) && !followed_by_unit {
        let date = anchor_day(day.value as u32, today, bias)?;
        return Some(DateSpan {
            date,
            start: i,
            end: day.end,
            explicit: false,
        });
    }
    None
}

#[allow(clippy::too_many_arguments)]
fn month_date(
    tokens: &[Token],
    start: usize,
    end: usize,
    month: u32,
    day: u32,
    numbers: &Numbers,
    today: NaiveDate,
    bias: Bias,
) -> Option<DateSpan> {
    let mut k = end;
    if norm(tokens, k) == "," {
        k += 1;
    }
    if matches!(norm(tokens, k), "of" | "de" | "del") {
        k += 1;
    }
    let year = numbers
        .whole_starting_at(k, 1900.0..=2100.0)
        .map(|span| (span.value as i32, span.end))
        .or_else(|| {
            // "twenty twenty-six"
            let century = numbers.whole_starting_at(k, 19.0..=20.0)?;
            let rest = numbers.whole_starting_at(century.end, 10.0..=99.0)?;
            (!century.digits && !rest.digits)
                .then_some(((century.value * 100.0 + rest.value) as i32, rest.end))
        });
    let (date, end) = match year {
        Some((year, year_end)) => (NaiveDate::from_ymd_opt(year, month, day)?, year_end),
        None => (anchor_month_day(month, day, today, bias)?, end),
    };
    Some(DateSpan {
        date,
        start,
        end,
        explicit: true,
    })
}

/// The month and day in the year that puts it on the side of `today` that `bias` says.
fn anchor_month_day(month: u32, day: u32, today: NaiveDate, bias: Bias) -> Option<NaiveDate> {
    let this_year = NaiveDate::from_ymd_opt(today.year(), month, day);
    match (bias, this_year) {
        (Bias::Future, Some(date)) if date >= today => Some(date),
        (Bias::Future, _) => NaiveDate::from_ymd_opt(today.year() + 1, month, day),
        (Bias::Past, Some(date)) if date <= today => Some(date),
        (Bias::Past, _) => NaiveDate::from_ymd_opt(today.year() - 1, month, day),
    }
}

/// A day of the month in the nearest month on the side of `today` that `bias` says.
fn anchor_day(day: u32, today: NaiveDate, bias: Bias) -> Option<NaiveDate> {
    let first = today.with_day(1)?;
    for offset in 0..12 {
        let month_start = match bias {
            Bias::Future => first.checked_add_months(Months::new(offset))?,
            Bias::Past => first.checked_sub_months(Months::new(offset))?,
        };
        if let Some(date) = month_start.with_day(day) {
            let on_the_right_side = match bias {
                Bias::Future => date >= today,
                Bias::Past => date <= today,
            };
            if on_the_right_side {
                return Some(date);
            }
        }
    }
    None
}

/// Every clock time in `tokens`, left to right.
pub(crate) fn find_times(tokens: &[Token], numbers: &[NumberSpan]) -> Vec<TimeSpan> {
    let numbers = Numbers { spans: numbers };
    let mut found = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        match time_at(tokens, i, &numbers) {
            Some(span) => {
                i = span.end.max(i + 1);
                found.push(span);
            }
            None => i += 1,
        }
    }
    found
}

/// The time period ("in the afternoon", "de la noche") anywhere in `tokens`.
pub(crate) fn find_period(tokens: &[Token]) -> Option<Period> {
    PERIODS
        .find_all(tokens)
        .first()
        .map(|&(_, _, period)| period)
}

fn time_at(tokens: &[Token], i: usize, numbers: &Numbers) -> Option<TimeSpan> {
    let named = match (norm(tokens, i), norm(tokens, i + 1)) {
        ("noon" | "midday" | "mediodia", _) => Some((12, 1)),
        ("medio", "dia") => Some((12, 2)),
        ("midnight" | "medianoche", _) => Some((0, 1)),
        _ => None,
    };
    if let Some((hour, len)) = named {
        return Some(TimeSpan {
            hour,
            minute: 0,
            period: Some(Period::Afternoon),
            start: i,
            end: i + len,
            explicit: true,
        });
    }

    // "half past two", "quarter to five", "ten past three".
    let minutes_before = match norm(tokens, i) {
        "half" => Some((30, i + 1)),
        "quarter" => Some((15, i + 1)),
        _ => numbers
            .whole_starting_at(i, 1.0..=59.0)
            .filter(|span| !span.digits || norm(tokens, span.end) == "past")
            .map(|span| (span.value as u32, span.end)),
    };
    if let Some((minutes, k)) = minutes_before {
        let k = if matches!(norm(tokens, k), "minutes" | "minute") {
            k + 1
        } else {
            k
        };
        let direction = norm(tokens, k);
        let to = matches!(direction, "to" | "till" | "before") && norm(tokens, i) == "quarter";
        if (direction == "past" || direction == "after" && norm(tokens, i) != "half" || to)
            && let Some(hour) = numbers.whole_starting_at(k + 1, 1.0..=12.0)
        {
            let (hour, minute) = if to {
                (previous_hour(hour.value as u32), 60 - minutes)
            } else {
                (hour.value as u32, minutes)
            };
            return Some(with_period(
                tokens,
                TimeSpan {
                    hour,
                    minute,
                    period: None,
                    start: i,
                    end: hour_end(tokens, k + 1, numbers),
                    explicit: true,
                },
            ));
        }
    }

    let led = i > 0 && tokens[i - 1].is_any(HOUR_LEADS);
    // "3:30": clock times are not numbers, so read the digits here.
    if tokens[i].is_digits()
        && norm(tokens, i + 1) == ":"
        && let Some(minutes) = tokens.get(i + 2)
        && minutes.is_digits()
        && minutes.norm.len() == 2
        && tokens[i + 1].start == tokens[i].end
    {
        let hour: u32 = tokens[i].norm.parse().ok().filter(|h| *h <= 24)?;
        let minute: u32 = minutes.norm.parse().ok().filter(|m| *m < 60)?;
        return Some(with_period(
            tokens,
            TimeSpan {
                hour: hour % 24,
                minute,
                period: None,
                start: if led { i - 1 } else { i },
                end: i + 3,
                explicit: true,
            },
        ));
    }

    let hour = numbers
        .starting_at(i)
        .filter(|span| (0.0..=24.0).contains(&span.value) && !span.ordinal)?;
    // A lone "one"/"una" is an hour only when something marks it as one.
    let marked = led
        || PERIODS.longest_at(tokens, hour.end).is_some()
        || norm(tokens, hour.end) == "o'clock";
    if hour.weak && !marked && !tokens[i].is("una") {
        return None;
    }
    // "diez y media" reads as the number 10.5: the hour and a half.
    // ("media" agrees with "hora"; "dos y medio" is a quantity).
    let half_past = hour.value.fract() == 0.5
        && norm(tokens, hour.end - 1) == "media"
        && norm(tokens, hour.end - 2) == "y";
    if hour.value.fract() != 0.0 && !half_past {
        return None;
    }
    let mut end = hour.end;
    let mut minute = if half_past { 30 } else { 0 };
    let mut explicit = led;
    let mut hour_value = hour.value as u32;

    if !half_past {
        match (norm(tokens, end), norm(tokens, end + 1)) {
            ("y", "media") => {
                minute = 30;
                end += 2;
                explicit = true;
            }
            ("y", "cuarto") => {
                minute = 15;
                end += 2;
                explicit = true;
            }
            ("menos", "cuarto") => {
                minute = 45;
                hour_value = previous_hour(hour_value);
                end += 2;
                explicit = true;
            }
            ("en", "punto") | ("o'clock", _) => {
                end += if tokens[end].is("en") { 2 } else { 1 };
                explicit = true;
            }
            ("y" | "menos", _) => {
                if let Some(minutes) = numbers.whole_starting_at(end + 1, 1.0..=59.0) {
                    if tokens[end].is("menos") {
                        hour_value = previous_hour(hour_value);
                        minute = 60 - minutes.value as u32;
                    } else {
                        minute = minutes.value as u32;
                    }
                    end = minutes.end;
                    explicit = true;
                }
            }
            _ => {
                // "three thirty", "seven fifteen", "four oh five"
                let oh = norm(tokens, end) == "oh";
                let minute_start = if oh { end + 1 } else { end };
                if !hour.digits
                    && let Some(minutes) = numbers.whole_starting_at(minute_start, 1.0..=59.0)
                    && !minutes.digits
                    && (oh || minutes.value >= 10.0)
                {
                    minute = minutes.value as u32;
                    end = minutes.end;
                }
            }
        }
    }
    if matches!(norm(tokens, end), "horas" | "hrs" | "h" | "hours")
        && hour_value <= 24
        && (led || hour.digits)
    {
        end += 1;
        explicit = true;
    }
    let span = with_period(
        tokens,
        TimeSpan {
            hour: hour_value % 24,
            minute,
            period: None,
            start: if led { i - 1 } else { i },
            end,
            explicit,
        },
    );
    let bare_number = !span.explicit && span.period.is_none() && minute == 0;
    if bare_number || hour_value > 24 {
        return None;
    }
    Some(span)
}

/// The hour before `hour` on a clock face ("cinco menos cuarto" is 4:45).
fn previous_hour(hour: u32) -> u32 {
    match hour {
        0 => 23,
        1 => 12,
        h => h - 1,
    }
}

fn hour_end(tokens: &[Token], k: usize, numbers: &Numbers) -> usize {
    numbers
        .starting_at(k)
        .map_or(k + 1, |span| span.end)
        .min(tokens.len())
}

/// Attaches an am/pm or "in the afternoon" that directly follows the time.
fn with_period(tokens: &[Token], mut span: TimeSpan) -> TimeSpan {
    if let Some((len, period)) = PERIODS.longest_at(tokens, span.end) {
        span.period = Some(period);
        span.end += len;
        span.explicit = true;
    }
    span
}

#[cfg(test)]
mod tests {
    use super::super::numbers::find_numbers;
    use super::super::text::tokenize;
    use super::*;

    // A Wednesday.
    const TODAY: (i32, u32, u32) = (2026, 3, 11);

    fn today() -> NaiveDate {
        NaiveDate::from_ymd_opt(TODAY.0, TODAY.1, TODAY.2).unwrap()
    }

    fn date(text: &str, language: Language, bias: Bias) -> Option<String> {
        let tokens = tokenize(text);
        let numbers = find_numbers(&tokens, language);
        find_dates(&tokens, &numbers, language, today(), bias)
            .first()
            .map(|span| span.date.to_string())
    }

    fn time(text: &str, language: Language) -> Option<String> {
        let tokens = tokenize(text);
        let numbers = find_numbers(&tokens, language);
        let period = find_period(&tokens);
        find_times(&tokens, &numbers)
            .first()
            .and_then(|span| span.resolve(period))
            .map(|t| t.format("%H:%M").to_string())
    }

    #[test]
    fn resolves_english_dates() {
        let cases = [
            ("tomorrow", "2026-03-12"),
            ("the day after tomorrow", "2026-03-13"),
            ("next Tuesday", "2026-03-17"),
            ("next Monday", "2026-03-16"),
            ("on Friday", "2026-03-13"),
            ("this Wednesday", "2026-03-11"),
            ("Wednesday", "2026-03-18"),
            ("March 3rd", "2027-03-03"),
            ("April 3rd, 2026", "2026-04-03"),
            ("the 3rd of April", "2026-04-03"),
            ("the 15th", "2026-03-15"),
            ("the 5th", "2026-04-05"),
            ("3/14/2026", "2026-03-14"),
            ("14/3/2026", "2026-03-14"),
            ("2026-05-01", "2026-05-01"),
            ("in two weeks", "2026-03-25"),
            ("in 3 days", "2026-03-14"),
            ("April first", "2026-04-01"),
            ("May twenty-first twenty twenty-six", "2026-05-21"),
            ("Friday the 20th", "2026-03-20"),
        ];
        for (text, expected) in cases {
            assert_eq!(
                date(text, Language::En, Bias::Future).as_deref(),
                Some(expected),
                "{text}"
            );
        }
        assert_eq!(
            date("last Friday", Language::En, Bias::Future).as_deref(),
            Some("2026-03-06")
        );
        assert_eq!(
            date("on Monday", Language::En, Bias::Past).as_deref(),
            Some("2026-03-09")
        );
        assert_eq!(
            date("March 3rd", Language::En, Bias::Past).as_deref(),
            Some("2026-03-03")
        );
        assert_eq!(date("five people", Language::En, Bias::Future), None);
        assert_eq!(date("may I ask", Language::En, Bias::Future), None);
    }

    #[test]
    fn resolves_spanish_dates() {
        let cases = [
            ("mañana", "2026-03-12"),
            ("pasado mañana", "2026-03-13"),
            ("el próximo martes", "2026-03-17"),
            ("el lunes que viene", "2026-03-16"),
            ("el martes", "2026-03-17"),
            ("el 3 de marzo", "2027-03-03"),
            ("el tres de abril de 2026", "2026-04-03"),
            ("el primero de abril", "2026-04-01"),
            ("el quince", "2026-03-15"),
            ("el día 20", "2026-03-20"),
            ("14/3/2026", "2026-03-14"),
            ("dentro de una semana", "2026-03-18"),
            ("el viernes 20", "2026-03-20"),
        ];
        for (text, expected) in cases {
            assert_eq!(
                date(text, Language::Es, Bias::Future).as_deref(),
                Some(expected),
                "{text}"
            );
        }
        assert_eq!(date("de la mañana", Language::Es, Bias::Future), None);
    }

    #[test]
    fn resolves_times() {
        let cases = [
            ("at 3 pm", Language::En, "15:00"),
            ("3:30", Language::En, "15:30"),
            ("at 10:15 in the morning", Language::En, "10:15"),
            ("half past two", Language::En, "14:30"),
            ("quarter to five", Language::En, "16:45"),
            ("at noon", Language::En, "12:00"),
            ("seven in the evening", Language::En, "19:00"),
            ("at 9", Language::En, "09:00"),
            ("three thirty pm", Language::En, "15:30"),
            ("a las tres de la tarde", Language::Es, "15:00"),
            ("a las tres y media", Language::Es, "15:30"),
            ("a las cinco menos cuarto", Language::Es, "16:45"),
            ("a la una", Language::Es, "13:00"),
            ("a las diez de la noche", Language::Es, "22:00"),
            ("a las 9 de la mañana", Language::Es, "09:00"),
            ("al mediodía", Language::Es, "12:00"),
            ("a las 15 horas", Language::Es, "15:00"),
            ("tomorrow afternoon at 4", Language::En, "16:00"),
        ];
        for (text, language, expected) in cases {
            assert_eq!(time(text, language).as_deref(), Some(expected), "{text}");
        }
        assert_eq!(time("five people", Language::En), None);
        assert_eq!(time("I have 3 kids", Language::En), None);
    }
}
