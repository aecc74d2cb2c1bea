//! Parsing amounts typed by operators, without floats.

/// `10`, `10.5`, `10.50` (dollars) or `1234mc` (milli-cents) → milli-cents.
pub fn parse_amount(raw: &str) -> anyhow::Result<i64> {
    let raw = raw.trim().trim_start_matches('$');
    let amount = if let Some(milli) = raw.strip_suffix("mc") {
        milli.parse::<i64>().ok()
    } else {
        let (dollars, cents) = raw.split_once('.').unwrap_or((raw, ""));
        let valid = !dollars.is_empty()
            && dollars.bytes().all(|b| b.is_ascii_digit())
            && cents.len() <= 2
            && cents.bytes().all(|b| b.is_ascii_digit());
        if valid {
            let cents = format!("{cents:0<2}").parse::<i64>().unwrap_or(0);
            dollars
                .parse::<i64>()
                .ok()
                .and_then(|d| d.checked_mul(ringer::money::MILLI_CENTS_PER_DOLLAR))
                .and_then(|d| d.checked_add(cents * 1000))
        } else {
            None
        }
    };
    match amount {
        Some(amount) if amount > 0 => Ok(amount),
        _ => anyhow::bail!(
            "amount must be positive dollars like 10 or 10.50, or milli-cents like 5000mc; got {raw:?}"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_amount;

    #[test]
    fn parses_dollars_and_milli_cents() {
        assert_eq!(parse_amount("10").unwrap(), 1_000_000);
        assert_eq!(parse_amount("$1.5").unwrap(), 150_000);
        assert_eq!(parse_amount("1.88").unwrap(), 188_000);
        assert_eq!(parse_amount("5000mc").unwrap(), 5000);
        for bad in ["", "-1", "1.234", "abc", "0", "1e3", "0mc"] {
            assert!(parse_amount(bad).is_err(), "{bad}");
        }
    }
}
