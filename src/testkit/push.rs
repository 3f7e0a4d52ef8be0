//! Pushes generated images to a registry over the OCI distribution API
//! (monolithic blob uploads), plus small fetch helpers for checking results.

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use reqwest::{header, Method, RequestBuilder, Response, StatusCode};
use url::Url;

use super::corpus::{Built, CorpusEntry};
use super::image::{sha256_digest, Blob, BuiltImage};

/// Blob uploads in flight per `push_built`.
const PARALLEL_BLOBS: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("bad registry url {0:?}: {1}")]
    BadUrl(String, url::ParseError),
    #[error("{method} {url}: HTTP {status}: {body}")]
    Http {
        method: String,
        url: String,
        status: u16,
        body: String,
    },
    #[error("{0}: request failed: {1}")]
    Transport(String, #[source] reqwest::Error),
    #[error("{0}: upload response has no usable Location header")]
    NoLocation(String),
    #[error("{what}: digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },
}

pub type Result<T, E = PushError> = std::result::Result<T, E>;

/// A minimal distribution-API client for pushing test images.
#[derive(Debug, Clone)]
pub struct Pusher {
    client: reqwest::Client,
    base: Url,
    auth: Option<(String, String)>,
}

impl Pusher {
    /// `base` like `http://127.0.0.1:5000`; `auth` is sent as HTTP basic on every request.
    pub fn new(base: &str, auth: Option<(String, String)>) -> Result<Self> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .build()
            .map_err(|e| PushError::Transport("building client".into(), e))?;
        Self::with_client(client, base, auth)
    }

    pub fn with_client(
        client: reqwest::Client,
        base: &str,
        auth: Option<(String, String)>,
    ) -> Result<Self> {
        let base = Url::parse(base).map_err(|e| PushError::BadUrl(base.into(), e))?;
        Ok(Self { client, base, auth })
    }

    fn url(&self, path: &str) -> Result<Url> {
        self.base
            .join(path)
            .map_err(|e| PushError::BadUrl(path.into(), e))
    }

    fn req(&self, method: Method, url: Url) -> RequestBuilder {
        let r = self.client.request(method, url);
        match &self.auth {
            Some((u, p)) => r.basic_auth(u, Some(p)),
            None => r,
        }
    }

    /// Sends and turns non-2xx answers into [`PushError::Http`].
    async fn send(
        &self,
        method: Method,
        url: Url,
        f: impl FnOnce(RequestBuilder) -> RequestBuilder,
    ) -> Result<Response> {
        let what = format!("{method} {url}");
        let resp = f(self.req(method.clone(), url.clone()))
            .send()
            .await
            .map_err(|e| PushError::Transport(what, e))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        Err(http_error(method, url, resp).await)
    }

    /// True if the registry already has the blob (HEAD answers 200).
    pub async fn blob_exists(&self, repo: &str, digest: &str) -> Result<bool> {
        let url = self.url(&format!("/v2/{repo}/blobs/{digest}"))?;
        let what = format!("HEAD {url}");
        let resp = self
            .req(Method::HEAD, url.clone())
            .send()
            .await
            .map_err(|e| PushError::Transport(what, e))?;
        match resp.status() {
            StatusCode::OK => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(http_error(Method::HEAD, url, resp).await),
        }
    }

    /// Pushes a blob unless present; returns whether it was uploaded.
    pub async fn push_blob(&self, repo: &str, blob: &Blob) -> Result<bool> {
        self.push_blob_data(repo, &blob.digest, blob.data.clone())
            .await
    }

    /// Monolithic upload: POST to start, PUT `<location>&digest=…` with the body.
    pub async fn push_blob_data(&self, repo: &str, digest: &str, data: Bytes) -> Result<bool> {
        if self.blob_exists(repo, digest).await? {
            return Ok(false);
        }
        let start = self.url(&format!("/v2/{repo}/blobs/uploads/"))?;
        let resp = self
            .send(Method::POST, start.clone(), |r| {
                r.header(header::CONTENT_LENGTH, "0")
            })
            .await?;
        let loc = resp
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| PushError::NoLocation(format!("POST {start}")))?;
        // Location may be absolute or relative; query_pairs_mut handles `?` vs `&`.
        let mut put = start
            .join(loc)
            .map_err(|_| PushError::NoLocation(format!("POST {start}: {loc:?}")))?;
        put.query_pairs_mut().append_pair("digest", digest);
        let resp = self
            .send(Method::PUT, put, |r| {
                r.header(header::CONTENT_TYPE, "application/octet-stream")
                    .header(header::CONTENT_LENGTH, data.len())
                    .body(data)
            })
            .await?;
        check_digest(&resp, "blob", digest)?;
        Ok(true)
    }

    /// PUT a manifest or index; returns the digest the registry reports.
    pub async fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: Bytes,
    ) -> Result<String> {
        let url = self.url(&format!("/v2/{repo}/manifests/{reference}"))?;
        let expected = sha256_digest(&bytes);
        let resp = self
            .send(Method::PUT, url, |r| {
                r.header(header::CONTENT_TYPE, media_type).body(bytes)
            })
            .await?;
        check_digest(&resp, "manifest", &expected)?;
        Ok(expected)
    }

    /// Pushes an image's blobs then its manifest under `reference`.
    pub async fn push_image(
        &self,
        repo: &str,
        reference: &str,
        img: &BuiltImage,
    ) -> Result<String> {
        futures::stream::iter(img.blobs())
            .map(|b| async move { self.push_blob(repo, &b).await })
            .buffer_unordered(PARALLEL_BLOBS)
            .try_collect::<Vec<bool>>()
            .await?;
        self.push_manifest(
            repo,
            reference,
            &img.manifest_media_type,
            img.manifest.clone(),
        )
        .await
    }

    /// Pushes everything: blobs, child manifests by digest, then the top
    /// manifest/index under `tag`. Returns the top-level digest.
    pub async fn push_built(&self, repo: &str, tag: &str, built: &Built) -> Result<String> {
        match built {
            Built::Image(img) => self.push_image(repo, tag, img).await,
            Built::Index(idx) => {
                for img in &idx.images {
                    self.push_image(repo, &img.manifest_digest, img).await?;
                }
                self.push_manifest(repo, tag, &idx.media_type, idx.index.clone())
                    .await
            }
        }
    }

    /// Pushes a whole corpus in order.
    pub async fn push_corpus(&self, corpus: &[CorpusEntry]) -> Result<()> {
        for (repo, tag, built) in corpus {
            self.push_built(repo, tag, built).await?;
        }
        Ok(())
    }

    /// GET a manifest; returns (Content-Type, body). Accepts all image media types.
    pub async fn fetch_manifest(&self, repo: &str, reference: &str) -> Result<(String, Bytes)> {
        let url = self.url(&format!("/v2/{repo}/manifests/{reference}"))?;
        let what = format!("GET {url}");
        let resp = self
            .send(Method::GET, url, |r| r.header(header::ACCEPT, ACCEPT_ALL))
            .await?;
        let ct = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = resp
            .bytes()
            .await
            .map_err(|e| PushError::Transport(what, e))?;
        Ok((ct, body))
    }

    /// GET a blob and verify its digest.
    pub async fn fetch_blob(&self, repo: &str, digest: &str) -> Result<Bytes> {
        let url = self.url(&format!("/v2/{repo}/blobs/{digest}"))?;
        let what = format!("GET {url}");
        let resp = self.send(Method::GET, url, |r| r).await?;
        let body = resp
            .bytes()
            .await
            .map_err(|e| PushError::Transport(what, e))?;
        let actual = sha256_digest(&body);
        if actual != digest {
            return Err(PushError::DigestMismatch {
                what: format!("blob {repo}@{digest}"),
                expected: digest.into(),
                actual,
            });
        }
        Ok(body)
    }
}

/// Accept header covering OCI and Docker manifests and indexes.
pub const ACCEPT_ALL: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json";

fn check_digest(resp: &Response, what: &str, expected: &str) -> Result<()> {
    match resp
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
    {
        Some(got) if got != expected => Err(PushError::DigestMismatch {
            what: what.into(),
            expected: expected.into(),
            actual: got.into(),
        }),
        _ => Ok(()),
    }
}

async fn http_error(method: Method, url: Url, resp: Response) -> PushError {
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap_or_default();
    let body: String = body.chars().take(300).collect();
    PushError::Http {
        method: method.to_string(),
        url: url.to_string(),
        status,
        body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_join_handles_relative_and_query() {
        let start = Url::parse("http://127.0.0.1:5000/v2/a/blobs/uploads/").unwrap();
        for (loc, want) in [
            (
                "/v2/a/blobs/uploads/u1?_state=x",
                "http://127.0.0.1:5000/v2/a/blobs/uploads/u1?_state=x&digest=sha256%3Aab",
            ),
            (
                "http://127.0.0.1:5000/v2/a/blobs/uploads/u1",
                "http://127.0.0.1:5000/v2/a/blobs/uploads/u1?digest=sha256%3Aab",
            ),
        ] {
            let mut u = start.join(loc).unwrap();
            u.query_pairs_mut().append_pair("digest", "sha256:ab");
            assert_eq!(u.as_str(), want);
        }
    }

    #[test]
    fn bad_base_url_is_an_error() {
        assert!(matches!(
            Pusher::new("not a url", None),
            Err(PushError::BadUrl(..))
        ));
    }

    #[tokio::test]
    async fn unreachable_registry_is_a_transport_error() {
        // Port 9 (discard) on loopback is closed here.
        let p = Pusher::new("http://127.0.0.1:9", None).unwrap();
        let err = p.blob_exists("a", "sha256:00").await.unwrap_err();
        assert!(matches!(err, PushError::Transport(..)), "{err}");
    }
}
