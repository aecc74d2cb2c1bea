//! `ledger ORG`: an org's ledger entries, its balance, and the invariant check
//! (balances against the sum of the entries, per org, per bucket and per call)
//! with any drift. Exits non-zero when something drifted.

use chrono::{DateTime, Utc};
use ringer::ledger::{BucketDrift, CallDrift, Drift};
use ringer::money::format_dollars;
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::table::render;

/// Entries shown, newest first.
pub const SHOWN_ENTRIES: i64 = 200;

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Entry {
    pub id: i64,
    pub created_at: DateTime<Utc>,
    pub kind: String,
    pub from_account: String,
    pub to_account: String,
    pub amount_milli_cents: i64,
    pub bucket: i16,
    pub call_id: Option<Uuid>,
    pub description: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct OrgDrift {
    pub balance_available: i64,
    pub ledger_available: i64,
    pub balance_reserved: i64,
    pub ledger_reserved: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BucketReserved {
    pub bucket: i16,
    pub balance_reserved: i64,
    pub ledger_reserved: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CallMismatch {
    pub call_id: Uuid,
    pub reservation_status: String,
    pub hold_milli_cents: i64,
    pub billing_amount_milli_cents: Option<i64>,
    pub ledger_hold: i64,
    pub ledger_charge: i64,
    pub ledger_release: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct LedgerReport {
    pub org_id: Uuid,
    pub available_milli_cents: i64,
    pub reserved_milli_cents: i64,
    pub entry_count: i64,
    /// The newest entries, at most [`SHOWN_ENTRIES`].
    pub entries: Vec<Entry>,
    pub consistent: bool,
    pub drift: Option<OrgDrift>,
    pub bucket_drift: Vec<BucketReserved>,
    pub call_drift: Vec<CallMismatch>,
}

/// Reads the org's ledger and checks it. Errors when the org does not exist.
pub async fn report(pool: &PgPool, org: Uuid, limit: i64) -> anyhow::Result<LedgerReport> {
    let mut conn = pool.acquire().await?;
    let exists: Option<(Uuid,)> = sqlx::query_as("SELECT id FROM orgs WHERE id = $1")
        .bind(org)
        .fetch_optional(&mut *conn)
        .await?;
    anyhow::ensure!(exists.is_some(), "no organisation {org}");
    let balance = ringer::ledger::balance(&mut conn, org).await?;
    let entry_count: i64 =
        sqlx::query_scalar("SELECT count(*) FROM ledger_entries WHERE org_id = $1")
            .bind(org)
            .fetch_one(&mut *conn)
            .await?;
    let entries: Vec<Entry> = sqlx::query_as(
        "SELECT id, created_at, kind, from_account, to_account, amount_milli_cents, bucket, call_id, description \
         FROM ledger_entries WHERE org_id = $1 ORDER BY id DESC LIMIT $2",
    )
    .bind(org)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    let drift = ringer::ledger::check_invariant(&mut conn, Some(org))
        .await?
        .into_iter()
        .next()
        .map(
            |Drift {
                 balance_available,
                 ledger_available,
                 balance_reserved,
                 ledger_reserved,
                 ..
             }| OrgDrift {
                balance_available,
                ledger_available,
                balance_reserved,
                ledger_reserved,
            },
        );
    let bucket_drift: Vec<BucketReserved> = ringer::ledger::check_buckets(&mut conn, Some(org))
        .await?
        .into_iter()
        .map(
            |BucketDrift {
                 bucket,
                 balance_reserved,
                 ledger_reserved,
                 ..
             }| BucketReserved {
                bucket,
                balance_reserved,
                ledger_reserved,
            },
        )
        .collect();
    let call_drift: Vec<CallMismatch> = ringer::ledger::check_calls(&mut conn, Some(org))
        .await?
        .into_iter()
        .map(|drift: CallDrift| CallMismatch {
            call_id: drift.call_id,
            reservation_status: drift.reservation_status,
            hold_milli_cents: drift.hold_milli_cents,
            billing_amount_milli_cents: drift.billing_amount_milli_cents,
            ledger_hold: drift.ledger_hold,
            ledger_charge: drift.ledger_charge,
            ledger_release: drift.ledger_release,
        })
        .collect();
    Ok(LedgerReport {
        org_id: org,
        available_milli_cents: balance.available_milli_cents,
        reserved_milli_cents: balance.reserved_milli_cents,
        entry_count,
        entries,
        consistent: drift.is_none() && bucket_drift.is_empty() && call_drift.is_empty(),
        drift,
        bucket_drift,
        call_drift,
    })
}

/// Text rendering of a report.
pub fn render_report(report: &LedgerReport) -> String {
    let mut out = format!(
        "org {}: available {} ({} mc), reserved {} ({} mc)\n\n",
        report.org_id,
        format_dollars(report.available_milli_cents),
        report.available_milli_cents,
        format_dollars(report.reserved_milli_cents),
        report.reserved_milli_cents,
    );
    let rows: Vec<Vec<String>> = report
        .entries
        .iter()
        .map(|entry| {
            vec![
                entry.id.to_string(),
                entry.created_at.format("%Y-%m-%d %H:%M:%SZ").to_string(),
                entry.kind.clone(),
                format!("{} -> {}", entry.from_account, entry.to_account),
                entry.amount_milli_cents.to_string(),
                entry.bucket.to_string(),
                entry
                    .call_id
                    .map_or_else(|| "-".to_owned(), |id| id.to_string()),
                entry.description.clone(),
            ]
        })
        .collect();
    out.push_str(&render(
        &[
            "ID",
            "CREATED",
            "KIND",
            "ACCOUNTS",
            "AMOUNT (MC)",
            "BUCKET",
            "CALL",
            "DESCRIPTION",
        ],
        &rows,
    ));
    if report.entry_count > report.entries.len() as i64 {
        out.push_str(&format!(
            "(the newest {} of {} entries)\n",
            report.entries.len(),
            report.entry_count
        ));
    }
    out.push('\n');
    if report.consistent {
        out.push_str(
            "invariant: ok (balances equal the sum of the entries, per org, bucket and call)\n",
        );
        return out;
    }
    out.push_str("invariant: DRIFT\n");
    if let Some(drift) = &report.drift {
        out.push_str(&format!(
            "  available: balances {} mc, entries {} mc (drift {} mc)\n  reserved: balances {} mc, entries {} mc (drift {} mc)\n",
            drift.balance_available,
            drift.ledger_available,
            drift.balance_available - drift.ledger_available,
            drift.balance_reserved,
            drift.ledger_reserved,
            drift.balance_reserved - drift.ledger_reserved,
        ));
    }
    for bucket in &report.bucket_drift {
        out.push_str(&format!(
            "  bucket {} reserved: balance {} mc, entries {} mc (drift {} mc)\n",
            bucket.bucket,
            bucket.balance_reserved,
            bucket.ledger_reserved,
            bucket.balance_reserved - bucket.ledger_reserved,
        ));
    }
    for call in &report.call_drift {
        out.push_str(&format!(
            "  call {} ({}): hold {} mc on the call, entries hold {} charge {} release {} mc, billed {}\n",
            call.call_id,
            call.reservation_status,
            call.hold_milli_cents,
            call.ledger_hold,
            call.ledger_charge,
            call.ledger_release,
            call.billing_amount_milli_cents
                .map_or_else(|| "-".to_owned(), |amount| format!("{amount} mc")),
        ));
    }
    out
}

/// `ringer-admin ledger ORG`: prints the report (JSON with `json`) and fails
/// when the ledger drifted.
pub async fn run(pool: &PgPool, org: Uuid, json: bool) -> anyhow::Result<()> {
    let report = report(pool, org, SHOWN_ENTRIES).await?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", render_report(&report));
    }
    anyhow::ensure!(
        report.consistent,
        "the ledger of org {org} drifted from its balances"
    );
    Ok(())
}
