//! The layer rule of docs/ARCHITECTURE.md, checked on the source: every top-level module of
//! `src/` names (`crate::…`) only the modules its layer may use. A new import that reaches
//! upward (volume using `crate::fs`, fs using `crate::keystore`, ...) fails here, naming the
//! file and line.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The leaves: they name no other module of the crate, except `error`, which every layer
/// returns.
const LEAVES: &[&str] = &["crypto", "sys", "encoding", "harden", "mounts"];

/// What each module may name besides itself, `error` and the leaves. Read top-down: a module
/// uses only those below it. `error` is the exception: it is the crate's one error type and
/// names the vocabulary its variants carry (key states and records, the volume config's
/// name, the managed-alias prefix), so it may name `kms`, `keystore` and `volume` types.
const RULES: &[(&str, &[&str])] = &[
    ("cli", &["server", "mount", "fs", "volume", "content", "kms", "keystore"]),
    ("server", &["volume", "content", "kms", "keystore"]),
    ("mount", &["fs", "volume", "content", "kms", "keystore"]),
    ("fs", &["volume", "content", "kms"]),
    ("volume", &["content", "kms"]),
    ("content", &[]),
    ("kms", &["keystore"]),
    ("keystore", &[]),
    ("error", &["kms", "keystore", "volume"]),
];

fn allowed(module: &str) -> BTreeSet<&'static str> {
    let mut set: BTreeSet<&str> = LEAVES.iter().copied().collect();
    set.insert("error");
    if LEAVES.contains(&module) {
        return ["error"].into_iter().collect();
    }
    let (_, uses) = RULES.iter().find(|(m, _)| *m == module).unwrap_or_else(|| {
        panic!("src/{module} is in no layer: add it to RULES here and to docs/ARCHITECTURE.md")
    });
    set.extend(uses.iter().copied());
    set
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a line without its `//` comment (doc comments name other modules freely).
fn code_of(line: &str) -> &str {
    line.find("//").map_or(line, |i| &line[..i])
}

/// The top-level modules a line of code names: `crate::x` and each `x` of `crate::{x, ..}`.
fn named_modules(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let before = rest[..i].chars().last();
        rest = &rest[i + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // `kmsfs_crate::` or the like, not this crate
        }
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name: String =
                    item.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                if !name.is_empty() {
                    out.push(name);
                }
            }
        } else {
            let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            out.push(name);
        }
    }
    // Items of the crate root (`crate::Error`, `crate::Result`) are the error module's.
    out.into_iter().map(|n| if n == "Error" || n == "Result" { "error".to_string() } else { n }).collect()
}

#[test]
fn no_module_names_a_layer_above_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut violations = Vec::new();
    let mut checked = 0;
    for file in &files {
        let rel = file.strip_prefix(&src).unwrap();
        let first = rel.components().next().unwrap().as_os_str().to_str().unwrap();
        let module = first.strip_suffix(".rs").unwrap_or(first);
        if ["lib", "main", "bin"].contains(&module) {
            continue; // the crate root and the binaries sit above every layer
        }
        let allowed = allowed(module);
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            for named in named_modules(code_of(line)) {
                checked += 1;
                if named != module && !allowed.contains(named.as_str()) {
                    violations.push(format!(
                        "src/{}:{}: {module} names crate::{named}",
                        rel.display(),
                        n + 1
                    ));
                }
            }
        }
    }
    assert!(checked > 200, "the check saw only {checked} crate paths: is it reading src/?");
    assert!(violations.is_empty(), "imports against the layer rule:\n{}", violations.join("\n"));
}

/// The grep of the issue that asked for the content layer, stated on its own: nothing under
/// src/volume, src/content or src/kms uses the FUSE layer, and nothing under src/fs uses the
/// keystore (keys and decisions reach fs only through the key ring).
#[test]
fn volume_content_and_kms_never_use_fs_and_fs_never_uses_the_keystore() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut offending = Vec::new();
    for (dir, forbidden) in
        [("volume", "fs"), ("content", "fs"), ("kms", "fs"), ("keystore", "fs"), ("fs", "keystore")]
    {
        let mut files = Vec::new();
        rust_files(&src.join(dir), &mut files);
        assert!(!files.is_empty(), "src/{dir} has no source files");
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for (n, line) in text.lines().enumerate() {
                if named_modules(code_of(line)).iter().any(|m| m == forbidden) {
                    offending.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(offending.is_empty(), "{}", offending.join("\n"));
}

#[test]
fn the_path_reader_sees_single_paths_and_groups() {
    assert_eq!(named_modules("use crate::fs::KmsFs;"), ["fs"]);
    assert_eq!(named_modules("use crate::{Error, kms::Kms, volume};"), ["error", "kms", "volume"]);
    assert_eq!(
        named_modules("let x = crate::mounts::mounted_at(p) + crate::sys::c_path(q);"),
        ["mounts", "sys"]
    );
    assert!(named_modules("no_crate::fs").is_empty());
    assert_eq!(code_of("use a; // crate::fs"), "use a; ");
}
