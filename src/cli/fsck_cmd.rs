//! `kmsfs fsck` and `kmsfs volume prune-shredded`: check a volume, repair what is safe,
//! remove what is crypto-shredded.

use std::path::{Path, PathBuf};

use super::output;
use super::{Global, VolumeSession};
use crate::error::{Error, Result};
use crate::volume::fsck::{Fsck, FsckOptions, FsckReport, Status};

#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  kmsfs fsck ~/vault.enc                  # check only: every header, block and name
  kmsfs fsck ~/vault.enc --repair         # also fix leftovers of interrupted operations
  kmsfs fsck ~/vault.enc --json | jq '.Items[] | select(.Status != \"ok\")'

Statuses: ok, tampered (which block), header-damaged, missing-header, interrupted-rewrap,
key-disabled, key-pending-deletion, key-destroyed (unrecoverable), key-unknown,
access-denied, key-unreachable (a remote key service did not answer: not checked),
name-damaged, orphan-sidecar, temp-file, metadata-copy-damaged,
metadata-damaged, symlink-damaged.
Exit code: 0 when the volume is clean (after repairs), 8 when problems remain.")]
pub struct FsckArgs {
    pub cipher_dir: PathBuf,
    /// Fix what is safe: temp files, orphan sidecars, a damaged metadata copy, a header slot
    /// torn by an interrupted re-wrap, empty files whose create was cut short. Never deletes data
    #[arg(long)]
    pub repair: bool,
    /// With --repair: also remove files that can never be read again (key destroyed, no
    /// header slot unwraps)
    #[arg(long, requires = "repair")]
    pub force: bool,
}

#[derive(Debug, clap::Args)]
#[command(after_help = "\
Example:
  kmsfs volume prune-shredded ~/vault.enc --dry-run
  kmsfs volume prune-shredded ~/vault.enc

Files and directories whose key was destroyed (its deletion window passed) can never be
read again; this removes them and nothing else.")]
pub struct PruneArgs {
    pub cipher_dir: PathBuf,
    /// Only list what would be removed
    #[arg(long)]
    pub dry_run: bool,
}

pub fn run_fsck(g: &Global, args: FsckArgs) -> Result<()> {
    let options = FsckOptions { repair: args.repair, force: args.force, prune_shredded: false };
    let report = check(g, &args.cipher_dir, options)?;
    if g.json {
        output::json(&report);
    } else {
        print_problems(&report);
        println!(
            "{} files ({} MiB checked), {} directories, {} symlinks in {:.2} s: {}",
            report.files,
            report.bytes_checked >> 20,
            report.directories,
            report.symlinks,
            report.seconds,
            summary(&report)
        );
    }
    outcome(&report)
}

pub fn run_prune(g: &Global, args: PruneArgs) -> Result<()> {
    let options = FsckOptions { repair: false, force: false, prune_shredded: !args.dry_run };
    let report = check(g, &args.cipher_dir, options)?;
    let shredded: Vec<_> = report.items.iter().filter(|f| f.status == Status::KeyDestroyed).collect();
    if g.json {
        output::json(&shredded);
    } else {
        for f in &shredded {
            let what = f.action.as_deref().unwrap_or("would be removed");
            println!("{}  {what}", f.path);
        }
        let verb = if args.dry_run { "would be removed" } else { "removed" };
        println!("{} crypto-shredded item(s) {verb}", shredded.len());
    }
    Ok(())
}

fn check(g: &Global, cipher_dir: &Path, options: FsckOptions) -> Result<FsckReport> {
    let cipher_dir = std::fs::canonicalize(cipher_dir).map_err(|e| Error::io(cipher_dir.display(), e))?;
    let changes = options.repair || options.prune_shredded;
    if let Some(at) = crate::mount::mounted_at(&cipher_dir) {
        if changes {
            return Err(Error::InvalidArgument(format!(
                "{} is mounted at {}; unmount it first (`kmsfs umount {}`) to change it",
                cipher_dir.display(),
                at.display(),
                at.display()
            )));
        }
        eprintln!("kmsfs: {} is mounted; files being written may show as damaged", cipher_dir.display());
    }
    let v = VolumeSession::open(g, &cipher_dir)?;
    let bar = output::Progress::spinner(g.json);
    let mut progress = |r: &FsckReport| {
        bar.show(|| {
            format!("{} files, {} directories, {} MiB checked", r.files, r.directories, r.bytes_checked >> 20)
        })
    };
    let report = Fsck::new(&v.keys.ring, &v.keys.me, &v.config, options, &mut progress).run(&cipher_dir);
    bar.finish();
    v.keys.close();
    Ok(report)
}

fn print_problems(report: &FsckReport) {
    let mut table = output::Table::new(&["STATUS", "PATH", "DETAIL", "ACTION"]);
    for f in report.problems() {
        let status = serde_json::to_value(f.status).ok().and_then(|v| v.as_str().map(str::to_string));
        table.row(vec![
            status.unwrap_or_default(),
            f.path.clone(),
            f.detail.clone(),
            f.action.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    if report.problems().next().is_some() {
        table.print();
    }
}

fn summary(report: &FsckReport) -> String {
    match (report.problems_remaining, report.repaired) {
        (0, 0) => "clean".into(),
        (0, fixed) => format!("{fixed} problem(s) repaired, now clean"),
        (left, fixed) => format!("{left} problem(s) remain, {fixed} repaired"),
    }
}

fn outcome(report: &FsckReport) -> Result<()> {
    if report.problems_remaining == 0 {
        return Ok(());
    }
    let unrecoverable = report.problems().filter(|f| f.status.unrecoverable() && f.action.is_none()).count();
    let hint = if unrecoverable > 0 {
        format!("; {unrecoverable} can never be read again (remove them with --repair --force)")
    } else {
        String::new()
    };
    Err(Error::ProblemsRemain(format!(
        "{} problem(s) remain (listed above){hint}",
        report.problems_remaining
    )))
}
