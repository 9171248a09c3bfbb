//! Where passphrases come from: `--passphrase-file`, `KMSFS_PASSPHRASE`, or a prompt on the
//! terminal without echo. Passphrases are held in zeroizing buffers.
//!
//! Passphrases given in the environment are taken out of it when the process starts
//! ([`take_from_environment`]): kept in memory until a command asks for them once, and wiped
//! from the environment block, so that `/proc/PID/environ` of a long-running mount daemon does
//! not show them.

use std::ffi::CString;
use std::io::IsTerminal;
use std::path::Path;
use std::sync::Mutex;

use zeroize::Zeroizing;

use crate::error::{Error, Result};

pub type Passphrase = Zeroizing<Vec<u8>>;

/// Environment variables that may carry a passphrase.
pub const ENV_VARS: [&str; 4] =
    ["KMSFS_PASSPHRASE", "KMSFS_NEW_PASSPHRASE", "KMSFS_TO_PASSPHRASE", "KMSFS_REPLICA_PASSPHRASE"];

/// Passphrases taken out of the environment, until a command asks for them.
static FROM_ENV: Mutex<Vec<(&str, Passphrase)>> = Mutex::new(Vec::new());

/// Moves every passphrase variable ([`ENV_VARS`]) out of the environment into this process's
/// memory. Unsetting a variable only drops it from the `environ` array: the `NAME=value`
/// bytes stay where the kernel put them at exec, and `/proc/PID/environ` shows exactly those
/// bytes. So the value is overwritten with zeros in place first, then the variable is unset.
/// Children started later (fusermount3, a shell) do not inherit it either.
///
/// Must run while the process has a single thread (first thing in `main`): changing the
/// environment races with any other thread reading it.
pub fn take_from_environment() {
    for name in ENV_VARS {
        let Some(value) = std::env::var_os(name) else { continue };
        let value = Zeroizing::new(value.into_encoded_bytes());
        wipe_env_value(name);
        // Sound only while single-threaded (why edition 2024 marks it unsafe): see above.
        std::env::remove_var(name);
        FROM_ENV.lock().expect("passphrase lock").push((name, value));
    }
}

/// Overwrites the value of every `name=value` entry of the environment with zeros, in place.
fn wipe_env_value(name: &str) {
    extern "C" {
        static mut environ: *mut *mut libc::c_char;
    }
    let prefix = CString::new(format!("{name}=")).expect("variable names have no NUL");
    let prefix = prefix.as_bytes();
    // SAFETY: single-threaded (see take_from_environment); `environ` is the NULL-terminated
    // array of NUL-terminated strings libc keeps, whose bytes are writable (the initial stack
    // or libc's own copies).
    unsafe {
        let mut entry = environ;
        while !entry.is_null() && !(*entry).is_null() {
            let s = *entry;
            let len = libc::strlen(s);
            let bytes = std::slice::from_raw_parts(s as *const u8, len);
            if bytes.starts_with(prefix) {
                for i in prefix.len()..len {
                    std::ptr::write_volatile(s.add(i), 0);
                }
            }
            entry = entry.add(1);
        }
    }
}

/// The passphrase [`take_from_environment`] took from `name`, handed out once.
fn take_stashed(name: &str) -> Option<Passphrase> {
    let mut stash = FROM_ENV.lock().expect("passphrase lock");
    let i = stash.iter().position(|(n, _)| *n == name)?;
    Some(stash.swap_remove(i).1)
}

/// Whether a passphrase is available from environment variable `name` (taken or not).
pub fn in_environment(name: &str) -> bool {
    FROM_ENV.lock().expect("passphrase lock").iter().any(|(n, _)| *n == name)
        || std::env::var_os(name).is_some()
}

/// Reads a passphrase file; one trailing newline (as `echo` writes) is not part of it.
pub fn from_file(path: &Path) -> Result<Passphrase> {
    let mut bytes = Zeroizing::new(
        std::fs::read(path)
            .map_err(|e| Error::io(format!("cannot read passphrase file {}", path.display()), e))?,
    );
    if bytes.ends_with(b"\n") {
        bytes.pop();
        if bytes.ends_with(b"\r") {
            bytes.pop();
        }
    }
    if bytes.is_empty() {
        return Err(Error::InvalidArgument(format!("passphrase file {} is empty", path.display())));
    }
    Ok(bytes)
}

/// The passphrase from (in order) a file, an environment variable, or the terminal.
/// `confirm` asks twice on the terminal, for new passphrases.
pub fn obtain(file: Option<&Path>, env_var: &str, prompt: &str, confirm: bool) -> Result<Passphrase> {
    if let Some(path) = file {
        return from_file(path);
    }
    let from_env = take_stashed(env_var)
        .or_else(|| std::env::var_os(env_var).map(|v| Zeroizing::new(v.into_encoded_bytes())));
    if let Some(value) = from_env {
        if value.is_empty() {
            return Err(Error::InvalidArgument(format!("{env_var} is set but empty")));
        }
        return Ok(value);
    }
    if !std::io::stdin().is_terminal() && !Path::new("/dev/tty").exists() {
        return Err(no_passphrase(env_var));
    }
    let first = Zeroizing::new(rpassword::prompt_password(prompt).map_err(|_| no_passphrase(env_var))?);
    if first.is_empty() {
        return Err(Error::InvalidArgument("the passphrase must not be empty".into()));
    }
    if confirm {
        let second = Zeroizing::new(
            rpassword::prompt_password("Repeat the passphrase: ").map_err(|_| no_passphrase(env_var))?,
        );
        if *first != *second {
            return Err(Error::InvalidArgument("the two passphrases differ; nothing was changed".into()));
        }
    }
    Ok(Zeroizing::new(first.as_bytes().to_vec()))
}

fn no_passphrase(env_var: &str) -> Error {
    Error::InvalidArgument(format!(
        "no passphrase: there is no terminal to ask on; use --passphrase-file FILE or set {env_var}"
    ))
}
