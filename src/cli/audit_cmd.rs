//! `kmsfs audit [filters]` and `kmsfs audit verify`.

use clap::Subcommand;

use super::output::{self, or_dash, Table};
use super::Session;
use crate::error::{Error, Result};
use crate::kms::clock::{format_time_ms, parse_time};
use crate::kms::cloudtrail::{self, TrailIdentity};
use crate::kms::{AuditFilter, Outcome};

#[derive(Debug, clap::Args)]
#[command(
    args_conflicts_with_subcommands = true,
    after_help = "Examples:\n  kmsfs audit --key alias/finance --since 2h\n  kmsfs audit --denied --json\n  kmsfs audit --format cloudtrail --follow | logger -t kmsfs-audit\n  kmsfs audit --format cloudtrail-records > trail.json\n  kmsfs audit verify"
)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub command: Option<AuditCmd>,
    /// Only events of this key (id or alias/NAME)
    #[arg(long)]
    pub key: Option<String>,
    /// Only events since this time (2026-11-23, 2026-11-23T10:00:00Z) or this long ago (2h)
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Only this operation (e.g. Decrypt, DisableKey)
    #[arg(long)]
    pub operation: Option<String>,
    /// Only refused operations
    #[arg(long)]
    pub denied: bool,
    /// Only operations by this uid
    #[arg(long)]
    pub uid: Option<u32>,
    /// Only API calls by this IAM principal (arn:aws:iam::ACCOUNT:user/NAME)
    #[arg(long, value_name = "ARN")]
    pub principal: Option<String>,
    /// Only API calls signed with this access key
    #[arg(long, value_name = "ID")]
    pub access_key_id: Option<String>,
    /// Only API calls from this address (IP, IP:PORT, or `unix` for the socket)
    #[arg(long, value_name = "ADDR")]
    pub source: Option<String>,
    /// Only operations that failed with this AWS error (e.g. AccessDeniedException)
    #[arg(long, value_name = "CODE")]
    pub error_code: Option<String>,
    /// Only the newest N events
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Output: a table, kmsfs's JSON (same as --json), CloudTrail records one per line, or
    /// CloudTrail's log file shape {"Records": [...]}
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Keep running and print new events as they are written (like tail -f)
    #[arg(long)]
    pub follow: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    /// AWS CloudTrail records, one JSON object per line
    Cloudtrail,
    /// AWS CloudTrail's file shape: {"Records": [...]} (with --follow: one per batch)
    CloudtrailRecords,
}

/// How often --follow looks for new events.
const FOLLOW_POLL: std::time::Duration = std::time::Duration::from_millis(250);

#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// Check the hash chain: exit 1 if any event was edited, inserted or removed
    #[command(after_help = "Example:\n  kmsfs audit verify")]
    Verify,
}

pub fn run(s: &mut Session, args: AuditArgs) -> Result<()> {
    if let Some(AuditCmd::Verify) = args.command {
        let report = s.kms.verify_audit()?;
        if s.json {
            output::json(&report);
        } else if report.intact {
            println!("audit trail intact: {} events, chain verified", report.events);
        } else {
            for p in &report.problems {
                println!("TAMPERED: {p}");
            }
        }
        if !report.intact {
            return Err(Error::InvalidArgument(format!(
                "the audit trail has been tampered with ({} problem(s))",
                report.problems.len()
            )));
        }
        return Ok(());
    }
    let key_id = args.key.as_deref().map(|k| s.kms.resolve_key_id(k)).transpose()?;
    let now = s.kms.now_secs();
    let since_ms = match &args.since {
        Some(t) => Some(parse_time(t, now, true).map_err(Error::InvalidArgument)? * 1000),
        None => None,
    };
    let filter = AuditFilter {
        key_id,
        since_ms,
        operation: args.operation,
        outcome: args.denied.then_some(Outcome::Denied),
        uid: args.uid,
        principal_arn: args.principal,
        access_key_id: args.access_key_id,
        source: args.source,
        error_code: args.error_code,
        limit: args.limit,
        ..Default::default()
    };
    let format = if s.json && args.format == Format::Table { Format::Json } else { args.format };
    let mut filter = filter;
    let trail = match format {
        Format::Cloudtrail | Format::CloudtrailRecords => Some(TrailIdentity {
            account: s.kms.keystore().account_id()?,
            region: s.kms.keystore().region()?,
            keystore_id: s.kms.keystore().keystore_id()?,
        }),
        _ => None,
    };
    loop {
        let events = s.kms.audit_events(&filter)?;
        if let Some(last) = events.last() {
            filter.after_seq = Some(last.seq);
        }
        if !events.is_empty() || !args.follow {
            print_events(format, trail.as_ref(), events)?;
        }
        if !args.follow {
            return Ok(());
        }
        // Following: every event after the last one shown, however many.
        filter.limit = None;
        std::thread::sleep(FOLLOW_POLL);
    }
}

fn print_events(
    format: Format,
    trail: Option<&TrailIdentity>,
    events: Vec<crate::kms::AuditRecord>,
) -> Result<()> {
    use std::io::Write;
    let write_err = |e: std::io::Error| Error::io("cannot write the audit events", e);
    match (format, trail) {
        (Format::Json, _) => {
            output::json(&events);
            return Ok(());
        }
        (Format::Cloudtrail | Format::CloudtrailRecords, Some(id)) => {
            let layout = if format == Format::Cloudtrail {
                cloudtrail::Layout::Lines
            } else {
                cloudtrail::Layout::Records
            };
            let mut out = std::io::stdout().lock();
            cloudtrail::write(&mut out, id, &events, layout).map_err(write_err)?;
            return out.flush().map_err(write_err);
        }
        _ => {}
    }
    let mut t = Table::new(&["SEQ", "TIME", "USER", "OPERATION", "KEY", "OUTCOME", "DETAIL"]);
    for e in events {
        let ev = e.event;
        let caller = [
            ev.principal_arn.clone(),
            ev.access_key_id.clone(),
            ev.source.as_ref().map(|s| format!("from {s}")),
            ev.error_code.clone(),
        ];
        let detail = caller
            .into_iter()
            .chain([
                ev.path.clone(),
                (!ev.context.is_empty()).then(|| ev.context.clone()),
                (!ev.reason.is_empty()).then(|| ev.reason.clone()),
            ])
            .flatten()
            .collect::<Vec<_>>()
            .join(" ");
        t.row(vec![
            e.seq.to_string(),
            format_time_ms(ev.time_ms),
            format!("{}({})", ev.user, ev.uid),
            ev.operation,
            or_dash(ev.key_id),
            ev.outcome.as_str().into(),
            detail,
        ]);
    }
    t.print();
    Ok(())
}
