//! `imgclass token`: creates, lists and revokes API tokens in the database.

use crate::args::{TokenArgs, TokenCommand};
use crate::node::open_store;
use anyhow::Result;
use std::process::ExitCode;

pub async fn run(args: TokenArgs) -> Result<ExitCode> {
    // Said every time: without --database the token goes into ./data/imgclass.db, which is
    // not the database of a server started elsewhere.
    eprintln!("imgclass: using the database {}", args.db.shown());
    let store = open_store(&args.db).await?;
    let time = |t: Option<chrono::DateTime<chrono::Utc>>| {
        t.map_or_else(
            || "-".to_string(),
            |t| t.format("%Y-%m-%d %H:%M").to_string(),
        )
    };
    match args.command {
        TokenCommand::Create {
            name,
            scope,
            expires,
        } => {
            let (shown, new) = imgclass_server::auth::issue(&name, &scope.0, expires)
                .map_err(anyhow::Error::msg)?;
            let stored = store.create_token(&new).await?;
            eprintln!(
                "token {:?} (id {}, scopes {}, expires {}); it is shown only now:",
                stored.name,
                stored.id,
                imgclass_core::Scope::join(&stored.scopes),
                time(stored.expires_at)
            );
            println!("{shown}");
        }
        TokenCommand::List => {
            let now = chrono::Utc::now();
            println!(
                "{:<12}  {:<24}  {:<26}  {:<16}  {:<16}  state",
                "id", "name", "scopes", "created", "expires"
            );
            for t in store.list_tokens().await? {
                let state = if t.revoked_at.is_some() {
                    "revoked"
                } else if t.is_active(now) {
                    "active"
                } else {
                    "expired"
                };
                println!(
                    "{:<12}  {:<24}  {:<26}  {:<16}  {:<16}  {state}",
                    t.id,
                    t.name,
                    imgclass_core::Scope::join(&t.scopes),
                    time(Some(t.created_at)),
                    time(t.expires_at)
                );
            }
        }
        TokenCommand::Revoke { name } => match store.revoke_token(&name).await {
            Ok(t) => println!("revoked {:?} (id {})", t.name, t.id),
            Err(imgclass_store::StoreError::NotFound) => {
                anyhow::bail!("no token has the name or id {name:?}")
            }
            Err(e) => return Err(e.into()),
        },
    }
    Ok(ExitCode::SUCCESS)
}
