//! Headless Chromium (Debian's `chromium`, or `CHROMIUM`), driven over the
//! DevTools protocol, for the tests of the dashboard.
// Shared by several test binaries, each using a part.
#![allow(dead_code)]

use headless_chrome::{Browser, LaunchOptions, Tab};
use std::ffi::OsStr;
use std::time::Duration;

/// A headless Chromium with a directory of its own (profile and temporary
/// files), which goes with it.
pub struct Chromium {
    browser: Option<Browser>,
    dir: std::path::PathBuf,
}

impl std::ops::Deref for Chromium {
    type Target = Browser;
    fn deref(&self) -> &Browser {
        self.browser.as_ref().unwrap()
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        // The process first: it writes to its directory until it ends.
        drop(self.browser.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts Chromium.
pub fn browser() -> Chromium {
    let path = std::env::var_os("CHROMIUM").unwrap_or_else(|| "/usr/bin/chromium".into());
    let dir = std::env::temp_dir().join(format!("tripline-chromium-{}", std::process::id()));
    let tmp = dir.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let options = LaunchOptions::default_builder()
        .path(Some(path.into()))
        .headless(true)
        // Tall enough for every panel at once (and the screenshots).
        .window_size(Some((1280, 2500)))
        // Root in CI: Chromium's sandbox refuses to run as root.
        .sandbox(false)
        .user_data_dir(Some(dir.join("profile")))
        // Chromium keeps its singleton socket in a directory of TMPDIR, which
        // it removes only on a clean exit; the browser is killed.
        .process_envs(Some(
            [("TMPDIR".to_string(), tmp.display().to_string())].into(),
        ))
        .args(vec![
            OsStr::new("--disable-gpu"),
            OsStr::new("--disable-quic"),
            OsStr::new("--disable-component-update"),
        ])
        .idle_browser_timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    Chromium {
        browser: Some(
            Browser::new(options).expect("Chromium starts (install Debian's `chromium`)"),
        ),
        dir,
    }
}

/// The inner text of `selector` on `tab` (empty when it is not there).
pub fn text_of(tab: &Tab, selector: &str) -> String {
    tab.find_element(selector)
        .and_then(|e| e.get_inner_text())
        .unwrap_or_default()
}

/// Waits up to `patience` for the text of `selector` to satisfy `ok`, and
/// returns it.
pub fn wait_text(
    tab: &Tab,
    selector: &str,
    patience: Duration,
    ok: &dyn Fn(&str) -> bool,
) -> String {
    #[allow(clippy::disallowed_methods)]
    let started = std::time::Instant::now();
    loop {
        let text = text_of(tab, selector);
        if ok(&text) {
            return text;
        }
        assert!(started.elapsed() < patience, "{selector}: {text}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
