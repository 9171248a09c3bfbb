//! The kmsfs command for the test suite: identical to `kmsfs`, except that it honours
//! `KMSFS_CLOCK_OFFSET_SECS`, which shifts the KMS clock so tests can cross a deletion window
//! or a rotation period without waiting. Built only with the `test-clock` feature (which
//! `cargo test` turns on through the dev-dependency on this package); never installed.

fn main() {
    kmsfs::kms::clock::honour_offset_from_env();
    std::process::exit(kmsfs::cli::main());
}
