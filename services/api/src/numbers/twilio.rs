//! Twilio's phone numbers: `AvailablePhoneNumbers` to search,
//! `IncomingPhoneNumbers` to buy and release (`RINGER_CARRIER=twilio` or
//! `twilio-fake`, with the dialer's `RINGER_TWILIO_*` account settings).
//!
//! Numbers are sold for the US and Canada. Twilio's REST API does not publish
//! number prices, so the monthly prices shown and stored are configured
//! (Twilio's US list prices by default), and a number's country and type come
//! from its area code, as the purchase answer names neither.
//!
//! Each purchase is labelled at Twilio with the buying org
//! (`FriendlyName=ringer org <id>`). When a purchase's outcome is unknown (a
//! timeout after the request left, a 5xx) or Twilio says the number is taken,
//! a number with this org's label that ringer has no active record of is the
//! org's own earlier purchase, and is taken as bought: a retried purchase then
//! completes instead of leaving a paid number behind.

use std::time::Duration;

use ringer::retry::RetryPolicy;
use ringer::twilio::{Repeat, RestClient, RestError, TwilioAccountArgs};
use serde::Deserialize;
use uuid::Uuid;

use super::AvailableNumber;
use super::inventory::{
    InventoryError, InventoryResult, NumberInventory, NumberSearch, NumberType, Purchase,
};

/// Twilio settings of the api: the account, and the prices it pays.
#[derive(Debug, Clone, clap::Args)]
pub struct TwilioNumbersArgs {
    /// Account SID, auth token and REST base URL (`RINGER_TWILIO_ACCOUNT_SID`, `_AUTH_TOKEN`, `_API_BASE`), as the dialer's.
    #[command(flatten)]
    pub account: TwilioAccountArgs,

    /// Monthly price of a Twilio local number in cents, shown by searches and stored with bought numbers.
    #[arg(long, env = "RINGER_TWILIO_LOCAL_MONTHLY_CENTS", default_value_t = 115,
          value_parser = clap::value_parser!(i32).range(0..))]
    pub twilio_local_monthly_cents: i32,

    /// Monthly price of a Twilio toll-free number in cents, shown by searches and stored with bought numbers.
    #[arg(long, env = "RINGER_TWILIO_TOLL_FREE_MONTHLY_CENTS", default_value_t = 215,
          value_parser = clap::value_parser!(i32).range(0..))]
    pub twilio_toll_free_monthly_cents: i32,
}

impl Default for TwilioNumbersArgs {
    fn default() -> Self {
        Self {
            account: TwilioAccountArgs::default(),
            twilio_local_monthly_cents: 115,
            twilio_toll_free_monthly_cents: 215,
        }
    }
}

/// NANP area codes of toll-free numbers.
const TOLL_FREE_AREAS: [&str; 7] = ["800", "833", "844", "855", "866", "877", "888"];

/// Canada's area codes (NANP); every other +1 number counts as a US one.
const CANADIAN_AREAS: [&str; 57] = [
    "204", "226", "236", "249", "250", "257", "263", "289", "306", "343", "354", "365", "367",
    "368", "382", "387", "403", "416", "418", "428", "431", "437", "438", "450", "460", "468",
    "474", "506", "514", "519", "548", "579", "581", "584", "587", "604", "613", "639", "647",
    "672", "683", "705", "709", "742", "753", "778", "780", "782", "807", "819", "825", "867",
    "873", "879", "902", "905", "942",
];

/// Twilio error: the number is not (or no longer) available.
const NUMBER_NOT_AVAILABLE: i64 = 21422;
/// Twilio error: the number is not a valid phone number.
const NUMBER_INVALID: i64 = 21421;

#[derive(Debug, Deserialize)]
struct AvailablePage {
    #[serde(default)]
    available_phone_numbers: Vec<TwilioAvailable>,
}

#[derive(Debug, Deserialize)]
struct TwilioAvailable {
    phone_number: String,
    iso_country: Option<String>,
    region: Option<String>,
    locality: Option<String>,
}

#[derive(Debug, Deserialize)]
struct IncomingPage {
    #[serde(default)]
    incoming_phone_numbers: Vec<IncomingNumber>,
}

#[derive(Debug, Deserialize)]
struct IncomingNumber {
    sid: String,
    phone_number: String,
    #[serde(default)]
    friendly_name: String,
}

pub struct TwilioInventory {
    rest: RestClient,
    local_monthly_cents: i32,
    toll_free_monthly_cents: i32,
}

impl TwilioInventory {
    pub fn new(args: &TwilioNumbersArgs, time_scale: f64) -> anyhow::Result<Self> {
        let account = args.account.account()?;
        // Two attempts of 8 s at most, and a purchase's follow-up look-up,
        // stay inside the API's 30 s request timeout.
        let retry = RetryPolicy::new(2, Duration::from_millis(300)).scaled(time_scale);
        Ok(Self {
            rest: RestClient::new(&account, Duration::from_secs(8), retry)?,
            local_monthly_cents: args.twilio_local_monthly_cents,
            toll_free_monthly_cents: args.twilio_toll_free_monthly_cents,
        })
    }

    fn monthly_cents(&self, number_type: NumberType) -> i32 {
        match number_type {
            NumberType::Local => self.local_monthly_cents,
            NumberType::TollFree => self.toll_free_monthly_cents,
        }
    }

    fn offer(
        &self,
        country: &str,
        number_type: NumberType,
        found: TwilioAvailable,
    ) -> AvailableNumber {
        AvailableNumber {
            phone_number: found.phone_number,
            country_code: found
                .iso_country
                .filter(|iso| !iso.is_empty())
                .unwrap_or_else(|| country.to_owned()),
            number_type: number_type.as_str().to_owned(),
            state: found.region.filter(|region| !region.is_empty()),
            locality: found.locality.filter(|locality| !locality.is_empty()),
            monthly_cost_cents: self.monthly_cents(number_type),
            upfront_cost_cents: 0,
            currency: "usd".to_owned(),
        }
    }

    async fn search_numbers(
        &self,
        search: &NumberSearch,
    ) -> Result<Vec<AvailableNumber>, InventoryError> {
        let kind = match search.number_type {
            NumberType::Local => "Local",
            NumberType::TollFree => "TollFree",
        };
        let path = format!("/AvailablePhoneNumbers/{}/{kind}.json", search.country);
        let page_size = search.limit.to_string();
        let mut query = vec![("PageSize", page_size.as_str())];
        if let Some(area_code) = &search.area_code {
            query.push(("AreaCode", area_code.as_str()));
        }
        match self.rest.get::<AvailablePage>(&path, &query).await {
            Ok(page) => Ok(page
                .available_phone_numbers
                .into_iter()
                .map(|found| self.offer(&search.country, search.number_type, found))
                .collect()),
            // No such numbers in that country at all.
            Err(error) if error.is_not_found() => Ok(Vec::new()),
            Err(error) if error.is_client_error() && !error.is_auth_error() => {
                Err(InventoryError::Rejected(format!(
                    "Twilio refused the search: {}.",
                    twilio_message(&error)
                )))
            }
            Err(error) => Err(failure(&error, "search numbers", "Nothing changed")),
        }
    }

    async fn buy_number(&self, e164: &str, org_id: Uuid) -> Result<Purchase, InventoryError> {
        let (country, number_type) = classify(e164).ok_or_else(|| {
            InventoryError::NotOffered(format!(
                "{e164} is not offered: numbers are sold for the US and Canada (+1); search with GET /v1/numbers/available."
            ))
        })?;
        let label = org_label(org_id);
        let form = [
            ("PhoneNumber".to_owned(), e164.to_owned()),
            ("FriendlyName".to_owned(), label.clone()),
        ];
        let bought = self
            .rest
            .post::<IncomingNumber>("/IncomingPhoneNumbers.json", &form, Repeat::IfNotReceived)
            .await;
        let sid = match bought {
            Ok(number) => number.sid,
            Err(error) if error.is_auth_error() || error.not_received() => {
                return Err(failure(
                    &error,
                    &format!("buy {e164}"),
                    "Nothing was bought",
                ));
            }
            Err(error) if error.code() == Some(NUMBER_INVALID) => {
                return Err(InventoryError::NotOffered(format!(
                    "Twilio does not sell {e164}: {}.",
                    twilio_message(&error)
                )));
            }
            Err(error) if error.is_client_error() => {
                // Taken: perhaps by this org's earlier attempt that ringer never recorded.
                if let Ok(Some(sid)) = self.bought_by(e164, &label).await {
                    tracing::warn!(
                        e164,
                        sid,
                        "adopting this org's earlier unrecorded Twilio purchase"
                    );
                    sid
                } else if error.code() == Some(NUMBER_NOT_AVAILABLE) {
                    return Err(InventoryError::Unavailable(format!(
                        "{e164} is no longer available at Twilio; pick another from GET /v1/numbers/available."
                    )));
                } else {
                    return Err(InventoryError::Rejected(format!(
                        "Twilio refused to sell {e164}: {}.",
                        twilio_message(&error)
                    )));
                }
            }
            Err(error) => {
                // The request may have reached Twilio: ask whether it went through.
                match self.bought_by(e164, &label).await {
                    Ok(Some(sid)) => sid,
                    Ok(None) => {
                        return Err(failure(
                            &error,
                            &format!("buy {e164}"),
                            "Nothing was bought",
                        ));
                    }
                    Err(check) => {
                        tracing::error!(e164, %error, %check, "Twilio purchase outcome unknown; a retry of the purchase settles it");
                        return Err(InventoryError::Unreachable(format!(
                            "Twilio did not confirm the purchase of {e164}; retry the purchase shortly (it completes the earlier attempt if that went through)."
                        )));
                    }
                }
            }
        };
        Ok(Purchase {
            number: AvailableNumber {
                phone_number: e164.to_owned(),
                country_code: country.to_owned(),
                number_type: number_type.as_str().to_owned(),
                state: None,
                locality: None,
                monthly_cost_cents: self.monthly_cents(number_type),
                upfront_cost_cents: 0,
                currency: "usd".to_owned(),
            },
            carrier_sid: Some(sid),
        })
    }

    /// The SID of `e164` if the account holds it under `label`.
    async fn bought_by(&self, e164: &str, label: &str) -> Result<Option<String>, RestError> {
        let page: IncomingPage = self
            .rest
            .get("/IncomingPhoneNumbers.json", &[("PhoneNumber", e164)])
            .await?;
        Ok(page
            .incoming_phone_numbers
            .into_iter()
            .find(|number| number.phone_number == e164 && number.friendly_name == label)
            .map(|number| number.sid))
    }

    async fn release_number(&self, sid: &str) -> Result<(), InventoryError> {
        match self
            .rest
            .delete(&format!("/IncomingPhoneNumbers/{sid}.json"))
            .await
        {
            Ok(()) => Ok(()),
            Err(error) if error.is_not_found() => Ok(()),
            Err(error) if error.is_client_error() && !error.is_auth_error() => {
                Err(InventoryError::Rejected(format!(
                    "Twilio refused to release the number: {}; it stays active.",
                    twilio_message(&error)
                )))
            }
            Err(error) => Err(failure(
                &error,
                "release the number",
                "The number stays active",
            )),
        }
    }
}

impl NumberInventory for TwilioInventory {
    fn carrier(&self) -> &'static str {
        "twilio"
    }

    fn countries(&self) -> &'static [&'static str] {
        &["US", "CA"]
    }

    fn search<'a>(&'a self, search: &'a NumberSearch) -> InventoryResult<'a, Vec<AvailableNumber>> {
        Box::pin(self.search_numbers(search))
    }

    fn buy<'a>(&'a self, e164: &'a str, org_id: Uuid) -> InventoryResult<'a, Purchase> {
        Box::pin(self.buy_number(e164, org_id))
    }

    fn release<'a>(&'a self, carrier_sid: &'a str) -> InventoryResult<'a, ()> {
        Box::pin(self.release_number(carrier_sid))
    }
}

/// The `FriendlyName` of an org's numbers at Twilio (also shown in Twilio's console).
fn org_label(org_id: Uuid) -> String {
    format!("ringer org {org_id}")
}

/// Country and type of a +1 number, from its area code.
fn classify(e164: &str) -> Option<(&'static str, NumberType)> {
    let national = e164.strip_prefix("+1").filter(|rest| rest.len() == 10)?;
    let area = &national[..3];
    if TOLL_FREE_AREAS.contains(&area) {
        return Some(("US", NumberType::TollFree));
    }
    let country = if CANADIAN_AREAS.contains(&area) {
        "CA"
    } else {
        "US"
    };
    Some((country, NumberType::Local))
}

fn twilio_message(error: &RestError) -> String {
    match error {
        RestError::Api {
            code: Some(code),
            message,
            ..
        } => format!("{} (Twilio error {code})", message.trim_end_matches('.')),
        RestError::Api { message, .. } => message.trim_end_matches('.').to_owned(),
        other => other.to_string(),
    }
}

/// A failure that is not about the number: credentials, or Twilio unreachable.
/// The cause is logged for operators; the client gets a sentence.
fn failure(error: &RestError, action: &str, outcome: &str) -> InventoryError {
    if error.is_auth_error() {
        tracing::error!(%error, "Twilio refused the credentials: check RINGER_TWILIO_ACCOUNT_SID and RINGER_TWILIO_AUTH_TOKEN");
        InventoryError::Unauthorized(format!(
            "The phone carrier refused ringer's Twilio credentials, so ringer could not {action}; the operator must fix the Twilio account settings. {outcome}."
        ))
    } else {
        tracing::warn!(%error, action, "Twilio request failed");
        InventoryError::Unreachable(format!(
            "The phone carrier (Twilio) could not be reached to {action}; retry shortly. {outcome}."
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn area_codes_give_country_and_type() {
        assert_eq!(classify("+14155550123"), Some(("US", NumberType::Local)));
        assert_eq!(classify("+16045550123"), Some(("CA", NumberType::Local)));
        assert_eq!(classify("+18885550123"), Some(("US", NumberType::TollFree)));
        assert_eq!(classify("+442071838750"), None);
        assert_eq!(classify("+1415555012"), None);
    }

    #[test]
    fn twilio_errors_read_as_sentences() {
        let error = RestError::Api {
            status: 400,
            code: Some(21631),
            message: "Phone Number Requires an Address.".to_owned(),
        };
        assert_eq!(
            twilio_message(&error),
            "Phone Number Requires an Address (Twilio error 21631)"
        );
        let unreachable = failure(
            &RestError::Transport("connection refused".into()),
            "buy +14155550123",
            "Nothing was bought",
        );
        assert!(
            matches!(unreachable, InventoryError::Unreachable(m) if m.ends_with("Nothing was bought."))
        );
    }
}
