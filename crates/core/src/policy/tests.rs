//! The rules as a table: state × happening → decision, without a database.

use super::*;
use Count::{Add, Keep, Reset, Sub};
use JobStatus::{Canceled, Failed, Queued, Running, Succeeded};

fn counters(status: JobStatus, run_attempts: u32, max_attempts: u32, stalls: u32) -> Counters {
    Counters {
        status,
        run_attempts,
        max_attempts,
        stalls,
    }
}

fn errored(code: ErrorCode) -> Happened {
    Happened::Errored {
        code,
        message: "it broke".into(),
        retry_after: None,
    }
}

fn record(code: ErrorCode, message: &str) -> ErrorChange {
    ErrorChange::Record {
        code,
        message: message.into(),
    }
}

/// One row of the table: what is expected of a decision.
struct Row {
    to: JobStatus,
    event: EventKind,
    run_in: Option<Duration>,
    counts: [Count; 3],
    error: ErrorChange,
    result: ResultChange,
    finished: Finish,
    started: bool,
}

fn check(c: Counters, h: Happened, want: Row) {
    let d = decide(&Rules::default(), c, h.clone(), 1.0).unwrap();
    let got = (
        d.to,
        d.event,
        d.run_in,
        [d.attempts, d.run_attempts, d.stalls],
        d.error.clone(),
        d.result,
        d.finished,
        d.started,
    );
    let expected = (
        want.to,
        want.event,
        want.run_in,
        want.counts,
        want.error,
        want.result,
        want.finished,
        want.started,
    );
    assert_eq!(got, expected, "{c:?} × {h:?}");
    assert_eq!(d.event, d.action.event(), "{c:?} × {h:?}");
    assert_eq!(c.status.apply(d.action), Ok(d.to), "{c:?} × {h:?}");
}

const ZERO: Option<Duration> = Some(Duration::ZERO);

#[test]
fn every_allowed_transition_as_a_table() {
    let stall_again = "the worker running this job stopped renewing its lease; it was queued again";
    let stall_end = "the worker running this job stopped renewing its lease, and it cannot run \
                     again (no attempt left, or its worker was lost more than 3 times)";
    let rows: Vec<(Counters, Happened, Row)> = vec![
        (
            counters(Queued, 0, 3, 0),
            Happened::Claimed,
            Row {
                to: Running,
                event: EventKind::Running,
                run_in: None,
                counts: [Add(1), Add(1), Keep],
                error: ErrorChange::Keep,
                result: ResultChange::Keep,
                finished: Finish::Keep,
                started: true,
            },
        ),
        (
            counters(Running, 1, 3, 0),
            Happened::Succeeded,
            Row {
                to: Succeeded,
                event: EventKind::Succeeded,
                run_in: None,
                counts: [Keep, Keep, Keep],
                error: ErrorChange::Clear,
                result: ResultChange::Store,
                finished: Finish::Now,
                started: false,
            },
        ),
        // A retryable error with attempts left: back with backoff 1 s × 2^(2−1).
        (
            counters(Running, 2, 3, 0),
            errored(ErrorCode::Timeout),
            Row {
                to: Queued,
                event: EventKind::Requeued,
                run_in: Some(Duration::from_secs(2)),
                counts: [Keep, Keep, Keep],
                error: record(ErrorCode::Timeout, "it broke"),
                result: ResultChange::Clear,
                finished: Finish::Keep,
                started: false,
            },
        ),
        // The last attempt fails for good.
        (
            counters(Running, 3, 3, 0),
            errored(ErrorCode::Timeout),
            Row {
                to: Failed,
                event: EventKind::Failed,
                run_in: None,
                counts: [Keep, Keep, Keep],
                error: record(ErrorCode::Timeout, "it broke"),
                result: ResultChange::Clear,
                finished: Finish::Now,
                started: false,
            },
        ),
        // A bad image cannot be fixed by retrying.
        (
            counters(Running, 1, 3, 0),
            errored(ErrorCode::ImageCorrupt),
            Row {
                to: Failed,
                event: EventKind::Failed,
                run_in: None,
                counts: [Keep, Keep, Keep],
                error: record(ErrorCode::ImageCorrupt, "it broke"),
                result: ResultChange::Clear,
                finished: Finish::Now,
                started: false,
            },
        ),
        (
            counters(Running, 1, 3, 0),
            Happened::ImageMissing,
            Row {
                to: Failed,
                event: EventKind::Failed,
                run_in: None,
                counts: [Keep, Keep, Keep],
                error: record(ErrorCode::Internal, "the job's image is missing"),
                result: ResultChange::Clear,
                finished: Finish::Now,
                started: false,
            },
        ),
        (
            counters(Running, 1, 3, 0),
            Happened::LeaseExpired,
            Row {
                to: Queued,
                event: EventKind::Requeued,
                run_in: ZERO,
                counts: [Keep, Keep, Add(1)],
                error: record(ErrorCode::Stalled, stall_again),
                result: ResultChange::Keep,
                finished: Finish::Keep,
                started: false,
            },
        ),
        // Lost too often.
        (
            counters(Running, 1, 3, 3),
            Happened::LeaseExpired,
            Row {
                to: Failed,
                event: EventKind::Failed,
                run_in: None,
                counts: [Keep, Keep, Add(1)],
                error: record(ErrorCode::Stalled, stall_end),
                result: ResultChange::Keep,
                finished: Finish::Now,
                started: false,
            },
        ),
        // No attempt left.
        (
            counters(Running, 3, 3, 0),
            Happened::LeaseExpired,
            Row {
                to: Failed,
                event: EventKind::Failed,
                run_in: None,
                counts: [Keep, Keep, Add(1)],
                error: record(ErrorCode::Stalled, stall_end),
                result: ResultChange::Keep,
                finished: Finish::Now,
                started: false,
            },
        ),
        // Given back at shutdown: the attempt does not count.
        (
            counters(Running, 1, 3, 0),
            Happened::Released,
            Row {
                to: Queued,
                event: EventKind::Requeued,
                run_in: ZERO,
                counts: [Sub(1), Sub(1), Keep],
                error: ErrorChange::Keep,
                result: ResultChange::Keep,
                finished: Finish::Keep,
                started: false,
            },
        ),
        // Its image store did not answer: it waits, and the attempt does not count (even the
        // last one: an outage fails no job for good).
        (
            counters(Running, 3, 3, 0),
            Happened::Deferred {
                wait: Duration::from_secs(5),
            },
            Row {
                to: Queued,
                event: EventKind::Requeued,
                run_in: Some(Duration::from_secs(5)),
                counts: [Sub(1), Sub(1), Keep],
                error: ErrorChange::Keep,
                result: ResultChange::Keep,
                finished: Finish::Keep,
                started: false,
            },
        ),
        (
            counters(Queued, 0, 3, 0),
            Happened::CancelRequested,
            Row {
                to: Canceled,
                event: EventKind::Canceled,
                run_in: None,
                counts: [Keep, Keep, Keep],
                error: ErrorChange::Keep,
                result: ResultChange::Keep,
                finished: Finish::Now,
                started: false,
            },
        ),
        (
            counters(Running, 1, 3, 0),
            Happened::CancelRequested,
            Row {
                to: Canceled,
                event: EventKind::Canceled,
                run_in: None,
                counts: [Keep, Keep, Keep],
                error: ErrorChange::Keep,
                result: ResultChange::Keep,
                finished: Finish::Now,
                started: false,
            },
        ),
    ];
    // A person's retry of a failed or canceled job: a new round of attempts.
    let retries = [Failed, Canceled].map(|status| {
        (
            counters(status, 3, 3, 2),
            Happened::RetryRequested,
            Row {
                to: Queued,
                event: EventKind::Retried,
                run_in: ZERO,
                counts: [Keep, Reset, Reset],
                error: ErrorChange::Keep,
                result: ResultChange::Keep,
                finished: Finish::Clear,
                started: false,
            },
        )
    });
    for (c, h, want) in rows.into_iter().chain(retries) {
        check(c, h, want);
    }
}

#[test]
fn every_other_pair_is_refused() {
    let happenings = [
        Happened::Claimed,
        Happened::Succeeded,
        errored(ErrorCode::Timeout),
        Happened::ImageMissing,
        Happened::LeaseExpired,
        Happened::Released,
        Happened::Deferred {
            wait: Duration::from_secs(1),
        },
        Happened::RetryRequested,
        Happened::CancelRequested,
    ];
    let allowed = |s: JobStatus, h: &Happened| match h {
        Happened::Claimed => s == Queued,
        Happened::RetryRequested => matches!(s, Failed | Canceled),
        Happened::CancelRequested => matches!(s, Queued | Running),
        _ => s == Running,
    };
    for status in JobStatus::ALL {
        for h in &happenings {
            let d = decide(&Rules::default(), counters(status, 1, 3, 0), h.clone(), 1.0);
            assert_eq!(d.is_ok(), allowed(status, h), "{status:?} × {h:?}");
        }
    }
}

#[test]
fn an_asked_for_delay_wins_when_longer() {
    let asked = |secs: f64| Happened::Errored {
        code: ErrorCode::Unavailable,
        message: "busy".into(),
        retry_after: Some(Duration::from_secs_f64(secs)),
    };
    let rules = Rules::default();
    let d = decide(&rules, counters(Running, 1, 3, 0), asked(30.0), 1.0).unwrap();
    assert_eq!(d.run_in, Some(Duration::from_secs(30)));
    let d = decide(&rules, counters(Running, 1, 3, 0), asked(0.001), 1.0).unwrap();
    assert_eq!(d.run_in, Some(Duration::from_secs(1)));
}

#[test]
fn configured_stalls_are_the_limit() {
    let rules = Rules {
        max_stalls: 1,
        ..Rules::default()
    };
    let d = decide(
        &rules,
        counters(Running, 1, 3, 1),
        Happened::LeaseExpired,
        1.0,
    )
    .unwrap();
    assert_eq!(d.to, Failed);
    assert!(
        matches!(d.error, ErrorChange::Record { ref message, .. } if message.contains("more than 1 times"))
    );
}

#[test]
fn counts_apply_without_going_below_zero() {
    assert_eq!(Add(1).apply(2), 3);
    assert_eq!(Sub(1).apply(0), 0);
    assert_eq!(Reset.apply(7), 0);
    assert_eq!(Keep.apply(7), 7);
}

#[test]
fn creation_is_queued_or_answered_from_the_cache() {
    assert_eq!(
        create(false),
        Creation {
            status: Queued,
            finished: false,
            events: &[EventKind::Created],
        }
    );
    assert_eq!(
        create(true),
        Creation {
            status: Succeeded,
            finished: true,
            events: &[EventKind::Created, EventKind::Succeeded],
        }
    );
}

#[test]
fn backoff_grows_and_is_capped() {
    let rules = Rules {
        backoff_base: Duration::from_secs(1),
        backoff_max: Duration::from_secs(10),
        max_stalls: 3,
    };
    assert_eq!(backoff(&rules, 1, 1.0), Duration::from_secs(1));
    assert_eq!(backoff(&rules, 1, 0.5), Duration::from_millis(500));
    assert_eq!(backoff(&rules, 3, 1.0), Duration::from_secs(4));
    assert_eq!(backoff(&rules, 9, 1.0), Duration::from_secs(10));
    assert_eq!(backoff(&rules, 9, 0.0), Duration::from_secs(5));
    assert_eq!(backoff(&rules, 200, 1.0), Duration::from_secs(10));
}

#[test]
fn deliveries_as_a_table() {
    let rules = DeliveryRules {
        max_attempts: 3,
        schedule_scale: 1.0,
    };
    let secs = |s| DeliveryDecision::RetryIn(Duration::from_secs(s));
    let rows = [
        (1, Some(200), None, DeliveryDecision::Delivered),
        (1, Some(204), None, DeliveryDecision::Delivered),
        (3, Some(299), None, DeliveryDecision::Delivered),
        (1, Some(410), None, DeliveryDecision::Gone),
        (1, Some(500), None, secs(5)),
        (1, None, None, secs(5)),
        (2, Some(404), None, secs(300)),
        (1, Some(429), Some(Duration::from_secs(60)), secs(60)),
        (2, Some(503), Some(Duration::from_secs(60)), secs(300)),
        (3, Some(500), None, DeliveryDecision::GiveUp),
        (3, None, None, DeliveryDecision::GiveUp),
    ];
    for (attempt, status, retry_after, want) in rows {
        assert_eq!(
            delivery(&rules, attempt, status, retry_after, 1.0),
            want,
            "attempt {attempt}, {status:?}"
        );
    }
    let many = DeliveryRules {
        max_attempts: 100,
        schedule_scale: 0.001,
    };
    // The last wait repeats; the scale and jitter apply.
    assert_eq!(
        delivery(&many, 50, None, None, 1.1),
        DeliveryDecision::RetryIn(Duration::from_secs(36_000).mul_f64(0.001 * 1.1))
    );
}
