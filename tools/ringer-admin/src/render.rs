//! Printing reports: JSON (one document) with `--json`, aligned text otherwise.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use ringer_admin::calls::StuckCall;
use ringer_admin::dlq::{DeadLetter, DeadLetterQueue, DlqSummary, ReplayReport, ShowReport};
use ringer_admin::outbox::OutboxStatus;
use ringer_admin::table::{format_age, render};
use serde::Serialize;

fn json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(value)?);
    Ok(())
}

fn or_dash(value: Option<impl ToString>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

fn when(at: Option<DateTime<Utc>>) -> String {
    match at {
        Some(at) => format!(
            "{} ago ({})",
            format_age((Utc::now() - at).num_milliseconds() as f64 / 1000.0),
            at.format("%Y-%m-%d %H:%M:%SZ")
        ),
        None => "-".to_owned(),
    }
}

pub fn dlq_list(as_json: bool, summaries: &[DlqSummary]) -> anyhow::Result<()> {
    if as_json {
        return json(&summaries);
    }
    let rows: Vec<Vec<String>> = summaries
        .iter()
        .map(|s| {
            vec![
                s.queue.clone(),
                s.depth.to_string(),
                s.oldest_age_seconds.map_or("-".to_owned(), format_age),
                s.oldest_dead_lettered_at
                    .map_or("-".to_owned(), |at| at.to_rfc3339()),
            ]
        })
        .collect();
    print!(
        "{}",
        render(
            &["QUEUE", "DEPTH", "OLDEST AGE", "OLDEST DEAD-LETTERED AT"],
            &rows
        )
    );
    Ok(())
}

pub fn dlq_show(as_json: bool, report: &ShowReport) -> anyhow::Result<()> {
    if as_json {
        return json(report);
    }
    let mut out = String::new();
    writeln!(
        out,
        "{}: {} message(s), showing {} (work queue {})",
        report.queue,
        report.depth,
        report.messages.len(),
        report.work_queue
    )?;
    if report.moved_to_tail > 0 {
        writeln!(
            out,
            "({} message(s) read {} times or more were re-enqueued at the tail, counts reset)",
            report.moved_to_tail,
            ringer_admin::dlq::REFRESH_AFTER_READS
        )?;
    }
    if let Some(error) = &report.call_lookup_error {
        writeln!(out, "(call statuses unavailable: {error})")?;
    }
    for message in &report.messages {
        out.push('\n');
        describe(&mut out, message)?;
    }
    print!("{out}");
    Ok(())
}

fn describe(out: &mut String, m: &DeadLetter) -> anyhow::Result<()> {
    writeln!(
        out,
        "#{}  message id {}",
        m.position,
        or_dash(m.message_id.as_ref())
    )?;
    match &m.original_queue {
        Some(queue) => writeln!(
            out,
            "  reason:         {} in {queue}",
            or_dash(m.reason.as_ref())
        )?,
        None => writeln!(out, "  reason:         {}", or_dash(m.reason.as_ref()))?,
    }
    writeln!(out, "  dead-lettered:  {}", when(m.dead_lettered_at))?;
    writeln!(
        out,
        "  first death:    {} in {}",
        or_dash(m.first_death_reason.as_ref()),
        or_dash(m.first_death_queue.as_ref())
    )?;
    writeln!(
        out,
        "  published to:   exchange {} with routing key {}",
        or_dash(m.original_exchange.as_ref()),
        if m.original_routing_keys.is_empty() {
            "-".to_owned()
        } else {
            m.original_routing_keys.join(", ")
        }
    )?;
    writeln!(
        out,
        "  attempts:       {} (dead-lettered {} time(s) from that queue; read {} time(s) from the DLQ)",
        m.attempts
            .map_or_else(|| "unknown".to_owned(), |n| n.to_string()),
        m.death_count,
        m.dlq_delivery_count.unwrap_or(0)
    )?;
    match (&m.call_id, &m.call) {
        (Some(_), Some(call)) => writeln!(
            out,
            "  call:           {} status {} (org {}, updated {}{})",
            call.id,
            call.status,
            call.org_id,
            call.updated_at.to_rfc3339(),
            if call.completed_at.is_some() {
                ", completed"
            } else {
                ""
            }
        )?,
        (Some(id), None) => writeln!(out, "  call:           {id} (not found in the database)")?,
        (None, _) => {}
    }
    if !m.deaths.is_empty() {
        writeln!(out, "  x-death:")?;
        let rows: Vec<Vec<String>> = m
            .deaths
            .iter()
            .map(|d| {
                vec![
                    d.queue.clone(),
                    d.reason.clone(),
                    d.count.to_string(),
                    d.exchange.clone(),
                    d.routing_keys.join(","),
                    or_dash(d.time.map(|t| t.to_rfc3339())),
                ]
            })
            .collect();
        for line in render(
            &[
                "QUEUE",
                "REASON",
                "COUNT",
                "EXCHANGE",
                "ROUTING KEYS",
                "TIME",
            ],
            &rows,
        )
        .lines()
        {
            writeln!(out, "    {line}")?;
        }
    }
    if let Some(headers) = m.headers.as_object() {
        let others: Vec<_> = headers.iter().filter(|(k, _)| *k != "x-death").collect();
        if !others.is_empty() {
            writeln!(out, "  headers:")?;
            for (key, value) in others {
                let value = value
                    .as_str()
                    .map_or_else(|| value.to_string(), ToOwned::to_owned);
                writeln!(out, "    {key}: {value}")?;
            }
        }
    }
    writeln!(out, "  payload ({} bytes):", m.payload_bytes)?;
    let payload = match &m.payload {
        serde_json::Value::String(text) => text.clone(),
        value => serde_json::to_string_pretty(value)?,
    };
    for line in payload.lines() {
        writeln!(out, "    {line}")?;
    }
    Ok(())
}

pub fn dlq_replay(as_json: bool, report: &ReplayReport) -> anyhow::Result<()> {
    if as_json {
        return json(report);
    }
    let verb = if report.dry_run {
        "would replay"
    } else {
        "replayed"
    };
    println!(
        "{verb} {} message(s) from {} to {}",
        report.replayed.len(),
        report.queue,
        report.work_queue
    );
    if !report.replayed.is_empty() {
        let rows: Vec<Vec<String>> = report
            .replayed
            .iter()
            .map(|r| {
                vec![
                    or_dash(r.message_id.as_ref()),
                    or_dash(r.call_id),
                    or_dash(r.reason.as_ref()),
                    r.outcome.to_owned(),
                ]
            })
            .collect();
        print!(
            "{}",
            render(&["MESSAGE ID", "CALL", "REASON", "OUTCOME"], &rows)
        );
    }
    for skipped in &report.skipped {
        println!(
            "left in place: {} ({})",
            or_dash(skipped.message_id.as_ref()),
            skipped.reason
        );
    }
    Ok(())
}

pub fn dlq_purge(as_json: bool, queue: &DeadLetterQueue, purged: u32) -> anyhow::Result<()> {
    if as_json {
        return json(&serde_json::json!({"queue": queue.dlq, "purged": purged}));
    }
    println!("purged {purged} message(s) from {}", queue.dlq);
    Ok(())
}

pub fn outbox_status(as_json: bool, status: &OutboxStatus) -> anyhow::Result<()> {
    if as_json {
        return json(status);
    }
    let oldest = if status.unpublished == 0 {
        "-".to_owned()
    } else {
        format_age(status.oldest_age_seconds)
    };
    print!(
        "{}",
        render(
            &["UNPUBLISHED", "OLDEST AGE"],
            &[vec![status.unpublished.to_string(), oldest]]
        )
    );
    Ok(())
}

pub fn stuck_calls(as_json: bool, calls: &[StuckCall]) -> anyhow::Result<()> {
    if as_json {
        return json(&calls);
    }
    if calls.is_empty() {
        println!("no stuck calls");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = calls
        .iter()
        .map(|c| {
            vec![
                c.id.to_string(),
                c.org_id.to_string(),
                c.status.clone(),
                format_age(c.age_seconds),
                c.reason.clone(),
            ]
        })
        .collect();
    print!(
        "{}",
        render(&["CALL", "ORG", "STATUS", "AGE", "REASON"], &rows)
    );
    Ok(())
}
