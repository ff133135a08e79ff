//! `GET /api/events`: server-sent events of job changes. A client that reconnects with
//! `Last-Event-ID` (or `?after=SEQ`) first gets every event it missed from the event log, then
//! live events; a new client gets live events only.

use super::extract::ApiQuery;
use crate::caller::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::AppState;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::stream::{self, Stream};
use imgclass_store::{Event, Store};
use serde::Deserialize;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::{self, error::RecvError};

use super::views::EventView;

const REPLAY_PAGE: usize = 500;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct EventParams {
    /// Replay the events after this sequence number first (as `Last-Event-ID` does).
    #[param(minimum = 0)]
    after: Option<i64>,
}

struct Cursor {
    store: Arc<dyn Store>,
    live: broadcast::Receiver<Event>,
    /// Highest sequence number sent so far.
    last: i64,
    /// Events read from the log, not yet sent.
    backlog: VecDeque<Event>,
    /// Whether the log must be read before taking live events again.
    catching_up: bool,
    /// Only the events of jobs this caller may see are sent.
    caller: Caller,
    /// Counts this stream among the open ones while it lives.
    _counted: Option<crate::metrics::SseGuard>,
}

fn to_sse(e: Event) -> SseEvent {
    let id = e.seq.to_string();
    let kind = e.kind.as_str();
    let data = serde_json::to_string(&EventView::from(e)).unwrap_or_else(|_| "{}".into());
    SseEvent::default().id(id).event(kind).data(data)
}

/// One server-sent event as it is framed on the stream.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // Only describes the stream; `to_sse` writes it.
pub(super) struct StreamEvent {
    /// The event's sequence number: send it back as `Last-Event-ID` to resume.
    #[schema(pattern = "^[0-9]+$")]
    id: String,
    /// The kind of change.
    event: imgclass_core::EventKind,
    /// An `EventView`, as JSON.
    #[schema(content_media_type = "application/json")]
    data: String,
}

/// Server-sent events of every job change, as they are committed, on whichever node.
///
/// Each event's `id` is its sequence number, its `event` the kind of change and its `data` an
/// `Event` (JSON). A client that reconnects with `Last-Event-ID` (or `?after=`) first gets what
/// it missed. The stream does not end; a comment keeps it alive every 15 s.
#[utoipa::path(get, path = "/api/events", tag = "events", operation_id = "events",
    params(EventParams,
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this sequence number (a value that is not one is ignored).")),
    responses(
        (status = 200, description = "The event stream (`text/event-stream`); each event's `data` is an `EventView`.",
            content_type = "text/event-stream", body = StreamEvent),
        (status = 400, description = "`bad_request`: `after` is not a whole number from 0.", body = ErrorBody),
        (status = 503, description = "`unavailable`: the database cannot be reached; try again.", body = ErrorBody),
    ))]
pub(super) async fn stream(
    State(state): State<AppState>,
    caller: Caller,
    metrics: Option<axum::Extension<Arc<crate::metrics::Metrics>>>,
    headers: HeaderMap,
    ApiQuery(params): ApiQuery<EventParams>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    if params.after.is_some_and(|a| a < 0) {
        return Err(ApiError::from_code(
            imgclass_core::ErrorCode::BadRequest,
            "after must be a sequence number (0 or more)",
        ));
    }
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok())
        .or(params.after);
    // Subscribe before reading the log position so that nothing falls in between.
    let live = state.store.subscribe();
    let (last, catching_up) = match resume {
        Some(seq) => (seq.max(0), true),
        None => (state.store.last_event_seq().await?, false),
    };
    let cursor = Cursor {
        store: state.store.clone(),
        live,
        last,
        backlog: VecDeque::new(),
        catching_up,
        caller,
        _counted: metrics.map(|m| m.sse_client()),
    };
    let events = stream::unfold(cursor, |mut c| async move {
        loop {
            if let Some(e) = c.backlog.pop_front() {
                if e.seq <= c.last {
                    continue;
                }
                c.last = e.seq;
                if !c.caller.may_see(e.owner.as_deref()) {
                    continue;
                }
                return Some((Ok(to_sse(e)), c));
            }
            if c.catching_up {
                match c.store.events_since(c.last, REPLAY_PAGE).await {
                    Ok(page) => {
                        c.catching_up = page.len() == REPLAY_PAGE;
                        c.backlog.extend(page);
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "event replay failed; closing the stream");
                        return None;
                    }
                }
            }
            match c.live.recv().await {
                Ok(e) => c.backlog.push_back(e),
                Err(RecvError::Lagged(_)) => c.catching_up = true,
                Err(RecvError::Closed) => return None,
            }
        }
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
