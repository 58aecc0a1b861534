//! Config parse + validate from text (through `cohort_fuzz::parse_config`, the one
//! adapter to the config API): never panics, is deterministic, and a valid config
//! serializes (the admin API's `/config`) and builds its route table.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let first = cohort_fuzz::parse_config(text);
    let second = cohort_fuzz::parse_config(text);
    match (&first, &second) {
        (Ok(a), Ok(b)) => assert!(a == b, "parsing the same text twice differs"),
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
        _ => panic!("parsing the same text twice gives a different verdict"),
    }
    match first {
        Ok(config) => {
            assert!(!config.routes.is_empty(), "a valid config has a route");
            for route in &config.routes {
                assert!(route.path_prefix.starts_with('/'));
                if let Some(host) = &route.host {
                    assert_eq!(host, &host.to_ascii_lowercase(), "hosts are kept lowercase");
                }
            }
            serde_json::to_string(&config).expect("a valid config serializes");
            let _ = cohort::router::RouteTable::new(&config.routes);
        }
        Err(e) => {
            // Errors name something.
            assert!(!e.to_string().is_empty());
        }
    }
});
