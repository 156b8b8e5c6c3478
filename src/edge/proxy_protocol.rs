//! The PROXY protocol (HAProxy's spec, v1 text and v2 binary) on listeners that require it:
//! every connection must start with one complete, valid header within the header read timeout,
//! before TLS or HTTP. Nothing is guessed: a connection that starts otherwise is closed. The
//! framing is read here (so a header split across packets is waited for, and bytes after it are
//! kept for TLS / HTTP); the `ppp` crate parses the complete header.

use bytes::{Buf, BytesMut};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
const V1_PREFIX: &[u8; 6] = b"PROXY ";
/// The spec's bound for a v1 line, CRLF included.
const V1_MAX: usize = 107;
/// v2 headers larger than this (addresses plus TLVs) are refused; real ones are far smaller.
const V2_MAX: usize = 16 + 4096;

/// Which versions a listener accepts (`proxy_protocol: v1 | v2 | any`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accept {
    V1,
    V2,
    Any,
}

impl Accept {
    pub fn parse(s: &str) -> Option<Accept> {
        match s {
            "v1" => Some(Accept::V1),
            "v2" => Some(Accept::V2),
            "any" => Some(Accept::Any),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProxyError {
    #[error("no complete PROXY protocol header within the header read timeout")]
    Timeout,
    #[error("connection closed before a complete PROXY protocol header")]
    Closed,
    #[error("invalid PROXY protocol header: {0}")]
    Invalid(&'static str),
    #[error("reading the PROXY protocol header: {0}")]
    Io(String),
}

/// What a header said: the original client's address, or `None` for `LOCAL` (v2) and
/// `UNKNOWN` (v1) headers, which stand for the proxy's own connections (health checks): the
/// peer is then the connection's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyHeader {
    pub source: Option<SocketAddr>,
}

/// Reads one PROXY header from `stream`. Returns it and whatever bytes came after it.
pub async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
    accept: Accept,
    timeout: Duration,
) -> Result<(ProxyHeader, BytesMut), ProxyError> {
    tokio::time::timeout(timeout, read_inner(stream, accept))
        .await
        .map_err(|_| ProxyError::Timeout)?
}

async fn read_inner<S: AsyncRead + Unpin>(
    stream: &mut S,
    accept: Accept,
) -> Result<(ProxyHeader, BytesMut), ProxyError> {
    let mut buf = BytesMut::with_capacity(256);
    loop {
        if let Some(len) = complete_length(&buf, accept)? {
            let header = parse(&buf[..len])?;
            buf.advance(len);
            return Ok((header, buf));
        }
        if buf.capacity() - buf.len() < 64 {
            buf.reserve(256);
        }
        let n = stream
            .read_buf(&mut buf)
            .await
            .map_err(|e| ProxyError::Io(e.to_string()))?;
        if n == 0 {
            return Err(ProxyError::Closed);
        }
    }
}

/// The length of the header at the start of `buf` once it is all there; `None` while more
/// bytes are needed; an error as soon as the bytes so far cannot start a valid header.
fn complete_length(buf: &[u8], accept: Accept) -> Result<Option<usize>, ProxyError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    if first == V2_SIGNATURE[0] {
        if accept == Accept::V1 {
            return Err(ProxyError::Invalid("v2 header on a listener that takes v1"));
        }
        let seen = buf.len().min(V2_SIGNATURE.len());
        if buf[..seen] != V2_SIGNATURE[..seen] {
            return Err(ProxyError::Invalid("bad v2 signature"));
        }
        if buf.len() < 16 {
            return Ok(None);
        }
        if buf[12] >> 4 != 2 {
            return Err(ProxyError::Invalid("unsupported v2 version"));
        }
        let total = 16 + u16::from_be_bytes([buf[14], buf[15]]) as usize;
        if total > V2_MAX {
            return Err(ProxyError::Invalid("v2 header too large"));
        }
        return Ok((buf.len() >= total).then_some(total));
    }
    if first == V1_PREFIX[0] {
        if accept == Accept::V2 {
            return Err(ProxyError::Invalid("v1 header on a listener that takes v2"));
        }
        let seen = buf.len().min(V1_PREFIX.len());
        if buf[..seen] != V1_PREFIX[..seen] {
            return Err(ProxyError::Invalid("not a PROXY header"));
        }
        let window = &buf[..buf.len().min(V1_MAX)];
        if let Some(i) = window.windows(2).position(|w| w == b"\r\n") {
            return Ok(Some(i + 2));
        }
        if buf.len() >= V1_MAX {
            return Err(ProxyError::Invalid("v1 line without CRLF within 107 bytes"));
        }
        return Ok(None);
    }
    Err(ProxyError::Invalid(
        "the connection did not start with a PROXY protocol header",
    ))
}

fn parse(header: &[u8]) -> Result<ProxyHeader, ProxyError> {
    if header.starts_with(V2_SIGNATURE) {
        use ppp::v2::{Addresses, Command, Header};
        let h = Header::try_from(header).map_err(|_| ProxyError::Invalid("malformed v2 header"))?;
        // TLVs (ALPN, authority, TLS details) are not used: the gateway sees TLS itself.
        let source = match (h.command, h.addresses) {
            (Command::Local, _) => None,
            (Command::Proxy, Addresses::IPv4(a)) => {
                Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
            }
            (Command::Proxy, Addresses::IPv6(a)) => {
                Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
            }
            // UNSPEC / UNIX sources carry no IP: the connection's own peer stands.
            (Command::Proxy, _) => None,
        };
        return Ok(ProxyHeader { source });
    }
    use ppp::v1::{Addresses, Header};
    let h = Header::try_from(header).map_err(|_| ProxyError::Invalid("malformed v1 header"))?;
    let source = match h.addresses {
        Addresses::Unknown => None,
        Addresses::Tcp4(a) => Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port)),
        Addresses::Tcp6(a) => Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port)),
    };
    Ok(ProxyHeader { source })
}

/// A stream whose first bytes were already read (those after the PROXY header): they are
/// served first, then reads go to the stream.
pub struct Prefixed<S> {
    prefix: BytesMut,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: BytesMut, inner: S) -> Self {
        Prefixed { prefix, inner }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, addrs: &[u8], tlvs: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend_from_slice(&((addrs.len() + tlvs.len()) as u16).to_be_bytes());
        h.extend_from_slice(addrs);
        h.extend_from_slice(tlvs);
        h
    }

    async fn read(bytes: &[u8], accept: Accept) -> Result<(ProxyHeader, Vec<u8>), ProxyError> {
        let mut s = bytes;
        read_header(&mut s, accept, Duration::from_secs(1))
            .await
            .map(|(h, rest)| (h, rest.to_vec()))
    }

    #[tokio::test]
    async fn v1_lines_and_what_follows_them() {
        let (h, rest) = read(
            b"PROXY TCP4 198.51.100.1 10.0.0.1 56324 443\r\nGET /",
            Accept::Any,
        )
        .await
        .unwrap();
        assert_eq!(h.source, Some("198.51.100.1:56324".parse().unwrap()));
        assert_eq!(rest, b"GET /");
        let (h, _) = read(b"PROXY UNKNOWN\r\n", Accept::V1).await.unwrap();
        assert_eq!(h.source, None);
        let (h, _) = read(b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n", Accept::V1)
            .await
            .unwrap();
        assert_eq!(h.source, Some("[2001:db8::1]:1".parse().unwrap()));
    }

    #[tokio::test]
    async fn v1_without_crlf_in_107_bytes_is_refused() {
        let mut long = b"PROXY TCP4 ".to_vec();
        long.resize(120, b'1');
        assert!(matches!(
            read(&long, Accept::V1).await,
            Err(ProxyError::Invalid(_))
        ));
        assert_eq!(
            read(b"PROXY TCP4 1.2.3.4", Accept::V1).await,
            Err(ProxyError::Closed)
        );
        assert!(matches!(
            read(b"GET / HTTP/1.1\r\n\r\n", Accept::Any).await,
            Err(ProxyError::Invalid(_))
        ));
        assert!(matches!(
            read(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n", Accept::V2).await,
            Err(ProxyError::Invalid(_))
        ));
    }

    #[tokio::test]
    async fn v2_proxy_local_tlvs_and_bad_signatures() {
        let addrs = [198, 51, 100, 7, 10, 0, 0, 1, 0x1f, 0x90, 0x01, 0xbb];
        let tlv = [0x02, 0x00, 0x03, b'a', b'p', b'i']; // PP2_TYPE_AUTHORITY "api"
        let mut bytes = v2(1, 0x11, &addrs, &tlv);
        bytes.extend_from_slice(b"\x16\x03\x01");
        let (h, rest) = read(&bytes, Accept::V2).await.unwrap();
        assert_eq!(h.source, Some("198.51.100.7:8080".parse().unwrap()));
        assert_eq!(rest, b"\x16\x03\x01");
        let (h, _) = read(&v2(0, 0x00, &[], &[]), Accept::Any).await.unwrap();
        assert_eq!(h.source, None, "LOCAL");
        let mut bad = v2(1, 0x11, &addrs, &[]);
        bad[5] = b'X';
        assert_eq!(
            read(&bad, Accept::V2).await,
            Err(ProxyError::Invalid("bad v2 signature"))
        );
        assert!(matches!(
            read(&v2(1, 0x11, &addrs, &[]), Accept::V1).await,
            Err(ProxyError::Invalid(_))
        ));
    }

    #[tokio::test]
    async fn a_header_split_across_reads_is_waited_for() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let task = tokio::spawn(async move {
            read_header(&mut server, Accept::Any, Duration::from_secs(2)).await
        });
        use tokio::io::AsyncWriteExt;
        for part in [
            &b"PRO"[..],
            b"XY TCP4 192.0.2.5 ",
            b"10.0.0.1 1000 80\r",
            b"\n",
        ] {
            client.write_all(part).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (h, _) = task.await.unwrap().unwrap();
        assert_eq!(h.source, Some("192.0.2.5:1000".parse().unwrap()));
    }

    #[tokio::test]
    async fn a_silent_connection_times_out() {
        let (_client, mut server) = tokio::io::duplex(64);
        let r = read_header(&mut server, Accept::Any, Duration::from_millis(50)).await;
        assert_eq!(r.unwrap_err(), ProxyError::Timeout);
    }
}
