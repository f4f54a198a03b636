//! Spec: walcast's registry serves the Confluent Schema Registry REST API, stores schemas in
//! a Kafka topic in Confluent's record format, and keeps every id across restarts.
//! Each test runs its own `walcast registry` process on its own schema topic.

use crate::support::registry::{raw, Options, Registry};
use crate::support::Stack;
use serde_json::json;

const USER_V1: &str = r#"{"type":"record","name":"UserCreated","namespace":"users","fields":[{"name":"user_id","type":"long"},{"name":"name","type":"string"}]}"#;
const USER_V2: &str = r#"{"type":"record","name":"UserCreated","namespace":"users","fields":[{"name":"user_id","type":"long"},{"name":"name","type":"string"},{"name":"email","type":["null","string"],"default":null}]}"#;

#[tokio::test(flavor = "multi_thread")]
async fn registering_gives_global_stable_ids_and_every_read_endpoint_answers() {
    let registry = Registry::start(Stack::get()).await;
    let a = registry
        .register("users.user-users.UserCreated", USER_V1)
        .await;
    // The same schema again, differently spaced, is the same version and id.
    let respaced = USER_V1.replace(',', " , ");
    assert_eq!(
        registry
            .register("users.user-users.UserCreated", &respaced)
            .await,
        a
    );
    // Under another subject it keeps its id: ids are global.
    assert_eq!(registry.register("other-value", USER_V1).await, a);
    let b = registry
        .register("users.user-users.UserCreated", USER_V2)
        .await;
    assert_ne!(a, b);

    let (status, subjects) = registry.call("GET", "/subjects", None).await;
    assert_eq!(
        (status, subjects),
        (200, json!(["other-value", "users.user-users.UserCreated"]))
    );
    let s = "/subjects/users.user-users.UserCreated";
    assert_eq!(
        registry.call("GET", &format!("{s}/versions"), None).await,
        (200, json!([1, 2]))
    );

    let (status, latest) = registry
        .call("GET", &format!("{s}/versions/latest"), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(latest["version"], 2);
    assert_eq!(latest["id"], b);
    assert_eq!(latest["subject"], "users.user-users.UserCreated");
    let stored: serde_json::Value =
        serde_json::from_str(latest["schema"].as_str().unwrap()).unwrap();
    assert_eq!(stored["fields"][2]["default"], serde_json::Value::Null);

    let (status, raw_schema) = registry
        .call("GET", &format!("{s}/versions/1/schema"), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        raw_schema["name"], "UserCreated",
        "the /schema endpoint returns the schema itself"
    );

    let (status, by_id) = registry
        .call("GET", &format!("/schemas/ids/{a}"), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        by_id["schema"],
        latest_schema_of(&registry, "other-value").await
    );
    assert_eq!(
        registry
            .call("GET", &format!("/schemas/ids/{a}/subjects"), None)
            .await,
        (200, json!(["other-value", "users.user-users.UserCreated"]))
    );
    assert_eq!(
        registry
            .call("GET", &format!("/schemas/ids/{a}/versions"), None)
            .await,
        (
            200,
            json!([{"subject": "other-value", "version": 1}, {"subject": "users.user-users.UserCreated", "version": 1}])
        )
    );
    let (status, schema) = registry
        .call("GET", &format!("/schemas/ids/{b}/schema"), None)
        .await;
    assert_eq!(
        (status, schema["fields"].as_array().unwrap().len()),
        (200, 3)
    );

    // Lookup: which version of the subject is this schema?
    let (status, found) = registry
        .call("POST", s, Some(json!({ "schema": USER_V1 })))
        .await;
    assert_eq!(
        (status, &found["version"], &found["id"]),
        (200, &json!(1), &json!(a))
    );

    assert_eq!(
        registry.call("GET", "/mode", None).await,
        (200, json!({"mode": "READWRITE"}))
    );
    assert_eq!(
        registry.call("GET", "/schemas/types", None).await,
        (200, json!(["AVRO"]))
    );
}

async fn latest_schema_of(registry: &Registry, subject: &str) -> serde_json::Value {
    registry
        .call("GET", &format!("/subjects/{subject}/versions/latest"), None)
        .await
        .1["schema"]
        .clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_keeps_every_id_version_deletion_and_config() {
    let mut registry = Registry::start(Stack::get()).await;
    let a = registry.register("a-value", USER_V1).await;
    let b = registry.register("a-value", USER_V2).await;
    let c = registry.register("b-value", r#""string""#).await;
    registry
        .call(
            "PUT",
            "/config/b-value",
            Some(json!({"compatibility": "NONE"})),
        )
        .await;
    registry
        .call(
            "PUT",
            "/config",
            Some(json!({"compatibility": "FULL_TRANSITIVE"})),
        )
        .await;
    assert_eq!(
        registry
            .call("DELETE", "/subjects/a-value/versions/1", None)
            .await,
        (200, json!(1))
    );

    registry.kill_and_restart().await;

    let s = |n: u64| json!(n);
    assert_eq!(
        registry
            .call("GET", "/subjects/a-value/versions", None)
            .await,
        (200, json!([2]))
    );
    assert_eq!(
        registry
            .call("GET", "/subjects/a-value/versions?deleted=true", None)
            .await,
        (200, json!([1, 2]))
    );
    assert_eq!(
        registry
            .call("GET", "/subjects/a-value/versions/2", None)
            .await
            .1["id"],
        s(b)
    );
    assert_eq!(
        registry
            .call("GET", "/subjects/b-value/versions/1", None)
            .await
            .1["id"],
        s(c)
    );
    assert_eq!(
        registry
            .call("GET", &format!("/schemas/ids/{a}"), None)
            .await
            .0,
        200
    );
    assert_eq!(
        registry.call("GET", "/config/b-value", None).await,
        (200, json!({"compatibilityLevel": "NONE"}))
    );
    assert_eq!(
        registry.call("GET", "/config", None).await,
        (200, json!({"compatibilityLevel": "FULL_TRANSITIVE"}))
    );
    // Ids continue after the highest one, never reuse it.
    let d = registry.register("c-value", r#""long""#).await;
    assert_eq!(d, a.max(b).max(c) + 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_schema_topic_holds_confluents_record_format() {
    let stack = Stack::get();
    let registry = Registry::start(stack).await;
    let id = registry.register("fmt-value", USER_V1).await;
    let records =
        crate::support::consume_from_start(&stack.kafka_brokers, &registry.topic, 2).await;
    let schema = records
        .iter()
        .find(|r| {
            r.key
                .as_deref()
                .is_some_and(|k| k.starts_with(br#"{"keytype":"SCHEMA""#))
        })
        .expect("a SCHEMA record");
    assert_eq!(
        String::from_utf8(schema.key.clone().unwrap()).unwrap(),
        r#"{"keytype":"SCHEMA","subject":"fmt-value","version":1,"magic":1}"#
    );
    let value: serde_json::Value = serde_json::from_slice(schema.value.as_ref().unwrap()).unwrap();
    assert_eq!(value["subject"], "fmt-value");
    assert_eq!(
        (value["version"].as_u64(), value["id"].as_u64()),
        (Some(1), Some(id))
    );
    assert_eq!(value["deleted"], false);
}

#[tokio::test(flavor = "multi_thread")]
async fn soft_and_permanent_deletes_follow_confluent() {
    let registry = Registry::start(Stack::get()).await;
    let id = registry.register("d-value", USER_V1).await;
    registry.register("d-value", USER_V2).await;
    let call = |m: &'static str, p: &'static str| registry.call(m, p, None);

    assert_eq!(
        call("DELETE", "/subjects/d-value?permanent=true").await.1["error_code"],
        40405
    );
    assert_eq!(
        call("DELETE", "/subjects/d-value/versions/latest?permanent=true")
            .await
            .1["error_code"],
        40407
    );
    assert_eq!(
        call("DELETE", "/subjects/d-value").await,
        (200, json!([1, 2]))
    );
    assert_eq!(call("GET", "/subjects").await, (200, json!([])));
    assert_eq!(
        call("GET", "/subjects?deleted=true").await,
        (200, json!(["d-value"]))
    );
    assert_eq!(
        call("GET", "/subjects/d-value/versions").await.1["error_code"],
        40401
    );
    assert_eq!(
        call("DELETE", "/subjects/d-value").await.1["error_code"],
        40404
    );
    // A soft-deleted schema still resolves by id: data written with it stays readable.
    assert_eq!(
        registry
            .call("GET", &format!("/schemas/ids/{id}"), None)
            .await
            .0,
        200
    );
    assert_eq!(
        call("DELETE", "/subjects/d-value?permanent=true").await,
        (200, json!([1, 2]))
    );
    assert_eq!(
        call("GET", "/subjects?deleted=true").await,
        (200, json!([]))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_get_confluents_error_codes() {
    let registry = Registry::start(Stack::get()).await;
    registry.register("e-value", USER_V1).await;
    let post = |p: &'static str, body: serde_json::Value| registry.call("POST", p, Some(body));
    let code = |r: (u16, serde_json::Value)| (r.0, r.1["error_code"].as_u64().unwrap_or(0));

    // Malformed schemas: not JSON, not Avro, a default of the wrong type.
    assert_eq!(
        code(post("/subjects/x/versions", json!({"schema": "{not json"})).await),
        (422, 42201)
    );
    assert_eq!(
        code(
            post(
                "/subjects/x/versions",
                json!({"schema": r#"{"type":"recrod"}"#})
            )
            .await
        ),
        (422, 42201)
    );
    assert_eq!(
        code(post("/subjects/x/versions", json!({"schema": r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int","default":"x"}]}"#})).await),
        (422, 42201)
    );
    assert_eq!(
        code(post("/subjects/x/versions", json!({})).await),
        (422, 42201)
    );
    assert_eq!(
        code(
            post(
                "/subjects/x/versions",
                json!({"schema": "\"string\"", "schemaType": "PROTOBUF"})
            )
            .await
        ),
        (422, 42201)
    );
    let (_, body) = post("/subjects/x/versions", json!({"schema": "{not json"})).await;
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .starts_with("Invalid schema"),
        "{body}"
    );

    // Malformed bodies and media types.
    let (status, text) = raw(
        &registry.url,
        "POST",
        "/subjects/x/versions",
        Some("{\"schema\": "),
        Some("application/json"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("\"error_code\":400"), "{text}");
    let (status, _) = raw(
        &registry.url,
        "POST",
        "/subjects/x/versions",
        Some("{}"),
        Some("text/plain"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(status, 415);

    // Unknown subjects, versions and ids.
    assert_eq!(
        code(registry.call("GET", "/subjects/nope/versions", None).await),
        (404, 40401)
    );
    assert_eq!(
        code(
            registry
                .call("GET", "/subjects/e-value/versions/9", None)
                .await
        ),
        (404, 40402)
    );
    assert_eq!(
        code(
            registry
                .call("GET", "/subjects/e-value/versions/zero", None)
                .await
        ),
        (422, 42202)
    );
    assert_eq!(
        code(registry.call("GET", "/schemas/ids/999999", None).await),
        (404, 40403)
    );
    assert_eq!(
        code(post("/subjects/e-value", json!({"schema": "\"int\""})).await),
        (404, 40403)
    );
    assert_eq!(
        code(registry.call("GET", "/config/e-value", None).await),
        (404, 40408)
    );
    assert_eq!(
        code(
            registry
                .call("PUT", "/config", Some(json!({"compatibility": "SIDEWAYS"})))
                .await
        ),
        (422, 42203)
    );
    assert_eq!(
        code(registry.call("GET", "/nowhere", None).await),
        (404, 404)
    );

    // An incompatible schema: 409, naming what breaks.
    let (status, body) = post("/subjects/e-value/versions", json!({"schema": r#"{"type":"record","name":"UserCreated","namespace":"users","fields":[{"name":"user_id","type":"long"},{"name":"email","type":"string"}]}"#})).await;
    assert_eq!((status, body["error_code"].as_u64()), (409, Some(409)));
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("READER_FIELD_MISSING_DEFAULT_VALUE") && message.contains("email"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn basic_auth_is_required_when_configured() {
    let registry = Registry::start_with(
        Stack::get(),
        Options {
            auth: Some(("reg-user".into(), "reg-secret".into())),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(registry.register("auth-value", USER_V1).await, 1);
    let (status, text) = raw(&registry.url, "GET", "/subjects", None, None, None)
        .await
        .unwrap();
    assert_eq!(status, 401);
    assert!(text.contains("\"error_code\":401"), "{text}");
    let (status, _) = raw(
        &registry.url,
        "GET",
        "/subjects",
        None,
        None,
        Some(("reg-user", "wrong")),
    )
    .await
    .unwrap();
    assert_eq!(status, 401);
}

/// Confluent's documented outcomes (Schema Evolution and Compatibility, "Summary"): which
/// change each level allows, checked by the compatibility endpoint and by registration.
#[tokio::test(flavor = "multi_thread")]
async fn the_compatibility_matrix_matches_confluents_documentation() {
    let registry = Registry::start(Stack::get()).await;
    let record = |fields: &str| format!(r#"{{"type":"record","name":"User","fields":[{fields}]}}"#);
    let status = r#"{"name":"status","type":{"type":"enum","name":"Status","symbols":["ACTIVE","BLOCKED"]}}"#;
    let base = record(&format!(
        r#"{{"name":"id","type":"int"}},{{"name":"name","type":"string"}},{status}"#
    ));
    let changes: [(&str, String); 7] = [
        (
            "add an optional field",
            record(&format!(
                r#"{{"name":"id","type":"int"}},{{"name":"name","type":"string"}},{status},{{"name":"email","type":["null","string"],"default":null}}"#
            )),
        ),
        (
            "add a required field",
            record(&format!(
                r#"{{"name":"id","type":"int"}},{{"name":"name","type":"string"}},{status},{{"name":"email","type":"string"}}"#
            )),
        ),
        (
            "remove a field",
            record(&format!(r#"{{"name":"id","type":"int"}},{status}"#)),
        ),
        (
            "promote int to long",
            record(&format!(
                r#"{{"name":"id","type":"long"}},{{"name":"name","type":"string"}},{status}"#
            )),
        ),
        (
            "change string to int",
            record(&format!(
                r#"{{"name":"id","type":"int"}},{{"name":"name","type":"int"}},{status}"#
            )),
        ),
        (
            "rename with an alias",
            record(&format!(
                r#"{{"name":"id","type":"int"}},{{"name":"full_name","type":"string","aliases":["name"]}},{status}"#
            )),
        ),
        (
            "add an enum symbol",
            record(
                r#"{"name":"id","type":"int"},{"name":"name","type":"string"},{"name":"status","type":{"type":"enum","name":"Status","symbols":["ACTIVE","BLOCKED","DELETED"]}}"#,
            ),
        ),
    ];
    // Rows: the changes above; columns: BACKWARD, FORWARD, FULL, NONE. The transitive levels
    // behave as their plain ones over a two-version history.
    let expected: [[bool; 4]; 7] = [
        [true, true, true, true],
        [false, true, false, true],
        [true, false, false, true],
        [true, false, false, true],
        [false, false, false, true],
        [true, false, false, true],
        [true, false, false, true],
    ];
    let levels = [
        ("BACKWARD", 0),
        ("BACKWARD_TRANSITIVE", 0),
        ("FORWARD", 1),
        ("FORWARD_TRANSITIVE", 1),
        ("FULL", 2),
        ("FULL_TRANSITIVE", 2),
        ("NONE", 3),
    ];
    let mut failures = Vec::new();
    for (level, column) in levels {
        for (row, (change, schema)) in changes.iter().enumerate() {
            let subject = format!("m-{}-{row}", level.to_lowercase());
            registry.set_level(&subject, level).await;
            registry.register(&subject, &base).await;
            let (_, check) = registry
                .post_schema(
                    &format!("/compatibility/subjects/{subject}/versions/latest?verbose=true"),
                    schema,
                )
                .await;
            let (status, _) = registry
                .post_schema(&format!("/subjects/{subject}/versions"), schema)
                .await;
            let want = expected[row][column];
            if check["is_compatible"] != json!(want) || (status == 200) != want {
                failures.push(format!("{level} / {change}: expected compatible={want}, endpoint said {check}, registration {status}"));
            }
            if !want {
                assert!(
                    !check["messages"].as_array().unwrap().is_empty(),
                    "{level} / {change}: no reason given"
                );
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Transitive levels compare with every earlier version, plain ones with the latest only.
#[tokio::test(flavor = "multi_thread")]
async fn transitive_levels_check_every_earlier_version() {
    let registry = Registry::start(Stack::get()).await;
    let id = r#"{"name":"id","type":"int"}"#;
    let v = |fields: &str| format!(r#"{{"type":"record","name":"R","fields":[{id}{fields}]}}"#);
    // BACKWARD: v3 reads v2 (which has `name`), but not v1 (which lacks it, and v3 has no default).
    let backward = [
        v(""),
        v(r#",{"name":"name","type":"string","default":"x"}"#),
        v(r#",{"name":"name","type":"string"}"#),
    ];
    // FORWARD: v2 reads v3 (its `name` has a default), but v1 does not.
    let forward = [
        v(r#",{"name":"name","type":"string"}"#),
        v(r#",{"name":"name","type":"string","default":"x"}"#),
        v(""),
    ];
    for (level, history, third_ok) in [
        ("BACKWARD", &backward, true),
        ("BACKWARD_TRANSITIVE", &backward, false),
        ("FORWARD", &forward, true),
        ("FORWARD_TRANSITIVE", &forward, false),
        ("FULL", &forward, true),
        ("FULL_TRANSITIVE", &forward, false),
    ] {
        let subject = format!("t-{}", level.to_lowercase());
        registry.set_level(&subject, level).await;
        for schema in &history[..2] {
            registry.set_level(&subject, "NONE").await;
            registry.register(&subject, schema).await;
        }
        registry.set_level(&subject, level).await;
        let (_, all) = registry
            .post_schema(
                &format!("/compatibility/subjects/{subject}/versions"),
                &history[2],
            )
            .await;
        let (status, body) = registry
            .post_schema(&format!("/subjects/{subject}/versions"), &history[2])
            .await;
        assert_eq!(
            (status == 200, all["is_compatible"].as_bool()),
            (third_ok, Some(third_ok)),
            "{level}: {body}"
        );
    }
}
