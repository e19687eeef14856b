//! The load harness keeps working: a smoke run (seconds) of every scenario over MCP, checked for output
//! and zero errors. Timings are reported by the harness, never asserted here.

use std::ffi::OsStr;
use std::path::Path;

use serde_json::Value;

/// Runs `context-store bench --smoke ARGS --out OUT`.
fn harness(args: &[&OsStr], out: &Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_context-store"))
        .args(["bench", "--smoke"])
        .args(args)
        .arg("--out")
        .arg(out)
        .env("CTX__EMBEDDING__ASSETS_DIR", crate::helpers::assets_dir())
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .output()
        .expect("harness runs")
}

/// A smoke run that must succeed; its JSON report.
fn smoke_run(args: &[&OsStr], out: &Path) -> Vec<Value> {
    let output = harness(args, out);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap()
}

#[test]
fn the_load_harness_runs_every_scenario_without_errors() {
    let out = tempfile::tempdir().unwrap();
    let reports = smoke_run(&["--transport".as_ref(), "mcp".as_ref()], out.path());
    let scenarios: Vec<&str> = reports.iter().map(|r| r["scenario"].as_str().unwrap()).collect();
    assert_eq!(scenarios, vec!["noop", "ping", "agent", "write", "read", "search", "search_new", "mixed"]);
    for report in &reports {
        assert!(report["total"]["ops"].as_u64().unwrap() > 0, "{report}");
        assert_eq!(report["total"]["errors"].as_u64(), Some(0), "{}", report["error_samples"]);
    }
    let svg = std::fs::read_to_string(out.path().join("latency.svg")).unwrap();
    assert!(svg.starts_with("<svg"));
    assert!(out.path().join("report.md").exists());
}

/// Several connection counts are measured against one server (searching with two of the three stages), and a
/// kept data directory is imported into once: a second run starts on it without importing.
#[test]
fn search_rounds_share_one_server_and_a_kept_data_directory_is_imported_once() {
    let (out, data) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let store = data.path().join("store");
    let args: Vec<&OsStr> = ["--transport", "http", "--scenarios", "search", "--connections", "2,4"]
        .into_iter()
        // Its own seed: the preload file is not shared with the other harness test running beside it.
        .chain(["--seed", "7", "--search-stages", "vector,fuzzy", "--data-dir"])
        .map(OsStr::new)
        .chain([store.as_os_str()])
        .collect();
    let run = || smoke_run(&args, out.path());
    let first = run();
    let connections: Vec<u64> = first.iter().map(|r| r["connections"].as_u64().unwrap()).collect();
    assert_eq!(connections, [2, 4]);
    for report in &first {
        assert_eq!(report["total"]["errors"].as_u64(), Some(0), "{}", report["error_samples"]);
        assert!(report["total"]["ops"].as_u64().unwrap() > 0, "{report}");
        assert!(report["server_cpu_ms_per_op"].as_f64().unwrap() > 0.0, "{report}");
        assert!(report["import_seconds"].as_f64().is_some(), "the first run imports: {report}");
        assert_eq!(report["preloaded"].as_u64(), Some(200));
    }
    let second = run();
    assert_eq!(second.len(), 2);
    for report in &second {
        assert!(report["import_seconds"].is_null(), "the second run starts on the kept store: {report}");
        assert_eq!(report["preloaded"].as_u64(), Some(200));
        assert_eq!(report["total"]["errors"].as_u64(), Some(0), "{}", report["error_samples"]);
    }
    assert!(data.path().join("store").join("vectors").exists());
    // A run that asks for another preload is refused rather than measured against the wrong store.
    let other: Vec<&OsStr> =
        args.iter().map(|arg| if *arg == OsStr::new("7") { OsStr::new("8") } else { *arg }).collect();
    let refused = harness(&other, out.path());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(
        stderr.contains("holds the preload of 200 contexts with seed 7, not the preload of 200 contexts with seed 8"),
        "{stderr}"
    );
}
