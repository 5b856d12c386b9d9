//! The `chat-server` binary: see the crate docs of `chat_server` and `--help`.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use chat_server::operator::Operator;
use chat_server::storage;
use chat_server::{Cli, Command, ServerError, ServerOptions, options::LogFormat};
use clap::Parser;
use tracing_subscriber::EnvFilter;

/// mimalloc instead of the system allocator: a send allocates a few dozen small buffers
/// (request, message, answer, frame), freed on other threads; measured with the load
/// generator at 256 senders, the server's CPU per send fell from 28.3 to 24.4 µs
/// (BENCHMARKS.md). A host embedding chatcore picks its own allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(error) = init_logging(&cli.server) {
        eprintln!("chat-server: {error}");
        return ExitCode::FAILURE;
    }
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(cli.server).await,
        Command::CreateUser {
            username,
            password_stdin,
        } => create_user(&cli.server, &username, password_stdin).await,
        Command::ListUsers { prefix, limit } => list_users(&cli.server, prefix, limit).await,
        Command::SetPassword {
            username,
            password_stdin,
        } => set_password(&cli.server, &username, password_stdin).await,
        Command::DeleteUser { username, yes } => delete_user(&cli.server, &username, yes).await,
        Command::RevokeSessions { username } => revoke_sessions(&cli.server, &username).await,
        Command::Migrate => migrate(&cli.server).await,
        Command::Openapi { output } => openapi(output),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let mut message = error.to_string();
            let mut source = std::error::Error::source(&error);
            while let Some(cause) = source {
                message.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            eprintln!("chat-server: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr as `--log-format` says, filtered by `--log`; a filter that does not parse
/// stops the start (no silent fallback to another filter).
fn init_logging(options: &ServerOptions) -> Result<(), ServerError> {
    let filter = EnvFilter::try_new(&options.log)
        .map_err(|error| ServerError::Config(format!("bad --log filter {:?}: {error}", options.log)))?;
    // Colours only for a person at a terminal: a file or a log collector gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match options.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

async fn serve(options: ServerOptions) -> Result<(), ServerError> {
    // Every connection is a descriptor: use all the hard limit allows (logged), and the
    // server sheds connections before reaching it (`--descriptor-reserve`).
    if let Err(error) = chatcore_axum::raise_descriptor_limit() {
        tracing::warn!(%error, "could not raise the file descriptor limit");
    }
    // Before the address is printed: a SIGTERM from then on is a graceful shutdown.
    let shutdown = chat_server::shutdown_signal();
    // Before anything registers a metric handle.
    let metrics = chat_server::metrics::setup(&options).await?;
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|error| listen_error(options.listen, error))?;
    let metrics_address = match &metrics {
        chat_server::metrics::Metrics::Separate(_, metrics_listener) => Some(metrics_listener.local_addr()?),
        _ => None,
    };
    let address = listener.local_addr()?;
    // Printed once the database is open and the control socket is up, so that a script that
    // read the address can use the API and the operator commands at once. Tests and scripts
    // read this line to learn the port when listening on port 0.
    let announce = move || {
        if let Some(metrics_address) = metrics_address {
            println!("chat-server metrics on http://{metrics_address}/metrics");
        }
        println!("chat-server listening on http://{address}");
        std::io::stdout().flush()
    };
    chat_server::run(options, listener, metrics, shutdown, announce).await
}

/// Why the address could not be bound, and what to do about it.
fn listen_error(address: std::net::SocketAddr, error: std::io::Error) -> ServerError {
    let hint = match error.kind() {
        std::io::ErrorKind::AddrInUse => {
            "the address is in use (is another server running?): stop it or pick another --listen"
        }
        std::io::ErrorKind::PermissionDenied => {
            "permission denied: ports below 1024 need privileges; pick another --listen port"
        }
        std::io::ErrorKind::AddrNotAvailable => {
            "no interface of this machine has that address: check --listen"
        }
        _ => "check --listen",
    };
    ServerError::Config(format!("cannot listen on {address}: {error}; {hint}"))
}

fn openapi(output: Option<std::path::PathBuf>) -> Result<(), ServerError> {
    let json = chat_server::openapi_description()?;
    match output {
        Some(path) => std::fs::write(&path, json)?,
        None => std::io::stdout().write_all(json.as_bytes())?,
    }
    Ok(())
}

async fn migrate(options: &ServerOptions) -> Result<(), ServerError> {
    let backend = storage::open(options).await?;
    let migrated = storage::migrate(&*backend).await;
    backend.close().await?;
    migrated?;
    println!("schema is up to date");
    Ok(())
}

async fn create_user(
    options: &ServerOptions,
    username: &str,
    password_stdin: bool,
) -> Result<(), ServerError> {
    let password = read_password("create-user", username, password_stdin)?;
    let mut operator = Operator::open(options).await?;
    let result = operator.create_user(username, &password).await;
    operator.close().await?;
    let user = result?;
    println!("created user {} (id {})", user.username, user.id);
    Ok(())
}

async fn list_users(options: &ServerOptions, prefix: String, limit: u32) -> Result<(), ServerError> {
    let mut operator = Operator::open_existing(options, "list-users").await?;
    let result = operator.list_users(prefix, limit).await;
    operator.close().await?;
    for user in result?.users {
        println!("{}\t{}", user.id, user.username);
    }
    Ok(())
}

/// A new password for `username`: the first line of stdin with `--password-stdin`, else asked
/// twice at the terminal (none: the error says to use `--password-stdin`).
fn read_password(command: &str, username: &str, password_stdin: bool) -> Result<String, ServerError> {
    if !password_stdin && !std::io::stdin().is_terminal() {
        return Err(ServerError::Config(format!(
            "no terminal to ask for {username}'s password: pipe it in with --password-stdin \
             (e.g. `echo 'a long password' | chat-server {command} {username} --password-stdin`)"
        )));
    }
    if password_stdin {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        return Ok(line.trim_end_matches(['\r', '\n']).to_owned());
    }
    let first = rpassword::prompt_password(format!("Password for {username}: "))?;
    let again = rpassword::prompt_password("Again: ")?;
    if first != again {
        return Err(ServerError::Config("the passwords differ".into()));
    }
    Ok(first)
}

/// Runs `work` where `command` works ([`Operator::open_existing`]), then closes what it
/// opened whatever happened; also returns when the users' open WebSockets close.
async fn operate<T>(
    options: &ServerOptions,
    command: &str,
    work: impl AsyncFnOnce(&mut Operator) -> Result<T, ServerError>,
) -> Result<(T, String), ServerError> {
    let mut operator = Operator::open_existing(options, command).await?;
    let result = work(&mut operator).await;
    let note = operator.sockets_note();
    operator.close().await?;
    Ok((result?, note))
}

async fn set_password(
    options: &ServerOptions,
    username: &str,
    password_stdin: bool,
) -> Result<(), ServerError> {
    let password = read_password("set-password", username, password_stdin)?;
    let (ended, note) = operate(options, "set-password", async |operator: &mut Operator| {
        operator.set_password(username, &password).await
    })
    .await?;
    println!(
        "set the password of {}; ended {} session(s); {note}",
        ended.username, ended.ended_sessions
    );
    Ok(())
}

async fn delete_user(options: &ServerOptions, username: &str, yes: bool) -> Result<(), ServerError> {
    if !yes {
        if !std::io::stdin().is_terminal() {
            return Err(ServerError::Config(format!(
                "no terminal to confirm the deletion of {username}: add --yes \
                 (e.g. `chat-server delete-user {username} --yes`)"
            )));
        }
        print!(
            "Delete {username} for good? Their sessions end, every message they sent is erased \
             (peers keep a \"deleted\" placeholder) and the name stays reserved. Type the name to confirm: "
        );
        std::io::stdout().flush()?;
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        if line.trim() != username {
            return Err(ServerError::Config(format!(
                "not confirmed: {username} was not deleted"
            )));
        }
    }
    let (deleted, note) = operate(options, "delete-user", async |operator: &mut Operator| {
        operator.delete_user(username).await
    })
    .await?;
    println!(
        "deleted user {}: {} message(s) erased; the name stays reserved; {note}",
        deleted.username, deleted.erased_messages
    );
    Ok(())
}

async fn revoke_sessions(options: &ServerOptions, username: &str) -> Result<(), ServerError> {
    let (ended, note) = operate(options, "revoke-sessions", async |operator: &mut Operator| {
        operator.revoke_sessions(username).await
    })
    .await?;
    println!(
        "ended {} session(s) of {}; {note}",
        ended.ended_sessions, ended.username
    );
    Ok(())
}
