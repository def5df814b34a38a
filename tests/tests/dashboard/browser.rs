//! A headless Chromium for one test: chromedriver on a free port, in its
//! own process group (killed with the browser it started when the test
//! ends, passed or not), and a fantoccini WebDriver session to it.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use ferry_e2e::{free_port, WAIT};
use hyper_util::client::legacy::connect::HttpConnector;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::os::unix::process::CommandExt;

pub struct Browser {
    driver: Child,
    client: Option<Client>,
    profile: tempfile::TempDir,
}

/// Debian's chromium and chromium-driver; a test that cannot find them fails.
fn installed(name: &str) -> PathBuf {
    ["/usr/bin", "/usr/lib/chromium", "/usr/local/bin"]
        .iter()
        .map(|dir| PathBuf::from(dir).join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!(
                "{name} is not installed: the browser tests need Debian's chromium and \
                 chromium-driver (scripts/apt-install chromium chromium-driver)"
            )
        })
}

/// Where the screenshots go: `target/dashboard-screenshots/`.
pub fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("dashboard-screenshots")
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with a window of `width` × `height`.
    pub async fn start(width: u32, height: u32) -> Browser {
        let chromium = installed("chromium");
        let port = free_port();
        let driver = Command::new(installed("chromedriver"))
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start chromedriver");
        let profile = tempfile::tempdir().expect("profile dir");
        let mut browser = Browser {
            driver,
            client: None,
            profile,
        };
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let ready = http.get(format!("{url}/status")).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            if let Ok(Some(status)) = browser.driver.try_wait() {
                panic!("chromedriver exited at start: {status}");
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "chromedriver did not answer within {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": chromium,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--no-first-run",
                    "--hide-scrollbars",
                    format!("--window-size={width},{height}"),
                    format!("--user-data-dir={}", browser.profile.path().display()),
                ],
            }),
        );
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&url)
            .await
            .expect("a WebDriver session in chromium");
        browser.client = Some(client);
        browser.resize(width, height).await;
        browser
    }

    fn client(&self) -> &Client {
        self.client.as_ref().expect("an open session")
    }

    pub async fn goto(&self, url: &str) {
        self.client().goto(url).await.expect("navigate");
    }

    /// Sets the viewport (not the window) to `width` × `height`: sizes the
    /// window, then corrects it by what the viewport came out short or over.
    pub async fn resize(&self, width: u32, height: u32) {
        let (mut outer_w, mut outer_h) = (width, height);
        for _ in 0..3 {
            self.client()
                .set_window_size(outer_w, outer_h)
                .await
                .expect("resize");
            let inner = self
                .client()
                .execute("return [window.innerWidth, window.innerHeight];", vec![])
                .await
                .expect("measure the viewport");
            let (w, h) = (
                inner[0].as_i64().unwrap_or(0),
                inner[1].as_i64().unwrap_or(0),
            );
            if (w, h) == (i64::from(width), i64::from(height)) {
                return;
            }
            outer_w = (i64::from(outer_w) + i64::from(width) - w).max(1) as u32;
            outer_h = (i64::from(outer_h) + i64::from(height) - h).max(1) as u32;
        }
    }

    pub async fn execute(&self, script: &str) -> serde_json::Value {
        self.client()
            .execute(script, vec![])
            .await
            .expect("run a script")
    }

    /// The text of the first element matching `css`; empty when there is none.
    /// The text of the first element matching `css`, or "" when none does.
    /// The views re-render on live updates, so an element found can be
    /// replaced before its text is read (a stale reference): it is then
    /// found again, for up to a few seconds.
    pub async fn text(&self, css: &str) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let Ok(element) = self.client().find(Locator::Css(css)).await else {
                return String::new();
            };
            match element.text().await {
                Ok(text) => return text,
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    panic!("could not read the text of {css}: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    pub async fn count(&self, css: &str) -> usize {
        self.client()
            .find_all(Locator::Css(css))
            .await
            .map(|all| all.len())
            .unwrap_or(0)
    }

    /// Whether the first element matching `css` is displayed (false when
    /// none matches); a reference gone stale under a re-render is found
    /// again, as in [`Browser::text`].
    pub async fn displayed(&self, css: &str) -> bool {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let Ok(element) = self.client().find(Locator::Css(css)).await else {
                return false;
            };
            match element.is_displayed().await {
                Ok(shown) => return shown,
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    panic!("could not tell whether {css} is displayed: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Polls the text of `css` until `pred` holds; fails with `what` after [`WAIT`].
    pub async fn wait_text(&self, css: &str, what: &str, pred: impl Fn(&str) -> bool) -> String {
        self.wait_text_within(WAIT, css, what, pred).await
    }

    pub async fn wait_text_within(
        &self,
        timeout: Duration,
        css: &str,
        what: &str,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let text = self.text(css).await;
            if pred(&text) {
                return text;
            }
            if tokio::time::Instant::now() >= deadline {
                self.screenshot(&format!("failed-{}", what.replace(' ', "-")))
                    .await;
                panic!(
                    "the page never showed {what} in {css} within {timeout:?}; it shows: {text:?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Clicks the first element matching `css`, waiting for it to appear.
    pub async fn click(&self, css: &str) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match self.client().find(Locator::Css(css)).await {
                Ok(element) => match element.click().await {
                    Ok(()) => return,
                    Err(e) if tokio::time::Instant::now() >= deadline => {
                        panic!("could not click {css}: {e}")
                    }
                    Err(_) => {}
                },
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    panic!("no {css} to click: {e}")
                }
                Err(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn type_into(&self, css: &str, text: &str) {
        let element = self
            .client()
            .wait()
            .at_most(WAIT)
            .for_element(Locator::Css(css))
            .await
            .expect(css);
        element.send_keys(text).await.expect("type");
    }

    /// Saves the viewport as `target/dashboard-screenshots/<name>.png`.
    pub async fn screenshot(&self, name: &str) {
        let png = self.client().screenshot().await.expect("screenshot");
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).expect("screenshot dir");
        std::fs::write(dir.join(format!("{name}.png")), png).expect("write screenshot");
    }

    /// Ends the WebDriver session (chromium quits).
    pub async fn close(mut self) {
        if let Some(client) = self.client.take() {
            client.close().await.expect("close the session");
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // chromedriver and the chromium it started share its process group.
        let _ = killpg(Pid::from_raw(self.driver.id() as i32), Signal::SIGKILL);
        let _ = self.driver.wait();
    }
}
