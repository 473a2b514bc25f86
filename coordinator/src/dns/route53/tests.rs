//! Route53's limits, packing, pacing and names, without a server.

use aws_sdk_route53::types::ChangeAction;

use super::limits::slow_down_answer;
use super::*;

/// Route53's escapes and trailing dots are undone before comparing.
#[test]
fn names_are_decoded() {
    assert_eq!(
        decode_name("\\052.n1.web.Example.com."),
        "*.n1.web.example.com."
    );
    assert_eq!(decode_name("n1.web.example.com"), "n1.web.example.com.");
    assert_eq!(decode_name("a\\100b.example.com."), "a@b.example.com.");
    // Not an escape: kept as it is.
    assert_eq!(decode_name("a\\9.example.com."), "a\\9.example.com.");
    let wildcard = Name::from_ascii(decode_name("\\052.n1.web.example.com.")).unwrap();
    assert!(wildcard.is_wildcard());
}

/// An UPSERT counts twice, by records and by characters.
#[test]
fn costs_follow_aws() {
    let values = vec!["192.0.2.1".to_owned(), "192.0.2.22".to_owned()];
    assert_eq!(change_cost(&ChangeAction::Create, &values), (2, 19));
    assert_eq!(change_cost(&ChangeAction::Delete, &values), (2, 19));
    assert_eq!(change_cost(&ChangeAction::Upsert, &values), (4, 38));
}

/// Requests stop at 1000 counted records.
#[test]
fn packing_by_records() {
    // 1500 UPSERTs of one A record: 2 counted records each.
    let groups = vec![(1, 2, 22); 1500];
    let requests = pack(&groups);
    assert_eq!(
        requests.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![500, 500, 500]
    );
    let flat: Vec<usize> = requests.concat();
    assert_eq!(flat, (0..1500).collect::<Vec<_>>(), "order is kept");
}

/// Requests stop at 32,000 counted characters, before 1000 records.
#[test]
fn packing_by_characters() {
    // A CNAME to a long name: 1 record, 200 characters, UPSERT.
    let groups = vec![(1, 2, 400); 200];
    let requests = pack(&groups);
    assert_eq!(
        requests.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![80, 80, 40]
    );
    for request in &requests {
        let chars: usize = request.iter().map(|&i| groups[i].2).sum();
        assert!(chars <= MAX_VALUE_CHARS);
    }
}

/// Groups are never split, and one too large for any request goes
/// alone.
#[test]
fn packing_keeps_groups_whole() {
    let groups = vec![(2, 600, 100), (2, 600, 100), (1, 1500, 100), (1, 1, 1)];
    assert_eq!(pack(&groups), vec![vec![0], vec![1], vec![2], vec![3]]);
    assert!(pack(&[]).is_empty());
    // 1000 changes at most, whatever they cost.
    let tiny = vec![(1, 0, 0); 1001];
    assert_eq!(
        pack(&tiny).iter().map(Vec::len).collect::<Vec<_>>(),
        vec![1000, 1]
    );
}

/// A burst of 5 goes at once; the sixth waits a tenth of a second; a
/// quiet second refills to 5, not 10.
#[test]
fn token_bucket_paces_calls() {
    let bucket = TokenBucket::new(10.0, 5);
    let t0 = Instant::now();
    for _ in 0..5 {
        assert_eq!(bucket.reserve(t0), Duration::ZERO);
    }
    let wait = bucket.reserve(t0);
    assert!(
        (wait.as_secs_f64() - 0.1).abs() < 1e-6,
        "the sixth waits 100 ms: {wait:?}"
    );
    let wait = bucket.reserve(t0);
    assert!(
        (wait.as_secs_f64() - 0.2).abs() < 1e-6,
        "then 200 ms: {wait:?}"
    );
    // Two seconds later the bucket is full again, at 5.
    let later = t0 + Duration::from_secs(2);
    for _ in 0..5 {
        assert_eq!(bucket.reserve(later), Duration::ZERO);
    }
    assert!(bucket.reserve(later) > Duration::ZERO);
    // Over a long run the rate holds: 100 calls need about 10 s.
    let bucket = TokenBucket::new(10.0, 5);
    let start = Instant::now();
    let last = (0..100).map(|_| bucket.reserve(start)).max().unwrap();
    assert!((last.as_secs_f64() - 9.5).abs() < 1e-6, "{last:?}");
}

/// Throttling answers and 503 are retried; other errors are not.
#[test]
fn throttling_is_recognised() {
    assert!(slow_down_answer(Some("Throttling"), Some(400)));
    assert!(slow_down_answer(Some("PriorRequestNotComplete"), Some(400)));
    assert!(slow_down_answer(None, Some(503)));
    assert!(!slow_down_answer(Some("InvalidChangeBatch"), Some(400)));
    assert!(!slow_down_answer(None, None));
}
