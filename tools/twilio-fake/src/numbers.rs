//! Twilio's phone-number resources, as far as ringer's api uses them:
//! `GET …/AvailablePhoneNumbers/{Country}/{Local|TollFree}.json` (`AreaCode`,
//! `Contains`, `PageSize`), and `IncomingPhoneNumbers` create (`PhoneNumber`,
//! `FriendlyName`), list (`PhoneNumber` filter) and delete. Every request needs
//! the account's HTTP Basic credentials.
//!
//! The stock: 50 numbers `+1 NPA 555-20NN` in each of a few US and Canadian
//! area codes, and 50 US toll-free ones in 833 and 844. A bought number leaves
//! the stock; a released one does not come back (Twilio ages released numbers
//! before selling them again).

use std::sync::{Arc, PoisonError};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::{FakeState, is_e164, param, parse_form, twilio_error, unauthorized};

const LOCAL_AREAS: [(&str, &str, &str, &str); 8] = [
    ("US", "212", "NY", "New York"),
    ("US", "312", "IL", "Chicago"),
    ("US", "415", "CA", "San Francisco"),
    ("US", "512", "TX", "Austin"),
    ("US", "617", "MA", "Boston"),
    ("US", "206", "WA", "Seattle"),
    ("CA", "416", "ON", "Toronto"),
    ("CA", "604", "BC", "Vancouver"),
];
const TOLL_FREE_AREAS: [&str; 2] = ["833", "844"];

/// A number for sale.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    pub phone_number: String,
    pub iso_country: String,
    pub region: Option<String>,
    pub locality: Option<String>,
    pub toll_free: bool,
}

/// A number the account holds (or held).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedNumber {
    pub sid: String,
    pub phone_number: String,
    pub friendly_name: String,
}

#[derive(Debug)]
pub(crate) struct NumberStock {
    available: Vec<Offer>,
    owned: Vec<OwnedNumber>,
    released: Vec<OwnedNumber>,
}

impl Default for NumberStock {
    fn default() -> Self {
        let mut available = Vec::new();
        for (country, area, region, locality) in LOCAL_AREAS {
            available.extend((0..50).map(|n| Offer {
                phone_number: format!("+1{area}55520{n:02}"),
                iso_country: country.to_owned(),
                region: Some(region.to_owned()),
                locality: Some(locality.to_owned()),
                toll_free: false,
            }));
        }
        for area in TOLL_FREE_AREAS {
            available.extend((0..50).map(|n| Offer {
                phone_number: format!("+1{area}55520{n:02}"),
                iso_country: "US".to_owned(),
                region: None,
                locality: None,
                toll_free: true,
            }));
        }
        Self {
            available,
            owned: Vec::new(),
            released: Vec::new(),
        }
    }
}

impl FakeState {
    fn stock(&self) -> std::sync::MutexGuard<'_, NumberStock> {
        self.numbers.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl crate::FakeTwilio {
    /// Numbers for sale in `country`, local or toll-free, in stock order.
    pub fn offers(&self, country: &str, toll_free: bool) -> Vec<Offer> {
        self.state
            .stock()
            .available
            .iter()
            .filter(|offer| offer.iso_country == country && offer.toll_free == toll_free)
            .cloned()
            .collect()
    }

    /// Takes `e164` off the market, as if another Twilio customer bought it.
    pub fn sell_elsewhere(&self, e164: &str) {
        self.state
            .stock()
            .available
            .retain(|offer| offer.phone_number != e164);
    }

    /// Numbers the account holds.
    pub fn owned_numbers(&self) -> Vec<OwnedNumber> {
        self.state.stock().owned.clone()
    }

    /// Numbers the account released.
    pub fn released_numbers(&self) -> Vec<OwnedNumber> {
        self.state.stock().released.clone()
    }
}

fn matches_pattern(number: &str, pattern: &str) -> bool {
    let digits: Vec<u8> = number.bytes().filter(u8::is_ascii_digit).collect();
    let pattern: Vec<u8> = pattern.bytes().filter(|b| *b != b'+').collect();
    !pattern.is_empty()
        && digits.windows(pattern.len()).any(|window| {
            window
                .iter()
                .zip(&pattern)
                .all(|(digit, wanted)| *wanted == b'*' || digit == wanted)
        })
}

fn incoming(number: &OwnedNumber, account: &str) -> Value {
    json!({
        "sid": number.sid, "account_sid": account, "phone_number": number.phone_number,
        "friendly_name": number.friendly_name, "status": "in-use", "origin": "twilio",
        "capabilities": {"voice": true, "sms": true, "mms": true, "fax": false},
        "api_version": "2010-04-01",
        "uri": format!("/2010-04-01/Accounts/{account}/IncomingPhoneNumbers/{}.json", number.sid),
    })
}

pub(crate) async fn available(
    State(state): State<Arc<FakeState>>,
    Path((account, country, file)): Path<(String, String, String)>,
    Query(query): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Response {
    if let Some(response) = unauthorized(&state, &account, &headers) {
        return response;
    }
    let toll_free = match file.as_str() {
        "Local.json" => false,
        "TollFree.json" => true,
        _ => return not_found(&account, &format!("AvailablePhoneNumbers/{country}/{file}")),
    };
    if !LOCAL_AREAS.iter().any(|(c, ..)| *c == country) {
        return not_found(&account, &format!("AvailablePhoneNumbers/{country}/{file}"));
    }
    let page_size = match param(&query, "PageSize").map(str::parse::<usize>) {
        None => 50,
        Some(Ok(size)) if (1..=1000).contains(&size) => size,
        Some(_) => {
            return twilio_error(
                StatusCode::BAD_REQUEST,
                20005,
                "PageSize must be between 1 and 1000".to_owned(),
            );
        }
    };
    let area_code = param(&query, "AreaCode");
    let contains = param(&query, "Contains");
    let found: Vec<Value> = state
        .stock()
        .available
        .iter()
        .filter(|offer| offer.iso_country == country && offer.toll_free == toll_free)
        .filter(|offer| area_code.is_none_or(|area| offer.phone_number[2..].starts_with(area)))
        .filter(|offer| {
            contains.is_none_or(|pattern| matches_pattern(&offer.phone_number, pattern))
        })
        .take(page_size)
        .map(|offer| {
            json!({
                "friendly_name": twilio_friendly_name(&offer.phone_number),
                "phone_number": offer.phone_number, "iso_country": offer.iso_country,
                "region": offer.region, "locality": offer.locality,
                "address_requirements": "none", "beta": false,
                "capabilities": {"voice": true, "SMS": true, "MMS": true},
            })
        })
        .collect();
    Json(json!({
        "available_phone_numbers": found,
        "uri": format!("/2010-04-01/Accounts/{account}/AvailablePhoneNumbers/{country}/{file}"),
    }))
    .into_response()
}

pub(crate) async fn buy(
    State(state): State<Arc<FakeState>>,
    Path(account): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(response) = unauthorized(&state, &account, &headers) {
        return response;
    }
    let form = parse_form(&body);
    let Some(phone_number) = param(&form, "PhoneNumber").map(str::to_owned) else {
        return twilio_error(
            StatusCode::BAD_REQUEST,
            21421,
            "A PhoneNumber is required.".to_owned(),
        );
    };
    if !is_e164(&phone_number) {
        return twilio_error(
            StatusCode::BAD_REQUEST,
            21421,
            format!("PhoneNumber {phone_number} is invalid."),
        );
    }
    let number = {
        let mut stock = state.stock();
        let Some(position) = stock
            .available
            .iter()
            .position(|offer| offer.phone_number == phone_number)
        else {
            drop(stock);
            return twilio_error(
                StatusCode::BAD_REQUEST,
                21422,
                format!("PhoneNumber {phone_number} is not available."),
            );
        };
        stock.available.remove(position);
        let number = OwnedNumber {
            sid: format!("PN{}", uuid::Uuid::new_v4().simple()),
            friendly_name: param(&form, "FriendlyName")
                .map_or_else(|| twilio_friendly_name(&phone_number), str::to_owned),
            phone_number,
        };
        stock.owned.push(number.clone());
        number
    };
    (StatusCode::CREATED, Json(incoming(&number, &account))).into_response()
}

pub(crate) async fn list_owned(
    State(state): State<Arc<FakeState>>,
    Path(account): Path<String>,
    Query(query): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Response {
    if let Some(response) = unauthorized(&state, &account, &headers) {
        return response;
    }
    let wanted = param(&query, "PhoneNumber");
    let numbers: Vec<Value> = state
        .stock()
        .owned
        .iter()
        .filter(|number| wanted.is_none_or(|wanted| number.phone_number.contains(wanted)))
        .map(|number| incoming(number, &account))
        .collect();
    Json(json!({
        "incoming_phone_numbers": numbers,
        "uri": format!("/2010-04-01/Accounts/{account}/IncomingPhoneNumbers.json"),
    }))
    .into_response()
}

pub(crate) async fn release(
    State(state): State<Arc<FakeState>>,
    Path((account, file)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Some(response) = unauthorized(&state, &account, &headers) {
        return response;
    }
    let sid = file.trim_end_matches(".json");
    let mut stock = state.stock();
    match stock.owned.iter().position(|number| number.sid == sid) {
        Some(position) => {
            let number = stock.owned.remove(position);
            stock.released.push(number);
            StatusCode::NO_CONTENT.into_response()
        }
        None => {
            drop(stock);
            not_found(&account, &format!("IncomingPhoneNumbers/{file}"))
        }
    }
}

fn not_found(account: &str, resource: &str) -> Response {
    twilio_error(
        StatusCode::NOT_FOUND,
        20404,
        format!("The requested resource /2010-04-01/Accounts/{account}/{resource} was not found"),
    )
}

/// `(415) 555-2001`, as Twilio formats US and Canadian numbers.
fn twilio_friendly_name(e164: &str) -> String {
    match e164.strip_prefix("+1") {
        Some(rest) if rest.len() == 10 => {
            format!("({}) {}-{}", &rest[..3], &rest[3..6], &rest[6..])
        }
        _ => e164.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contains_matches_digits_with_wildcards() {
        assert!(matches_pattern("+14155552001", "4155552001"));
        assert!(matches_pattern("+14155552001", "+14155552001"));
        assert!(matches_pattern("+14155552001", "555**01"));
        assert!(!matches_pattern("+14155552001", "4155552002"));
        assert!(!matches_pattern("+14155552001", ""));
    }
}
