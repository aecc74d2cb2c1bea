use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::{assert_error, call_body, spawn_app};

#[sqlx::test(migrations = "../../migrations")]
async fn numbers_are_searched_bought_used_and_released(pool: PgPool) {
    let app = spawn_app(pool).await;
    let available: Value = app
        .get("/v1/numbers/available?country_code=US&area_code=212&limit=2")
        .await
        .json()
        .await
        .unwrap();
    let offers = available.as_array().unwrap();
    assert_eq!(offers.len(), 2);
    assert_eq!(offers[0]["number_type"], "local");
    assert_eq!(offers[0]["locality"], "New York");
    let wanted = offers[0]["phone_number"].as_str().unwrap().to_owned();

    let bought = app
        .post("/v1/numbers/purchase", &json!({"phone_number": wanted}))
        .await;
    assert_eq!(bought.status(), StatusCode::CREATED);
    let bought: Value = bought.json().await.unwrap();
    assert_eq!(bought["e164"], wanted);
    assert_eq!(bought["status"], "active");

    let again = app
        .post("/v1/numbers/purchase", &json!({"phone_number": wanted}))
        .await;
    assert_error(again, StatusCode::CONFLICT, "number_unavailable", None).await;
    let after: Value = app
        .get("/v1/numbers/available?area_code=212&limit=100")
        .await
        .json()
        .await
        .unwrap();
    assert!(
        after
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["phone_number"] != wanted.as_str())
    );

    let mut body = call_body("+14155550100");
    body["from_number"] = json!(wanted);
    assert_eq!(app.create_call(&body).await["from_number"], wanted.as_str());

    let list: Value = app.get("/v1/numbers").await.json().await.unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 2);
    assert_eq!(list["has_more"], false);

    let id = bought["id"].as_str().unwrap();
    let released = app
        .client
        .delete(app.url(&format!("/v1/numbers/{id}")))
        .bearer_auth(&app.org.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(released.status(), StatusCode::OK);
    assert_eq!(
        released.json::<Value>().await.unwrap()["status"],
        "released"
    );
    let response = app.post("/v1/calls", &body).await;
    assert_error(
        response,
        StatusCode::BAD_REQUEST,
        "parameter_invalid",
        Some("from_number"),
    )
    .await;

    let not_offered = app
        .post(
            "/v1/numbers/purchase",
            &json!({"phone_number": "+14155559999"}),
        )
        .await;
    assert_error(
        not_offered,
        StatusCode::BAD_REQUEST,
        "parameter_invalid",
        Some("phone_number"),
    )
    .await;
    app.stop().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn an_org_without_numbers_is_told_to_buy_one(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    sqlx::query("UPDATE phone_numbers SET status = 'released'")
        .execute(&pool)
        .await
        .unwrap();
    let response = app.post("/v1/calls", &call_body("+14155550100")).await;
    let body = assert_error(response, StatusCode::BAD_REQUEST, "no_active_number", None).await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("POST /v1/numbers/purchase")
    );
    assert_eq!(app.written().await, (0, 0, 0));
    app.stop().await;
}
