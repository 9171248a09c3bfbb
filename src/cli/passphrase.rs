//! Where passphrases come from: `--passphrase-file`, `KMSFS_PASSPHRASE`, or a prompt on the
//! terminal without echo. Passphrases are held in zeroizing buffers.

use std::io::IsTerminal;
use std::path::Path;

use zeroize::Zeroizing;

use crate::error::{Error, Result};

pub type Passphrase = Zeroizing<Vec<u8>>;

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
    if let Ok(value) = std::env::var(env_var) {
        if value.is_empty() {
            return Err(Error::InvalidArgument(format!("{env_var} is set but empty")));
        }
        return Ok(Zeroizing::new(value.into_bytes()));
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
