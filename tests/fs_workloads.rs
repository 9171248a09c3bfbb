//! Real programs on a mounted volume: tar, diff, git and SQLite.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::mount::{walk, Mounted};

/// The biggest source crate of a few well-known ones in the local cargo cache (a .crate is
/// a gzipped tar of the crate's source tree).
fn source_crate() -> PathBuf {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(&std::env::var_os("HOME").expect("HOME")).join(".cargo"));
    let mut found: Vec<(u64, PathBuf)> = Vec::new();
    for registry in
        fs::read_dir(cargo_home.join("registry/cache")).expect("no cargo registry cache").flatten()
    {
        for entry in fs::read_dir(registry.path()).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let wanted = ["serde_json-", "rusqlite-", "clap_builder-"].iter().any(|p| name.starts_with(p));
            if wanted && name.ends_with(".crate") {
                found.push((entry.metadata().unwrap().len(), entry.path()));
            }
        }
    }
    found.sort();
    found.pop().expect("no serde_json, rusqlite or clap_builder .crate in the cargo cache").1
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// (relative path, mode, mtime) of everything under `root`, sorted.
fn listing(root: &Path) -> Vec<(String, u32, i64)> {
    let mut out = Vec::new();
    walk(root, &mut |p, m| {
        let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
        let mtime = if m.is_dir() { 0 } else { m.mtime() };
        out.push((rel, m.mode(), mtime));
    });
    out.sort();
    out
}

#[test]
fn untarred_source_tree_matches_a_plain_extraction() {
    let mut m = Mounted::new();
    let krate = source_crate();
    let plain = tempfile::tempdir().unwrap();
    fs::create_dir(m.path("src")).unwrap();
    run(Command::new("tar").arg("xzf").arg(&krate).arg("-C").arg(plain.path()));
    run(Command::new("tar").arg("xzf").arg(&krate).arg("-C").arg(m.path("src")));
    run(Command::new("diff").arg("-r").arg(plain.path()).arg(m.path("src")));
    let (want, got) = (listing(plain.path()), listing(&m.path("src")));
    assert!(want.len() > 20, "{} has only {} entries", krate.display(), want.len());
    assert_eq!(got, want, "names, modes and mtimes");

    // With cold caches: compare again, and pack the tree from the mount and unpack it.
    m.remount();
    run(Command::new("diff").arg("-r").arg(plain.path()).arg(m.path("src")));
    let archive = m.env.path("from-mount.tar");
    run(Command::new("tar").arg("cf").arg(&archive).arg("-C").arg(m.path("src")).arg("."));
    let again = tempfile::tempdir().unwrap();
    run(Command::new("tar").arg("xf").arg(&archive).arg("-C").arg(again.path()));
    run(Command::new("diff").arg("-r").arg(plain.path()).arg(again.path()));
}

fn git(dir: &Path, home: &Path, args: &[&str]) -> String {
    run(Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("HOME", home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "kmsfs test")
        .env("GIT_AUTHOR_EMAIL", "test@example.com")
        .env("GIT_COMMITTER_NAME", "kmsfs test")
        .env("GIT_COMMITTER_EMAIL", "test@example.com"))
}

#[test]
fn git_repository_on_the_mount_passes_fsck() {
    let mut m = Mounted::new();
    let home = m.env.path("home");
    fs::create_dir(&home).unwrap();
    let repo = m.path("repo");
    fs::create_dir(&repo).unwrap();
    git(&repo, &home, &["init", "-q", "-b", "main"]);
    run(Command::new("tar").arg("xzf").arg(source_crate()).arg("-C").arg(&repo));
    git(&repo, &home, &["add", "-A", "--force"]);
    git(&repo, &home, &["commit", "-q", "-m", "import"]);
    fs::write(repo.join("NOTES.md"), "second commit\n".repeat(500)).unwrap();
    git(&repo, &home, &["add", "NOTES.md"]);
    git(&repo, &home, &["commit", "-q", "-m", "notes"]);
    git(&repo, &home, &["repack", "-a", "-d", "-q"]);
    git(&repo, &home, &["fsck", "--full", "--strict"]);
    assert_eq!(git(&repo, &home, &["rev-list", "--count", "HEAD"]).trim(), "2");
    assert_eq!(git(&repo, &home, &["status", "--porcelain"]), "", "the work tree is clean");

    m.remount();
    git(&repo, &home, &["fsck", "--full", "--strict"]);
    assert_eq!(git(&repo, &home, &["status", "--porcelain"]), "");
    // A clone off the mount has the same tree.
    let clone = m.env.path("clone");
    git(m.env.dir.path(), &home, &["clone", "-q", repo.to_str().unwrap(), clone.to_str().unwrap()]);
    run(Command::new("diff").arg("-r").arg("--exclude=.git").arg(&repo).arg(&clone));
}

fn fill(conn: &mut rusqlite::Connection, rows: usize, per_tx: usize) {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, name TEXT NOT NULL, payload BLOB)",
    )
    .unwrap();
    for chunk in (0..rows).collect::<Vec<_>>().chunks(per_tx) {
        let tx = conn.transaction().unwrap();
        {
            let mut stmt = tx.prepare("INSERT INTO t (id, name, payload) VALUES (?1, ?2, ?3)").unwrap();
            for &i in chunk {
                let payload = vec![(i % 251) as u8; 50 + i % 300];
                stmt.execute(rusqlite::params![i as i64, format!("row number {i}"), payload]).unwrap();
            }
        }
        tx.commit().unwrap();
    }
}

fn check(conn: &rusqlite::Connection, rows: i64) {
    let ok: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(ok, "ok");
    let count: i64 = conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
    assert_eq!(count, rows);
    let name: String = conn.query_row("SELECT name FROM t WHERE id = 4321", [], |r| r.get(0)).unwrap();
    assert_eq!(name, "row number 4321");
    let len: i64 = conn.query_row("SELECT sum(length(payload)) FROM t", [], |r| r.get(0)).unwrap();
    assert_eq!(len, (0..rows).map(|i| 50 + i % 300).sum::<i64>());
}

#[test]
fn sqlite_database_on_the_mount_stays_consistent() {
    let mut m = Mounted::new();
    let db = m.path("data.sqlite");
    let mut conn = rusqlite::Connection::open(&db).unwrap();
    fill(&mut conn, 10_000, 1000);
    check(&conn, 10_000);
    conn.execute("DELETE FROM t WHERE id >= 10000", []).unwrap();
    conn.execute_batch("VACUUM").unwrap();
    check(&conn, 10_000);
    drop(conn);

    // WAL mode: the -shm file is mapped shared and writable.
    let wal_db = m.path("wal.sqlite");
    let mut wal = rusqlite::Connection::open(&wal_db).unwrap();
    let mode: String = wal.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0)).unwrap();
    assert_eq!(mode, "wal");
    fill(&mut wal, 10_000, 2500);
    let reader = rusqlite::Connection::open(&wal_db).unwrap();
    check(&reader, 10_000);
    drop(reader);
    wal.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).unwrap();
    drop(wal);

    m.remount();
    let conn = rusqlite::Connection::open(&db).unwrap();
    check(&conn, 10_000);
    let wal = rusqlite::Connection::open(&wal_db).unwrap();
    check(&wal, 10_000);
    assert!(fs::metadata(&db).unwrap().len() > 500_000);
}
