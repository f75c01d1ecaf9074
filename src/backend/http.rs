//! [`Http`] with `reqwest` (rustls, the system's roots): the alert webhook and the
//! heartbeat. Each request is bounded (10 s), redirects are not followed (a webhook that
//! moved is a configuration to fix, not a body to send somewhere else), and the status
//! must be 2xx.

use std::time::Duration;

use async_trait::async_trait;

use crate::error::NotifyError;
use crate::ports::Http;

#[derive(Debug, Clone)]
pub struct ReqwestHttp {
    client: reqwest::Client,
}

impl ReqwestHttp {
    /// # Errors
    /// The TLS setup failed (no root certificates).
    pub fn new() -> Result<Self, NotifyError> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("standby-mx/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| NotifyError::new("http", e.to_string()))?;
        Ok(ReqwestHttp { client })
    }
}

fn check(
    channel: &'static str,
    r: Result<reqwest::Response, reqwest::Error>,
) -> Result<(), NotifyError> {
    match r {
        Ok(resp) if resp.status().is_success() => Ok(()),
        Ok(resp) => Err(NotifyError::new(channel, format!("HTTP {}", resp.status()))),
        // The error's text can carry the URL, whose query may hold a token: not logged.
        Err(e) => Err(NotifyError::new(
            channel,
            if e.is_timeout() {
                "timed out".to_string()
            } else if e.is_connect() {
                "cannot connect".to_string()
            } else {
                "request failed".to_string()
            },
        )),
    }
}

#[async_trait]
impl Http for ReqwestHttp {
    async fn post(
        &self,
        url: &str,
        headers: &[(&str, String)],
        body: Vec<u8>,
    ) -> Result<(), NotifyError> {
        let mut req = self.client.post(url).body(body);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        check("webhook", req.send().await)
    }

    async fn get(&self, url: &str) -> Result<(), NotifyError> {
        check("heartbeat", self.client.get(url).send().await)
    }
}
