//! Organisations, API keys, phone numbers and webhook secrets: what the api,
//! `ringer-admin` and tests create.

use base64::Engine;
use rand::RngExt;
use sha2::{Digest, Sha256};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::ledger;

/// Characters of a key kept in clear to tell keys apart (`sk_` + 8).
pub const API_KEY_PREFIX_LEN: usize = 11;

/// `whsec_` + base64 of 32 random bytes.
pub fn generate_webhook_secret() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// `sk_` + 40 random hex characters.
pub fn generate_api_key() -> String {
    let bytes: [u8; 20] = rand::rng().random();
    format!("sk_{}", hex::encode(bytes))
}

pub fn hash_api_key(key: &str) -> Vec<u8> {
    Sha256::digest(key.as_bytes()).to_vec()
}

#[derive(Debug, Clone)]
pub struct NewOrg {
    pub id: Uuid,
    pub name: String,
}

/// Creates an org with `starting_credit_milli_cents` on its balance.
pub async fn create_org(
    conn: &mut PgConnection,
    name: &str,
    starting_credit_milli_cents: i64,
) -> sqlx::Result<NewOrg> {
    let id = Uuid::now_v7();
    sqlx::query("INSERT INTO orgs (id, name, webhook_secret) VALUES ($1, $2, $3)")
        .bind(id)
        .bind(name)
        .bind(generate_webhook_secret())
        .execute(&mut *conn)
        .await?;
    sqlx::query("INSERT INTO balances (org_id, bucket) VALUES ($1, 0)")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    ledger::credit(conn, id, starting_credit_milli_cents, "starting credit").await?;
    Ok(NewOrg {
        id,
        name: name.to_owned(),
    })
}

#[derive(Debug, Clone)]
pub struct NewApiKey {
    pub id: Uuid,
    /// The whole key: shown once, never stored.
    pub key: String,
    pub prefix: String,
}

pub async fn create_api_key(
    conn: &mut PgConnection,
    org_id: Uuid,
    name: &str,
) -> sqlx::Result<NewApiKey> {
    let id = Uuid::now_v7();
    let key = generate_api_key();
    let prefix = key[..API_KEY_PREFIX_LEN].to_owned();
    sqlx::query(
        "INSERT INTO api_keys (id, org_id, name, prefix, key_hash) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(id)
    .bind(org_id)
    .bind(name)
    .bind(&prefix)
    .bind(hash_api_key(&key))
    .execute(conn)
    .await?;
    Ok(NewApiKey { id, key, prefix })
}

/// Revokes a key by id or by its visible prefix; returns how many keys it revoked.
pub async fn revoke_api_key(conn: &mut PgConnection, id_or_prefix: &str) -> sqlx::Result<u64> {
    let id = Uuid::parse_str(id_or_prefix).ok();
    let result = sqlx::query(
        "UPDATE api_keys SET revoked_at = now() WHERE revoked_at IS NULL AND (id = $1 OR prefix = $2)",
    )
    .bind(id)
    .bind(id_or_prefix)
    .execute(conn)
    .await?;
    Ok(result.rows_affected())
}

/// The org owning an active (unrevoked) key.
pub async fn org_for_api_key(conn: &mut PgConnection, key: &str) -> sqlx::Result<Option<Uuid>> {
    let row: Option<(Uuid,)> =
        sqlx::query_as("SELECT org_id FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL")
            .bind(hash_api_key(key))
            .fetch_optional(conn)
            .await?;
    Ok(row.map(|(org_id,)| org_id))
}

/// A phone number owned by an org.
#[derive(
    Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, sqlx::FromRow, utoipa::ToSchema,
)]
pub struct PhoneNumber {
    pub id: Uuid,
    pub e164: String,
    pub friendly_name: String,
    pub country_code: String,
    pub number_type: String,
    /// `active` or `released`.
    pub status: String,
    pub monthly_cost_cents: i32,
    pub purchased_at: chrono::DateTime<chrono::Utc>,
}

pub const PHONE_NUMBER_COLUMNS: &str =
    "id, e164, friendly_name, country_code, number_type, status, monthly_cost_cents, purchased_at";

/// Gives an org a number it already has at the carrier (operators, tests).
/// Fails with the `phone_numbers_active_e164` constraint when another org holds it.
pub async fn add_number(
    conn: &mut PgConnection,
    org_id: Uuid,
    e164: &str,
    country_code: &str,
    number_type: &str,
    monthly_cost_cents: i32,
) -> sqlx::Result<PhoneNumber> {
    let number = NewNumber {
        e164,
        country_code,
        number_type,
        monthly_cost_cents,
        carrier: None,
        carrier_sid: None,
    };
    add_purchased_number(conn, org_id, &number).await
}

/// A number to record for an org.
#[derive(Debug, Clone, Copy)]
pub struct NewNumber<'a> {
    pub e164: &'a str,
    pub country_code: &'a str,
    pub number_type: &'a str,
    pub monthly_cost_cents: i32,
    /// The carrier ringer bought it from (`simulated`, `twilio`); none for numbers added by operators.
    pub carrier: Option<&'a str>,
    /// Its id at that carrier (Twilio's `PN…`), which releasing it needs.
    pub carrier_sid: Option<&'a str>,
}

/// Records a number bought for an org. Fails with the
/// `phone_numbers_active_e164` constraint when another org holds it.
pub async fn add_purchased_number(
    conn: &mut PgConnection,
    org_id: Uuid,
    number: &NewNumber<'_>,
) -> sqlx::Result<PhoneNumber> {
    sqlx::query_as(
        "INSERT INTO phone_numbers (id, org_id, e164, friendly_name, country_code, number_type, monthly_cost_cents, carrier, carrier_sid) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
         RETURNING id, e164, friendly_name, country_code, number_type, status, monthly_cost_cents, purchased_at",
    )
    .bind(Uuid::now_v7())
    .bind(org_id)
    .bind(number.e164)
    .bind(friendly_name(number.e164))
    .bind(number.country_code)
    .bind(number.number_type)
    .bind(number.monthly_cost_cents)
    .bind(number.carrier)
    .bind(number.carrier_sid)
    .fetch_one(conn)
    .await
}

/// `+14155550123` → `(415) 555-0123`; other countries keep E.164.
pub fn friendly_name(e164: &str) -> String {
    match e164.strip_prefix("+1") {
        Some(rest) if rest.len() == 10 => {
            format!("({}) {}-{}", &rest[..3], &rest[3..6], &rest[6..])
        }
        _ => e164.to_owned(),
    }
}

/// True for `+` followed by 7–15 digits, the first not 0 (E.164).
pub fn is_e164(number: &str) -> bool {
    let Some(digits) = number.strip_prefix('+') else {
        return false;
    };
    (7..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0')
}
