//! `BENCH_PROBE=1` (`make bench-probe`): the price of each host call Envoy offers a filter. Every
//! variant runs the benchmark-only probe module (`bench/probe`), which makes one kind of host call
//! `n` times per request; the same module making no call is the baseline. Envoy's CPU time per
//! request, minus the baseline's, divided by `n`, is the price of one call. Writes `probe.md`.

use std::path::Path;

use serde_json::{Value, json};
use tollgate_bench::report::Sample;
use tollgate_bench::stats::median;
use tollgate_e2e::{wasm_dir, wasm_filter};

use crate::variants::Variant;

/// The baseline variant: the probe module making no call.
pub(crate) const PROBE_BASELINE: &str = "probe: no call";

/// (call, calls per request, what it is): the calls a filter makes on its request path.
pub(crate) const CALLS: [(&str, u32, &str); 13] = [
    ("get_header", 50, "one request header by name"),
    ("get_headers", 20, "every request header (12 on these requests)"),
    ("set_header", 50, "replace a request header"),
    ("add_header", 20, "add a request header line"),
    ("get_property", 50, "read a property (`xds.route_name`)"),
    ("set_property", 50, "write 96 bytes of filter state"),
    ("shared_get", 50, "read a 96-byte shared-data value"),
    ("shared_set", 50, "write a 96-byte shared-data value"),
    ("shared_cas", 25, "compare-and-swap round: read, then write with its version"),
    ("counter", 50, "increment a counter"),
    ("now", 50, "read the clock"),
    ("log_filtered", 50, "a log call below Envoy's level"),
    ("local_reply", 1, "answer with a local reply instead of the route"),
];

fn probe(path: &Path, call: &str, n: u32) -> Value {
    let mut filter = wasm_filter("probe", "probe", path, &json!({"call": call, "n": n}));
    filter["typed_config"]["config"]["vm_config"]["vm_id"] = json!("probe");
    filter
}

/// The baseline, then one variant per call.
pub(crate) fn variants() -> Vec<Variant> {
    let path = wasm_dir().join("tollgate_bench_probe.wasm");
    std::iter::once(Variant::new(
        PROBE_BASELINE,
        "the probe module, making no host call",
        vec![probe(&path, "nothing", 0)],
    ))
    .chain(CALLS.iter().map(|(call, n, what)| {
        Variant::new(
            &format!("probe: {call}"),
            &format!("{what}, {n}× per request"),
            vec![probe(&path, call, *n)],
        )
    }))
    .collect()
}

/// The table of prices: per call, the median over rounds of (variant CPU − baseline CPU) ÷ n.
pub(crate) fn table(runs: &[(String, Vec<Sample>)]) -> String {
    let cpu = |name: &str, round: usize| {
        runs.iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, samples)| samples.iter().find(|s| s.round == round))
            .and_then(|s| s.cpu_us_per_request)
    };
    let rounds = runs.first().map_or(0, |(_, s)| s.len());
    let baseline: Vec<f64> = (0..rounds).filter_map(|r| cpu(PROBE_BASELINE, r)).collect();
    let mut out =
        String::from("| host call | calls/request | µs per call (median) | rounds |\n|---|---:|---:|---:|\n");
    out.push_str(&format!(
        "| (module, no call: baseline) | 0 | {:.1} µs/request | {} |\n",
        median(&baseline).unwrap_or(f64::NAN),
        baseline.len()
    ));
    for (call, n, what) in CALLS {
        let name = format!("probe: {call}");
        let prices: Vec<f64> = (0..rounds)
            .filter_map(|r| Some((cpu(&name, r)? - cpu(PROBE_BASELINE, r)?) / f64::from(n)))
            .collect();
        out.push_str(&format!(
            "| `{call}`: {what} | {n} | {:.2} | {} |\n",
            median(&prices).unwrap_or(f64::NAN),
            prices.len()
        ));
    }
    out
}
