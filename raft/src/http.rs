//! A small JSON-over-HTTP/1 client (hyper's pooled client), shared by the raft network
//! ([`crate::network`]) and the service's client ([`crate::client`]).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::CONTENT_TYPE;
use hyper::{Method, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Why a request failed.
#[derive(Debug, Clone)]
pub struct HttpError {
    /// No connection could be made (nothing listens there, or the host is down).
    pub connect: bool,
    /// What went wrong.
    pub what: String,
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.what)
    }
}

impl std::error::Error for HttpError {}

fn fail(what: impl std::fmt::Display) -> HttpError {
    HttpError { connect: false, what: what.to_string() }
}

/// A pooled HTTP/1 client. Cheap to clone (clones share the pool).
#[derive(Clone)]
pub struct HttpClient {
    inner: Client<HttpConnector, Full<Bytes>>,
}

impl Default for HttpClient {
    fn default() -> Self {
        HttpClient::new()
    }
}

impl HttpClient {
    /// A client with a pool of its own.
    pub fn new() -> HttpClient {
        let mut conn = HttpConnector::new();
        conn.set_nodelay(true);
        conn.set_connect_timeout(Some(Duration::from_secs(1)));
        HttpClient { inner: Client::builder(TokioExecutor::new()).build(conn) }
    }

    /// Sends `method` to `url` with `body` as JSON (if any) and returns the status and the
    /// whole answer, all within `timeout`.
    pub async fn send<B: Serialize>(
        &self,
        method: Method,
        url: &str,
        body: Option<&B>,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), HttpError> {
        let bytes = match body {
            Some(b) => Bytes::from(serde_json::to_vec(b).map_err(fail)?),
            None => Bytes::new(),
        };
        let req = hyper::Request::builder()
            .method(method)
            .uri(url)
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(bytes))
            .map_err(fail)?;
        let exchange = async {
            let resp = self
                .inner
                .request(req)
                .await
                .map_err(|e| HttpError { connect: e.is_connect(), what: format!("{url}: {e}") })?;
            let status = resp.status();
            let body = resp.into_body().collect().await.map_err(|e| fail(format!("{url}: {e}")))?.to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| fail(format!("{url}: timed out after {timeout:?}")))?
    }

    /// `POST`s `body` as JSON and decodes a `200 OK` answer as JSON; any other status is an
    /// error carrying the answer's text.
    pub async fn post_json<B: Serialize, T: DeserializeOwned>(
        &self,
        url: &str,
        body: &B,
        timeout: Duration,
    ) -> Result<T, HttpError> {
        let (status, bytes) = self.send(Method::POST, url, Some(body), timeout).await?;
        decode(url, status, &bytes)
    }

    /// `GET`s `url` and decodes a `200 OK` answer as JSON.
    pub async fn get_json<T: DeserializeOwned>(&self, url: &str, timeout: Duration) -> Result<T, HttpError> {
        let (status, bytes) = self.send::<()>(Method::GET, url, None, timeout).await?;
        decode(url, status, &bytes)
    }
}

fn decode<T: DeserializeOwned>(url: &str, status: StatusCode, bytes: &[u8]) -> Result<T, HttpError> {
    if status != StatusCode::OK {
        return Err(fail(format!("{url}: {status}: {}", String::from_utf8_lossy(bytes))));
    }
    serde_json::from_slice(bytes).map_err(|e| fail(format!("{url}: bad answer: {e}")))
}
