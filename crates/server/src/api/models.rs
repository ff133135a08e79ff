//! The models: `GET /api/models` (every model any node has served, its pre-processing, and the
//! nodes that serve it now), and the choice of a submission's model (a name no node has served
//! is refused; one that no node serves right now is accepted, and its jobs wait).

use crate::error::{ApiError, ErrorBody};
use crate::AppState;
use axum::extract::State;
use axum::Json;
use imgclass_core::ErrorCode;
use serde::Serialize;
use std::time::Duration;

/// A node that has not announced its models for this long no longer serves them (nodes
/// announce at every lease sweep, a few seconds apart).
pub(crate) const LIVE: Duration = Duration::from_secs(60);

/// A model, as the nodes announced it.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct ModelView {
    #[schema(example = "efficientnet-lite0")]
    name: String,
    /// A digest of the model's file, as last announced.
    #[schema(example = "6bd9396de87e8bd0")]
    version: String,
    /// Its input (layout, size, colour order, mean/std, resize) and output (logits or
    /// probabilities), as its `model.toml` describes them.
    #[schema(value_type = Object)]
    spec: serde_json::Value,
    /// How many labels its output has.
    labels: u32,
    /// Whether jobs that name no model use this one.
    default: bool,
    /// The nodes that serve it now (none: its jobs wait).
    nodes: Vec<ModelNodeView>,
}

/// A node that serves a model now.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct ModelNodeView {
    node: String,
    /// The version that node holds.
    version: String,
    /// When it last said so.
    seen_at: chrono::DateTime<chrono::Utc>,
}

/// `GET /api/models`'s answer.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct ModelList {
    models: Vec<ModelView>,
    /// The model of a job that names none.
    default_model: String,
}

/// The models a job may name: each with its pre-processing, its labels count, and the nodes
/// that serve it now. A model no live node serves is listed with no nodes; jobs that name it
/// wait until a node serves it.
#[utoipa::path(get, path = "/api/models", tag = "models", operation_id = "list_models",
    responses(
        (status = 200, description = "The models.", body = ModelList),
        (status = 503, description = "`unavailable`: the database cannot be reached; try again.", body = ErrorBody),
    ))]
pub(super) async fn list_models(
    State(state): State<AppState>,
) -> Result<Json<ModelList>, ApiError> {
    let records = state.store.models(LIVE).await?;
    let models = records
        .into_iter()
        .map(|r| ModelView {
            default: r.entry.name == state.default_model,
            name: r.entry.name,
            version: r.entry.version,
            spec: r.entry.spec,
            labels: r.entry.labels,
            nodes: r
                .nodes
                .into_iter()
                .map(|n| ModelNodeView {
                    node: n.node,
                    version: n.version,
                    seen_at: n.seen_at,
                })
                .collect(),
        })
        .collect();
    Ok(Json(ModelList {
        models,
        default_model: state.default_model.clone(),
    }))
}

/// The model a submission's jobs use: the one it names, if any node has ever served it (or it
/// is the default), else the default model.
pub(super) async fn chosen(state: &AppState, named: Option<&str>) -> Result<Chosen, ApiError> {
    let Some(name) = named.filter(|n| *n != state.default_model) else {
        return Ok(Chosen {
            name: state.default_model.clone(),
            known: None,
        });
    };
    let known = state.store.models(LIVE).await?;
    if known.iter().any(|m| m.entry.name == name) {
        return Ok(Chosen {
            name: name.to_string(),
            known: Some(known),
        });
    }
    let names: Vec<&str> = known.iter().map(|m| m.entry.name.as_str()).collect();
    Err(ApiError::from_code(
        ErrorCode::UnknownModel,
        format!(
            "no node serves or has served a model named {name:?}; the models are: {}",
            if names.is_empty() {
                state.default_model.clone()
            } else {
                names.join(", ")
            }
        ),
    ))
}

/// The model a submission names, and the models as the check read them (`None` for the
/// default model, which needs no read): the result cache looks up the model's version there.
pub(super) struct Chosen {
    pub(super) name: String,
    pub(super) known: Option<Vec<imgclass_store::ModelRecord>>,
}

/// `POST /api/models/reload`'s answer.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Reloaded {
    /// The models this node serves now.
    models: Vec<String>,
}

/// Loads this node's models again — the model repository as it is now — and serves them, as
/// SIGHUP does: a model whose file is unchanged keeps its sessions, a new or changed one is
/// loaded, a removed one is let go once its running attempts end (an attempt finishes on the
/// version it started with). No job is lost or failed. Needs an `admin` token.
#[utoipa::path(post, path = "/api/models/reload", tag = "models", operation_id = "reload_models",
    responses(
        (status = 200, description = "The models this node serves now.", body = Reloaded),
        (status = 409, description = "`invalid_state`: this node runs no workers (reload the worker nodes with SIGHUP), or the models could not be loaded (the message says why; the node serves what it served before).", body = ErrorBody),
    ))]
pub(super) async fn reload_models(
    State(state): State<AppState>,
) -> Result<Json<Reloaded>, ApiError> {
    let Some(reload) = &state.reload else {
        return Err(ApiError::from_code(
            ErrorCode::InvalidState,
            "this node runs no workers: send SIGHUP to the worker nodes to reload their models",
        ));
    };
    match reload().await {
        Ok(models) => Ok(Json(Reloaded { models })),
        Err(why) => Err(ApiError::from_code(
            ErrorCode::InvalidState,
            format!("the models were not reloaded (the node serves what it served before): {why}"),
        )),
    }
}

/// Says why each queued job of `jobs` waits when no node serves its model now (a model the
/// nodes announced before). Reads the models once, only when a job is queued; a failed read
/// leaves the jobs as they are.
pub(super) async fn explain_waits(state: &AppState, jobs: &mut [super::views::JobView]) {
    if !jobs
        .iter()
        .any(|j| j.status == imgclass_core::JobStatus::Queued)
    {
        return;
    }
    let Ok(models) = state.store.models(LIVE).await else {
        return;
    };
    for job in jobs
        .iter_mut()
        .filter(|j| j.status == imgclass_core::JobStatus::Queued)
    {
        let unserved = models
            .iter()
            .any(|m| m.entry.name == job.model && m.nodes.is_empty());
        if unserved {
            job.waiting = Some(format!("no worker serves the model {}", job.model));
        }
    }
}
