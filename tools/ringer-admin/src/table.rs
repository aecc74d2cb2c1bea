//! Plain aligned tables and human durations for terminal output.

/// Renders `rows` under `header`, each column as wide as its widest cell,
/// separated by two spaces; the last column is not padded.
pub fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (index, cell) in row.iter().enumerate() {
            if index < widths.len() {
                widths[index] = widths[index].max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let header_row: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header_row).chain(rows) {
        let last = row.len().saturating_sub(1);
        let mut line = String::new();
        for (index, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if index < last {
                let width = widths.get(index).copied().unwrap_or(0);
                line.push_str(&" ".repeat(width.saturating_sub(cell.chars().count()) + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `42s`, `3m12s`, `2h05m`, `3d04h`.
pub fn format_age(seconds: f64) -> String {
    if !seconds.is_finite() || seconds < 0.0 {
        return "-".to_owned();
    }
    let total = seconds.round() as u64;
    let (days, hours, minutes, secs) = (
        total / 86_400,
        total % 86_400 / 3600,
        total % 3600 / 60,
        total % 60,
    );
    if days > 0 {
        format!("{days}d{hours:02}h")
    } else if hours > 0 {
        format!("{hours}h{minutes:02}m")
    } else if minutes > 0 {
        format!("{minutes}m{secs:02}s")
    } else {
        format!("{secs}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_on_the_widest_cell() {
        let text = render(
            &["QUEUE", "DEPTH", "AGE"],
            &[
                vec!["dialer.dlq".into(), "3".into(), "1m".into()],
                vec!["webhooks.deliveries.dlq".into(), "120".into(), "-".into()],
            ],
        );
        assert_eq!(
            text,
            "QUEUE                    DEPTH  AGE\n\
             dialer.dlq               3      1m\n\
             webhooks.deliveries.dlq  120    -\n"
        );
    }

    #[test]
    fn ages_read_like_people_say_them() {
        assert_eq!(format_age(0.4), "0s");
        assert_eq!(format_age(59.0), "59s");
        assert_eq!(format_age(192.0), "3m12s");
        assert_eq!(format_age(7500.0), "2h05m");
        assert_eq!(format_age(273_600.0), "3d04h");
        assert_eq!(format_age(-1.0), "-");
    }
}
