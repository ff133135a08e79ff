//! `--database` as users write it: before or after the subcommand (and its own subcommand), from
//! `IMGCLASS_DATABASE`, said on stderr by `token` and `migrate`, and never with its password.

use super::{bin, token_cmd, Server};
use std::path::Path;
use std::process::{Command, Output};

/// Runs `imgclass ARGS` in `dir`, without `IMGCLASS_DATABASE` unless `env` gives it.
fn run(dir: &Path, args: &[&str], env: Option<&str>) -> Output {
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .env_remove("IMGCLASS_DATABASE");
    if let Some(url) = env {
        cmd.env("IMGCLASS_DATABASE", url);
    }
    cmd.output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn the_database_is_taken_before_and_after_the_subcommand_and_said() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/jobs.db", dir.path().display());
    let used = format!("using the database {db}\n");
    for args in [
        // As the README writes it.
        vec!["token", "create", "--name", "after", "--database", &db],
        vec!["token", "--database", &db, "create", "--name", "between"],
        vec!["--database", &db, "token", "create", "--name", "before"],
        vec!["migrate", "--database", &db],
        vec!["--database", &db, "migrate"],
    ] {
        let out = run(dir.path(), &args, None);
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert!(out.status.success(), "{args:?}: {stderr}");
        assert!(stderr.contains(&used), "{args:?}: {stderr}");
        if args.contains(&"create") {
            assert!(stdout.starts_with("imgc_"), "{args:?}: {stdout}");
        }
    }
    let (ok, list, err) = token_cmd(&db, &["list"]);
    assert!(ok, "{err}");
    for name in ["after", "between", "before"] {
        assert!(list.contains(name), "{list}");
    }
    // Nothing went into ./data/imgclass.db.
    assert!(!dir.path().join("data").exists());

    // The environment variable, which a flag overrides anywhere on the line.
    let other = format!("sqlite://{}/other.db", dir.path().display());
    let out = run(dir.path(), &["token", "list"], Some(&db));
    assert!(text(&out.stdout).contains("between"));
    assert!(text(&out.stderr).contains(&used), "{}", text(&out.stderr));
    let out = run(
        dir.path(),
        &["token", "list", "--database", &other],
        Some(&db),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        !text(&out.stdout).contains("between"),
        "{}",
        text(&out.stdout)
    );
    assert!(text(&out.stderr).contains(&format!("using the database {other}\n")));

    // Without either, the default is named, so a token made there by mistake is noticed.
    let out = run(dir.path(), &["token", "list"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("using the database sqlite://data/imgclass.db\n"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn serve_takes_the_database_before_the_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/jobs.db", dir.path().display());
    let server = Server::spawn_with(
        &["--database", &db],
        &["serve", "--listen", "127.0.0.1:0", "--no-workers"],
    );
    let log = server.log.lock().unwrap().join("\n");
    assert!(
        log.contains("database open") && log.contains(&format!("database={db}")),
        "{log}"
    );
    assert!(dir.path().join("jobs.db").exists());
}

#[test]
fn classify_and_submit_refuse_a_database() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        ["classify", "--database", "sqlite://x.db", "a.png"],
        ["--database", "sqlite://x.db", "submit", "a.png"],
    ] {
        let out = run(dir.path(), &args, None);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = text(&out.stderr);
        assert!(stderr.contains("uses no database"), "{args:?}: {stderr}");
    }
    // The variable, meant for the other subcommands, is no reason to refuse.
    let out = run(
        dir.path(),
        &["submit", "--server", "http://127.0.0.1:9", "a.png"],
        Some("sqlite://x.db"),
    );
    assert!(!text(&out.stderr).contains("uses no database"));
}

#[test]
fn a_password_in_the_database_url_is_never_printed() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on port 1: each command fails to connect and says so.
    let url = "postgres://imgclass:s3cret-pw@127.0.0.1:1/imgclass";
    let shown = "postgres://imgclass:***@127.0.0.1:1/imgclass";
    let to = format!("sqlite://{}/copy.db", dir.path().display());
    let runs: Vec<(Vec<&str>, std::process::Child)> = [
        vec!["migrate", "--database", url],
        vec!["token", "list", "--database", url],
        vec!["migrate", "--from", url, "--to", &to],
    ]
    .into_iter()
    .map(|args| {
        let child = Command::new(bin())
            .args(&args)
            .current_dir(dir.path())
            .env("NO_COLOR", "1")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        (args, child)
    })
    .collect();
    for (args, child) in runs {
        let out = child.wait_with_output().unwrap();
        let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert!(!out.status.success(), "{args:?}: {all}");
        assert!(all.contains(shown), "{args:?}: {all}");
        assert!(!all.contains("s3cret"), "{args:?}: {all}");
    }
    // Nor does the help show the variable's value.
    let out = run(dir.path(), &["token", "create", "--help"], Some(url));
    let help = text(&out.stdout);
    assert!(help.contains("--database") && help.contains("IMGCLASS_DATABASE"));
    assert!(!help.contains("s3cret"), "{help}");
}
