//! Online password guessing is slowed down per source: an attacker dialling as fast as it can
//! with wrong passwords gets a handful of guesses examined (1 s, 2 s, 4 s, 8 s... apart), the
//! rest refused before any handshake work; a member elsewhere still joins meanwhile.

use std::time::{Duration, Instant};

use mesh_tests::{
    Lab, bins,
    mesh::{Meshd, status_counter},
};

fn counter(node: &Meshd, name: &str) -> u64 {
    status_counter(node, "handshake_counters", name)
}

/// One `meshd --probe` of `target` from `ns` with the password in `pw`: its combined output.
fn probe(lab: &Lab, ns: &str, state: &str, pw: &str, target: &str) -> (bool, String) {
    let meshd = bins::path("meshd").unwrap();
    let out = lab
        .exec(
            ns,
            meshd.to_str().unwrap(),
            &[
                "--probe",
                target,
                "--password-file",
                pw,
                "--state-dir",
                state,
                "--name",
                "prober",
            ],
        )
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn wrong_passwords_from_one_source_are_slowed_down_exponentially() {
    let mut lab = Lab::new("guess").unwrap();
    let victim = lab.add_host("gv").unwrap();
    let attacker = lab.add_host("ge").unwrap();
    let member = lab.add_host("gm").unwrap();
    let right = lab.password_file("right", "the right password").unwrap();
    let wrong = lab.password_file("wrong", "a guess").unwrap();
    let (right, wrong) = (right.to_str().unwrap(), wrong.to_str().unwrap());
    let node = lab
        .start_meshd(&victim, &["--password-file", right, "--datapath", "tap"])
        .unwrap();
    let target = victim.addr.to_string();
    let state = |name: &str| lab.dir().join(name).to_str().unwrap().to_owned();
    let (attacker_state, member_state) = (state("ge-probe"), state("gm-probe"));
    // meshd answers: a probe with the right password joins (positive control of the probe).
    assert!(mesh_tests::wait_until(Duration::from_secs(10), || {
        probe(&lab, &member.ns, &member_state, right, &target).0
    }));

    let start = Instant::now();
    let (mut attempts, mut examined) = (0u64, 0u64);
    while start.elapsed() < Duration::from_secs(10) {
        let (ok, text) = probe(&lab, &attacker.ns, &attacker_state, wrong, &target);
        assert!(!ok, "a wrong password joined: {text}");
        attempts += 1;
        if text.contains("wrong password") {
            examined += 1;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{attempts} guesses in {secs:.1} s, {examined} examined ({:.2}/s), the rest refused unexamined",
        examined as f64 / secs
    );
    // Waits of 1, 2, 4, 8 s after successive failures: at most 5 examined in 10 s (one more
    // for a wait that ends just as the window does), against the many the attacker made.
    assert!((1..=5).contains(&examined), "{examined} guesses examined");
    assert!(
        attempts >= 3 * examined,
        "the attacker tried far more: {attempts}"
    );
    assert_eq!(counter(&node, "handshake_failed_auth"), examined);
    assert!(counter(&node, "handshake_refused_throttled") >= attempts - examined - 1);
    // Another source is not held up by the attacker's waits.
    let (ok, text) = probe(&lab, &member.ns, &member_state, right, &target);
    assert!(ok, "a member elsewhere joins during the attack: {text}");
}
