//! The `wenxiao-gateway` command line.

use crate::config::Config;
use crate::registry::Registry;
use crate::server;
use crate::store::Store;
use anyhow::Context as _;
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use wenxiao_protocol::DeviceId;

/// The Wenxiao terminal gateway.
#[derive(Debug, Parser)]
#[command(name = "wenxiao-gateway", version)]
struct Cli {
    /// Configuration file; without it, `config/gateway.toml` below the working directory
    /// (an error if there is none).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Log lines as text, or as JSON objects (the level filter is `RUST_LOG`).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "WENXIAO_LOG_FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway until SIGTERM or Ctrl-C, then drain and exit 0.
    Serve,
    /// The development PKI.
    Pki {
        #[command(subcommand)]
        command: PkiCommand,
    },
    /// The store's schema.
    Db {
        #[command(subcommand)]
        command: DbCommand,
    },
    /// The merchant and device registry.
    Registry {
        #[command(subcommand)]
        command: RegistryCommand,
    },
    /// Daily clearing and settlement.
    Clearing {
        #[command(subcommand)]
        command: ClearingCommand,
    },
    /// Organizer awards: a fixed sum per qualifying show, paid by the bureau.
    Awards {
        #[command(subcommand)]
        command: AwardsCommand,
    },
    /// Console users: passwords (argon2), roles, bearer tokens.
    Users {
        #[command(subcommand)]
        command: UsersCommand,
    },
    /// The audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Fraud cases: alerts and residents' reports grouped by card or merchant.
    Cases {
        #[command(subcommand)]
        command: CasesCommand,
    },
    /// The card blacklist: blacklisted cards' purchases earn no subsidy.
    Blacklist {
        #[command(subcommand)]
        command: BlacklistCommand,
    },
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, with the span's and event's fields.
    Json,
}

#[derive(Debug, Subcommand)]
enum UsersCommand {
    /// Add a console user. The password is read from the environment variable named by
    /// `--password-env`, else from the first line of standard input.
    Add {
        /// The login name (letters, digits, `.`, `_`, `-`).
        name: String,
        /// Comma-separated roles: viewer, operator, auditor, risk, admin, app.
        #[arg(long)]
        roles: String,
        /// Read the password from this environment variable.
        #[arg(long, conflicts_with = "no_password")]
        password_env: Option<String>,
        /// No password: the user cannot log in to the pages and works with bearer tokens
        /// (`users token`) only, as machine clients do.
        #[arg(long)]
        no_password: bool,
    },
    /// Issue (replace) a user's bearer token for machine clients; prints it once.
    Token { name: String },
    /// List users and their roles.
    List,
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Recompute the log's hash chain; exits 1 naming the first row that does not hold.
    Verify,
}

#[derive(Debug, Subcommand)]
enum CasesCommand {
    /// Cases, newest first.
    List {
        /// Only cases of this status (OPEN, ASSIGNED, CONFIRMED, DISMISSED, LIFTED).
        #[arg(long)]
        status: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// One case with its alerts, reports and trail, as JSON.
    Show { case: i64 },
    /// Take a case (or give it to someone).
    Assign {
        case: i64,
        /// To whom.
        #[arg(long)]
        to: String,
        /// Who does it (recorded).
        #[arg(long)]
        by: String,
        /// Why (recorded).
        #[arg(long, default_value = "taken for review")]
        reason: String,
    },
    /// Fraud confirmed: blacklist the card (it reaches the terminals' hot list at once)
    /// or suspend the merchant.
    Confirm {
        case: i64,
        #[arg(long)]
        by: String,
        #[arg(long)]
        reason: String,
    },
    /// No fraud.
    Dismiss {
        case: i64,
        #[arg(long)]
        by: String,
        #[arg(long)]
        reason: String,
    },
    /// Undo a confirmation: the card off the list, the merchant active again.
    Lift {
        case: i64,
        #[arg(long)]
        by: String,
        #[arg(long)]
        reason: String,
    },
}

#[derive(Debug, Subcommand)]
enum BlacklistCommand {
    /// Blacklist a card (from now on; transactions already stored keep their subsidy).
    Add {
        card: u64,
        /// Why (the verified report, the case number).
        #[arg(long)]
        reason: String,
    },
    /// Take a card off the blacklist.
    Remove { card: u64 },
    /// List every card of a CSV file (header `card_no,reason`) as one hot-list version.
    /// The whole file is checked first: one bad line and nothing is listed.
    Import { file: PathBuf },
    /// The hot list's current version and size.
    Status,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum AwardKind {
    /// A show by a national-level troupe.
    NationalTroupe,
    /// A show of a national-award work.
    NationalAwardWork,
}

#[derive(Debug, Subcommand)]
enum AwardsCommand {
    /// Record an award with its evidence (the amount comes from the policy).
    Add {
        /// The organizer's merchant id.
        #[arg(long)]
        organizer: i64,
        /// The show's date, yyyymmdd.
        #[arg(long)]
        show_date: u32,
        #[arg(long, value_enum)]
        kind: AwardKind,
        /// Document references proving the show qualifies.
        #[arg(long)]
        evidence: String,
    },
    /// The audit step: approve an award, drawing it from the budget of its show's month.
    Approve {
        #[arg(long)]
        id: i64,
    },
}

#[derive(Debug, Subcommand)]
enum ClearingCommand {
    /// Clear business day DATE (yyyymmdd) and write its settlement files. Running it again
    /// changes nothing and rewrites the same files.
    Run {
        #[arg(long)]
        date: u32,
    },
    /// The audit step: release DATE's credits for loading.
    Approve {
        #[arg(long)]
        date: u32,
    },
}

#[derive(Debug, Subcommand)]
enum PkiCommand {
    /// Create a device CA and a server certificate for localhost in DIR
    /// (default: DATA_DIR/pki).
    Init { dir: Option<PathBuf> },
    /// Issue a device certificate (CN = ID) into DIR/devices/ID.{pem,key}.
    Device {
        id: u64,
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum DbCommand {
    /// Apply pending schema migrations (also done at every start).
    Migrate,
}

#[derive(Debug, Subcommand)]
enum RegistryCommand {
    /// Insert or update merchants and devices from CSV files (default: the configured
    /// `registry.merchants_path` and `registry.devices_path`).
    Import {
        #[arg(long)]
        merchants: Option<PathBuf>,
        #[arg(long)]
        devices: Option<PathBuf>,
    },
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing_as(cli.log_format);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_tracing() {
    init_tracing_as(LogFormat::Text);
}

/// Installs the log subscriber: `RUST_LOG` filters (default `info`), lines go to stderr
/// as text or JSON.
pub fn init_tracing_as(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
}

/// The configuration: `--config`, else `config/gateway.toml` below the working directory.
/// Neither is an error: silently running on defaults would run a node with other keys,
/// stores and paths than its operator meant.
fn load_config(path: Option<&Path>) -> anyhow::Result<Config> {
    let default = Path::new("config/gateway.toml");
    match path {
        Some(p) => Ok(Config::load(p)?),
        None if default.exists() => Ok(Config::load(default)?),
        None => {
            let cwd = std::env::current_dir().unwrap_or_default();
            anyhow::bail!(
                "no configuration: {} not found (looked in {}); pass --config PATH",
                default.display(),
                cwd.display()
            )
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let config = load_config(cli.config.as_deref())?;
    let pki_dir = config.data_dir.join("pki");
    match cli.command {
        Command::Serve => serve(config),
        Command::Pki {
            command: PkiCommand::Init { dir },
        } => {
            let dir = dir.unwrap_or(pki_dir);
            crate::pki::init(&dir)?;
            println!("development PKI written to {}", dir.display());
            Ok(())
        }
        Command::Pki {
            command: PkiCommand::Device { id, dir },
        } => {
            let (cert, key) = crate::pki::device(&dir.unwrap_or(pki_dir), DeviceId(id))?;
            println!("{}\n{}", cert.display(), key.display());
            Ok(())
        }
        Command::Db {
            command: DbCommand::Migrate,
        } => with_store(&config, |store| async move {
            store.migrate().await?;
            println!("store migrated");
            Ok(())
        }),
        Command::Clearing { command } => clearing(&config, command),
        Command::Awards { command } => awards(&config, command),
        Command::Cases { command } => cases(&config, command),
        Command::Users { command } => users(&config, command),
        Command::Audit {
            command: AuditCommand::Verify,
        } => with_store(&config, |store| async move {
            store.migrate().await?;
            match store.verify_audit().await? {
                crate::audit::Verdict::Intact { rows } => {
                    println!("audit log intact: {rows} rows, every hash holds");
                    Ok(())
                }
                crate::audit::Verdict::Broken { seq, reason } => {
                    anyhow::bail!("audit log broken at row {seq}: {reason}")
                }
            }
        }),
        Command::Blacklist { command } => with_store(&config, |store| async move {
            store.migrate().await?;
            let now = crate::clock::now_ms();
            let keep_versions = config.hotlist.delta_versions_kept;
            let change = |add, remove, source: String| crate::store::HotlistChange {
                add,
                remove,
                source,
                now_ms: now,
                keep_versions,
            };
            let report = |what: &str, c: crate::store::HotlistChanged| match c.version {
                Some(v) => println!(
                    "{what}: hot-list version {v} ({} listed, {} taken off)",
                    c.added, c.removed
                ),
                None => println!("{what}: nothing changed (hot list unchanged)"),
            };
            match command {
                BlacklistCommand::Add { card, reason } => {
                    let reason =
                        crate::hotlist::check_reason(&reason).map_err(anyhow::Error::msg)?;
                    let card = crate::hotlist::check_card(card).map_err(anyhow::Error::msg)?;
                    let c = store
                        .change_hotlist(change(vec![(card, reason)], Vec::new(), "cli add".into()))
                        .await?;
                    report(&format!("card {}", card.get()), c);
                }
                BlacklistCommand::Remove { card } => {
                    let card = crate::hotlist::check_card(card).map_err(anyhow::Error::msg)?;
                    let c = store
                        .change_hotlist(change(Vec::new(), vec![card], "cli remove".into()))
                        .await?;
                    report(&format!("card {}", card.get()), c);
                }
                BlacklistCommand::Import { file } => {
                    let text =
                        std::fs::read(&file).with_context(|| format!("read {}", file.display()))?;
                    let cards = crate::hotlist::parse_import(&text)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
                    let n = cards.len();
                    let source = format!("import {}", file.display());
                    let c = store
                        .change_hotlist(change(cards, Vec::new(), source))
                        .await?;
                    report(&format!("{n} cards imported"), c);
                }
                BlacklistCommand::Status => {
                    let (head, cards) = store.hotlist_full().await?;
                    println!(
                        "hot-list version {} made at {} ms: {} cards; deltas kept from version {}",
                        head.version,
                        head.created_at_ms,
                        cards.len(),
                        head.delta_floor
                    );
                }
            }
            Ok(())
        }),
        Command::Registry {
            command: RegistryCommand::Import { merchants, devices },
        } => {
            let merchants = merchants.unwrap_or_else(|| config.registry.merchants_path.clone());
            let devices = devices.unwrap_or_else(|| config.registry.devices_path.clone());
            let registry = Registry::from_csv(&merchants, &devices)?;
            with_store(&config, |store| async move {
                store.migrate().await?;
                store.import_registry(&registry).await?;
                println!(
                    "imported {} merchants and {} devices",
                    registry.merchants().len(),
                    registry.devices().len()
                );
                Ok(())
            })
        }
    }
}

fn clearing(config: &Config, command: ClearingCommand) -> anyhow::Result<()> {
    let policy = crate::policy::Policy::load(&config.policy_path)?;
    let (date, step) = match command {
        ClearingCommand::Run { date } => (
            date,
            crate::clearing::Step::Clear {
                approve: config.clearing.auto_approve,
            },
        ),
        ClearingCommand::Approve { date } => (date, crate::clearing::Step::Approve),
    };
    let date = wenxiao_protocol::BusinessDate::new(date)?;
    let dir = config.data_dir.join(&config.clearing.settlement_dir);
    let grace_ms = config.clearing.grace_ms;
    with_store(config, |store| async move {
        store.migrate().await?;
        let clock = (
            crate::clock::now_ms(),
            i64::try_from(grace_ms).unwrap_or(i64::MAX),
        );
        let (report, files) =
            crate::clearing::run_day(&store, step, date, policy.points.fen_per_point, clock, &dir)
                .await?;
        let s = report.summary;
        println!(
            "{date}: {} transactions, subsidy {} yuan, {} credits totalling {} yuan, {}",
            s.txn_count,
            s.subsidy_fen,
            s.credit_count,
            s.credit_fen,
            if s.approved {
                "approved"
            } else {
                "awaiting approval"
            }
        );
        for f in files {
            println!("{}", f.display());
        }
        Ok(())
    })
}

fn awards(config: &Config, command: AwardsCommand) -> anyhow::Result<()> {
    use crate::registry::Category;
    use crate::store::{AwardApproval, AwardInput, IngestCtx};
    let policy = crate::policy::Policy::load(&config.policy_path)?;
    with_store(config, |store| async move {
        store.migrate().await?;
        let now = crate::clock::now_ms();
        match command {
            AwardsCommand::Add {
                organizer,
                show_date,
                kind,
                evidence,
            } => {
                let registry = store.load_registry().await?;
                let m = registry
                    .merchant(crate::registry::MerchantId(organizer))
                    .ok_or_else(|| anyhow::anyhow!("no merchant {organizer}"))?;
                anyhow::ensure!(
                    m.category == Category::Organizer,
                    "{} is not a performance organizer",
                    m.name
                );
                anyhow::ensure!(!evidence.trim().is_empty(), "an award needs its evidence");
                let (code, amount) = match kind {
                    AwardKind::NationalTroupe => {
                        (1, policy.organizer_award.national_troupe_show_fen)
                    }
                    AwardKind::NationalAwardWork => {
                        (2, policy.organizer_award.national_award_work_show_fen)
                    }
                };
                let id = store
                    .record_award(AwardInput {
                        merchant_id: m.merchant_id,
                        show_date: wenxiao_protocol::BusinessDate::new(show_date)?,
                        kind: code,
                        amount_fen: wenxiao_protocol::Fen(amount),
                        evidence,
                        now_ms: now,
                    })
                    .await?;
                println!(
                    "award {id} recorded: {} yuan to {}, awaiting approval",
                    wenxiao_protocol::Fen(amount),
                    m.name
                );
            }
            AwardsCommand::Approve { id } => {
                let today = crate::clock::business_date(now)
                    .ok_or_else(|| anyhow::anyhow!("clock out of range"))?;
                match store
                    .approve_award(id, IngestCtx::new(&policy, 0), today, now)
                    .await?
                {
                    AwardApproval::Approved => println!("award {id} approved"),
                    AwardApproval::AlreadyApproved => println!("award {id} was already approved"),
                    AwardApproval::Unknown => anyhow::bail!("no award {id}"),
                    AwardApproval::BudgetExhausted => {
                        anyhow::bail!("the budget cannot pay award {id} whole; it stays recorded")
                    }
                }
            }
        }
        Ok(())
    })
}

fn cases(config: &Config, command: CasesCommand) -> anyhow::Result<()> {
    use crate::store::risk::{CaseAction, CaseStatus, CaseStep, RiskStore};
    let keep_versions = config.hotlist.delta_versions_kept;
    with_store(config, |store| async move {
        store.migrate().await?;
        let step = |case_id, action, by: String, reason: String| CaseStep {
            case_id,
            action,
            actor: by,
            reason,
            now_ms: crate::clock::now_ms(),
            keep_versions,
        };
        let step = match command {
            CasesCommand::List { status, limit } => {
                let status = status
                    .map(|s| {
                        CaseStatus::from_name(&s)
                            .ok_or_else(|| anyhow::anyhow!("--status {s}: no such status"))
                    })
                    .transpose()?;
                anyhow::ensure!((1..=10_000).contains(&limit), "--limit is 1..=10000");
                for c in store.list_cases(status, limit).await? {
                    println!(
                        "case {:>6}  {:<9}  band {}  {:<22}  {} alerts, {} reports{}",
                        c.case_id,
                        c.status.name(),
                        c.band,
                        c.subject.to_string(),
                        c.alerts,
                        c.reports,
                        c.assignee
                            .map(|a| format!(", assigned to {a}"))
                            .unwrap_or_default()
                    );
                }
                return Ok(());
            }
            CasesCommand::Show { case } => {
                let detail = store
                    .case(case)
                    .await?
                    .ok_or_else(|| anyhow::anyhow!("no case {case}"))?;
                println!("{}", serde_json::to_string_pretty(&detail)?);
                return Ok(());
            }
            CasesCommand::Assign {
                case,
                to,
                by,
                reason,
            } => step(case, CaseAction::Assign { to }, by, reason),
            CasesCommand::Confirm { case, by, reason } => {
                step(case, CaseAction::Confirm, by, reason)
            }
            CasesCommand::Dismiss { case, by, reason } => {
                step(case, CaseAction::Dismiss, by, reason)
            }
            CasesCommand::Lift { case, by, reason } => step(case, CaseAction::Lift, by, reason),
        };
        let (case, action) = (step.case_id, step.action.name());
        let done = store.step_case(step).await?;
        match done.hotlist_version {
            Some(v) => println!("case {case} {action}: hot-list version {v}"),
            None if done.registry_changed => {
                println!("case {case} {action}: the merchant's registry entry changed")
            }
            None => println!("case {case} {action}"),
        }
        Ok(())
    })
}

fn users(config: &Config, command: UsersCommand) -> anyhow::Result<()> {
    use crate::console::auth;
    use crate::store::console::ConsoleStore;
    with_store(config, |store| async move {
        store.migrate().await?;
        match command {
            UsersCommand::Add {
                name,
                roles,
                password_env,
                no_password,
            } => {
                anyhow::ensure!(
                    !name.is_empty()
                        && name.len() <= 64
                        && name
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
                        && name != "app",
                    "a user name is 1-64 letters, digits, '.', '_' or '-' (and not \"app\")"
                );
                let roles =
                    auth::parse_roles(&roles).map_err(|m| anyhow::anyhow!("--roles: {m}"))?;
                let hash = if no_password {
                    auth::NO_PASSWORD.to_owned()
                } else {
                    let password = match password_env {
                        Some(var) => std::env::var(&var)
                            .with_context(|| format!("--password-env {var}: not set"))?,
                        None => {
                            let mut line = String::new();
                            std::io::stdin().read_line(&mut line)?;
                            line.trim_end_matches(['\r', '\n']).to_owned()
                        }
                    };
                    auth::hash_password(&password).map_err(|m| anyhow::anyhow!(m))?
                };
                let names = roles.iter().map(|r| r.name().to_owned()).collect();
                anyhow::ensure!(
                    store
                        .add_user(name.clone(), hash, names, crate::clock::now_ms())
                        .await?,
                    "user {name} exists already"
                );
                println!("user {name} added");
            }
            UsersCommand::Token { name } => {
                let token = auth::new_secret();
                anyhow::ensure!(
                    store
                        .set_token(name.clone(), auth::secret_sha256(&token))
                        .await?,
                    "no user {name}"
                );
                println!("{token}");
            }
            UsersCommand::List => {
                for u in store.list_users().await? {
                    println!(
                        "{}\t{}\t{}",
                        u.username,
                        u.roles.join(","),
                        if u.has_token { "token" } else { "" }
                    );
                }
            }
        }
        Ok(())
    })
}

fn with_store<F, Fut>(config: &Config, f: F) -> anyhow::Result<()>
where
    F: FnOnce(crate::store::AnyStore) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let rt = server::store_runtime()?;
    let store = {
        let _enter = rt.enter();
        server::open_store(config)?
    };
    rt.block_on(f(store))
}

fn serve(config: Config) -> anyhow::Result<()> {
    let gateway = server::spawn(config).context("start the gateway")?;
    println!("listening for devices on {}", gateway.device_addr);
    if let Some(admin) = gateway.admin_addr {
        println!("metrics and health on http://{admin}/metrics");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupt: shutting down"),
        }
        anyhow::Ok(())
    })?;
    gateway.shutdown()
}
