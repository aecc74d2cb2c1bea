//! Money: integer milli-cents (1/1000 of a US cent) everywhere, never floats.

/// Milli-cents in one US dollar.
pub const MILLI_CENTS_PER_DOLLAR: i64 = 100_000;

/// The hold taken for a call: its maximum duration at the per-minute rate, rounded up.
pub fn hold_for(max_duration_seconds: i32, rate_per_minute_milli_cents: i64) -> i64 {
    charge_for(max_duration_seconds, rate_per_minute_milli_cents)
}

/// `ceil(seconds × rate / 60)`.
pub fn charge_for(seconds: i32, rate_per_minute_milli_cents: i64) -> i64 {
    let seconds = u64::from(seconds.max(0).unsigned_abs());
    let rate = rate_per_minute_milli_cents.max(0).unsigned_abs();
    i64::try_from((seconds * rate).div_ceil(60)).unwrap_or(i64::MAX)
}

/// `$1.88`-style rendering of an amount owed or to add, rounded up to the
/// cent, so "add $X" never understates what is needed.
pub fn format_dollars(milli_cents: i64) -> String {
    render_cents(milli_cents, milli_cents.unsigned_abs().div_ceil(1000))
}

/// `$1.88`-style rendering of money someone has, rounded down to the cent, so
/// a balance is never overstated.
pub fn format_dollars_down(milli_cents: i64) -> String {
    render_cents(milli_cents, milli_cents.unsigned_abs() / 1000)
}

fn render_cents(milli_cents: i64, cents: u64) -> String {
    let sign = if milli_cents < 0 && cents > 0 {
        "-"
    } else {
        ""
    };
    format!("{sign}${}.{:02}", cents / 100, cents % 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_round_up_to_the_milli_cent() {
        assert_eq!(charge_for(60, 5000), 5000);
        assert_eq!(charge_for(1, 5000), 84);
        assert_eq!(charge_for(0, 5000), 0);
        assert_eq!(charge_for(61, 5000), 5084);
        assert_eq!(hold_for(3600, 5000), 300_000);
    }

    #[test]
    fn dollars_render_with_two_decimals() {
        assert_eq!(format_dollars(188_000), "$1.88");
        assert_eq!(format_dollars(300_000), "$3.00");
        assert_eq!(format_dollars(112_001), "$1.13");
        assert_eq!(format_dollars(0), "$0.00");
        assert_eq!(format_dollars(-5_000), "-$0.05");
        assert_eq!(format_dollars_down(994_916), "$9.94");
        assert_eq!(format_dollars(994_916), "$9.95");
        assert_eq!(format_dollars_down(999), "$0.00");
    }
}
