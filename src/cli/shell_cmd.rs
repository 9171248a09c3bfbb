//! `kmsfs completions SHELL` and `kmsfs man [--dir DIR]`: shell completion scripts and
//! manual pages, generated from the clap definitions so they never drift from the commands.
//! Neither needs a keystore.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::CommandFactory;

use super::{Cli, Global};
use crate::error::{Error, Result};

#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  kmsfs completions bash > /etc/bash_completion.d/kmsfs
  kmsfs completions zsh > \"${fpath[1]}/_kmsfs\"
  kmsfs completions fish > ~/.config/fish/completions/kmsfs.fish")]
pub struct CompletionsArgs {
    /// The shell to complete for
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  kmsfs man | man -l -
  kmsfs man --dir /usr/local/share/man/man1 && mandb -q")]
pub struct ManArgs {
    /// Write kmsfs.1 and one page per subcommand (kmsfs-key.1, kmsfs-key-create.1, ...) into
    /// DIR instead of printing kmsfs.1
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

pub fn completions(args: CompletionsArgs) -> Result<()> {
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut Cli::command(), "kmsfs", &mut out);
    write_stdout(&out)
}

pub fn man(g: &Global, args: ManArgs) -> Result<()> {
    let Some(dir) = args.dir else {
        let mut out = Vec::new();
        page(manual_command()).render(&mut out).map_err(|e| Error::io("cannot render the manual page", e))?;
        return write_stdout(&out);
    };
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
    let mut cmd = manual_command();
    cmd.build();
    let mut pages = Vec::new();
    write_pages(&cmd, &dir, &mut pages)
        .map_err(|e| Error::io(format!("cannot write manual pages into {}", dir.display()), e))?;
    pages.sort();
    if g.json {
        super::output::json(&pages);
    } else {
        println!("wrote {} manual pages into {} (kmsfs.1, kmsfs-key.1, ...)", pages.len(), dir.display());
    }
    Ok(())
}

/// Writes the page of `cmd` and of every visible subcommand below it; a built command's
/// subcommands are named `kmsfs-key-create`, which becomes the file name.
fn write_pages(cmd: &clap::Command, dir: &Path, pages: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub, dir, pages)?;
    }
    pages.push(page(cmd.clone()).generate_to(dir)?);
    Ok(())
}

/// The commands as the manual shows them: without the `help` subcommand, which has no page
/// (as clap_mangen::generate_to does).
fn manual_command() -> clap::Command {
    Cli::command().disable_help_subcommand(true)
}

/// A page whose footer names kmsfs and its version (a subcommand's own would say "create").
fn page(cmd: clap::Command) -> clap_mangen::Man {
    clap_mangen::Man::new(cmd).source(format!("kmsfs {}", env!("CARGO_PKG_VERSION")))
}

/// Writes everything at once; a closed pipe (`| head`) is not an error worth a message.
fn write_stdout(bytes: &[u8]) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(Error::io("cannot write to stdout", e)),
        _ => Ok(()),
    }
}
