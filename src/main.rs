//! The `pgcable` command: parses the command line and calls the relay or a tool.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use pgcable::config::{Config, DbArgs, ServeArgs};
use pgcable::{check, db, dev, server, triggers};

/// pgcable: a Postgres change-feed relay that speaks ActionCable.
#[derive(Parser, Debug)]
#[command(name = "pgcable", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the relay.
    Serve(ServeArgs),
    /// Install, remove or inspect the change-feed triggers.
    Triggers {
        #[command(subcommand)]
        action: TriggersAction,
    },
    /// Run the whole loop locally: a demo database, the relay, a token and a live page.
    ///
    /// Creates a fresh database pgcable_demo_<random> on DATABASE_URL's server (it never writes
    /// into an existing database) or, if no server answers there, a throwaway cluster from the
    /// machine's PostgreSQL programs; loads the demo schema and data, installs the triggers,
    /// serves /cable and /demo, and prints a token, a psql command and the page's URL.
    /// Ctrl-C or SIGTERM removes everything it made.
    Dev(dev::DevArgs),
    /// Go/no-go report on the database and settings `serve` would use.
    ///
    /// One line per check (ok / warn / FAIL, with what to do); exit code 0 for go, 1 for no-go.
    Check(check::CheckArgs),
}

#[derive(Subcommand, Debug)]
enum TriggersAction {
    /// Install (or upgrade) the triggers; safe to run again.
    Install(DbArgs),
    /// Remove the triggers and schema `pgcable`; tables and data are untouched.
    Uninstall(DbArgs),
    /// Show, per table, whether the triggers are installed and their version.
    Status(DbArgs),
    /// Print the install SQL (for review or a migration tool).
    Sql {
        /// Print the uninstall SQL instead.
        #[arg(long)]
        uninstall: bool,
    },
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let result = match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Triggers { action } => triggers_command(action).await,
        Command::Dev(args) => dev::run(args).await.map(|()| ExitCode::SUCCESS),
        Command::Check(args) => Ok(if check::report(&args).await {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }),
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("pgcable: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: ServeArgs) -> Result<ExitCode, String> {
    let config = Config::from_args(args)?;
    let relay = server::start(config).await?;
    server::termination().await;
    tracing::info!("shutting down");
    relay.shutdown();
    relay.stopped().await;
    Ok(ExitCode::SUCCESS)
}

async fn connect(url: &str) -> Result<tokio_postgres::Client, String> {
    db::connect(url, db::POOL_APPLICATION_NAME, Duration::from_secs(10)).await
}

async fn triggers_command(action: TriggersAction) -> Result<ExitCode, String> {
    match action {
        TriggersAction::Sql { uninstall } => {
            print!(
                "{}",
                if uninstall {
                    triggers::UNINSTALL_SQL
                } else {
                    triggers::INSTALL_SQL
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        TriggersAction::Install(db) => {
            let client = connect(&db.database_url).await?;
            triggers::install(&client)
                .await
                .map_err(|e| format!("install failed: {}", db_error(&e)))?;
            println!(
                "pgcable triggers version {} installed in {}",
                triggers::VERSION,
                db::redact(&db.database_url)
            );
            Ok(ExitCode::SUCCESS)
        }
        TriggersAction::Uninstall(db) => {
            let client = connect(&db.database_url).await?;
            triggers::uninstall(&client)
                .await
                .map_err(|e| format!("uninstall failed: {}", db_error(&e)))?;
            println!(
                "pgcable triggers removed from {}",
                db::redact(&db.database_url)
            );
            Ok(ExitCode::SUCCESS)
        }
        TriggersAction::Status(db) => {
            let client = connect(&db.database_url).await?;
            let version = triggers::installed_version(&client)
                .await
                .map_err(|e| db_error(&e))?;
            let tables = triggers::status(&client).await.map_err(|e| db_error(&e))?;
            println!("{:<20} {:<8} triggers", "table", "exists");
            for t in &tables {
                println!(
                    "{:<20} {:<8} {}",
                    t.table,
                    if t.exists { "yes" } else { "no" },
                    if t.triggers.is_empty() {
                        "-".to_string()
                    } else {
                        t.triggers.join(", ")
                    }
                );
            }
            let all = tables.iter().all(|t| t.missing().is_empty());
            match version {
                Some(v) if v == triggers::VERSION && all => {
                    println!("installed version {v} (current)");
                    Ok(ExitCode::SUCCESS)
                }
                Some(v) if v < triggers::VERSION && triggers::usable(v) => {
                    println!(
                        "installed version {v}, this binary expects {}: the relay works, but {} need `pgcable triggers install`",
                        triggers::VERSION,
                        triggers::OLDER_LACKS
                    );
                    Ok(ExitCode::FAILURE)
                }
                Some(v) => {
                    println!(
                        "installed version {v}, this binary expects {}: run `pgcable triggers install`",
                        triggers::VERSION
                    );
                    Ok(ExitCode::FAILURE)
                }
                None => {
                    println!("not installed: run `pgcable triggers install`");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
    }
}

/// A database error with Postgres's own message, detail and hint when there are some.
fn db_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = db.message().to_string();
            if let Some(d) = db.detail() {
                s.push_str(&format!(" ({d})"));
            }
            if let Some(h) = db.hint() {
                s.push_str(&format!("; hint: {h}"));
            }
            s
        }
        None => e.to_string(),
    }
}
