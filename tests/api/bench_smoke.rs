//! The load harness keeps working: a smoke run (seconds) of every scenario over MCP, checked for output
//! and zero errors. Timings are reported by the harness, never asserted here.

use serde_json::Value;

#[test]
fn the_load_harness_runs_every_scenario_without_errors() {
    let out = tempfile::tempdir().unwrap();
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_context-store"))
        .args(["bench", "--smoke", "--transport", "mcp", "--out"])
        .arg(out.path())
        .env("CTX__EMBEDDING__ASSETS_DIR", crate::helpers::assets_dir())
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .status()
        .expect("harness runs");
    assert!(status.success());
    let reports: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("report.json")).unwrap()).unwrap();
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
