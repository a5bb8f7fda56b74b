//! Webhook receivers and the documented receiver-side check.

/// `docs/examples/verify_webhook.py` refuses (False) a request with a
/// missing or non-numeric header instead of raising, and refuses a secret
/// tripline would refuse (`whsec_!!!` once became an empty key).
#[test]
fn the_documented_check_refuses_malformed_requests_and_secrets() {
    let out = std::process::Command::new("python3")
        .args(["docs/examples/verify_webhook.py", "--self-test"])
        .output()
        .expect("python3 runs the documented check");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
