use super::*;

fn identity() -> Identity<'static> {
    Identity {
        route: "checkout",
        salt: "s\"1",
        start: "2026-12-01T09:00:00Z",
    }
}

fn sample(labels: &[(&str, &str)], value: f64) -> Sample {
    Sample {
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        value,
    }
}

/// A replica's cumulative bucket series for one variant and outcome: `fast` requests
/// at or under 0.25 s, `slow` above it.
fn buckets(instance: &str, variant: &str, outcome: &str, fast: f64, slow: f64) -> Vec<Sample> {
    let mut out: Vec<Sample> = DURATION_BUCKETS
        .iter()
        .map(|bound| {
            let le = bound.to_string();
            let value = if *bound < 0.25 {
                0.0
            } else if *bound < 0.5 {
                fast
            } else {
                fast + slow
            };
            let labels = [
                ("instance", instance),
                ("variant", variant),
                ("outcome", outcome),
                ("le", le.as_str()),
            ];
            sample(&labels, value)
        })
        .collect();
    out.push(sample(
        &[
            ("instance", instance),
            ("variant", variant),
            ("outcome", outcome),
            ("le", "+Inf"),
        ],
        fast + slow,
    ));
    out
}

#[test]
fn queries_select_the_identity_and_escape_its_labels() {
    let window = identity().window_query(Duration::from_secs(30));
    assert_eq!(
        window,
        "sum by (variant, outcome, le) (increase(cohort_guard_duration_seconds_bucket{route=\"checkout\"}[30s]) \
         and ignoring(variant, outcome, le, salt, start) (cohort_rollout_info{route=\"checkout\",salt=\"s\\\"1\",start=\"2026-12-01T09:00:00Z\"} == 1))"
    );
    // PromQL strings escape the regex's backslashes: `\\+Inf` is the regex `\+Inf`.
    let counters = identity().counters_query(None);
    assert!(
        counters.starts_with(
            r#"cohort_guard_duration_seconds_bucket{route="checkout",le=~"\\+Inf"} and ignoring("#
        ),
        "{counters}"
    );
    let one_second = identity().counters_query(crate::histogram::bound_index(1.0));
    assert!(
        one_second.contains(r#"le=~"\\+Inf|1|1\\.0"}"#),
        "both ways Prometheus may write the bound: {one_second}"
    );
    let quarter = identity().counters_query(crate::histogram::bound_index(0.25));
    assert!(quarter.contains(r#"le=~"\\+Inf|0\\.25"}"#), "{quarter}");
    let peers = identity().peers_query(None);
    assert!(peers.contains("count((cohort_rollout_state{route=\"checkout\",state=\"rolled_back\"} == 1) and ignoring(state, salt, start)"));
    let resumed = identity().peers_query(Some(90));
    assert!(resumed.contains("unless min_over_time(cohort_rollout_state{route=\"checkout\",state=\"rolled_back\"}[90s]) == 1"));
}

#[test]
fn form_bodies_are_percent_encoded() {
    assert_eq!(
        form_body("sum by (a) (x{b=\"c\"}[1s])"),
        "query=sum+by+%28a%29+%28x%7Bb%3D%22c%22%7D%5B1s%5D%29"
    );
    assert_eq!(form_body("a+b&c"), "query=a%2Bb%26c");
}

#[test]
fn answers_parse_or_say_why_not() {
    let ok = br#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"peers":"replicas"},"value":[1.5,"3"]},{"metric":{"peers":"rolled_back"},"value":[1.5,"1"]}]}}"#;
    let samples = parse_vector(200, ok).expect("a vector");
    assert_eq!(
        peers(&samples),
        Ok(Peers {
            replicas: 3,
            rolled_back: 1
        })
    );
    let empty = br#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
    assert_eq!(
        peers(&parse_vector(200, empty).expect("empty")),
        Err(AnswerError::NoReplicas)
    );
    let refused = br#"{"status":"error","errorType":"bad_data","error":"parse error at char 3"}"#;
    assert_eq!(
        parse_vector(400, refused),
        Err(AnswerError::Refused {
            status: 400,
            message: "parse error at char 3".into()
        })
    );
    assert!(matches!(
        parse_vector(502, b"<html>bad gateway</html>"),
        Err(AnswerError::Refused { status: 502, .. })
    ));
    assert!(matches!(
        parse_vector(
            200,
            b"{\"status\":\"success\",\"data\":{\"resultType\":\"matrix\",\"result\":[]}}"
        ),
        Err(AnswerError::Malformed(_))
    ));
    assert!(matches!(
        parse_vector(200, b"not json"),
        Err(AnswerError::Malformed(_))
    ));
}

#[test]
fn window_counts_split_the_fleet_histogram_by_variant_and_outcome() {
    let mut samples = buckets("", "canary", "ok", 30.4, 9.6);
    samples.extend(buckets("", "canary", "error", 5.0, 5.0));
    samples.extend(buckets("", "stable", "ok", 200.0, 0.0));
    samples.push(sample(
        &[("variant", "other"), ("outcome", "ok"), ("le", "+Inf")],
        7.0,
    ));
    let (stable, canary) = window_counts(&samples);
    assert_eq!(canary.requests, 50);
    assert_eq!(canary.errors, 10);
    let at_or_under = crate::histogram::bound_index(0.25).expect("bound");
    assert_eq!(canary.histogram[at_or_under], 35);
    assert_eq!(
        crate::histogram::slower_than(at_or_under, &canary.histogram),
        15
    );
    assert_eq!((stable.requests, stable.errors), (200, 0));
}

#[test]
fn a_differencer_counts_increments_resets_and_new_replicas() {
    let slow = crate::histogram::bound_index(0.25);
    let answer = |a: (f64, f64), b: (f64, f64)| {
        let mut s = buckets("a", "canary", "error", a.0, a.1);
        s.extend(buckets("b", "stable", "ok", b.0, b.1));
        s
    };
    let mut differ = Differencer::new();
    // The first answer is the baseline: everything before it is history.
    let (stable, canary) = differ.advance(&answer((10.0, 5.0), (100.0, 0.0)), slow);
    assert_eq!((stable, canary), (Tally::default(), Tally::default()));
    let (stable, canary) = differ.advance(&answer((12.0, 8.0), (150.0, 1.0)), slow);
    assert_eq!(
        canary,
        Tally {
            requests: 5,
            errors: 5,
            slow: 3
        }
    );
    assert_eq!(
        stable,
        Tally {
            requests: 51,
            errors: 0,
            slow: 1
        }
    );
    // Replica a restarted (its counters fell); replica c joined.
    let mut third = answer((1.0, 0.0), (160.0, 1.0));
    third.extend(buckets("c", "canary", "ok", 4.0, 0.0));
    let (stable, canary) = differ.advance(&third, slow);
    assert_eq!(
        canary,
        Tally {
            requests: 5,
            errors: 1,
            slow: 0
        }
    );
    assert_eq!(stable.requests, 10);
    // Without latency_over nothing is slow.
    let (_, canary) = differ.advance(&third, None);
    assert_eq!(canary, Tally::default());
}
