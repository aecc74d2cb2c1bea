//! The simulated carrier's inventory: 100 numbers per known area code
//! (`+1<area>555 01xx`) and 100 toll-free (`+1833555 01xx`). Buying and
//! releasing cost nothing and reach no network.

use uuid::Uuid;

use super::AvailableNumber;
use super::inventory::{
    InventoryError, InventoryResult, NumberInventory, NumberSearch, NumberType, Purchase,
};

const AREAS: [(&str, &str, &str, &str); 8] = [
    ("US", "212", "NY", "New York"),
    ("US", "312", "IL", "Chicago"),
    ("US", "415", "CA", "San Francisco"),
    ("US", "512", "TX", "Austin"),
    ("US", "617", "MA", "Boston"),
    ("US", "206", "WA", "Seattle"),
    ("CA", "416", "ON", "Toronto"),
    ("CA", "604", "BC", "Vancouver"),
];
const TOLL_FREE_PREFIX: &str = "833";
const LOCAL_MONTHLY_CENTS: i32 = 115;
const TOLL_FREE_MONTHLY_CENTS: i32 = 215;

#[derive(Debug, Clone, Copy, Default)]
pub struct SimulatedInventory;

fn local(country: &str, area: &str, state: &str, locality: &str, n: u32) -> AvailableNumber {
    AvailableNumber {
        phone_number: format!("+1{area}5550{n:03}"),
        country_code: country.to_owned(),
        number_type: NumberType::Local.as_str().to_owned(),
        state: Some(state.to_owned()),
        locality: Some(locality.to_owned()),
        monthly_cost_cents: LOCAL_MONTHLY_CENTS,
        upfront_cost_cents: 0,
        currency: "usd".to_owned(),
    }
}

fn toll_free(country: &str, n: u32) -> AvailableNumber {
    AvailableNumber {
        phone_number: format!("+1{TOLL_FREE_PREFIX}5550{n:03}"),
        country_code: country.to_owned(),
        number_type: NumberType::TollFree.as_str().to_owned(),
        state: None,
        locality: None,
        monthly_cost_cents: TOLL_FREE_MONTHLY_CENTS,
        upfront_cost_cents: 0,
        currency: "usd".to_owned(),
    }
}

/// Every number offered for a search, in order.
fn offered(search: &NumberSearch) -> Vec<AvailableNumber> {
    let country = search.country.as_str();
    match search.number_type {
        NumberType::TollFree => (100..200).map(|n| toll_free(country, n)).collect(),
        NumberType::Local => AREAS
            .iter()
            .filter(|(c, area, _, _)| {
                *c == country
                    && search
                        .area_code
                        .as_deref()
                        .is_none_or(|wanted| wanted == *area)
            })
            .flat_map(|(c, area, state, locality)| {
                (100..200).map(move |n| local(c, area, state, locality, n))
            })
            .collect(),
    }
}

/// The inventory entry for a number, if the carrier offers it.
fn lookup(e164: &str) -> Option<AvailableNumber> {
    let rest = e164.strip_prefix("+1")?;
    if rest.len() != 10 || !rest[3..7].eq("5550") {
        return None;
    }
    let n: u32 = rest[7..].parse().ok()?;
    if !(100..200).contains(&n) {
        return None;
    }
    let area = &rest[..3];
    if area == TOLL_FREE_PREFIX {
        return Some(toll_free("US", n));
    }
    AREAS
        .iter()
        .find(|(_, a, _, _)| *a == area)
        .map(|(c, a, state, locality)| local(c, a, state, locality, n))
}

impl NumberInventory for SimulatedInventory {
    fn carrier(&self) -> &'static str {
        "simulated"
    }

    fn countries(&self) -> &'static [&'static str] {
        &["US", "CA"]
    }

    fn search<'a>(&'a self, search: &'a NumberSearch) -> InventoryResult<'a, Vec<AvailableNumber>> {
        Box::pin(std::future::ready(Ok(offered(search))))
    }

    fn buy<'a>(&'a self, e164: &'a str, _org_id: Uuid) -> InventoryResult<'a, Purchase> {
        let bought = lookup(e164)
            .map(|number| Purchase {
                number,
                carrier_sid: None,
            })
            .ok_or_else(|| {
                InventoryError::NotOffered(format!(
                    "{e164} is not offered by the carrier; search with GET /v1/numbers/available."
                ))
            });
        Box::pin(std::future::ready(bought))
    }

    fn release<'a>(&'a self, _carrier_sid: &'a str) -> InventoryResult<'a, ()> {
        Box::pin(std::future::ready(Ok(())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn searches_and_lookups_agree() {
        let search = NumberSearch {
            country: "US".to_owned(),
            area_code: Some("212".to_owned()),
            number_type: NumberType::Local,
            limit: 20,
        };
        let offers = offered(&search);
        assert_eq!(offers.len(), 100);
        assert_eq!(lookup(&offers[7].phone_number).as_ref(), Some(&offers[7]));
        assert_eq!(lookup("+18335550150").unwrap().number_type, "toll_free");
        assert_eq!(lookup("+14155559999"), None);
        assert_eq!(lookup("+19995550150"), None);
    }
}
