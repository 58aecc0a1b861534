//! The shortest end-to-end path: a request through cohort reaches the variant its key
//! hashes to, and the response says which.
mod support;

use support::{get, user_route, FakeUpstream, TestCohort};

#[tokio::test]
async fn a_keyed_request_reaches_its_variant() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    let cohort = TestCohort::start(user_route("r", &stable, &canary).canary_percent(50)).await;
    for user in ["alice", "bob", "carol", "dave"] {
        let expected = cohort::cohort::assign(
            "r-salt",
            user.as_bytes(),
            cohort::cohort::BasisPoints::from_percent(50.0).unwrap(),
        )
        .1;
        let answer = get(&cohort.url("/x"), &[("x-user-id", user)]).await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.variant(), Some(expected.as_str()));
        assert_eq!(
            answer.text(),
            expected.as_str(),
            "body comes from the chosen upstream"
        );
    }
    cohort.shutdown().await;
}
