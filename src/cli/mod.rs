//! The command line: parses, asks for passphrases, prints. Decisions live in `kms`.

mod access_cmd;
mod access_key_cmd;
mod alias_cmd;
mod audit_cmd;
mod console_cmd;
mod copy_cmd;
mod crypto_cmd;
pub mod errors;
mod fsck_cmd;
mod key_cmd;
mod key_import_cmd;
mod keystore_cmd;
pub mod mount_helper;
pub mod output;
pub mod passphrase;
mod region_cmd;
mod rewrap_cmd;
mod shell_cmd;
mod status_cmd;
mod volume_cmd;

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::error::{Error, Result};
use crate::keystore::{self, Keystore};
use crate::kms::{Kms, Principal, SystemClock};

const AFTER_HELP: &str = "\
Examples:
  kmsfs keystore init
  kmsfs key create --alias alias/finance --description 'finance team'
  echo -n 's3cret' | kmsfs encrypt --key alias/finance --context app=web > secret.bin
  kmsfs decrypt --context app=web < secret.bin

Exit codes: 0 ok, 1 error, 2 usage, 3 wrong passphrase, 4 key state forbids it,
5 unknown key/alias/keystore, 6 access denied, 7 ciphertext does not authenticate.";

#[derive(Debug, Parser)]
#[command(name = "kmsfs", version, about = "Encrypted filesystem with AWS-KMS-style key management", after_help = AFTER_HELP)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, clap::Args)]
pub struct Global {
    /// The keystore file [default: $XDG_DATA_HOME/kmsfs/keystore.db]
    #[arg(long, global = true, env = "KMSFS_KEYSTORE", value_name = "PATH")]
    pub keystore: Option<PathBuf>,
    /// Read the passphrase from this file instead of KMSFS_PASSPHRASE or a prompt
    #[arg(long, global = true, env = "KMSFS_PASSPHRASE_FILE", value_name = "PATH")]
    pub passphrase_file: Option<PathBuf>,
    /// Print JSON instead of tables (for scripts)
    #[arg(long, global = true)]
    pub json: bool,
}

impl Global {
    pub fn keystore_path(&self) -> PathBuf {
        self.keystore.clone().unwrap_or_else(keystore::default_path)
    }

    /// The keystore passphrase (from --passphrase-file, KMSFS_PASSPHRASE or a prompt);
    /// `new` asks twice, for a keystore being created.
    pub fn passphrase(&self, new: bool) -> Result<passphrase::Passphrase> {
        let prompt =
            format!("{}assphrase for {}: ", if new { "New p" } else { "P" }, self.keystore_path().display());
        passphrase::obtain(self.passphrase_file.as_deref(), "KMSFS_PASSPHRASE", &prompt, new)
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create and manage the keystore file
    #[command(subcommand)]
    Keystore(keystore_cmd::KeystoreCmd),
    /// Create and manage master keys
    #[command(subcommand)]
    Key(key_cmd::KeyCmd),
    /// Friendly names for keys
    #[command(subcommand)]
    Alias(alias_cmd::AliasCmd),
    /// Encrypt a small secret (at most 4096 bytes) under a key
    Encrypt(crypto_cmd::EncryptArgs),
    /// Decrypt a secret produced by `kmsfs encrypt`
    Decrypt(crypto_cmd::DecryptArgs),
    /// Decrypt and encrypt again under another key or the current key version
    ReEncrypt(crypto_cmd::ReEncryptArgs),
    /// Generate a data key for envelope encryption
    GenerateDataKey(crypto_cmd::GenerateDataKeyArgs),
    /// Sign a message (at most 4096 bytes) or digest with an asymmetric key
    Sign(crypto_cmd::SignArgs),
    /// Check a signature made with an asymmetric key
    Verify(crypto_cmd::VerifyArgs),
    /// Show or verify the audit trail
    Audit(audit_cmd::AuditArgs),
    /// Create encrypted volumes
    #[command(subcommand)]
    Volume(volume_cmd::VolumeCmd),
    /// Mount a volume: show the cipher directory decrypted at MOUNTPOINT
    Mount(volume_cmd::MountArgs),
    /// Unmount a mounted volume
    #[command(after_help = "Example:\n  kmsfs umount ~/vault")]
    Umount { mountpoint: PathBuf },
    /// Inspect files on a mounted volume
    #[command(subcommand)]
    File(volume_cmd::FileCmd),
    /// Per-directory keys on a mounted volume
    #[command(subcommand)]
    Dir(volume_cmd::DirCmd),
    /// Check a volume: every header, block and name; --repair fixes what is safe
    Fsck(fsck_cmd::FsckArgs),
    /// Re-wrap a volume's keys (rotation catch-up, or move to another key), mounted or not
    Rewrap(rewrap_cmd::RewrapArgs),
    /// Key policies: who may use a key for what
    #[command(subcommand)]
    Policy(access_cmd::PolicyCmd),
    /// Grants: extra, revocable, expiring permissions on a key
    #[command(subcommand)]
    Grant(access_cmd::GrantCmd),
    /// Access keys that API callers sign requests with (SigV4)
    #[command(subcommand)]
    AccessKey(access_key_cmd::AccessKeyCmd),
    /// Serve the AWS KMS API (JSON 1.1 + SigV4) on loopback and a Unix socket
    #[command(after_help = crate::server::config::AFTER_HELP)]
    Serve(crate::server::config::ServeArgs),
    /// Print a one-time link that signs you in to the web console of the running server
    #[command(after_help = console_cmd::AFTER_HELP)]
    Console(console_cmd::ConsoleArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completions(shell_cmd::CompletionsArgs),
    /// Print the manual page, or write one page per command into a directory
    Man(shell_cmd::ManArgs),
    /// Show the keystore, its keys, pending deletions, expiring grants and mounted volumes
    #[command(after_help = status_cmd::AFTER_HELP)]
    Status,
}

/// An unlocked KMS, the user running the command, and how to print.
pub struct Session {
    pub kms: Kms,
    pub me: Principal,
    pub json: bool,
}

impl Session {
    /// Opens and unlocks the keystore (asking for the passphrase if needed) and runs the
    /// housekeeping that is due.
    pub fn open(global: &Global) -> Result<Session> {
        Self::open_at(&global.keystore_path(), || global.passphrase(false), global.json)
    }

    /// `open` for a long-running daemon: the passphrase's KDF runs in a child process
    /// (call it before the daemon starts threads, or it runs in-process).
    pub fn open_for_daemon(global: &Global) -> Result<Session> {
        let ks = Keystore::open(&global.keystore_path())?;
        let pass = global.passphrase(false)?;
        let root = ks.unlock_in_child(&pass)?;
        Self::from_unlocked(ks, root, global.json)
    }

    /// Opens the keystore at `path`; `passphrase` is asked only once the file is found.
    pub fn open_at(
        path: &std::path::Path,
        passphrase: impl FnOnce() -> Result<passphrase::Passphrase>,
        json: bool,
    ) -> Result<Session> {
        let ks = Keystore::open(path)?;
        let pass = passphrase()?;
        let root = ks.unlock(&pass)?;
        Self::from_unlocked(ks, root, json)
    }

    fn from_unlocked(ks: Keystore, root: crate::crypto::SecretKey, json: bool) -> Result<Session> {
        let clock = SystemClock::from_env().map_err(Error::InvalidArgument)?;
        let me = Principal::current_process();
        let kms = Kms::new(ks, root, Arc::new(clock), &me)?;
        Ok(Session { kms, me, json })
    }

    /// Turns the session into a key ring like a mount's, for walks over many files, with
    /// its audit events written by a background writer.
    pub fn into_ring(self) -> Result<RingSession> {
        let Session { kms, me, .. } = self;
        let (ring, writer) = kms.into_key_ring(me.clone())?;
        Ok(RingSession { me, ring, writer })
    }
}

/// A key ring for a walk over many files, and the audit writer behind it.
pub struct RingSession {
    pub me: Principal,
    pub ring: crate::kms::keyring::KeyRing,
    writer: crate::kms::audit_writer::AuditWriter,
}

impl RingSession {
    /// Flushes the audit trail of the walk: the ring (holding the writer's sink) goes first,
    /// so that the writer sees the end of its channel.
    pub fn close(self) {
        drop(self.ring);
        self.writer.finish();
    }
}

/// An unmounted volume opened for a walk over its cipher directory (`rewrap`, `fsck`,
/// `volume copy`): its configuration and a key ring of its keystore.
pub struct VolumeSession {
    pub config: crate::volume::VolumeConfig,
    pub keys: RingSession,
}

impl VolumeSession {
    pub fn open(global: &Global, cipher_dir: &std::path::Path) -> Result<VolumeSession> {
        let config = crate::volume::VolumeConfig::load(cipher_dir)?;
        let session = Session::open(global)?;
        config.require_keystore(
            cipher_dir,
            &global.keystore_path(),
            &session.kms.keystore().keystore_id()?,
        )?;
        let keys = session.into_ring()?;
        crate::volume::remote_keys::attach(&keys.ring, cipher_dir, &config, Default::default())?;
        Ok(VolumeSession { config, keys })
    }
}

/// Runs the command line and returns the process exit code.
pub fn main() -> i32 {
    // Before any passphrase is read and while the process has one thread: no core dumps or
    // inspection by other users, and passphrases out of the environment block.
    crate::harden::make_undumpable();
    passphrase::take_from_environment();
    if let Some(code) = mount_helper::main_if_invoked() {
        return code;
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    // Commands that print and exit end quietly when their reader goes away (`kmsfs audit
    // --json | head`), as Unix tools do, instead of panicking on EPIPE. The long-running
    // ones keep SIGPIPE ignored: a client that hangs up must not kill a server or a mount.
    if !matches!(&cli.command, Command::Serve(_) | Command::Mount(_) | Command::Console(_)) {
        restore_default_sigpipe();
    }
    // A background mount logs to syslog from its daemon process instead.
    let daemon = matches!(&cli.command, Command::Mount(m) if !m.foreground);
    if !daemon {
        env_logger::Builder::from_env(env_logger::Env::default().filter_or("RUST_LOG", "warn")).init();
    }
    match run(cli) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("kmsfs: error: {}", errors::describe(&e));
            e.exit_code()
        }
    }
}

/// The Rust runtime ignores SIGPIPE, so a write to a closed pipe fails (and `println!`
/// panics); the default action ends the process silently instead.
fn restore_default_sigpipe() {
    // SAFETY: setting a signal's disposition to its default has no preconditions.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
}

fn run(cli: Cli) -> Result<()> {
    let g = &cli.global;
    match cli.command {
        Command::Keystore(cmd) => keystore_cmd::run(g, cmd),
        Command::Key(cmd) => key_cmd::run(&mut Session::open(g)?, cmd),
        Command::Alias(cmd) => alias_cmd::run(&mut Session::open(g)?, cmd),
        Command::Encrypt(args) => crypto_cmd::encrypt(&mut Session::open(g)?, args),
        Command::Decrypt(args) => crypto_cmd::decrypt(&mut Session::open(g)?, args),
        Command::ReEncrypt(args) => crypto_cmd::re_encrypt(&mut Session::open(g)?, args),
        Command::GenerateDataKey(args) => crypto_cmd::generate_data_key(&mut Session::open(g)?, args),
        Command::Sign(args) => crypto_cmd::sign(&mut Session::open(g)?, args),
        Command::Verify(args) => crypto_cmd::verify(&mut Session::open(g)?, args),
        Command::Audit(args) => audit_cmd::run(&mut Session::open(g)?, args),
        Command::Volume(cmd) => volume_cmd::run_volume(g, cmd),
        Command::Mount(args) => volume_cmd::run_mount(g, args),
        Command::Umount { mountpoint } => crate::mount::umount(&mountpoint),
        Command::File(cmd) => volume_cmd::run_file(g, cmd),
        Command::Dir(cmd) => volume_cmd::run_dir(g, cmd),
        Command::Rewrap(args) => rewrap_cmd::run(g, args),
        Command::Fsck(args) => fsck_cmd::run_fsck(g, args),
        Command::Policy(cmd) => access_cmd::run_policy(&mut Session::open(g)?, cmd),
        Command::Grant(cmd) => access_cmd::run_grant(&mut Session::open(g)?, cmd),
        Command::AccessKey(cmd) => access_key_cmd::run(&mut Session::open(g)?, cmd),
        Command::Serve(args) => crate::server::run(
            &g.keystore_path(),
            || Ok(Session::open_for_daemon(g)?.kms),
            region_cmd::peer_unlocker(g.json),
            args,
        ),
        Command::Console(args) => console_cmd::run(g, args),
        Command::Completions(args) => shell_cmd::completions(args),
        Command::Man(args) => shell_cmd::man(g, args),
        Command::Status => status_cmd::run(&mut Session::open(g)?),
    }
}

#[cfg(test)]
mod help_tests {
    use clap::CommandFactory;

    /// Every command a user can run shows an example in its `--help`.
    #[test]
    fn every_command_has_an_example() {
        fn leaves(cmd: &clap::Command, path: String, out: &mut Vec<(String, String)>) {
            let subs: Vec<_> = cmd.get_subcommands().filter(|c| c.get_name() != "help").collect();
            if subs.is_empty() {
                let help = cmd.get_after_help().map(|h| h.to_string()).unwrap_or_default();
                out.push((path.clone(), help));
            }
            for sub in subs {
                leaves(sub, format!("{path} {}", sub.get_name()), out);
            }
        }
        let mut all = Vec::new();
        leaves(&super::Cli::command(), "kmsfs".into(), &mut all);
        let missing: Vec<_> =
            all.iter().filter(|(_, help)| !help.contains("Example")).map(|(p, _)| p.as_str()).collect();
        assert!(missing.is_empty(), "commands without an example in --help: {missing:?}");
    }
}
