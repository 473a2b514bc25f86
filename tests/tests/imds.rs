//! The IMDSv2 emulator itself, against a real moto: it is as strict as the
//! real service and serves the instance's live EC2 data.

use std::net::Ipv4Addr;
use std::time::Duration;

use muster_tests::ec2;
use muster_tests::imds::{TOKEN_HEADER, TTL_HEADER};
use muster_tests::{Imds, Moto};
use reqwest::StatusCode;

/// One moto, one instance (with `user_data` if given) and its emulator.
async fn emulator(user_data: Option<&str>) -> (Moto, aws_sdk_ec2::Client, String, Imds) {
    let moto = Moto::start().await;
    let client = ec2::client(&moto.endpoint()).await;
    let instance_id = ec2::launch_instance_with_user_data(&client, None, user_data).await;
    let imds = Imds::start(client.clone(), &instance_id).await;
    (moto, client, instance_id, imds)
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("building an HTTP client")
}

async fn token(imds: &Imds, ttl: &str) -> String {
    let response = http()
        .put(format!("{}/latest/api/token", imds.endpoint()))
        .header(TTL_HEADER, ttl)
        .send()
        .await
        .expect("PUT /latest/api/token");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response
            .headers()
            .get(TTL_HEADER)
            .and_then(|v| v.to_str().ok()),
        Some(ttl),
        "the TTL header is echoed"
    );
    response.text().await.expect("a token body")
}

async fn get(imds: &Imds, token: Option<&str>, path: &str) -> (StatusCode, String) {
    let mut request = http().get(format!("{}/latest/{path}", imds.endpoint()));
    if let Some(token) = token {
        request = request.header(TOKEN_HEADER, token);
    }
    let response = request.send().await.expect("GET from the emulator");
    let status = response.status();
    (status, response.text().await.unwrap_or_default())
}

/// Without a token every metadata read is 401; IMDSv1 is not served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_without_a_token_are_unauthorized() {
    let (_moto, _client, _id, imds) = emulator(None).await;
    let (status, _) = get(&imds, None, "meta-data/instance-id").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = get(&imds, Some("not-a-token"), "meta-data/instance-id").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(imds.requests(), 2);
}

/// A token request without a TTL, or with one out of range, is 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_requests_need_a_valid_ttl() {
    let (_moto, _client, _id, imds) = emulator(None).await;
    let url = format!("{}/latest/api/token", imds.endpoint());
    let response = http().put(&url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    for bad in ["0", "21601", "-1", "soon"] {
        let response = http()
            .put(&url)
            .header(TTL_HEADER, bad)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "TTL {bad}");
    }
    token(&imds, "21600").await;
}

/// With a token, the instance's live EC2 data is served, and unknown paths are 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_the_instance_as_ec2_describes_it() {
    let (_moto, client, instance_id, imds) = emulator(Some("#cloud-config\n")).await;
    let view = ec2::describe(&client, &instance_id).await;
    let token = token(&imds, "60").await;
    let read = |path: &'static str| {
        let imds = &imds;
        let token = token.clone();
        async move { get(imds, Some(&token), path).await }
    };
    assert_eq!(
        read("meta-data/instance-id").await,
        (StatusCode::OK, instance_id.clone())
    );
    assert_eq!(
        read("meta-data/placement/availability-zone").await,
        (StatusCode::OK, view.availability_zone.clone())
    );
    assert_eq!(
        read("meta-data/placement/region").await,
        (StatusCode::OK, "us-east-1".to_owned())
    );
    let private = view.private_ipv4.expect("moto gives a private address");
    assert_eq!(
        read("meta-data/local-ipv4").await,
        (StatusCode::OK, private.to_string())
    );
    let public = view
        .public_ipv4
        .expect("moto maps a public address on launch");
    assert_eq!(
        read("meta-data/public-ipv4").await,
        (StatusCode::OK, public.to_string())
    );
    assert_eq!(
        read("user-data").await,
        (StatusCode::OK, "#cloud-config\n".to_owned())
    );
    let (status, document) = read("dynamic/instance-identity/document").await;
    assert_eq!(status, StatusCode::OK);
    let document: serde_json::Value = serde_json::from_str(&document).unwrap();
    assert_eq!(document["instanceId"], instance_id.as_str());
    assert_eq!(
        document["availabilityZone"],
        view.availability_zone.as_str()
    );
    assert_eq!(document["region"], "us-east-1");
    assert_eq!(document["privateIp"], private.to_string());
    assert_eq!(document["instanceType"], "t3.micro");
    assert_eq!(document["imageId"], ec2::TEST_AMI);
    assert_eq!(
        read("meta-data/no-such-thing").await.0,
        StatusCode::NOT_FOUND
    );
}

/// An absent public address and absent user data are 404, not errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absent_values_are_not_found() {
    let (_moto, client, instance_id, imds) = emulator(None).await;
    let token = token(&imds, "60").await;
    assert_eq!(
        get(&imds, Some(&token), "user-data").await.0,
        StatusCode::NOT_FOUND
    );
    // moto drops the public address of a stopped instance.
    let stopped = ec2::stop(&client, &instance_id).await;
    assert_eq!(stopped.public_ipv4, None);
    assert_eq!(
        get(&imds, Some(&token), "meta-data/public-ipv4").await.0,
        StatusCode::NOT_FOUND
    );
}

/// An Elastic IP associated in moto is what the next read shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_addresses_changed_in_ec2() {
    let (_moto, client, instance_id, imds) = emulator(None).await;
    let token = token(&imds, "60").await;
    let eip = ec2::associate_new_eip(&client, &instance_id).await;
    assert_eq!(
        get(&imds, Some(&token), "meta-data/public-ipv4").await,
        (StatusCode::OK, eip.to_string())
    );
}

/// The override makes the emulator lie about the public address, and only that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_address_override_lies() {
    let (_moto, client, instance_id, imds) = emulator(None).await;
    let token = token(&imds, "60").await;
    let lie = Ipv4Addr::new(203, 0, 113, 7);
    imds.set_public_ipv4_override(Some(lie));
    assert_eq!(
        get(&imds, Some(&token), "meta-data/public-ipv4").await,
        (StatusCode::OK, lie.to_string())
    );
    let truth = ec2::describe(&client, &instance_id).await.public_ipv4;
    assert_ne!(truth, Some(lie));
    imds.set_public_ipv4_override(None);
    let (_, body) = get(&imds, Some(&token), "meta-data/public-ipv4").await;
    assert_eq!(Some(body), truth.map(|ip| ip.to_string()));
}

/// A token dies after its TTL, and `expire_tokens` kills live ones at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_expire() {
    let (_moto, _client, _id, imds) = emulator(None).await;
    let short = token(&imds, "1").await;
    let long = token(&imds, "21600").await;
    assert_eq!(
        get(&imds, Some(&short), "meta-data/instance-id").await.0,
        StatusCode::OK
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        get(&imds, Some(&short), "meta-data/instance-id").await.0,
        StatusCode::UNAUTHORIZED,
        "a 1 s token is dead after 1.5 s"
    );
    assert_eq!(
        get(&imds, Some(&long), "meta-data/instance-id").await.0,
        StatusCode::OK
    );
    imds.expire_tokens();
    assert_eq!(
        get(&imds, Some(&long), "meta-data/instance-id").await.0,
        StatusCode::UNAUTHORIZED
    );
}

/// cloud-init's crawl: a dated version answers as `latest` does, an unknown
/// one is 404, and the listings from `meta-data/` lead to the MAC's network
/// entries, which agree with EC2; every request is in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tree_can_be_crawled_as_cloud_init_does() {
    let (_moto, client, instance_id, imds) = emulator(None).await;
    let token = token(&imds, "60").await;
    let read = |path: String| {
        let token = token.clone();
        let url = format!("{}/{path}", imds.endpoint());
        async move {
            let response = http()
                .get(url)
                .header(TOKEN_HEADER, token)
                .send()
                .await
                .unwrap();
            (response.status(), response.text().await.unwrap())
        }
    };
    let (status, id) = read("2021-03-23/meta-data/instance-id".into()).await;
    assert_eq!((status, id), (StatusCode::OK, instance_id.clone()));
    let (status, _) = read("1999-99-99x/meta-data/instance-id".into()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, top) = read("2021-03-23/meta-data/".into()).await;
    assert_eq!(status, StatusCode::OK);
    let top: Vec<&str> = top.lines().collect();
    for entry in [
        "instance-id",
        "local-hostname",
        "mac",
        "network/",
        "placement/",
    ] {
        assert!(top.contains(&entry), "{entry} not listed: {top:?}");
    }
    let (_, mac) = read("2021-03-23/meta-data/mac".into()).await;
    let (_, macs) = read("2021-03-23/meta-data/network/interfaces/macs/".into()).await;
    assert_eq!(macs, format!("{mac}/"));
    let nic = format!("2021-03-23/meta-data/network/interfaces/macs/{mac}");
    let (_, ips) = read(format!("{nic}/local-ipv4s")).await;
    let view = ec2::describe(&client, &instance_id).await;
    assert_eq!(ips, view.private_ipv4.unwrap().to_string());
    let (status, cidr) = read(format!("{nic}/subnet-ipv4-cidr-block")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(cidr.contains('/'), "{cidr}");
    let (_, identity) = read("latest/dynamic/instance-identity/".into()).await;
    assert_eq!(identity, "document\npkcs7");
    let log = imds.log();
    assert_eq!(log[0], "PUT /latest/api/token 200");
    assert!(
        log.contains(&"GET /1999-99-99x/meta-data/instance-id 404".to_owned()),
        "{log:?}"
    );
}
