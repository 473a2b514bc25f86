//! What moto does with an instance's public address, as `ec2`'s module doc
//! says; the end-to-end stories rely on it.

use muster_tests::{ec2, Moto};

/// Launch maps a public address; an Elastic IP replaces it; stop drops it;
/// start draws a fresh one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_addresses_follow_launch_eip_stop_start() {
    let moto = Moto::start().await;
    let client = ec2::client(&moto.endpoint()).await;
    let id = ec2::launch_instance(&client, "web").await;

    let launched = ec2::describe(&client, &id).await;
    assert_eq!(launched.state, "running");
    assert_eq!(launched.instance_type, "t3.micro");
    let private = launched.private_ipv4.expect("a private address on launch");
    let first = launched.public_ipv4.expect("a public address on launch");

    let eip = ec2::associate_new_eip(&client, &id).await;
    assert_ne!(eip, first);
    assert_eq!(ec2::describe(&client, &id).await.public_ipv4, Some(eip));

    let stopped = ec2::stop(&client, &id).await;
    assert_eq!(stopped.public_ipv4, None, "stop drops the public address");
    assert_eq!(
        stopped.private_ipv4,
        Some(private),
        "stop keeps the private one"
    );

    let started = ec2::start(&client, &id).await;
    let fresh = started.public_ipv4.expect("start maps a public address");
    assert_ne!(
        fresh, eip,
        "moto does not keep the Elastic IP over stop/start"
    );
    assert_ne!(fresh, first);
    assert_eq!(started.private_ipv4, Some(private));
}
