//! The dashboard in a real browser: `tripline serve` on a real Kafka-protocol
//! broker (see `support/kafka.rs`) serves `/`, and headless Chromium (Debian's
//! `chromium`, driven over the DevTools protocol) loads it. An alert produced
//! after the page loaded must appear in its live feed, and the page's tables
//! must show the rule's count and the key's score; clicking the key shows
//! its features. A value added to a list from the page (which asks for the
//! token) flags the next event.
//!
//! Needs `/usr/bin/chromium` (or `CHROMIUM` set to a Chromium binary); `.ci/run`
//! installs it.

#[path = "support/browser.rs"]
mod browser_support;
#[path = "support/kafka.rs"]
mod kafka_support;
#[path = "support/serve.rs"]
mod serve_support;

use browser_support::browser;
use kafka_support::*;
use serve_support::Terminated;
use std::process::Stdio;
use std::time::Duration;
use tripline::adapters::kafka;

const RULES: &str = "\
stream payments { key card  time ts  time format epoch_ms  lateness 0s }
rule big {
  severity high
  score 25
  pattern { b: amount > 100 }
  payload { amount = b.amount }
}
rule small { severity low pattern { s: amount < 0 } }
rule big_v2 { severity high score 25 mode shadow pattern { b: amount > 500 } }
list blocked
rule listed { severity medium pattern { l: card in blocked } }
";

const TOKEN: &str = "dashboard-test-token";

#[test]
fn an_alert_produced_to_kafka_appears_on_the_dashboard() {
    let c = config("dashboard");
    let _files = TestFiles::of(&c);
    let rules = std::env::temp_dir().join(format!("{}.rules", c.kafka.group_id));
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(rules.join("big.tl"), RULES).unwrap();
    kafka::ensure_topics(&c.kafka, &broker(), &[&c.kafka.input_topic], 4).unwrap();
    let log = std::env::temp_dir().join(format!("{}.log", c.kafka.group_id));
    let _serve = Terminated(
        serve_support::serve_command(&c)
            .env("TRIPLINE__KAFKA__INSTANCE_ID", &c.kafka.instance_id)
            .env(
                "TRIPLINE__RULES__PATHS",
                format!("[\"{}\"]", rules.display()),
            )
            .env("TRIPLINE__CHECKPOINT__INTERVAL_MS", "100")
            .env("TRIPLINE__API__LISTEN", "127.0.0.1:0")
            .env("TRIPLINE__API__TOKEN", TOKEN)
            .env("TRIPLINE__STATE__DIR", &c.state.dir)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let api = format!("http://{}", serve_support::api_address(&log));

    let browser = browser();
    let tab = browser.new_tab().unwrap();
    tab.navigate_to(&format!("{api}/"))
        .unwrap()
        .wait_until_navigated()
        .unwrap();
    assert_eq!(tab.get_title().unwrap(), "tripline");
    let wait = |selector: &str| {
        tab.wait_for_element_with_custom_timeout(selector, Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("no `{selector}` on the page: {e}"))
    };
    // The live feed is connected, and the tables list the rules (none fired).
    wait("#status.live");
    wait("#rules tr[data-rule=\"big\"]");
    let shown = tab
        .evaluate("document.querySelectorAll('#feed li').length", false)
        .unwrap()
        .value;
    assert_eq!(shown, Some(serde_json::json!(0)), "the feed starts empty");

    // One event that makes `big` fire, produced while the page is open.
    produce(
        &c,
        &[Input {
            key: Some("card-7".into()),
            partition: None,
            payload: Some(br#"{"card":"card-7","ts":1700000000000,"amount":950}"#.to_vec()),
        }],
    );
    let item = wait("#feed li[data-rule=\"big\"]");
    let text = item.get_inner_text().unwrap();
    // (innerText is as shown: the severity in capitals.)
    assert!(text.contains("card-7") && text.contains("HIGH"), "{text}");
    assert!(text.contains("2023-11-14T22:13:20"), "{text}");

    // Within a refresh (2 s, which rebuilds the tables), the counts and the
    // ranking show it too.
    let count = || {
        tab.find_element("#rules tr[data-rule=\"big\"] td.num")
            .and_then(|e| e.get_inner_text())
            .unwrap_or_default()
    };
    let started = now();
    while count() != "1" {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "rule count not 1"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The alert opens to its evidence: the values its rule computed and
    // the event it matched, field by field.
    item.click().unwrap();
    let panel = wait("#alert-panel:not([hidden]) #alert-detail table");
    let evidence = tab
        .find_element("#alert-detail")
        .unwrap()
        .get_inner_text()
        .unwrap();
    assert!(
        evidence.contains("Values") && evidence.contains("amount"),
        "{evidence}"
    );
    assert!(
        evidence.contains("Matched: b (1)") && evidence.contains("950"),
        "{evidence}"
    );
    drop(panel);
    screenshot(&tab, "alert");
    let key = wait("#keys tr[data-key=\"card-7\"]");
    let row = key.get_inner_text().unwrap();
    // Scores read as numbers do: 25, not 25.0.
    assert!(
        row.contains("25") && !row.contains("25.0") && row.contains("big"),
        "{row}"
    );
    // The row may be rebuilt between finding and clicking it: find it again
    // until the click lands.
    let started = now();
    loop {
        if let Ok(row) = tab.find_element("#keys tr[data-key=\"card-7\"]") {
            row.click().ok();
        }
        std::thread::sleep(Duration::from_millis(300));
        let detail = tab
            .find_element("#key-detail")
            .unwrap()
            .get_inner_text()
            .unwrap();
        if detail.contains("25 (low)") {
            assert!(detail.contains("As card card-7"), "{detail}");
            assert!(detail.contains("big (25)"), "{detail}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "key detail: {detail}"
        );
    }
    screenshot(&tab, "key");
    // A key found by its value, not only from the ranking.
    let js = |code: &str| tab.evaluate(code, false).unwrap().value;
    js("document.getElementById('key-detail').textContent = '';\
        document.getElementById('key-search').value = 'card-7';\
        document.getElementById('search').requestSubmit();");
    let started = now();
    while !tab
        .find_element("#key-detail")
        .and_then(|e| e.get_inner_text())
        .unwrap_or_default()
        .contains("25 (low)")
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "search found nothing"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The alerts-over-time chart has the rule's line.
    wait("#chart polyline[data-rule=\"big\"]");
    // The partitions the service holds, with their lag.
    wait("#partitions tr");

    // Lists: the declared one is shown; adding a value from the page asks
    // for the token (writes need it), then the value flags the next event.
    wait("#lists tr[data-list=\"blocked\"]");
    let submit_entry = "document.getElementById('list-name').value = 'blocked';\
        document.getElementById('list-value').value = 'card-9';\
        document.getElementById('list-comment').value = 'seen in attack 7';\
        document.getElementById('list-form').requestSubmit();";
    js(submit_entry);
    let started = now();
    while js("getComputedStyle(document.getElementById('token')).display")
        != Some(serde_json::json!("flex"))
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no token asked for"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    js(&format!(
        "document.getElementById('token-input').value = '{TOKEN}';\
         document.getElementById('token').requestSubmit();"
    ));
    js(submit_entry);
    let text_of = |selector: &str| {
        tab.find_element(selector)
            .and_then(|e| e.get_inner_text())
            .unwrap_or_default()
    };
    // Waits up to 30 s for the text of `selector` to satisfy `ok`.
    let wait_text = |selector: &str, ok: &dyn Fn(&str) -> bool| {
        let started = now();
        loop {
            let text = text_of(selector);
            if ok(&text) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{selector}: {text}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    wait_text("#list-result", &|t| t.contains("card-9 is on blocked"));
    // On a partition card-7 is not on: its watermark is years behind now,
    // and an event of now on card-7's would be `future` there.
    let by_key = tripline::adapters::kafka::owners::Partitioner::Consistent;
    let busy = by_key.partition(b"card-7", 4);
    let ts = tripline::telemetry::now_ms() + 1_000;
    produce(
        &c,
        &[Input {
            key: Some("card-9".into()),
            partition: Some((busy + 1) % 4),
            payload: Some(format!(r#"{{"card":"card-9","ts":{ts},"amount":5}}"#).into_bytes()),
        }],
    );
    let item = wait("#feed li[data-rule=\"listed\"]");
    assert!(item.get_inner_text().unwrap().contains("card-9"));
    wait_text("#lists tr[data-list=\"blocked\"]", &|t| t.contains('1'));

    // The rule editor: a rule's text from its file, a mistake checked with
    // its line and column, the fix checked and saved.
    wait("#rule-list tr[data-rule=\"big\"]").click().unwrap();
    let text = || js("document.getElementById('edit-text').value");
    let started = now();
    while !text().is_some_and(|t| t.as_str().is_some_and(|t| t.starts_with("rule big {"))) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no rule text: {:?}",
            text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Each evaluation in a block of its own: a top-level `const` lives on
    // in the page between evaluations.
    js("{ const t = document.getElementById('edit-text');\
        t.value = t.value.replace('amount > 100', 'amount > maxx(100, 1)');\
        document.getElementById('edit-check').click(); }");
    wait_text("#edit-result", &|t| {
        t.contains("unknown function `maxx`") && t.contains("big.tl:5:")
    });
    js("{ const t = document.getElementById('edit-text');\
        t.value = t.value.replace('amount > maxx(100, 1)', 'amount > 200');\
        document.getElementById('edit-check').click(); }");
    wait_text("#edit-result", &|t| t.starts_with("valid"));
    // Backtested before it is saved, over the input of the last 24 h (the
    // two events produced above): the edit raises the alert of 950 as the
    // running rule does.
    js("document.getElementById('edit-backtest').click();");
    wait_text("#edit-result", &|t| t.starts_with("2 events over"));
    wait_text("#backtest tr[data-rule=\"big\"]", &|t| t.contains("1 / 1"));
    screenshot(&tab, "rules");
    js("document.getElementById('edit-save').click();");
    wait_text("#edit-result", &|t| t.starts_with("saved to big.tl"));
    let saved = std::fs::read_to_string(rules.join("big.tl")).unwrap();
    assert!(
        saved.contains("amount > 200") && saved.contains("rule small"),
        "{saved}"
    );

    // A shadow rule beside the live rule it may replace, over the same
    // period: `big` also alerts on card-8's 300 (on card-7's partition, so
    // not late there), the shadow `big_v2` does not.
    produce(
        &c,
        &[Input {
            key: Some("card-8".into()),
            partition: Some(busy),
            payload: Some(br#"{"card":"card-8","ts":1700000001000,"amount":300}"#.to_vec()),
        }],
    );
    wait("#feed li[data-rule=\"big\"][data-key=\"card-8\"]");
    wait("#rule-list tr[data-rule=\"big_v2\"]");
    // Clicked from the page: the list is rebuilt every 10 s, and a row
    // found before may be gone by the time a synthetic click lands.
    js("document.querySelector('#rule-list tr[data-rule=\"big_v2\"]').click();");
    wait("#compare-bar:not([hidden])");
    js("{ document.getElementById('compare-with').value = 'big';\
        document.getElementById('compare-bar').requestSubmit(); }");
    wait_text("#compare-period", &|t| {
        t.contains("1 keys alerted on by both")
    });
    // alerts, keys, keys alone, and which.
    wait_text("#compare-rows tr[data-rule=\"big\"]", &|t| {
        t.contains("live\t2\t2\t1\tcard-8")
    });
    wait_text("#compare-rows tr[data-rule=\"big_v2\"]", &|t| {
        t.contains("shadow\t1\t1\t0")
    });
    wait("#compare-chart polyline[data-rule=\"big_v2\"]");
    screenshot(&tab, "compare");

    drop(tab);
    drop(browser);
    std::fs::remove_dir_all(&c.state.dir).ok();
    std::fs::remove_dir_all(&rules).ok();
    std::fs::remove_file(&log).ok();
}

/// Saves the page as `NAME.png` in `$TRIPLINE_SCREENSHOTS` when set (how
/// the console's pictures in docs/console/ are made), else nowhere.
fn screenshot(tab: &headless_chrome::Tab, name: &str) {
    let Some(dir) = std::env::var_os("TRIPLINE_SCREENSHOTS") else {
        return;
    };
    let png = tab
        .capture_screenshot(
            headless_chrome::protocol::cdp::Page::CaptureScreenshotFormatOption::Png,
            None,
            None,
            true,
        )
        .expect("a screenshot");
    std::fs::write(std::path::Path::new(&dir).join(format!("{name}.png")), png).unwrap();
}
