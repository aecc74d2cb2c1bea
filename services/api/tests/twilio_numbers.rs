//! `/v1/numbers` with `RINGER_CARRIER=twilio-fake`: the api against
//! tools/twilio-fake, in process, on loopback.

use reqwest::StatusCode;
use ringer::config::CarrierKind;
use ringer::twilio::TwilioAccountArgs;
use serde_json::{Value, json};
use sqlx::PgPool;
use twilio_fake::FakeTwilio;

use crate::helpers::{TestApp, assert_error, call_body, spawn_app_with};

const ACCOUNT_SID: &str = "ACnumbers0000000000000000000000000";
const AUTH_TOKEN: &str = "numbers-token";

async fn spawn_twilio_app(pool: PgPool, api_base: &str, auth_token: &str) -> TestApp {
    let account = TwilioAccountArgs::new(ACCOUNT_SID, auth_token, api_base);
    spawn_app_with(pool, 500_000, |config| {
        config.carrier = CarrierKind::TwilioFake;
        config.twilio.account = account;
    })
    .await
}

async fn json_of(response: reqwest::Response) -> Value {
    let status = response.status();
    let body: Value = response.json().await.expect("a JSON body");
    assert!(status.is_success(), "{status}: {body}");
    body
}

/// Asserts an error of `status` and `code` whose message says `says`.
async fn assert_error_saying(
    response: reqwest::Response,
    status: StatusCode,
    code: &str,
    says: &str,
) {
    let body = assert_error(response, status, code, None).await;
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(says), "{body}");
}

/// `(carrier, carrier_sid, status)` of the org's row for `e164`.
async fn stored(app: &TestApp, e164: &str) -> Option<(Option<String>, Option<String>, String)> {
    sqlx::query_as(
        "SELECT carrier, carrier_sid, status FROM phone_numbers WHERE e164 = $1 AND org_id = $2",
    )
    .bind(e164)
    .bind(app.org.id)
    .fetch_optional(&app.pool)
    .await
    .unwrap()
}

#[sqlx::test(migrations = "../../migrations")]
async fn twilio_numbers_are_searched_bought_listed_and_released(pool: PgPool) {
    let fake = FakeTwilio::start(ACCOUNT_SID, AUTH_TOKEN).await;
    let app = spawn_twilio_app(pool, &fake.base_url, AUTH_TOKEN).await;

    let offers = json_of(
        app.get("/v1/numbers/available?country_code=US&area_code=415&limit=3")
            .await,
    )
    .await;
    let offers = offers.as_array().unwrap();
    let expected: Vec<String> = fake
        .offers("US", false)
        .into_iter()
        .map(|offer| offer.phone_number)
        .filter(|number| number.starts_with("+1415"))
        .take(3)
        .collect();
    let got: Vec<&str> = offers
        .iter()
        .map(|offer| offer["phone_number"].as_str().unwrap())
        .collect();
    assert_eq!(got, expected);
    assert_eq!(
        offers[0],
        json!({"phone_number": expected[0], "country_code": "US", "number_type": "local",
               "state": "CA", "locality": "San Francisco", "monthly_cost_cents": 115,
               "upfront_cost_cents": 0, "currency": "usd"})
    );
    let toll_free = json_of(
        app.get("/v1/numbers/available?number_type=toll_free&limit=2")
            .await,
    )
    .await;
    assert_eq!(toll_free.as_array().unwrap().len(), 2);
    assert_eq!(toll_free[0]["number_type"], "toll_free");
    assert_eq!(toll_free[0]["monthly_cost_cents"], 215);
    let canadian = json_of(
        app.get("/v1/numbers/available?country_code=ca&limit=1")
            .await,
    )
    .await;
    assert_eq!(canadian[0]["country_code"], "CA");
    assert_eq!(canadian[0]["state"], "ON");
    let response = app.get("/v1/numbers/available?country_code=GB").await;
    assert_error(
        response,
        StatusCode::BAD_REQUEST,
        "parameter_invalid",
        Some("country_code"),
    )
    .await;

    // Bought with an Idempotency-Key: a retry replays, Twilio sells once.
    let wanted = expected[0].clone();
    let purchase = || {
        app.client
            .post(app.url("/v1/numbers/purchase"))
            .bearer_auth(&app.org.api_key)
            .header("Idempotency-Key", "buy-415")
            .json(&json!({"phone_number": wanted}))
            .send()
    };
    let bought = purchase().await.unwrap();
    assert_eq!(bought.status(), StatusCode::CREATED);
    let bought: Value = bought.json().await.unwrap();
    assert_eq!(bought["e164"], wanted.as_str());
    assert_eq!(bought["country_code"], "US");
    assert_eq!(bought["number_type"], "local");
    assert_eq!(bought["status"], "active");
    assert_eq!(bought["monthly_cost_cents"], 115);
    let replay = purchase().await.unwrap();
    assert_eq!(replay.status(), StatusCode::CREATED);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    let owned = fake.owned_numbers();
    assert_eq!(owned.len(), 1);
    assert_eq!(owned[0].phone_number, wanted);
    assert_eq!(owned[0].friendly_name, format!("ringer org {}", app.org.id));
    assert_eq!(
        stored(&app, &wanted).await,
        Some((
            Some("twilio".to_owned()),
            Some(owned[0].sid.clone()),
            "active".to_owned()
        ))
    );

    // Twilio lists only numbers nobody holds; buying it again is refused by us.
    let after = json_of(
        app.get("/v1/numbers/available?area_code=415&limit=100")
            .await,
    )
    .await;
    assert!(
        after
            .as_array()
            .unwrap()
            .iter()
            .all(|offer| offer["phone_number"] != wanted.as_str())
    );
    let again = app
        .post("/v1/numbers/purchase", &json!({"phone_number": wanted}))
        .await;
    assert_error(again, StatusCode::CONFLICT, "number_unavailable", None).await;
    assert_eq!(fake.owned_numbers().len(), 1);

    // Canadian and toll-free numbers get their country and type.
    let toronto = canadian[0]["phone_number"].as_str().unwrap();
    let bought_ca = json_of(
        app.post("/v1/numbers/purchase", &json!({"phone_number": toronto}))
            .await,
    )
    .await;
    assert_eq!(bought_ca["country_code"], "CA");
    let free = toll_free[0]["phone_number"].as_str().unwrap();
    let bought_free = json_of(
        app.post("/v1/numbers/purchase", &json!({"phone_number": free}))
            .await,
    )
    .await;
    assert_eq!(bought_free["number_type"], "toll_free");
    assert_eq!(bought_free["monthly_cost_cents"], 215);

    // The listing is ours, and a bought number places calls.
    let list = json_of(app.get("/v1/numbers").await).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 4);
    let mut body = call_body("+14155550100");
    body["from_number"] = json!(wanted);
    assert_eq!(app.create_call(&body).await["from_number"], wanted.as_str());

    // Released at Twilio, then here; a second release changes nothing.
    let id = bought["id"].as_str().unwrap();
    let released = json_of(app.delete(&format!("/v1/numbers/{id}")).await).await;
    assert_eq!(released["status"], "released");
    assert_eq!(fake.released_numbers()[0].sid, owned[0].sid);
    assert_eq!(fake.owned_numbers().len(), 2);
    let twice = json_of(app.delete(&format!("/v1/numbers/{id}")).await).await;
    assert_eq!(twice["status"], "released");
    assert_eq!(fake.released_numbers().len(), 1);
    assert_eq!(stored(&app, &wanted).await.unwrap().2, "released");

    // A number the operator added (not bought by ringer) is not released at Twilio.
    let seeded: (String,) = sqlx::query_as("SELECT id::text FROM phone_numbers WHERE e164 = $1")
        .bind(&app.org.number)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let released = json_of(app.delete(&format!("/v1/numbers/{}", seeded.0)).await).await;
    assert_eq!(released["status"], "released");
    assert_eq!(fake.released_numbers().len(), 1);
    app.stop().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn bad_twilio_credentials_answer_a_clear_502_and_buy_nothing(pool: PgPool) {
    let fake = FakeTwilio::start(ACCOUNT_SID, AUTH_TOKEN).await;
    let app = spawn_twilio_app(pool, &fake.base_url, "wrong-token").await;
    let search = app.get("/v1/numbers/available").await;
    assert_error_saying(
        search,
        StatusCode::BAD_GATEWAY,
        "carrier_auth_failed",
        "refused ringer's Twilio credentials",
    )
    .await;
    let wanted = fake.offers("US", false)[0].phone_number.clone();
    let purchase = app
        .post("/v1/numbers/purchase", &json!({"phone_number": wanted}))
        .await;
    assert_error_saying(
        purchase,
        StatusCode::BAD_GATEWAY,
        "carrier_auth_failed",
        "Nothing was bought.",
    )
    .await;
    assert_eq!(stored(&app, &wanted).await, None);
    assert!(fake.owned_numbers().is_empty());
    app.stop().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_number_sold_elsewhere_is_a_409_and_a_foreign_one_a_400(pool: PgPool) {
    let fake = FakeTwilio::start(ACCOUNT_SID, AUTH_TOKEN).await;
    let app = spawn_twilio_app(pool, &fake.base_url, AUTH_TOKEN).await;
    let shown = json_of(app.get("/v1/numbers/available?limit=1").await).await;
    let wanted = shown[0]["phone_number"].as_str().unwrap();
    fake.sell_elsewhere(wanted);
    let purchase = app
        .post("/v1/numbers/purchase", &json!({"phone_number": wanted}))
        .await;
    assert_error_saying(
        purchase,
        StatusCode::CONFLICT,
        "number_unavailable",
        "no longer available",
    )
    .await;
    assert_eq!(stored(&app, wanted).await, None);

    let london = app
        .post(
            "/v1/numbers/purchase",
            &json!({"phone_number": "+442071838750"}),
        )
        .await;
    assert_error(
        london,
        StatusCode::BAD_REQUEST,
        "parameter_invalid",
        Some("phone_number"),
    )
    .await;
    assert!(fake.owned_numbers().is_empty());
    app.stop().await;
}

/// Makes the org's seeded number one ringer bought at Twilio (as `sid`).
async fn pretend_bought_at_twilio(app: &TestApp, sid: &str) -> String {
    let (id,): (String,) = sqlx::query_as(
        "UPDATE phone_numbers SET carrier = 'twilio', carrier_sid = $2 WHERE org_id = $1 \
         RETURNING id::text",
    )
    .bind(app.org.id)
    .bind(sid)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    id
}

#[sqlx::test(migrations = "../../migrations")]
async fn twilio_down_is_a_502_and_changes_nothing(pool: PgPool) {
    // A loopback port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let app = spawn_twilio_app(pool, &format!("http://{closed}"), AUTH_TOKEN).await;

    let search = app.get("/v1/numbers/available").await;
    assert_error(search, StatusCode::BAD_GATEWAY, "carrier_unavailable", None).await;
    let wanted = "+14155552049";
    let purchase = app
        .post("/v1/numbers/purchase", &json!({"phone_number": wanted}))
        .await;
    assert_error_saying(
        purchase,
        StatusCode::BAD_GATEWAY,
        "carrier_unavailable",
        "Nothing was bought.",
    )
    .await;
    assert_eq!(stored(&app, wanted).await, None);

    let id = pretend_bought_at_twilio(&app, "PN0001").await;
    let release = app.delete(&format!("/v1/numbers/{id}")).await;
    assert_error_saying(
        release,
        StatusCode::BAD_GATEWAY,
        "carrier_unavailable",
        "The number stays active.",
    )
    .await;
    assert_eq!(stored(&app, &app.org.number).await.unwrap().2, "active");
    app.stop().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_purchase_that_cannot_be_recorded_is_released_at_twilio(pool: PgPool) {
    let fake = FakeTwilio::start(ACCOUNT_SID, AUTH_TOKEN).await;
    let app = spawn_twilio_app(pool.clone(), &fake.base_url, AUTH_TOKEN).await;
    let wanted = fake.offers("US", false)[0].phone_number.clone();
    // Another org records the same number between our check and our insert.
    sqlx::query(
        "CREATE FUNCTION refuse_number() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
           RAISE unique_violation USING CONSTRAINT = 'phone_numbers_active_e164'; END $$",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "CREATE TRIGGER refuse_number BEFORE INSERT ON phone_numbers FOR EACH ROW \
         WHEN (NEW.carrier IS NOT NULL) EXECUTE FUNCTION refuse_number()",
    )
    .execute(&pool)
    .await
    .unwrap();

    let purchase = app
        .post("/v1/numbers/purchase", &json!({"phone_number": wanted}))
        .await;
    assert_error(purchase, StatusCode::CONFLICT, "number_unavailable", None).await;
    let released = fake.released_numbers();
    assert_eq!(released.len(), 1);
    assert_eq!(released[0].phone_number, wanted);
    assert!(fake.owned_numbers().is_empty());
    assert_eq!(stored(&app, &wanted).await, None);
    app.stop().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_retried_purchase_adopts_the_orgs_own_unrecorded_twilio_number(pool: PgPool) {
    let fake = FakeTwilio::start(ACCOUNT_SID, AUTH_TOKEN).await;
    let app = spawn_twilio_app(pool.clone(), &fake.base_url, AUTH_TOKEN).await;
    let offers = fake.offers("US", false);
    // Earlier attempts that Twilio carried out and ringer never recorded
    // (the api died in between): one for this org, one for another.
    let buy_directly = |number: String, label: String| {
        let url = format!(
            "{}/2010-04-01/Accounts/{ACCOUNT_SID}/IncomingPhoneNumbers.json",
            fake.base_url
        );
        async move {
            let response = reqwest::Client::new()
                .post(url)
                .basic_auth(ACCOUNT_SID, Some(AUTH_TOKEN))
                .form(&[("PhoneNumber", number), ("FriendlyName", label)])
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::CREATED);
        }
    };
    let ours = offers[0].phone_number.clone();
    let theirs = offers[1].phone_number.clone();
    buy_directly(ours.clone(), format!("ringer org {}", app.org.id)).await;
    buy_directly(theirs.clone(), "ringer org someone-else".to_owned()).await;

    let adopted = json_of(
        app.post("/v1/numbers/purchase", &json!({"phone_number": ours}))
            .await,
    )
    .await;
    assert_eq!(adopted["e164"], ours.as_str());
    let sid = fake
        .owned_numbers()
        .into_iter()
        .find(|number| number.phone_number == ours)
        .unwrap()
        .sid;
    assert_eq!(stored(&app, &ours).await.unwrap().1, Some(sid));

    let refused = app
        .post("/v1/numbers/purchase", &json!({"phone_number": theirs}))
        .await;
    assert_error(refused, StatusCode::CONFLICT, "number_unavailable", None).await;
    assert_eq!(stored(&app, &theirs).await, None);
    app.stop().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_twilio_number_is_not_released_by_the_simulated_carrier(pool: PgPool) {
    let app = spawn_app_with(pool, 500_000, |_| {}).await;
    let id = pretend_bought_at_twilio(&app, "PN0001").await;
    let release = app.delete(&format!("/v1/numbers/{id}")).await;
    assert_error_saying(
        release,
        StatusCode::CONFLICT,
        "number_carrier_mismatch",
        "bought from the twilio carrier",
    )
    .await;
    assert_eq!(stored(&app, &app.org.number).await.unwrap().2, "active");
    app.stop().await;
}
