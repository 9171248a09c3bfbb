//! `kmsfs rewrap`: every data key and names key under the current key version or another
//! key, without rewriting data. Through the mount when the volume is mounted, directly on
//! the cipher directory when it is not.

use std::path::{Path, PathBuf};

use super::output;
use super::{Global, VolumeSession};
use crate::error::{Error, Result};
use crate::mount::control;
use crate::volume::rewrap::{resolve_dir, RewrapReport, Rewrapper};

#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  kmsfs rewrap ~/vault.enc                     # catch up with key rotation (unmounted)
  kmsfs rewrap ~/vault                         # the same on the mounted volume
  kmsfs dir set-key ~/vault/finance alias/finance
  kmsfs rewrap ~/vault --path finance --to-key alias/finance

Each file's data key is wrapped again in its header (the data blocks are not rewritten),
one header slot at a time, so an interrupted run leaves every file readable; run it again
to finish. On a mounted volume no passphrase is needed: the mount does the work, under
the caller's key policies.")]
pub struct RewrapArgs {
    /// The cipher directory (unmounted or mounted), or a mount point (or a directory in it)
    #[arg(value_name = "CIPHERDIR|MOUNTPATH")]
    pub target: PathBuf,
    /// Only this directory (a path inside the volume, e.g. finance/2026) and what is below it
    /// (on a mounted volume also a single file)
    #[arg(long)]
    pub path: Option<PathBuf>,
    /// Move every file and directory below PATH to this key [default: each keeps its key and
    /// moves to the key's current version]
    #[arg(long)]
    pub to_key: Option<String>,
}

pub fn run(g: &Global, args: RewrapArgs) -> Result<()> {
    let target = std::fs::canonicalize(&args.target).map_err(|e| Error::io(args.target.display(), e))?;
    let rel = args.path.clone().unwrap_or_default();
    if rel.is_absolute() || rel.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
        return Err(Error::InvalidArgument(format!(
            "--path {} must be relative to the volume's root, without '..'",
            rel.display()
        )));
    }
    let bar = output::Progress::spinner(g.json);
    let mut progress = |r: &RewrapReport| {
        bar.show(|| {
            format!("{} files, {} re-wrapped, {} directories", r.files, r.files_rewrapped, r.directories)
        })
    };
    let live_start = if crate::mount::is_on_kmsfs(&target) {
        Some(target.join(&rel))
    } else if let Some(mount_point) = crate::mount::mounted_at(&target) {
        eprintln!(
            "kmsfs: {} is mounted at {}; re-wrapping through the mount",
            target.display(),
            mount_point.display()
        );
        Some(mount_point.join(&rel))
    } else {
        None
    };
    let report = match live_start {
        Some(start) => {
            if !start.is_dir() && !start.is_file() {
                return Err(Error::not_found(format!(
                    "{} is not a file or directory of the volume",
                    start.display()
                )));
            }
            control::rewrap_live(&start, args.to_key.as_deref(), &mut progress)
        }
        None => rewrap_offline(g, &target, &rel, args.to_key.as_deref(), &mut progress)?,
    };
    bar.finish();
    print_report(g.json, &report);
    if report.errors.is_empty() {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "{} item(s) could not be re-wrapped (listed above); run again once fixed",
            report.errors.len()
        )))
    }
}

fn rewrap_offline(
    g: &Global,
    cipher_dir: &Path,
    rel: &Path,
    to_key: Option<&str>,
    progress: &mut dyn FnMut(&RewrapReport),
) -> Result<RewrapReport> {
    let v = VolumeSession::open(g, cipher_dir)?;
    let (ring, me) = (&v.keys.ring, &v.keys.me);
    let whole_volume = rel.as_os_str().is_empty() || rel == Path::new("/");
    // A rotated remote key: its intermediate keys are re-wrapped at the service (ReEncrypt);
    // the files under them stay as they are.
    let intermediate = match ring.remote() {
        Some(r) if whole_volume && to_key.is_none() && !r.records().is_empty() => r.rewrap_all()?,
        _ => 0,
    };
    let to_key = to_key.map(|k| ring.assign(k)).transpose()?;
    let start = resolve_dir(ring, me, &v.config, cipher_dir, rel)?;
    let plain_start = format!("/{}", rel.display());
    let mut report =
        Rewrapper::new(ring, me, &v.config, to_key, progress).run(cipher_dir, &start, &plain_start);
    if let Ok(r) = report.as_mut() {
        r.intermediate_keys_rewrapped = intermediate as u64;
    }
    v.keys.close();
    report
}

fn print_report(json: bool, report: &RewrapReport) {
    if json {
        output::json(report);
        return;
    }
    println!(
        "{} files ({} re-wrapped) and {} directories ({} re-wrapped) in {:.2} s: {:.0} files/s; \
         no data block rewritten{}",
        report.files,
        report.files_rewrapped,
        report.directories,
        report.directories_rewrapped,
        report.seconds,
        report.files_per_second(),
        if report.live { " (through the mount)" } else { "" }
    );
    if report.intermediate_keys_rewrapped > 0 {
        println!(
            "{} intermediate key(s) re-wrapped under the current material of their remote keys",
            report.intermediate_keys_rewrapped
        );
    }
    for e in &report.errors {
        eprintln!("kmsfs: {e}");
    }
}
