//! Where `/v1/numbers` gets its numbers: a [`NumberInventory`] searches the
//! carrier's offer, buys a number and gives one back. The simulated carrier
//! and Twilio are its two implementations; `RINGER_CARRIER` picks one.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use ringer::config::CarrierKind;
use uuid::Uuid;

use super::AvailableNumber;
use super::simulated::SimulatedInventory;
use super::twilio::{TwilioInventory, TwilioNumbersArgs};
use crate::error::ApiError;

/// `local` or `toll_free`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NumberType {
    Local,
    TollFree,
}

impl NumberType {
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "local" => Some(NumberType::Local),
            "toll_free" => Some(NumberType::TollFree),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            NumberType::Local => "local",
            NumberType::TollFree => "toll_free",
        }
    }
}

/// A checked `GET /v1/numbers/available` query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NumberSearch {
    /// One of the inventory's [`NumberInventory::countries`].
    pub country: String,
    /// Three digits.
    pub area_code: Option<String>,
    pub number_type: NumberType,
    /// 1–100.
    pub limit: u32,
}

/// A number the carrier sold us.
#[derive(Debug, Clone, PartialEq)]
pub struct Purchase {
    pub number: AvailableNumber,
    /// Its id at the carrier, which releasing it needs (none for the simulated carrier).
    pub carrier_sid: Option<String>,
}

/// How a carrier request failed. Every variant carries a sentence for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InventoryError {
    /// The carrier does not sell such a number at all (400 on `phone_number`).
    #[error("{0}")]
    NotOffered(String),
    /// The number is taken, or no longer (or never) on offer (409).
    #[error("{0}")]
    Unavailable(String),
    /// The carrier refused the request for a reason of its own (502).
    #[error("{0}")]
    Rejected(String),
    /// The carrier does not accept our credentials: an operator must fix the configuration (502).
    #[error("{0}")]
    Unauthorized(String),
    /// The carrier could not be reached or failed; retrying later may work (502).
    #[error("{0}")]
    Unreachable(String),
}

impl From<InventoryError> for ApiError {
    fn from(error: InventoryError) -> Self {
        match error {
            InventoryError::NotOffered(message) => ApiError::invalid("phone_number", message),
            InventoryError::Unavailable(message) => ApiError::Conflict {
                code: "number_unavailable",
                message,
            },
            InventoryError::Rejected(message) => ApiError::Carrier {
                code: "carrier_rejected",
                message,
            },
            InventoryError::Unauthorized(message) => ApiError::Carrier {
                code: "carrier_auth_failed",
                message,
            },
            InventoryError::Unreachable(message) => ApiError::Carrier {
                code: "carrier_unavailable",
                message,
            },
        }
    }
}

pub type InventoryResult<'a, T> =
    Pin<Box<dyn Future<Output = Result<T, InventoryError>> + Send + 'a>>;

/// A carrier's stock of phone numbers.
pub trait NumberInventory: Send + Sync + 'static {
    /// Recorded on the numbers bought here (`simulated`, `twilio`).
    fn carrier(&self) -> &'static str;

    /// ISO countries with numbers for sale.
    fn countries(&self) -> &'static [&'static str];

    /// Numbers on offer, in the carrier's order: at least `search.limit` when
    /// it has that many (the caller drops those already taken and truncates).
    fn search<'a>(&'a self, search: &'a NumberSearch) -> InventoryResult<'a, Vec<AvailableNumber>>;

    /// Buys `e164` (E.164, checked) for `org_id`, which holds no active
    /// record of it. The number is the org's only once this succeeded.
    fn buy<'a>(&'a self, e164: &'a str, org_id: Uuid) -> InventoryResult<'a, Purchase>;

    /// Gives back a number bought here. A number the carrier no longer has
    /// counts as given back.
    fn release<'a>(&'a self, carrier_sid: &'a str) -> InventoryResult<'a, ()>;
}

/// The inventory `RINGER_CARRIER` names.
pub fn from_config(
    carrier: CarrierKind,
    twilio: &TwilioNumbersArgs,
    time_scale: f64,
) -> anyhow::Result<Arc<dyn NumberInventory>> {
    Ok(match carrier {
        CarrierKind::Simulated => Arc::new(SimulatedInventory),
        CarrierKind::Twilio | CarrierKind::TwilioFake => {
            Arc::new(TwilioInventory::new(twilio, time_scale)?)
        }
    })
}
