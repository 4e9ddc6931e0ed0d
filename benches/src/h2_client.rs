//! A lean unary gRPC client straight on the `h2` crate, the load
//! generator's default transport.
//!
//! Why not tonic's `Channel`: on the 2-core benchmark machine the load
//! generator shares the CPU with the server under test, and through tonic
//! it spent about as much CPU per put as our server (78 us at 1,000
//! clients, benches/RESULTS.md): a `tower::Buffer` hop to a worker task
//! per request, hyper's client dispatch task, tonic's streaming codec.
//! Every microsecond the generator burns is taken from whichever server is
//! measured, so a heavy generator pulls every saturation ratio towards 1
//! (etcd's published figures use separate client machines). Here the
//! calling task itself opens the stream on the shared connection state
//! (`h2::client::SendRequest` is `Clone`), sends the one length-prefixed
//! message with END_STREAM, and reads the answer and its trailers; the
//! connection's own task only moves frames.
//!
//! What goes on the wire is an ordinary gRPC unary call (headers
//! `:method POST`, `:path /etcdserverpb.KV/Put`, `content-type:
//! application/grpc`, `te: trailers`, optional `token`), so etcd and this
//! server see the same request either way. TLS (`https://`) goes through
//! rustls with ALPN `h2`, as grpc-go's client does.

use crate::TlsFiles;
use anyhow::{anyhow, bail, Context as _};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::sync::Arc;

/// One HTTP/2 connection to a gRPC server; clones share it.
#[derive(Clone)]
pub struct GrpcConn {
    /// Opens streams on the connection (the connection future runs on a
    /// task of its own).
    send: h2::client::SendRequest<Bytes>,
    /// The scheme and authority of every request's URI.
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
}

impl GrpcConn {
    /// Connects to `url` (`http://host:port` or `https://host:port`).
    pub async fn connect(url: &str, tls: &TlsFiles) -> anyhow::Result<GrpcConn> {
        let uri: http::Uri = url.parse().with_context(|| format!("bad endpoint {url}"))?;
        let authority = uri
            .authority()
            .ok_or_else(|| anyhow!("endpoint {url} has no host:port"))?
            .clone();
        let https = match uri.scheme_str() {
            Some("http") | None => false,
            Some("https") => true,
            Some(s) => bail!("endpoint {url}: unknown scheme {s}"),
        };
        let addr = format!(
            "{}:{}",
            authority.host(),
            authority.port_u16().unwrap_or(2379)
        );
        let tcp = tokio::net::TcpStream::connect(&addr)
            .await
            .with_context(|| format!("cannot connect to {url}"))?;
        tcp.set_nodelay(true)?;
        let send = if https {
            let config = Arc::new(rustls_config(tls)?);
            let name = rustls::pki_types::ServerName::try_from(authority.host().to_string())
                .with_context(|| format!("endpoint {url}: bad server name"))?;
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .with_context(|| format!("TLS handshake with {url}"))?;
            handshake(stream).await?
        } else {
            handshake(tcp).await?
        };
        Ok(GrpcConn {
            send,
            scheme: if https {
                http::uri::Scheme::HTTPS
            } else {
                http::uri::Scheme::HTTP
            },
            authority,
        })
    }

    /// Calls the unary method `path` (`/etcdserverpb.KV/Put`) with `req`;
    /// a non-OK `grpc-status` is an error carrying its code and message.
    pub async fn unary<Req, Resp>(
        &self,
        path: &'static str,
        req: &Req,
        token: Option<&str>,
    ) -> anyhow::Result<Resp>
    where
        Req: prost::Message,
        Resp: prost::Message + Default,
    {
        let uri = http::Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(http::uri::PathAndQuery::from_static(path))
            .build()?;
        let mut b = http::Request::post(uri)
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        if let Some(t) = token {
            b = b.header("token", t);
        }
        let request = b.body(())?;
        // The message: compressed flag 0, big-endian length, protobuf.
        let len = req.encoded_len();
        let mut msg = BytesMut::with_capacity(5 + len);
        msg.put_u8(0);
        msg.put_u32(u32::try_from(len)?);
        req.encode(&mut msg)?;

        let mut send = self.send.clone().ready().await?;
        let (response, mut body_tx) = send.send_request(request, false)?;
        body_tx.send_data(msg.freeze(), true)?;
        let (head, mut body) = response.await?.into_parts();
        if head.status != http::StatusCode::OK {
            bail!("HTTP status {}", head.status);
        }
        // A trailers-only answer (an error) has grpc-status in its headers.
        if let Some(s) = head.headers.get("grpc-status") {
            check_status(s, head.headers.get("grpc-message"))?;
        }
        let mut data = BytesMut::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk?;
            let _ = body.flow_control().release_capacity(chunk.len());
            data.extend_from_slice(&chunk);
        }
        let trailers = body.trailers().await?.unwrap_or_default();
        match trailers.get("grpc-status") {
            Some(s) => check_status(s, trailers.get("grpc-message"))?,
            None if head.headers.contains_key("grpc-status") => {}
            None => bail!("answer without grpc-status"),
        }
        if data.len() < 5 || data[0] != 0 {
            bail!("answer is not one uncompressed gRPC message");
        }
        let mut data = data.freeze();
        data.advance(1);
        let n = data.get_u32() as usize;
        if data.len() != n {
            bail!("answer's length prefix {n} != {} bytes", data.len());
        }
        Ok(Resp::decode(data)?)
    }
}

/// An HTTP/2 client handshake on `io`; the connection runs on its own task.
async fn handshake<T>(io: T) -> anyhow::Result<h2::client::SendRequest<Bytes>>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // Windows as large as grpc-go's dynamic ones grow to: a flow-control
    // update per few requests would be the generator's cost, not the server's.
    let (send, conn) = h2::client::Builder::new()
        .initial_window_size(1 << 20)
        .initial_connection_window_size(1 << 24)
        .handshake(io)
        .await
        .context("HTTP/2 handshake")?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            eprintln!("connection ended: {e}");
        }
    });
    Ok(send)
}

/// `grpc-status` 0 is Ok; anything else is an error with the message
/// (percent-decoded, as gRPC sends it).
fn check_status(
    status: &http::HeaderValue,
    message: Option<&http::HeaderValue>,
) -> anyhow::Result<()> {
    if status.as_bytes() == b"0" {
        return Ok(());
    }
    let message = message.map(|m| {
        percent_encoding::percent_decode(m.as_bytes())
            .decode_utf8_lossy()
            .into_owned()
    });
    bail!(
        "grpc-status {}: {}",
        String::from_utf8_lossy(status.as_bytes()),
        message.unwrap_or_default()
    )
}

/// rustls client settings from etcdctl-style PEM files, ALPN `h2`.
fn rustls_config(tls: &TlsFiles) -> anyhow::Result<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = &tls.cacert {
        for c in CertificateDer::pem_file_iter(ca).with_context(|| ca.display().to_string())? {
            roots.add(c.with_context(|| ca.display().to_string())?)?;
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots);
    let mut config = match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .with_context(|| cert.display().to_string())?
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| cert.display().to_string())?;
            let key =
                PrivateKeyDer::from_pem_file(key).with_context(|| key.display().to_string())?;
            builder.with_client_auth_cert(chain, key)?
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcd_core::pb::etcdserverpb::{
        CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
        PutResponse, RangeRequest, RangeResponse, ResponseHeader, TxnRequest, TxnResponse,
    };
    use etcd_core::pb::mvccpb::KeyValue;
    use etcd_server::rpc::etcdserverpb::kv_server::{Kv, KvServer};
    use tonic::{Request, Response, Status};

    /// Answers puts with the value's length as the revision (and the
    /// token it saw as the member id), ranges with one key-value of
    /// `limit` bytes, or an error for the key `err`.
    struct Mock;

    #[tonic::async_trait]
    impl Kv for Mock {
        async fn range(&self, r: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
            let r = r.into_inner();
            if r.key == "err" {
                return Err(Status::invalid_argument("etcdserver: bad 100% request"));
            }
            Ok(Response::new(RangeResponse {
                kvs: vec![KeyValue {
                    key: r.key,
                    value: vec![b'x'; r.limit as usize].into(),
                    ..Default::default()
                }],
                count: 1,
                ..Default::default()
            }))
        }
        async fn put(&self, r: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
            let token = r.metadata().get("token").map(|t| t.to_str().unwrap().len());
            let r = r.into_inner();
            Ok(Response::new(PutResponse {
                header: Some(ResponseHeader {
                    revision: r.value.len() as i64,
                    member_id: token.unwrap_or(0) as u64,
                    ..Default::default()
                }),
                ..Default::default()
            }))
        }
        async fn delete_range(
            &self,
            _: Request<DeleteRangeRequest>,
        ) -> Result<Response<DeleteRangeResponse>, Status> {
            Err(Status::unimplemented("mock"))
        }
        async fn txn(&self, _: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
            Err(Status::unimplemented("mock"))
        }
        async fn compact(
            &self,
            _: Request<CompactionRequest>,
        ) -> Result<Response<CompactionResponse>, Status> {
            Err(Status::unimplemented("mock"))
        }
    }

    #[tokio::test]
    async fn unary_calls_answers_and_errors() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(KvServer::new(Mock))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let conn = GrpcConn::connect(&url, &TlsFiles::default()).await.unwrap();
        let put = PutRequest {
            key: "k".into(),
            value: vec![b'v'; 300].into(),
            ..Default::default()
        };

        let r: PutResponse = conn
            .unary("/etcdserverpb.KV/Put", &put, None)
            .await
            .unwrap();
        let h = r.header.unwrap();
        assert_eq!((h.revision, h.member_id), (300, 0));
        let r: PutResponse = conn
            .unary("/etcdserverpb.KV/Put", &put, Some("secret"))
            .await
            .unwrap();
        assert_eq!(
            r.header.unwrap().member_id,
            6,
            "the token header reaches the server"
        );

        // An error: grpc-status and the percent-decoded message.
        let bad = RangeRequest {
            key: "err".into(),
            ..Default::default()
        };
        let e = conn
            .unary::<_, RangeResponse>("/etcdserverpb.KV/Range", &bad, None)
            .await
            .unwrap_err();
        assert_eq!(e.to_string(), "grpc-status 3: etcdserver: bad 100% request");

        // An answer far over the initial 64 KiB windows, on clones of the
        // connection at once: read in chunks, capacity released.
        let calls = (0..4).map(|i| {
            let conn = conn.clone();
            async move {
                let big = RangeRequest {
                    key: format!("k{i}").into_bytes().into(),
                    limit: 3 << 20,
                    ..Default::default()
                };
                conn.unary::<_, RangeResponse>("/etcdserverpb.KV/Range", &big, None)
                    .await
                    .unwrap()
            }
        });
        for (i, r) in futures::future::join_all(calls)
            .await
            .into_iter()
            .enumerate()
        {
            assert_eq!(r.kvs[0].key, format!("k{i}").as_bytes());
            assert_eq!(r.kvs[0].value.len(), 3 << 20);
        }
    }
}
