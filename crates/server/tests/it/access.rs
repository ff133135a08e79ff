//! API tokens and ownership over real HTTP: 401 without a usable token, 403 without the scope,
//! 404 for another token's job on every route, and what an admin token sees.

use crate::events::SseReader;
use crate::helpers::{assert_error, fixture, TestApp};
use imgclass_core::{ErrorCode, JobId, JobStatus, Scope};
use imgclass_server::auth::{Jobs, API_RULES};
use imgclass_store::{JobError, Outcome};
use reqwest::Method;
use serde_json::Value;
use std::collections::HashSet;
use std::time::Duration;

const USER: &[Scope] = &Scope::DEFAULT;

/// An app with three users: alice and bob (submit, read, manage) and an admin.
struct Users {
    app: TestApp,
    alice: String,
    bob: String,
    admin: String,
}

async fn users() -> Users {
    let app = TestApp::without_workers().await;
    let alice = app.token("alice", USER).await;
    let bob = app.token("bob", USER).await;
    let admin = app.token("admin", &[Scope::Admin]).await;
    Users {
        app,
        alice,
        bob,
        admin,
    }
}

async fn status_of(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Makes a job of `token`'s fail, as a worker would.
async fn fail(app: &TestApp, id: JobId) {
    let claims = app
        .store
        .claim("test", 10, Duration::from_secs(60))
        .await
        .unwrap();
    let claim = claims
        .into_iter()
        .find(|c| c.job.id == id)
        .expect("claimed");
    let error = JobError {
        code: ErrorCode::ImageCorrupt,
        message: "boom".into(),
    };
    assert!(app
        .store
        .finish(
            &claim.lease,
            Outcome::Errored {
                error,
                retry_after: None,
            }
        )
        .await
        .unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_usable_token_every_api_route_answers_401() {
    let u = users().await;
    let app = &u.app;
    let id = app
        .submit_as(&u.alice, "c.png", fixture("coffee.png"))
        .await;
    let revoked = app.token("gone", USER).await;
    app.store.revoke_token("gone").await.unwrap();
    let expired = app
        .token_expiring("old", USER, Some(Duration::from_millis(1)))
        .await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    // The same id with another secret.
    let forged = format!("{}{}", &u.alice[..u.alice.len() - 4], "0000");

    let credentials: [(&str, Option<&str>, &str); 6] = [
        ("none", None, "needs an API token"),
        ("garbage", Some("not-a-token"), "not valid"),
        ("forged", Some(&forged), "not valid"),
        ("unknown id", Some("imgc_000000000000_00"), "not valid"),
        ("revoked", Some(&revoked), "revoked"),
        ("expired", Some(&expired), "expired"),
    ];
    for rule in API_RULES {
        let path = rule.path.replace("{id}", &id.to_string());
        let method = Method::from_bytes(rule.method.as_bytes()).unwrap();
        for (what, token, says) in &credentials {
            let resp = app
                .request(method.clone(), &path, *token)
                .send()
                .await
                .unwrap();
            assert_eq!(
                resp.headers()
                    .get("www-authenticate")
                    .map(|v| v.to_str().unwrap()),
                Some("Bearer realm=\"imgclass\""),
                "{what}: {} {path}",
                rule.method
            );
            let message = assert_error(resp, 401, "unauthorized").await;
            assert!(message.contains(says), "{what}: {message}");
        }
    }
    // A scheme other than Bearer is no token either.
    let resp = app
        .client
        .get(app.url("/api/jobs"))
        .basic_auth("alice", Some(&u.alice))
        .send()
        .await
        .unwrap();
    assert_error(resp, 401, "unauthorized").await;
    // Nothing was changed by any of it.
    assert_eq!(
        app.store.get_job(id).await.unwrap().unwrap().status,
        JobStatus::Queued
    );

    // What is not the API needs no token: the page and the liveness check.
    assert_eq!(reqwest::get(app.url("/")).await.unwrap().status(), 200);
    assert_eq!(
        reqwest::get(app.url("/healthz")).await.unwrap().status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_without_the_routes_scope_gets_403() {
    let u = users().await;
    let app = &u.app;
    let reader = app.token("reader", &[Scope::Read]).await;
    let submitter = app.token("uploader", &[Scope::Submit]).await;
    let manager = app.token("janitor", &[Scope::Manage]).await;
    let id = app
        .submit_as(&submitter, "c.png", fixture("coffee.png"))
        .await;

    // Each route, with a token that has every scope but the one it needs.
    for rule in API_RULES {
        let token = match rule.scope {
            Scope::Read => &submitter,
            Scope::Submit | Scope::Manage => &reader,
            Scope::Admin => &u.alice,
        };
        let path = rule.path.replace("{id}", &id.to_string());
        let method = Method::from_bytes(rule.method.as_bytes()).unwrap();
        let resp = app
            .request(method, &path, Some(token))
            .send()
            .await
            .unwrap();
        let message = assert_error(resp, 403, "forbidden").await;
        assert!(
            message.contains(&format!("lacks the {} scope", rule.scope)),
            "{message}"
        );
    }
    // With the scope, the same requests go through.
    let (status, list) = status_of(
        app.request(Method::GET, "/api/jobs", Some(&reader))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(list["jobs"].as_array().unwrap().len(), 0, "not its job");
    let resp = app
        .request(
            Method::POST,
            &format!("/api/jobs/{id}/cancel"),
            Some(&manager),
        )
        .send()
        .await
        .unwrap();
    assert_error(resp, 404, "not_found").await;
    let resp = app
        .upload_as(&submitter, "c.png", fixture("coffee.png"))
        .await;
    assert_eq!(resp.status(), 202);
}

/// Bob's request on alice's job, alice's own and the admin's, for each route that names a job.
/// Each case gets a fresh job of alice's, in the state the route acts on.
async fn one_job_case(u: &Users, method: &str, pattern: &str) {
    let app = &u.app;
    let id = app
        .submit_as(&u.alice, "c.png", fixture("coffee.png"))
        .await;
    if pattern.ends_with("/retry") {
        fail(app, id).await;
    }
    let before = app.store.get_job(id).await.unwrap().unwrap();
    let path = pattern.replace("{id}", &id.to_string());
    let method = Method::from_bytes(method.as_bytes()).unwrap();

    // Bob: exactly what a job that does not exist answers, and nothing changes.
    let resp = app
        .request(method.clone(), &path, Some(&u.bob))
        .send()
        .await
        .unwrap();
    let not_yours = assert_error(resp, 404, "not_found").await;
    let missing = pattern.replace("{id}", &JobId::new().to_string());
    let resp = app
        .request(method.clone(), &missing, Some(&u.bob))
        .send()
        .await
        .unwrap();
    assert_eq!(assert_error(resp, 404, "not_found").await, not_yours);
    assert_eq!(app.store.get_job(id).await.unwrap().unwrap(), before);

    // Alice and the admin reach the job (the admin on a second job of alice's).
    let expected = match (method.as_str(), pattern) {
        ("DELETE", _) => 204,
        _ => 200,
    };
    let resp = app
        .request(method.clone(), &path, Some(&u.alice))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), expected, "alice: {method} {pattern}");
    let other = app
        .submit_as(&u.alice, "c.png", fixture("coffee.png"))
        .await;
    if pattern.ends_with("/retry") {
        fail(app, other).await;
    }
    let path = pattern.replace("{id}", &other.to_string());
    let resp = app
        .request(method.clone(), &path, Some(&u.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), expected, "admin: {method} {pattern}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tokens_never_see_each_others_jobs_on_any_route() {
    let u = users().await;
    let app = &u.app;
    let mut covered = HashSet::new();
    for rule in API_RULES {
        let key = format!("{} {}", rule.method, rule.path);
        match (rule.jobs, rule.method, rule.path) {
            (Jobs::One, method, path) => one_job_case(&u, method, path).await,
            (Jobs::Create, "POST", "/api/jobs") => {
                let id = app.submit_as(&u.bob, "c.png", fixture("coffee.png")).await;
                let job = app.store.get_job(id).await.unwrap().unwrap();
                assert_eq!(job.owner, Some(token_id(app, "bob").await));
                let resp = app
                    .request(Method::GET, &format!("/api/jobs/{id}"), Some(&u.alice))
                    .send()
                    .await
                    .unwrap();
                assert_error(resp, 404, "not_found").await;
            }
            (Jobs::Own, "GET", "/api/jobs") => list_case(&u).await,
            (Jobs::Own, "GET", "/api/stats") => stats_case(&u).await,
            (Jobs::Own, "POST", "/api/jobs/retry-failed") => retry_failed_case(&u).await,
            (Jobs::Own, "GET", "/api/events") => events_case(&u).await,
            (Jobs::Own, "GET", "/api/jobs/export") => export_case(&u).await,
            (Jobs::Own, "POST", "/api/jobs/cancel-queued") => cancel_queued_case(&u).await,
            (Jobs::Own, "POST", "/api/jobs/delete-finished") => delete_finished_case(&u).await,
            // A reload is the node's, no one's jobs: an admin's (a node without workers
            // answers that it has none to reload).
            (Jobs::None, "POST", "/api/models/reload") => {
                let resp = app
                    .request(Method::POST, "/api/models/reload", Some(&u.admin))
                    .send()
                    .await
                    .unwrap();
                assert_error(resp, 409, "invalid_state").await;
            }
            // The models are no one's jobs: any token with `read` sees the same list.
            (Jobs::None, "GET", "/api/models") => {
                for token in [&u.alice, &u.bob] {
                    let resp = app
                        .request(Method::GET, "/api/models", Some(token))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(resp.status(), 200);
                }
            }
            _ => panic!(
                "{key} has no ownership case here: add one that proves another token cannot \
                 see or touch its jobs"
            ),
        }
        covered.insert(key);
    }
    assert_eq!(covered.len(), API_RULES.len(), "every rule is one route");
}

async fn ids_in(resp: reqwest::Response) -> Vec<String> {
    let (status, body) = status_of(resp).await;
    assert_eq!(status, 200, "{body}");
    body["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect()
}

async fn list_case(u: &Users) {
    let app = &u.app;
    let a = app
        .submit_as(&u.alice, "a.png", fixture("coffee.png"))
        .await;
    let b = app.submit_as(&u.bob, "b.png", fixture("coffee.png")).await;
    let list = |token: &str| {
        app.request(Method::GET, "/api/jobs?limit=200", Some(token))
            .send()
    };
    let mine = ids_in(list(&u.alice).await.unwrap()).await;
    let theirs = ids_in(list(&u.bob).await.unwrap()).await;
    let all = ids_in(list(&u.admin).await.unwrap()).await;
    assert!(mine.contains(&a.to_string()) && !mine.contains(&b.to_string()));
    assert!(theirs.contains(&b.to_string()) && !theirs.contains(&a.to_string()));
    assert!(mine.iter().all(|id| !theirs.contains(id)));
    assert_eq!(all.len(), mine.len() + theirs.len());
    // A cursor from alice's list pages through alice's jobs only.
    let page = app
        .request(Method::GET, "/api/jobs?limit=1", Some(&u.bob))
        .send()
        .await
        .unwrap();
    let body: Value = page.json().await.unwrap();
    if let Some(cursor) = body["next_cursor"].as_str() {
        let rest = ids_in(
            app.request(
                Method::GET,
                &format!("/api/jobs?limit=200&cursor={cursor}"),
                Some(&u.bob),
            )
            .send()
            .await
            .unwrap(),
        )
        .await;
        assert!(rest.iter().all(|id| theirs.contains(id)));
    }
}

async fn stats_case(u: &Users) {
    let app = &u.app;
    let stats = |token: String| async move {
        let resp = app
            .request(Method::GET, "/api/stats", Some(&token))
            .send()
            .await
            .unwrap();
        let (status, body) = status_of(resp).await;
        assert_eq!(status, 200);
        body["counts"]["queued"].as_u64().unwrap()
    };
    let bob_before = stats(u.bob.clone()).await;
    let all_before = stats(u.admin.clone()).await;
    app.submit_as(&u.alice, "a.png", fixture("coffee.png"))
        .await;
    assert_eq!(
        stats(u.bob.clone()).await,
        bob_before,
        "alice's job is not bob's"
    );
    assert_eq!(stats(u.admin.clone()).await, all_before + 1);
    let queued = app
        .store
        .queued_jobs_of(&token_id(app, "alice").await)
        .await
        .unwrap();
    assert_eq!(stats(u.alice.clone()).await, queued);
}

async fn token_id(app: &TestApp, name: &str) -> String {
    app.store
        .list_tokens()
        .await
        .unwrap()
        .into_iter()
        .find(|t| t.name == name)
        .unwrap()
        .id
}

async fn retry_failed_case(u: &Users) {
    let app = &u.app;
    let a = app
        .submit_as(&u.alice, "a.png", fixture("coffee.png"))
        .await;
    fail(app, a).await;
    let resp = app
        .request(Method::POST, "/api/jobs/retry-failed", Some(&u.bob))
        .send()
        .await
        .unwrap();
    let (status, body) = status_of(resp).await;
    assert_eq!((status, body["count"].as_u64()), (200, Some(0)), "{body}");
    let job = app.store.get_job(a).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Failed);
    let resp = app
        .request(Method::POST, "/api/jobs/retry-failed", Some(&u.alice))
        .send()
        .await
        .unwrap();
    let (status, body) = status_of(resp).await;
    assert_eq!(status, 200);
    assert!(body["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .any(|j| j["id"] == a.to_string()));
    // The admin's takes everyone's.
    let b = app.submit_as(&u.bob, "b.png", fixture("coffee.png")).await;
    fail(app, b).await;
    let resp = app
        .request(Method::POST, "/api/jobs/retry-failed", Some(&u.admin))
        .send()
        .await
        .unwrap();
    let (_, body) = status_of(resp).await;
    assert!(body["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .any(|j| j["id"] == b.to_string()));
}

async fn export_case(u: &Users) {
    let app = &u.app;
    let a = app
        .submit_as(&u.alice, "a.png", fixture("coffee.png"))
        .await;
    let b = app.submit_as(&u.bob, "b.png", fixture("coffee.png")).await;
    let export = |token: String| async move {
        let resp = app
            .request(Method::GET, "/api/jobs/export?format=json", Some(&token))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let jobs: Vec<Value> = resp.json().await.unwrap();
        jobs.iter()
            .map(|j| j["id"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    let bobs = export(u.bob.clone()).await;
    assert!(bobs.contains(&b.to_string()) && !bobs.contains(&a.to_string()));
    let all = export(u.admin.clone()).await;
    assert!(all.contains(&a.to_string()) && all.contains(&b.to_string()));
}

async fn cancel_queued_case(u: &Users) {
    let app = &u.app;
    let a = app
        .submit_as(&u.alice, "to-cancel.png", fixture("coffee.png"))
        .await;
    // With a filter that names alice's job, so that bob's own jobs stay as they are.
    let cancel = |token: String| async move {
        let resp = app
            .request(
                Method::POST,
                "/api/jobs/cancel-queued?q=to-cancel.png",
                Some(&token),
            )
            .send()
            .await
            .unwrap();
        let (status, body) = status_of(resp).await;
        assert_eq!(status, 200, "{body}");
        body["count"].as_u64().unwrap()
    };
    assert_eq!(cancel(u.bob.clone()).await, 0);
    let job = app.store.get_job(a).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Queued, "alice's job is not bob's");
    assert_eq!(cancel(u.alice.clone()).await, 1);
    let job = app.store.get_job(a).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Canceled);
}

async fn delete_finished_case(u: &Users) {
    let app = &u.app;
    let a = app
        .submit_as(&u.alice, "to-delete.png", fixture("coffee.png"))
        .await;
    fail(app, a).await;
    // With a filter that names alice's job, so that bob's own jobs stay (the events case
    // replays them).
    let delete = |token: String| async move {
        let resp = app
            .request(
                Method::POST,
                "/api/jobs/delete-finished?q=to-delete.png",
                Some(&token),
            )
            .send()
            .await
            .unwrap();
        let (status, body) = status_of(resp).await;
        assert_eq!(status, 200, "{body}");
        body["count"].as_u64().unwrap()
    };
    assert_eq!(delete(u.bob.clone()).await, 0);
    assert!(
        app.store.get_job(a).await.unwrap().is_some(),
        "bob cannot delete alice's job"
    );
    assert_eq!(delete(u.alice.clone()).await, 1);
    assert!(app.store.get_job(a).await.unwrap().is_none());
}

async fn events_case(u: &Users) {
    let app = &u.app;
    // Replayed from the start of the log and live: bob's stream has only bob's jobs, ending
    // with a job bob creates last; the admin's has alice's too.
    let mut bob_live = SseReader::open_as(app, Some(&u.bob), None).await;
    let a = app
        .submit_as(&u.alice, "a.png", fixture("coffee.png"))
        .await;
    app.request(Method::DELETE, &format!("/api/jobs/{a}"), Some(&u.alice))
        .send()
        .await
        .unwrap();
    let last = app.submit_as(&u.bob, "b.png", fixture("coffee.png")).await;
    let bob_jobs: HashSet<String> = ids_in(
        app.request(Method::GET, "/api/jobs?limit=200", Some(&u.bob))
            .send()
            .await
            .unwrap(),
    )
    .await
    .into_iter()
    .collect();
    for reader in [
        &mut bob_live,
        &mut SseReader::open_as(app, Some(&u.bob), Some("0")).await,
    ] {
        loop {
            let (_, kind, data) = reader.next().await;
            let job = data["job_id"].as_str().unwrap().to_string();
            assert_ne!(job, a.to_string(), "bob saw alice's {kind} event");
            assert!(
                bob_jobs.contains(&job) || kind == "deleted",
                "bob saw {kind} of {job}"
            );
            if job == last.to_string() && kind == "created" {
                break;
            }
        }
    }
    let mut admin = SseReader::open_as(app, Some(&u.admin), Some("0")).await;
    let mut seen = Vec::new();
    loop {
        let (_, kind, data) = admin.next().await;
        if data["job_id"] == a.to_string() {
            seen.push(kind.clone());
        }
        if data["job_id"] == last.to_string() && kind == "created" {
            break;
        }
    }
    assert_eq!(seen, ["created", "deleted"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_may_come_as_a_query_parameter_for_reads_only() {
    let u = users().await;
    let app = &u.app;
    let id = app
        .submit_as(&u.alice, "c.png", fixture("coffee.png"))
        .await;
    // What a browser's <img> and EventSource can send.
    let resp = app
        .client
        .get(app.url(&format!("/api/jobs/{id}/image?access_token={}", u.alice)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = app
        .client
        .get(app.url(&format!("/api/jobs/{id}/image?access_token={}", u.bob)))
        .send()
        .await
        .unwrap();
    assert_error(resp, 404, "not_found").await;
    let resp = app
        .client
        .delete(app.url(&format!("/api/jobs/{id}?access_token={}", u.alice)))
        .send()
        .await
        .unwrap();
    assert_error(resp, 401, "unauthorized").await;
}
