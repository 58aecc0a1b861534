use super::*;

const MIN: i64 = 60_000;

fn bp(p: f64) -> BasisPoints {
    BasisPoints::from_percent(p).expect("percent")
}

fn ramp() -> Rollout {
    Rollout {
        start: parse_rfc3339("2026-12-01T09:00:00Z").expect("time"),
        start_text: "2026-12-01T09:00:00Z".into(),
        steps: [1.0, 5.0, 25.0, 50.0, 100.0].map(bp).to_vec(),
        step_every: Duration::from_secs(600),
    }
}

const ROLLED_BACK: Memory = Memory {
    held_step: None,
    rolled_back: true,
    resumed_at: None,
};

fn held(step: usize) -> Memory {
    Memory {
        held_step: Some(step),
        ..Memory::default()
    }
}

#[test]
fn schedule_follows_the_design_formula() {
    let r = ramp();
    let at = |offset_ms: i64| r.position(r.start + offset_ms);
    assert_eq!(
        r.position(r.start - 1),
        Position {
            step: None,
            next_at: Some(r.start)
        }
    );
    assert_eq!(r.percent_at(r.start - 1), BasisPoints::ZERO);
    assert_eq!(
        at(0),
        Position {
            step: Some(0),
            next_at: Some(r.start + 10 * MIN)
        }
    );
    assert_eq!(at(10 * MIN - 1).step, Some(0));
    assert_eq!(at(10 * MIN).step, Some(1));
    assert_eq!(r.percent_at(r.start + 25 * MIN), bp(25.0));
    assert_eq!(
        at(40 * MIN),
        Position {
            step: Some(4),
            next_at: None
        }
    );
    assert_eq!(
        at(400 * 24 * 60 * MIN).step,
        Some(4),
        "the last step after that"
    );
    assert_eq!(r.percent_at(i64::MAX), bp(100.0));
}

#[test]
fn the_schedule_only_ever_widens() {
    let r = ramp();
    let mut last = BasisPoints::ZERO;
    for t in (r.start - MIN..r.start + 60 * MIN).step_by(7_919) {
        let now = r.percent_at(t);
        assert!(now >= last, "{now} < {last} at {t}");
        last = now;
    }
}

#[test]
fn two_replicas_with_clocks_two_seconds_apart_disagree_only_near_a_boundary() {
    let r = ramp();
    let skew = 2_000;
    for t in (r.start - MIN..r.start + 60 * MIN).step_by(500) {
        let (a, b) = (r.position(t).step, r.position(t + skew).step);
        if a != b {
            // They differ only in the 2 s before a step boundary, and by one step.
            let boundary = r.position(t).next_at.expect("a boundary follows");
            assert!(boundary > t && boundary <= t + skew, "t={t}");
            assert_eq!(
                b.map(|s| s as i64),
                a.map_or(Some(0), |s| Some(s as i64 + 1))
            );
        }
    }
}

fn guard() -> Guard {
    Guard {
        window: Duration::from_secs(30),
        min_requests: 50,
        max_error_ratio: Some(0.05),
        max_error_ratio_vs_stable: Some(0.02),
        max_p99: Some(Duration::from_millis(500)),
        action: GuardAction::Rollback,
        on_rollback: None,
        method: crate::rollout::Method::Threshold,
        source: crate::rollout::Source::Local,
    }
}

fn figures(requests: u64, errors: u64, p99: Option<f64>) -> Figures {
    Figures {
        requests,
        errors,
        error_ratio: (requests > 0).then(|| errors as f64 / requests as f64),
        p99_seconds: p99,
    }
}

#[test]
fn verdict_from_bucket_counts() {
    let g = guard();
    let calm = figures(1000, 0, Some(0.01));
    assert_eq!(
        verdict(&g, &figures(49, 49, None), &calm),
        Verdict::TooFewRequests
    );
    let ratio_only = Guard {
        max_error_ratio_vs_stable: None,
        ..guard()
    };
    assert_eq!(
        verdict(&ratio_only, &figures(100, 5, Some(0.1)), &calm),
        Verdict::Pass,
        "5 % is not above 5 %"
    );
    assert_eq!(
        verdict(&g, &figures(100, 6, Some(0.1)), &calm),
        Verdict::Fail(Reason::ErrorRatio)
    );
    // 4 % canary against 1 % stable: 3 points worse than stable.
    let noisy_stable = figures(1000, 10, Some(0.01));
    assert_eq!(
        verdict(&g, &figures(100, 4, Some(0.1)), &noisy_stable),
        Verdict::Fail(Reason::ErrorRatioVsStable)
    );
    assert_eq!(
        verdict(&g, &figures(100, 2, Some(0.1)), &noisy_stable),
        Verdict::Pass
    );
    assert_eq!(
        verdict(&g, &figures(100, 0, Some(0.7)), &calm),
        Verdict::Fail(Reason::P99)
    );
    let lenient = Guard {
        max_error_ratio: None,
        max_error_ratio_vs_stable: None,
        max_p99: None,
        ..guard()
    };
    assert_eq!(
        verdict(&lenient, &figures(100, 100, Some(9.0)), &calm),
        Verdict::Pass
    );
}

#[test]
fn effective_share_combines_schedule_hold_and_rollback() {
    let r = ramp();
    let t = r.start + 25 * MIN; // step 2 (25 %) in force
    assert_eq!(
        effective(Some(&r), bp(99.0), t, Memory::default()),
        Effective {
            share: bp(25.0),
            step: Some(2),
            state: RolloutState::Ramping
        }
    );
    assert_eq!(
        effective(Some(&r), bp(99.0), r.start - 1, Memory::default()),
        Effective {
            share: BasisPoints::ZERO,
            step: None,
            state: RolloutState::Pending
        }
    );
    assert_eq!(
        effective(Some(&r), bp(99.0), r.start + 45 * MIN, Memory::default()).state,
        RolloutState::Complete
    );
    assert_eq!(
        effective(Some(&r), bp(99.0), t, held(1)),
        Effective {
            share: bp(5.0),
            step: Some(1),
            state: RolloutState::Holding
        }
    );
    assert_eq!(
        effective(
            Some(&r),
            bp(99.0),
            t,
            Memory {
                rolled_back: true,
                ..held(1)
            }
        ),
        Effective {
            share: BasisPoints::ZERO,
            step: Some(2),
            state: RolloutState::RolledBack
        }
    );
    // Without a rollout a guard watches canary_percent.
    assert_eq!(
        effective(None, bp(10.0), t, Memory::default()).share,
        bp(10.0)
    );
    assert_eq!(
        effective(None, bp(10.0), t, ROLLED_BACK),
        Effective {
            share: BasisPoints::ZERO,
            step: None,
            state: RolloutState::RolledBack
        }
    );
}

#[test]
fn rfc3339_parses_offsets_and_fractions() {
    assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Ok(0));
    assert_eq!(parse_rfc3339("2026-12-01T09:00:00Z"), Ok(1_796_115_600_000));
    assert_eq!(
        parse_rfc3339("2026-12-01T10:00:00+01:00"),
        Ok(1_796_115_600_000)
    );
    assert_eq!(
        parse_rfc3339("2026-12-01T08:30:00-00:30"),
        Ok(1_796_115_600_000)
    );
    assert_eq!(
        parse_rfc3339("2026-12-01T09:00:00.25Z"),
        Ok(1_796_115_600_250)
    );
    assert_eq!(
        parse_rfc3339("2024-02-29T00:00:00Z").map(|m| m % 86_400_000),
        Ok(0)
    );
    for bad in [
        "2026-12-01",
        "2026-13-01T00:00:00Z",
        "2026-02-30T00:00:00Z",
        "2026-12-01T09:00:00",
        "2026-12-01T09:00:00+1:00",
        "tomorrow morning please",
        "2026-12-01T25:00:00Z",
    ] {
        assert!(parse_rfc3339(bad).is_err(), "{bad} must be rejected");
    }
    assert_eq!(format_rfc3339(1_796_115_600_999), "2026-12-01T09:00:00Z");
    assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00Z");
}

#[test]
fn a_resume_restarts_the_ramp_at_its_first_step_never_later() {
    let r = ramp();
    // Rolled back at step 2, resumed an hour after start: the schedule alone would be on
    // its last step (100 %); the resumed ramp is on steps[0] and climbs from there.
    let resumed_at = r.start + 60 * MIN;
    let resumed = Memory {
        resumed_at: Some(resumed_at),
        ..Memory::default()
    };
    assert_eq!(
        effective(Some(&r), bp(99.0), resumed_at, Memory::default()).share,
        bp(100.0)
    );
    assert_eq!(
        effective(Some(&r), bp(99.0), resumed_at, resumed),
        Effective {
            share: bp(1.0),
            step: Some(0),
            state: RolloutState::Ramping
        }
    );
    assert_eq!(
        effective(Some(&r), bp(99.0), resumed_at + 10 * MIN, resumed).share,
        bp(5.0)
    );
    assert_eq!(
        r.position_from(r.origin(Some(resumed_at)), resumed_at + 15 * MIN)
            .next_at,
        Some(resumed_at + 20 * MIN)
    );
    // Past the schedule's end by any amount: still steps[0] at the moment of resume.
    let much_later = r.start + 1000 * 24 * 60 * MIN;
    let resumed_late = Memory {
        resumed_at: Some(much_later),
        ..Memory::default()
    };
    assert_eq!(
        effective(Some(&r), bp(99.0), much_later, resumed_late).share,
        bp(1.0)
    );
    // A resume before start leaves the schedule alone.
    assert_eq!(r.origin(Some(r.start - MIN)), r.start);
    // A rollback after a resume is a rollback again.
    assert_eq!(
        effective(
            Some(&r),
            bp(99.0),
            resumed_at,
            Memory {
                rolled_back: true,
                ..resumed
            }
        )
        .share,
        BasisPoints::ZERO
    );
}

#[test]
fn a_late_start_names_the_step_that_applies_at_once() {
    let r = ramp();
    assert_eq!(late_start(&r, r.start - 1, None), None);
    assert_eq!(
        late_start(&r, r.start + 9 * MIN, None),
        None,
        "still the first step"
    );
    let late = late_start(&r, r.start + 26 * 60 * MIN, None).expect("late");
    assert_eq!(
        late.to_string(),
        "started 26 h ago: step 5 of 5 (100 %) applies now"
    );
    let late = late_start(&r, r.start + 25 * MIN, None).expect("late");
    assert_eq!(
        late.to_string(),
        "started 25 min ago: step 3 of 5 (25 %) applies now"
    );
    let resumed = late_start(&r, r.start + 200 * MIN, Some(r.start + 185 * MIN)).expect("late");
    assert_eq!(
        resumed.to_string(),
        "resumed 15 min ago: step 2 of 5 (5 %) applies now"
    );
    assert_eq!(
        late_start(&r, r.start + 200 * MIN, Some(r.start + 195 * MIN)),
        None
    );
}

#[test]
fn elapsed_times_read_in_their_largest_sensible_unit() {
    for (ms, text) in [
        (-5, "0 s"),
        (59_999, "59 s"),
        (119_000, "119 s"),
        (120_000, "2 min"),
        (90 * MIN, "90 min"),
        (120 * MIN, "2 h"),
        (26 * 60 * MIN, "26 h"),
        (71 * 60 * MIN, "71 h"),
        (9 * 24 * 60 * MIN, "9 d"),
    ] {
        assert_eq!(Elapsed(ms).to_string(), text, "{ms} ms");
    }
}

#[test]
fn check_describes_where_a_rollout_stands() {
    let r = ramp();
    assert_eq!(
        describe_rollout(&r, r.start - 90 * MIN, Memory::default()),
        "start 2026-12-01T09:00:00Z, steps 1/5/25/50/100 % every 10m; pending: step 1 (1 %) begins at 2026-12-01T09:00:00Z (in 90 min)"
    );
    assert_eq!(
        describe_rollout(&r, r.start + 26 * MIN, Memory::default()),
        "start 2026-12-01T09:00:00Z, steps 1/5/25/50/100 % every 10m; step 3 of 5 (25 %) in force; next step at 2026-12-01T09:30:00Z (in 4 min)"
    );
    assert!(describe_rollout(&r, r.start + 600 * MIN, Memory::default())
        .ends_with("; step 5 of 5 (100 %) in force; last step"));
    assert!(describe_rollout(&r, r.start + 26 * MIN, ROLLED_BACK)
        .ends_with("; rolled back: canary 0 % until resumed"));
    let resumed = Memory {
        resumed_at: Some(r.start + 600 * MIN),
        ..Memory::default()
    };
    assert!(describe_rollout(&r, r.start + 601 * MIN, resumed).ends_with(
        "; resumed at 2026-12-01T19:00:00Z: the ramp restarted at step 1; step 1 of 5 (1 %) in force; next step at 2026-12-01T19:10:00Z (in 9 min)"
    ));
    let guard = Guard {
        window: Duration::from_secs(30),
        min_requests: 50,
        max_error_ratio: Some(0.05),
        max_error_ratio_vs_stable: None,
        max_p99: Some(Duration::from_millis(1500)),
        action: GuardAction::Rollback,
        on_rollback: None,
        method: crate::rollout::Method::Threshold,
        source: crate::rollout::Source::Local,
    };
    assert_eq!(
        describe_guard(&guard),
        "action rollback, window 30s, min_requests 50, max_error_ratio 0.05, max_p99 1s500ms"
    );
}
